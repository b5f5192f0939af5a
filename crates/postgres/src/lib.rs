//! The Postgres adapter of user-management.
//!
//! [`PgRepository`], one struct around deadpool pools of diesel-async connections, implements every storage port
//! of the domain: [`UserStore`](users_domain::ports::UserStore), [`SessionStore`](users_domain::ports::SessionStore),
//! [`EmailTokenStore`](users_domain::ports::EmailTokenStore), [`LoginThrottle`](users_domain::ports::LoginThrottle),
//! [`MailOutbox`](users_domain::ports::MailOutbox), [`AccountRequests`](users_domain::ports::AccountRequests),
//! [`SecondFactorStore`](users_domain::ports::SecondFactorStore) and
//! [`PictureRecords`](users_domain::ports::PictureRecords), one module per port, and the edge's
//! [`RequestCounter`](users_domain::ports::RequestCounter) (per-address rate limits shared by every instance).
//! [`PgRepository::purge`] is housekeeping: deleting what nothing needs any more, one instance at a time. Outside
//! the domain's ports, it keeps the signing keys of access tokens ([`StoredSigningKey`]), so that every instance on
//! one database signs and verifies with the same keys. It also owns the embedded migrations of `migrations/`
//! ([`run_migrations`]). Every connection, the pools' and the migrations', honours the connection string's `sslmode`
//! and `sslrootcert` with a rustls connector (`tls`).
//!
//! [`connection_pool`] hands out the main pool itself, built as [`PgRepository`] builds it, for the bench's ceiling
//! (`xtask/baseline`), which must read over the very same connections; the service never uses it.
//!
//! The adapter decides nothing. The domain works out every value of a change (roles, which tokens die, which
//! sessions end, which mails go out) and the preconditions it decided under; the adapter stores and reads rows,
//! applies a multi-row change in one transaction under the row locks that make it atomic, and reports which stated
//! precondition failed. Rows, the schema and driver errors stay inside: the ports only ever see domain types and
//! [`PortError`](users_domain::ports::PortError)s.

mod audit;
mod email_tokens;
mod errors;
mod housekeeping;
mod outbox;
mod pictures;
mod placement;
mod prebuilt;
mod rate_limits;
mod repository;
mod requests;
mod reused;
mod rows;
mod schema;
mod second_factor;
mod sessions;
mod setup;
mod signing_keys;
mod throttle;
mod tls;
mod users;
mod webhooks;

pub use housekeeping::{
    DEFAULT_AUDIT_RETENTION, DEFAULT_BATCH_SIZE, HOUSEKEEPING_LOCK, PurgeOutcome, PurgeSettings, Purged,
};
pub use placement::ConnectionPlacement;
pub use repository::{ConnectionPool, PgRepository, connection_pool};
pub use setup::{PgConfig, PgSetupError, run_migrations};
pub use signing_keys::StoredSigningKey;
#[doc(hidden)]
pub use users::{ListingsOnConnection, PreparedListing};
pub use webhooks::{ClaimedDelivery, DeliveryOutcome};
