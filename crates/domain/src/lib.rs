//! The pure domain of user-management.
//!
//! It owns the user model (built only from parsed newtypes), the roles and their permission matrix, sessions and
//! the tokens that stand for them, and the ports through which the outside world is reached: the user repository,
//! the password hasher, the access-token codec, the clock, picture storage and the mailer. [`Service`] is the entry
//! point: handlers call it, adapters plug into it. Nothing here performs I/O; the adapters in the other crates do.

pub mod account_service;
pub mod accounts;
pub mod admin;
pub mod admin_service;
pub mod mail;
pub mod outbox;
pub mod permissions;
pub mod picture_service;
pub mod pictures;
pub mod ports;
pub mod service;
pub mod session;
mod throttle;
pub mod user;

pub use permissions::{Action, Denied, Role};
pub use service::{Service, ServiceConfig};
pub use session::{AccessClaims, RefreshToken, Session, SessionId};
pub use user::{
    Bio, EmailAddress, NewUser, Nickname, Password, PasswordHash, PasswordPolicy, PersonName, ProfileUrl,
    ProfileUrlKind, User, UserId,
};
