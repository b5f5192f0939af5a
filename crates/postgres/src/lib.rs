//! The Postgres adapter of user-management.
//!
//! It implements the domain's [`UserRepository`](users_domain::ports::UserRepository),
//! [`MailOutbox`](users_domain::ports::MailOutbox) and [`PictureRepository`](users_domain::pictures::PictureRepository)
//! ports with diesel's query builder on diesel-async connections from a deadpool pool ([`PgRepository`]), and owns
//! the embedded migrations of `migrations/` ([`run_migrations`]). Every connection, the pool's and the
//! migrations', honours the connection string's `sslmode` and `sslrootcert` with a rustls connector (`tls`). Rows, the schema and driver errors stay inside: the port only ever sees
//! domain types and [`PortError`](users_domain::ports::PortError)s.

mod accounts;
mod admin;
mod backoff;
mod errors;
mod outbox;
mod pictures;
mod repository;
mod requests;
mod rotation;
mod rows;
mod schema;
mod setup;
mod tls;

pub use repository::PgRepository;
pub use setup::{PgConfig, PgSetupError, run_migrations};
