//! The signing keys of access tokens, shared by every instance on one database: the `signing_keys` table.
//!
//! The adapter stores and lists keys; it neither generates, seals nor schedules them (the crypto adapter does, and
//! the service wires the two together). Creating the first key is the one step with a race to settle: instances
//! starting together each propose a key, and a table lock taken inside the transaction makes them check and insert
//! one after the other, so exactly one proposal is stored and the others learn they lost.

use diesel::prelude::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
use time::OffsetDateTime;
use users_domain::ports::PortError;

use crate::errors::{TxError, query_error};
use crate::repository::PgRepository;
use crate::schema::signing_keys;

/// A signing key as stored. The private key is opaque here: sealed by the caller, and given back as it was stored.
#[derive(Clone, PartialEq, Eq, diesel::Queryable, diesel::Selectable, diesel::Insertable)]
#[diesel(table_name = signing_keys)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct StoredSigningKey {
    /// The key id (`kid`).
    pub kid: String,
    /// The JWS algorithm, `ES256`.
    pub algorithm: String,
    /// The sealed private key.
    pub private_key: Vec<u8>,
    /// When the key was stored.
    pub created_at: OffsetDateTime,
    /// When it starts signing.
    pub activates_at: OffsetDateTime,
}

impl std::fmt::Debug for StoredSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("created_at", &self.created_at)
            .field("activates_at", &self.activates_at)
            .finish_non_exhaustive()
    }
}

impl PgRepository {
    /// Every stored signing key, in activation order (ties by kid).
    ///
    /// # Errors
    /// [`PortError::Unavailable`] when Postgres cannot be reached, [`PortError::Unknown`] otherwise.
    pub async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, PortError> {
        let mut connection = self.connection().await?;
        let listed = signing_keys::table
            .order((signing_keys::activates_at.asc(), signing_keys::kid.asc()))
            .load::<StoredSigningKey>(&mut connection)
            .await;
        listed.map_err(|error| query_error(error, &mut connection, "listing the signing keys"))
    }

    /// Stores `key` if the table holds no key yet, and says whether it did. Of several callers racing, exactly one
    /// stores its key: each waits for the table lock of the one before and then finds a key.
    ///
    /// # Errors
    /// [`PortError::Unavailable`] when Postgres cannot be reached, [`PortError::Unknown`] otherwise.
    pub async fn insert_first_signing_key(&self, key: &StoredSigningKey) -> Result<bool, PortError> {
        let mut connection = self.connection().await?;
        let inserted = connection
            .transaction::<_, TxError<PortError>, _>(async |connection| {
                // EXCLUSIVE lets readers (the other instances' reloads) through and holds back every other writer
                // until this transaction ends, so the check below cannot go stale before the insert.
                diesel::sql_query("LOCK TABLE signing_keys IN EXCLUSIVE MODE").execute(connection).await?;
                let existing = signing_keys::table.count().get_result::<i64>(connection).await?;
                if existing > 0 {
                    return Ok(false);
                }
                diesel::insert_into(signing_keys::table).values(key).execute(connection).await?;
                Ok(true)
            })
            .await;
        inserted.map_err(|error| error.into_port(&mut connection, "storing the first signing key"))
    }

    /// Stores another signing key (a rotation); it starts signing at its `activates_at`.
    ///
    /// # Errors
    /// [`PortError::Unavailable`] when Postgres cannot be reached, [`PortError::Unknown`] otherwise (a key with
    /// that kid is already stored, say).
    pub async fn insert_signing_key(&self, key: &StoredSigningKey) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        let inserted = diesel::insert_into(signing_keys::table).values(key).execute(&mut connection).await;
        inserted.map(drop).map_err(|error| query_error(error, &mut connection, "storing a signing key"))
    }
}
