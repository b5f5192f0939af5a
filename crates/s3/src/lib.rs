//! The picture-storage adapters of user-management: two implementations of the domain's
//! [`PictureStore`](users_domain::ports::PictureStore) port.
//!
//! [`S3PictureStore`] keeps pictures in an S3-compatible bucket (MinIO, Garage, AWS) through rust-s3, for
//! `STORAGE_BACKEND=s3`; [`FsPictureStore`] keeps them as files under `DATA_DIR/pictures`, the embedded default.
//! Both refuse unsafe keys before any I/O, with the same rules (see `key`), and both translate their driver's
//! errors into [`PortError`](users_domain::ports::PortError)s: rust-s3 and `std::io` types never cross the port.
//! Each also lists keys by prefix (an inherent `list`, not part of the port) for tests and a later orphan sweep.

mod fs_store;
mod key;
mod s3_store;
#[cfg(test)]
mod store_tests;

pub use fs_store::FsPictureStore;
pub use s3_store::{DEFAULT_TIMEOUT, S3Config, S3PictureStore, S3SetupError};
