//! The signing keys table: the first key stored once however many instances race to create it, rotation and
//! listing, and private keys sealed at rest when a data key is configured.

use base64::Engine as _;
use time::Duration;
use users_crypto::{DataKey, KeyError, Sealer, SigningKey};
use users_domain::ports::PortError;
use users_postgres::{PgRepository, StoredSigningKey};
use users_testkit::TestDatabase;

use crate::support::{now, repository, repository_with_connections, rows, text};

fn data_key(byte: u8) -> DataKey {
    DataKey::from_base64(&base64::engine::general_purpose::STANDARD.encode([byte; 32])).unwrap()
}

/// A new key, sealed with `sealer`, activating at `activates_at`.
fn stored(sealer: &Sealer, activates_at: time::OffsetDateTime) -> (SigningKey, StoredSigningKey) {
    let key = SigningKey::generate().unwrap();
    let row = StoredSigningKey {
        kid: key.kid().to_owned(),
        algorithm: "ES256".to_owned(),
        private_key: key.seal(sealer),
        created_at: now(),
        activates_at,
    };
    (key, row)
}

#[tokio::test]
async fn the_first_key_is_stored_exactly_once_when_instances_race_to_create_it() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 8).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let repository = repository.clone();
            tokio::spawn(async move {
                let (_, row) = stored(&Sealer::new(None), now());
                let won = repository.insert_first_signing_key(&row).await.unwrap();
                (won, row.kid)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (won, kid) = task.await.unwrap();
        if won {
            winners.push(kid);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one proposal wins: {winners:?}");
    let keys = repository.signing_keys().await.unwrap();
    assert_eq!(keys.iter().map(|key| key.kid.clone()).collect::<Vec<_>>(), winners);

    // Once a key exists, a late starter stores nothing.
    let (_, late) = stored(&Sealer::new(None), now());
    assert!(!repository.insert_first_signing_key(&late).await.unwrap());
    assert_eq!(rows(&database, "signing_keys").await, 1);
}

#[tokio::test]
async fn rotated_keys_are_listed_in_activation_order_as_stored() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let sealer = Sealer::new(None);
    let start = now();
    let (_, first) = stored(&sealer, start - Duration::hours(2));
    assert!(repository.insert_first_signing_key(&first).await.unwrap());
    let (_, next) = stored(&sealer, start + Duration::seconds(15));
    repository.insert_signing_key(&next).await.unwrap();
    // Stored out of order: listing orders by activation, not by insertion.
    let (_, between) = stored(&sealer, start - Duration::hours(1));
    repository.insert_signing_key(&between).await.unwrap();

    let listed = repository.signing_keys().await.unwrap();
    assert_eq!(listed, [first.clone(), between, next], "every column reads back as stored");

    let duplicate = repository.insert_signing_key(&first).await.unwrap_err();
    assert!(matches!(duplicate, PortError::Unknown(_)), "{duplicate:?}");
    assert_eq!(rows(&database, "signing_keys").await, 3);
}

/// The stored private key of the only row, as Postgres' escape encoding (printable bytes as they are).
async fn stored_bytes(database: &TestDatabase) -> String {
    text(database, "SELECT encode(private_key, 'escape') AS value FROM signing_keys").await.unwrap()
}

async fn first_row(repository: &PgRepository) -> StoredSigningKey {
    repository.signing_keys().await.unwrap().remove(0)
}

#[tokio::test]
async fn private_keys_are_sealed_at_rest_when_a_data_key_is_configured() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let sealer = Sealer::new(Some(data_key(1)));
    let (key, row) = stored(&sealer, now());
    assert!(repository.insert_first_signing_key(&row).await.unwrap());

    let at_rest = stored_bytes(&database).await;
    assert!(!at_rest.contains("PRIVATE KEY"), "the PEM must not be stored: {at_rest}");
    let row = first_row(&repository).await;
    assert_eq!(SigningKey::open(&sealer, &row.kid, &row.private_key).unwrap().kid(), key.kid());

    let wrong = SigningKey::open(&Sealer::new(Some(data_key(2))), &row.kid, &row.private_key).unwrap_err();
    assert!(matches!(wrong, KeyError::StoredKeySealed { .. }), "{wrong:?}");
    let message = wrong.to_string();
    assert!(message.contains(&row.kid), "{message}");
    assert!(message.contains("DATA_ENCRYPTION_KEY_FILE") && message.contains("cannot be decrypted"), "{message}");
    let missing = SigningKey::open(&Sealer::new(None), &row.kid, &row.private_key).unwrap_err();
    assert!(missing.to_string().contains("no data key is configured"), "{missing}");
}

#[tokio::test]
async fn without_a_data_key_the_private_key_is_stored_as_it_is() {
    // The contrast to the test above: the escape check does find a PEM when nothing encrypts it.
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (key, row) = stored(&Sealer::new(None), now());
    assert!(repository.insert_first_signing_key(&row).await.unwrap());
    assert!(stored_bytes(&database).await.contains("-----BEGIN PRIVATE KEY-----"));
    let row = first_row(&repository).await;
    assert_eq!(SigningKey::open(&Sealer::new(Some(data_key(3))), &row.kid, &row.private_key).unwrap().kid(), key.kid());
}
