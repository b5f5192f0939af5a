//! The HTTP edge of user-management, usable as a library to embed the service.
//!
//! [`config::Config`] reads the environment, [`startup::Application`] wires the adapters into the domain service
//! and serves it with actix-web; handlers live in `routes`, errors in [`error`], OpenAPI in [`openapi`].

pub mod background;
pub mod config;
pub mod dto;
pub mod edge;
pub mod error;
pub mod housekeeping;
pub mod mailer;
pub mod openapi;
pub mod pages;
pub mod picture_mover;
pub mod rate_limit;
pub mod routes;
pub mod signing_keys;
pub mod startup;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod webhooks;
