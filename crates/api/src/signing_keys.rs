//! The signing keys of access tokens, shared by every instance through the database: the wiring of the crypto
//! adapter's key ring to the Postgres adapter's key table.
//!
//! Without `JWT_PRIVATE_KEY_FILE`, the first instance to start stores a key (importing the key an earlier version
//! generated under `DATA_DIR`, so the tokens it signed keep working); every instance loads the keys into its codec
//! and reloads them every [`RELOAD_PERIOD`] in the background ([`KeyReloader`]), so requests never read keys from
//! the database. `keys rotate` stores a key that activates [`ACTIVATION_DELAY`] later: longer than the reload
//! period, so every instance holds the key before any instance signs with it. Private keys are sealed with the
//! data key (`DATA_ENCRYPTION_KEY_FILE`) when one is configured.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use users_crypto::{JwtCodec, KeyRing, KeyStatus, RingKey, Sealer, SigningKey, schedule};
use users_postgres::{PgRepository, StoredSigningKey};

/// How often every instance reloads the keys from the database.
pub const RELOAD_PERIOD: Duration = Duration::from_secs(10);

/// How long after `keys rotate` the new key starts signing: longer than [`RELOAD_PERIOD`].
pub const ACTIVATION_DELAY: time::Duration = time::Duration::seconds(15);

/// The algorithm stored keys are for.
const ALGORITHM: &str = "ES256";

/// The signing keys in the database, opened with the deployment's sealer.
#[derive(Debug, Clone)]
pub struct SharedKeys {
    db: PgRepository,
    sealer: Sealer,
    grace: time::Duration,
    data_dir: PathBuf,
}

/// A key stored by `keys rotate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotatedKey {
    /// Its key id.
    pub kid: String,
    /// When it starts signing.
    pub activates_at: OffsetDateTime,
}

/// A stored key with its state, as `keys list` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedKey {
    /// When it was stored.
    pub created_at: OffsetDateTime,
    /// Its state and the dates that follow from the schedule.
    pub status: KeyStatus,
}

impl SharedKeys {
    /// The keys of `db`, sealed with `sealer`; a key that stopped signing keeps verifying for `grace` (the
    /// access-token lifetime); `data_dir` may hold a key of an earlier version to import.
    #[must_use]
    pub const fn new(db: PgRepository, sealer: Sealer, grace: time::Duration, data_dir: PathBuf) -> Self {
        Self { db, sealer, grace, data_dir }
    }

    /// Makes sure the database holds a key: the first caller stores `DATA_DIR/jwt-es256.pem` when an earlier
    /// version left one there, or a new key; of several instances starting at once, exactly one succeeds.
    ///
    /// # Errors
    /// When the database cannot be reached, or the `DATA_DIR` key exists and cannot be read.
    pub async fn ensure_first(&self) -> anyhow::Result<()> {
        if !self.db.signing_keys().await.context("reading the signing keys")?.is_empty() {
            return Ok(());
        }
        let imported = SigningKey::read_generated(&self.data_dir)?;
        let is_import = imported.is_some();
        let key = match imported {
            Some(key) => key,
            None => SigningKey::generate()?,
        };
        let now = OffsetDateTime::now_utc();
        let stored = self.stored(&key, now, now);
        if self.db.insert_first_signing_key(&stored).await.context("storing the first signing key")? {
            if is_import {
                tracing::info!(kid = key.kid(), "imported the DATA_DIR signing key into the database");
            } else {
                tracing::info!(kid = key.kid(), "stored a new signing key in the database");
            }
        }
        Ok(())
    }

    /// Loads the keys that still verify into a ring, reusing the keys `previous` has already opened.
    ///
    /// # Errors
    /// When the database cannot be reached, it holds no key, or a key does not open (another data key, say).
    pub async fn load(&self, previous: Option<&KeyRing>) -> anyhow::Result<KeyRing> {
        let stored = self.db.signing_keys().await.context("reading the signing keys")?;
        let now = OffsetDateTime::now_utc();
        let statuses = schedule(&activations(&stored), self.grace, now);
        let mut ring_keys = Vec::with_capacity(stored.len());
        for row in &stored {
            let retired =
                statuses.iter().any(|status| status.kid == row.kid && status.state == users_crypto::KeyState::Retired);
            if retired {
                continue;
            }
            if row.algorithm != ALGORITHM {
                anyhow::bail!(
                    "signing key {} is stored for {}, which this version does not support",
                    row.kid,
                    row.algorithm
                );
            }
            let key = match previous.and_then(|ring| ring.get(&row.kid)) {
                Some(key) => key,
                None => Arc::new(SigningKey::open(&self.sealer, &row.kid, &row.private_key)?),
            };
            ring_keys.push(RingKey { key, activates_at: row.activates_at });
        }
        KeyRing::new(ring_keys, self.grace).context("the database holds no signing key")
    }

    /// Stores a new key that starts signing [`ACTIVATION_DELAY`] from now, after making sure a first key exists
    /// (so a `DATA_DIR` key is imported before it is superseded) and that the stored keys open with this sealer.
    ///
    /// # Errors
    /// When the database cannot be reached, the key cannot be generated, or the stored keys do not open here.
    pub async fn rotate(&self) -> anyhow::Result<RotatedKey> {
        self.ensure_first().await?;
        // Run with another data key than the instances' (or none), `keys rotate` would store a key they cannot
        // open: every instance's reload would fail from then on, keeping the old key for good, and no new instance
        // could start. The stored keys opening here is the sign that this is the instances' data key.
        self.load(None).await.context(
            "the stored signing keys do not open with this DATA_ENCRYPTION_KEY_FILE; rotate with the one the \
             instances use",
        )?;
        let key = SigningKey::generate()?;
        let now = OffsetDateTime::now_utc();
        let activates_at = now + ACTIVATION_DELAY;
        self.db
            .insert_signing_key(&self.stored(&key, now, activates_at))
            .await
            .context("storing the new signing key")?;
        tracing::info!(kid = key.kid(), %activates_at, "stored a new signing key");
        Ok(RotatedKey { kid: key.kid().to_owned(), activates_at })
    }

    /// Every stored key with its state now, in activation order. Nothing is decrypted.
    ///
    /// # Errors
    /// When the database cannot be reached.
    pub async fn list(&self) -> anyhow::Result<Vec<ListedKey>> {
        let stored = self.db.signing_keys().await.context("reading the signing keys")?;
        let statuses = schedule(&activations(&stored), self.grace, OffsetDateTime::now_utc());
        Ok(statuses
            .into_iter()
            .filter_map(|status| {
                let row = stored.iter().find(|row| row.kid == status.kid)?;
                Some(ListedKey { created_at: row.created_at, status })
            })
            .collect())
    }

    fn stored(&self, key: &SigningKey, created_at: OffsetDateTime, activates_at: OffsetDateTime) -> StoredSigningKey {
        StoredSigningKey {
            kid: key.kid().to_owned(),
            algorithm: ALGORITHM.to_owned(),
            private_key: key.seal(&self.sealer),
            created_at,
            activates_at,
        }
    }
}

fn activations(stored: &[StoredSigningKey]) -> Vec<(String, OffsetDateTime)> {
    stored.iter().map(|row| (row.kid.clone(), row.activates_at)).collect()
}

/// The background task that reloads the keys into the codec every [`RELOAD_PERIOD`].
pub struct KeyReloader {
    task: JoinHandle<()>,
}

impl KeyReloader {
    /// Starts reloading `keys` into `codec`. A failed reload keeps the last good ring and logs a warning; the next
    /// period tries again.
    #[must_use]
    pub fn start(keys: SharedKeys, codec: JwtCodec) -> Self {
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(RELOAD_PERIOD);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate, and the codec was just loaded.
            ticks.tick().await;
            loop {
                ticks.tick().await;
                reload(&keys, &codec).await;
            }
        });
        Self { task }
    }

    /// Stops the task and waits for it. A reload in flight is cut off: it has nothing to lose, and once the HTTP
    /// server has stopped its database connection may be gone.
    pub async fn stop(self) {
        self.task.abort();
        if let Err(error) = self.task.await
            && !error.is_cancelled()
        {
            tracing::warn!(%error, "the signing key reloader ended abnormally");
        }
    }
}

async fn reload(keys: &SharedKeys, codec: &JwtCodec) {
    let previous = codec.ring();
    match keys.load(Some(&previous)).await {
        Ok(ring) => {
            let now = OffsetDateTime::now_utc();
            let (before, after) = (previous.signing_key(now).kid().to_owned(), ring.signing_key(now).kid().to_owned());
            codec.replace_ring(ring);
            if before != after {
                tracing::info!(kid = %after, "signing with a new key");
            }
        }
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "reloading the signing keys failed; keeping the last good set");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use users_postgres::PgConfig;
    use users_testkit::TestDatabase;

    use super::*;

    async fn shared_keys(database: &TestDatabase, data_dir: &std::path::Path) -> SharedKeys {
        let config = PgConfig { url: database.url(), ..PgConfig::default() };
        let db = PgRepository::connect(&config).await.unwrap();
        SharedKeys::new(db, Sealer::new(None), time::Duration::minutes(15), data_dir.to_owned())
    }

    #[tokio::test]
    async fn a_failed_reload_keeps_the_last_good_ring_and_the_next_good_one_replaces_it() {
        let database = TestDatabase::create().await;
        let data_dir = tempfile::tempdir().unwrap();
        let keys = shared_keys(&database, data_dir.path()).await;
        keys.ensure_first().await.unwrap();
        let codec = JwtCodec::with_ring(keys.load(None).await.unwrap(), "issuer".to_owned(), "audience".to_owned());
        let first = codec.ring();
        let first_kid = codec.key_id();

        // A row that cannot be opened (sealed with a data key this instance does not have), newer than the first.
        database
            .execute(
                "INSERT INTO signing_keys (kid, algorithm, private_key, created_at, activates_at) \
                 VALUES ('unopenable', 'ES256', '\\x01000102030405060708090a0b0c0d0e0f', now(), now())",
            )
            .await;
        reload(&keys, &codec).await;
        assert!(Arc::ptr_eq(&codec.ring(), &first), "the last good ring stays");
        assert_eq!(codec.key_id(), first_kid);

        database.execute("DELETE FROM signing_keys WHERE kid = 'unopenable'").await;
        let rotated = keys.rotate().await.unwrap();
        reload(&keys, &codec).await;
        let ring = codec.ring();
        assert!(!Arc::ptr_eq(&ring, &first), "a good reload replaces the ring");
        assert!(ring.get(&first_kid).is_some_and(|key| Arc::ptr_eq(&key, &first.get(&first_kid).unwrap())), "reused");
        assert_eq!(codec.key_id(), first_kid, "the new key waits for its activation");
        let kids: Vec<String> = codec.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|jwk| jwk["kid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kids, [first_kid.clone(), rotated.kid.clone()], "but is published at once");
        assert_eq!(ring.signing_key(rotated.activates_at).kid(), rotated.kid);
    }

    #[tokio::test]
    async fn a_rotation_under_another_data_key_or_none_is_refused_and_stores_nothing() {
        let database = TestDatabase::create().await;
        let data_dir = tempfile::tempdir().unwrap();
        let config = PgConfig { url: database.url(), ..PgConfig::default() };
        let db = PgRepository::connect(&config).await.unwrap();
        let data_key = |byte: u8| {
            use base64::Engine as _;
            let text = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
            Some(users_crypto::DataKey::from_base64(&text).unwrap())
        };
        let with = |key| {
            SharedKeys::new(db.clone(), Sealer::new(key), time::Duration::minutes(15), data_dir.path().to_owned())
        };
        let instances = with(data_key(1));
        instances.ensure_first().await.unwrap();

        for (name, operator) in [("another data key", with(data_key(2))), ("no data key", with(None))] {
            let error = format!("{:#}", operator.rotate().await.unwrap_err());
            assert!(error.contains("DATA_ENCRYPTION_KEY_FILE"), "{name}: {error}");
            assert_eq!(instances.list().await.unwrap().len(), 1, "{name}: nothing was stored");
        }
        let rotated = instances.rotate().await.unwrap();
        let ring = instances.load(None).await.unwrap();
        assert!(ring.get(&rotated.kid).is_some(), "with the instances' data key the rotation goes through");
    }

    #[tokio::test]
    async fn the_first_key_is_the_one_an_earlier_version_left_under_data_dir() {
        let database = TestDatabase::create().await;
        let data_dir = tempfile::tempdir().unwrap();
        let earlier = SigningKey::generate().unwrap();
        let pem = earlier.seal(&Sealer::new(None));
        // Sealed without a key, a value is a format byte followed by the secret: here the PEM.
        std::fs::write(data_dir.path().join("jwt-es256.pem"), &pem[1..]).unwrap();
        let keys = shared_keys(&database, data_dir.path()).await;
        keys.ensure_first().await.unwrap();
        keys.ensure_first().await.unwrap();
        let listed = keys.list().await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].status.kid, earlier.kid());
        assert_eq!(listed[0].status.state, users_crypto::KeyState::Current);
    }
}
