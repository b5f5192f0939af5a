//! A hostile reviewer's attempts on the state that several instances share through the database: the signing key
//! rows, the per-address windows and housekeeping. Each test is one attack; every one here is refused (the
//! defences hold), and the tests keep it that way.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use time::Duration;
use users_crypto::{DataKey, KeyError, KeyRing, RingKey, Sealer, SigningKey};
use users_domain::ports::RequestCounter as _;
use users_postgres::{PgRepository, PurgeOutcome, PurgeSettings, StoredSigningKey};
use users_testkit::TestDatabase;

use crate::support::{count, execute, now, repository, rows};

const WINDOW: Duration = Duration::minutes(1);

fn sealer() -> Sealer {
    Sealer::new(Some(DataKey::from_base64(&base64::engine::general_purpose::STANDARD.encode([7_u8; 32])).unwrap()))
}

/// Stores a new key sealed with `sealer`, signing from `activates_at`, and returns it.
async fn store_key(repository: &PgRepository, sealer: &Sealer, activates_at: time::OffsetDateTime) -> SigningKey {
    let key = SigningKey::generate().unwrap();
    let row = StoredSigningKey {
        kid: key.kid().to_owned(),
        algorithm: "ES256".to_owned(),
        private_key: key.seal(sealer),
        created_at: now(),
        activates_at,
    };
    repository.insert_signing_key(&row).await.unwrap();
    key
}

/// Opens every stored row as the service does, keeping each row's kid with its result.
async fn open_all(repository: &PgRepository, sealer: &Sealer) -> Vec<(String, Result<SigningKey, KeyError>)> {
    let stored = repository.signing_keys().await.unwrap();
    stored.into_iter().map(|row| (row.kid.clone(), SigningKey::open(sealer, &row.kid, &row.private_key))).collect()
}

#[tokio::test]
async fn a_private_key_swapped_between_two_rows_does_not_open_under_either_kid() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let sealer = sealer();
    let first = store_key(&repository, &sealer, now() - Duration::hours(1)).await;
    let second = store_key(&repository, &sealer, now() + Duration::seconds(15)).await;
    // Both ciphertexts are genuine (same data key, same purpose), so the seal alone cannot tell them apart.
    execute(
        &database,
        &format!(
            "UPDATE signing_keys SET private_key = CASE kid \
               WHEN '{a}' THEN (SELECT private_key FROM signing_keys WHERE kid = '{b}') \
               ELSE (SELECT private_key FROM signing_keys WHERE kid = '{a}') END \
             WHERE kid IN ('{a}', '{b}')",
            a = first.kid(),
            b = second.kid()
        ),
    )
    .await;

    let opened = open_all(&repository, &sealer).await;
    assert_eq!(opened.len(), 2);
    for (kid, result) in opened {
        let error = result.unwrap_err();
        assert!(matches!(error, KeyError::StoredKeyInvalid { .. }), "{kid}: {error:?}");
        assert!(error.to_string().contains(&kid), "the message names the row: {error}");
    }
}

#[tokio::test]
async fn a_renamed_kid_or_an_altered_byte_at_rest_does_not_open() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let sealer = sealer();
    let renamed = store_key(&repository, &sealer, now() - Duration::hours(1)).await;
    let altered = store_key(&repository, &sealer, now() - Duration::minutes(1)).await;
    let intact = store_key(&repository, &sealer, now()).await;
    execute(&database, &format!("UPDATE signing_keys SET kid = 'renamed' WHERE kid = '{}'", renamed.kid())).await;
    // Flip one bit of the ciphertext, past the format byte and the nonce.
    execute(
        &database,
        &format!(
            "UPDATE signing_keys SET private_key = set_byte(private_key, 20, get_byte(private_key, 20) # 1) \
             WHERE kid = '{}'",
            altered.kid()
        ),
    )
    .await;

    let opened = open_all(&repository, &sealer).await;
    let outcome = |kid: &str| opened.iter().find(|(stored, _)| stored == kid).map(|(_, result)| result).unwrap();
    assert!(matches!(outcome("renamed"), Err(KeyError::StoredKeyInvalid { .. })), "{:?}", outcome("renamed"));
    assert!(matches!(outcome(altered.kid()), Err(KeyError::StoredKeySealed { .. })), "{:?}", outcome(altered.kid()));
    assert_eq!(outcome(intact.kid()).as_ref().unwrap().kid(), intact.kid(), "an untouched row still opens");
}

#[tokio::test]
async fn the_published_key_set_carries_public_members_only() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let sealer = sealer();
    let start = now();
    store_key(&repository, &sealer, start - Duration::hours(1)).await;
    store_key(&repository, &sealer, start + Duration::seconds(15)).await;
    let ring_keys = repository
        .signing_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|row| RingKey {
            key: Arc::new(SigningKey::open(&sealer, &row.kid, &row.private_key).unwrap()),
            activates_at: row.activates_at,
        })
        .collect();
    let ring = KeyRing::new(ring_keys, Duration::minutes(15)).unwrap();

    let jwks = ring.jwks(start);
    let object = jwks.as_object().unwrap();
    assert_eq!(object.keys().collect::<Vec<_>>(), ["keys"], "nothing beside the keys: {jwks}");
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "the current and the pending key: {jwks}");
    let public: BTreeSet<&str> = ["alg", "crv", "kid", "kty", "use", "x", "y"].into();
    for jwk in keys {
        let members: BTreeSet<&str> = jwk.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(members, public, "exactly the public members (no d, no p/q/dp/dq/qi, no k): {jwk}");
        assert_eq!(jwk["alg"], "ES256");
        assert_eq!(jwk["use"], "sig");
    }
    // Nor does the key's Debug form show more than its kid.
    let key = ring.signing_key(start);
    assert_eq!(format!("{key:?}"), format!("SigningKey {{ kid: {:?}, .. }}", key.kid()));
}

#[tokio::test]
async fn one_address_in_any_textual_form_counts_into_one_window() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let start = now();
    let forms = ["2001:db8::7", "2001:0db8:0000:0000:0000:0000:0000:0007", "2001:DB8:0:0::7", "[2001:db8::7]"];
    let mut hits = Vec::new();
    for (step, form) in forms.iter().enumerate() {
        let address: IpAddr = form.trim_start_matches('[').trim_end_matches(']').parse().unwrap();
        let at = start + Duration::seconds(i64::try_from(step).unwrap());
        hits.push(repository.count_request("login", address, at, WINDOW).await.unwrap().hits);
    }
    assert_eq!(hits, [1, 2, 3, 4], "the address is stored in one canonical form");
    assert_eq!(rows(&database, "rate_limit_windows").await, 1);
}

#[tokio::test]
async fn a_window_still_counting_survives_housekeeping_at_the_shortest_retention() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let address = IpAddr::from([203, 0, 113, 9]);
    let start = now();
    for step in 0..3 {
        repository.count_request("login", address, start + Duration::seconds(step), WINDOW).await.unwrap();
    }
    // The shortest RETENTION configuration accepts, at the last moment of the window.
    let at = start + WINDOW - Duration::seconds(1);
    let outcome = repository.purge(at, PurgeSettings::new(Duration::hours(1))).await.unwrap();
    assert!(matches!(outcome, PurgeOutcome::Done(purged) if purged.rate_limit_windows == 0), "{outcome:?}");

    let counted = repository.count_request("login", address, at, WINDOW).await.unwrap();
    assert_eq!(counted.hits, 4, "the count was not reset by housekeeping");
}

#[tokio::test]
async fn the_windows_of_a_flood_of_addresses_are_bounded_by_housekeeping() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let start = now();
    // An attacker rotating addresses leaves one row per address...
    for last in 0..=199_u8 {
        let address = IpAddr::from([198, 18, 0, last]);
        repository.count_request("register", address, start, WINDOW).await.unwrap();
    }
    assert_eq!(rows(&database, "rate_limit_windows").await, 200);
    // ...and an address coming back reuses its row rather than adding one.
    repository.count_request("register", IpAddr::from([198, 18, 0, 0]), start + WINDOW, WINDOW).await.unwrap();
    assert_eq!(rows(&database, "rate_limit_windows").await, 200);

    let retention = Duration::hours(1);
    let purged = repository.purge(start + retention + WINDOW, PurgeSettings::new(retention)).await.unwrap();
    assert!(matches!(purged, PurgeOutcome::Done(purged) if purged.rate_limit_windows == 199), "{purged:?}");
    assert_eq!(
        count(&database, "SELECT count(*) AS count FROM rate_limit_windows WHERE client = '198.18.0.0'").await,
        1,
        "only the window that came back within the retention stays"
    );
}

#[tokio::test]
async fn a_retention_reaching_before_what_postgres_stores_fails_the_round_and_deletes_nothing() {
    // Why configuration caps RETENTION: such a value parses as a duration, and every round would fail.
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    execute(
        &database,
        "INSERT INTO rate_limit_windows (route, client, window_start, hits) \
         VALUES ('login', '192.0.2.1', now() - interval '30 days', 1)",
    )
    .await;
    let outcome = repository.purge(now(), PurgeSettings::new(Duration::days(3_000_000))).await;
    assert!(outcome.is_err(), "{outcome:?}");
    assert_eq!(rows(&database, "rate_limit_windows").await, 1);
    // The lock went with the failed round's connection: a sane round runs next.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let purged = loop {
        match repository.purge(now(), PurgeSettings::new(Duration::days(7))).await.unwrap() {
            PurgeOutcome::Done(purged) => break purged,
            // The server notices the closed connection a moment after the client drops it.
            PurgeOutcome::Skipped => assert!(std::time::Instant::now() < deadline, "the lock was never released"),
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(purged.rate_limit_windows, 1);
}
