//! The pure domain of user-management.
//!
//! It owns the user model (built only from parsed newtypes), the roles and their permission matrix, sessions and
//! the tokens that stand for them, profile pictures, the mails, and the [`ports`] through which storage and the
//! other outside services are reached. [`Service`] is the entry point: one method per use case, generic over one
//! bundle of adapters ([`ports::Ports`]). Nothing here performs I/O; the adapters in the other crates do.
//!
//! The modules are layered, each using only those above it:
//! - the model: [`user`], [`permissions`], [`session`], [`audit`] (the events of the trail);
//! - [`ports`]: what crosses the boundary, and the traits adapters implement;
//! - [`mail`] (templates and the outbox dispatcher), [`config`], and the in-process attempt gate;
//! - [`service`]: the [`Service`] itself;
//! - the features, each a set of [`Service`] methods with their own inputs and errors: [`sessions`] (login,
//!   refresh, authentication), [`accounts`] (registration, verification, passwords, one's own profile),
//!   [`admin`] (user administration), [`second_factor`] (TOTP and recovery codes, the second step of a login),
//!   [`pictures`] and [`trail`] (reading the audit trail).

#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod accounts;
pub mod admin;
pub mod audit;
pub mod config;
pub mod mail;
pub mod permissions;
pub mod pictures;
pub mod ports;
pub mod second_factor;
pub mod service;
pub mod session;
pub mod sessions;
mod throttle;
pub mod trail;
pub mod user;

pub use config::ServiceConfig;
pub use permissions::{Action, Denied, Role};
pub use service::Service;
pub use session::{AccessClaims, RefreshToken, Session, SessionId};
pub use user::{
    Bio, EmailAddress, NewUser, Nickname, Password, PasswordHash, PasswordPolicy, PersonName, ProfileUrl,
    ProfileUrlKind, User, UserId,
};
