//! The Postgres adapter of user-management.
//!
//! It implements the domain's [`UserRepository`](users_domain::ports::UserRepository) port with diesel's query
//! builder on diesel-async connections from a deadpool pool ([`PgRepository`]), and owns the embedded migrations
//! of `migrations/` ([`run_migrations`]). Rows, the schema and driver errors stay inside: the port only ever sees
//! domain types and [`PortError`](users_domain::ports::PortError)s.

mod errors;
mod repository;
mod rows;
mod schema;
mod setup;

pub use repository::PgRepository;
pub use setup::{PgConfig, PgSetupError, run_migrations};
