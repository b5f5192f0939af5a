//! In-memory adapters of every port of user-management.
//!
//! [`MemoryStore`] implements every storage port (users, sessions, email tokens, the login throttle, the mail
//! outbox, the request queue, second factors, picture records and the per-address request counts of the rate
//! limits, which a single process embedding the service can keep in memory) over mutex-guarded state; [`MemoryObjects`]
//! keeps picture objects in a map; [`ManualClock`] is a clock a test moves by hand. [`MemoryPorts`] bundles them
//! with the real CPU-only adapters (argon2id hashing, ES256 tokens with a key that lives in memory, TOTP with
//! secrets stored unencrypted, the image pipeline) into a complete [`Ports`] set, so the whole domain runs with no
//! server:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! use users_domain::{Service, ServiceConfig};
//! use users_memory::MemoryPorts;
//!
//! let ports = MemoryPorts::new()?;
//! let service = Service::new(ports.clone(), ServiceConfig::default());
//! assert!(service.database_ready().await.is_ok());
//! assert!(ports.store().outbox_mails().is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! Each change is applied to a copy of the state and swapped in only when it succeeds, so a change that fails
//! leaves nothing behind, as a database transaction would. The same conformance suite runs against these adapters
//! and against Postgres (`users_testkit::conformance`). Limits: one process, nothing persisted, and no lock is
//! held across an `await`, so concurrent changes are serialised change by change.

#![deny(missing_docs)]

mod clock;
mod objects;
mod store;

pub use clock::ManualClock;
pub use objects::MemoryObjects;
pub use store::{MailState, MemoryStore, QueuedMail};
use users_crypto::{Argon2Hasher, HasherConfig, JwtCodec, TotpCodec};
use users_domain::ports::Ports;
use users_images::ImagePipeline;

/// A complete adapter set with no server: the memory stores and clock, with the real hasher, token codec, TOTP codec
/// (without a data key) and image pipeline.
#[derive(Debug, Clone)]
pub struct MemoryPorts {
    store: MemoryStore,
    objects: MemoryObjects,
    clock: ManualClock,
    hasher: Argon2Hasher,
    tokens: JwtCodec,
    otp: TotpCodec,
    images: ImagePipeline,
}

impl MemoryPorts {
    /// A fresh, empty set whose clock follows the system time (and can still be moved ahead).
    ///
    /// # Errors
    /// When the hasher or the signing key cannot be set up.
    pub fn new() -> anyhow::Result<Self> {
        Self::with_clock(ManualClock::starting_now())
    }

    /// A fresh, empty set on `clock` (a frozen one, [`ManualClock::at`], for tests that compare exact times).
    ///
    /// # Errors
    /// When the hasher or the signing key cannot be set up.
    pub fn with_clock(clock: ManualClock) -> anyhow::Result<Self> {
        Ok(Self {
            store: MemoryStore::new(clock.clone()),
            objects: MemoryObjects::default(),
            clock,
            hasher: Argon2Hasher::new(HasherConfig::default())?,
            tokens: JwtCodec::ephemeral("http://localhost:8080", "user-management")?,
            otp: TotpCodec::default(),
            images: ImagePipeline::default(),
        })
    }

    /// The storage adapter, to look at what was stored (mails, sessions) or to simulate an outage.
    #[must_use]
    pub const fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// The picture objects.
    #[must_use]
    pub const fn object_store(&self) -> &MemoryObjects {
        &self.objects
    }

    /// The clock, to move time.
    #[must_use]
    pub const fn manual_clock(&self) -> &ManualClock {
        &self.clock
    }

    /// The token codec (its key set, for checking tokens elsewhere).
    #[must_use]
    pub const fn codec(&self) -> &JwtCodec {
        &self.tokens
    }
}

impl Ports for MemoryPorts {
    type Users = MemoryStore;
    type Sessions = MemoryStore;
    type EmailTokens = MemoryStore;
    type Throttle = MemoryStore;
    type Outbox = MemoryStore;
    type Requests = MemoryStore;
    type SecondFactors = MemoryStore;
    type Pictures = MemoryStore;
    type RequestCounts = MemoryStore;
    type Audit = MemoryStore;
    type Objects = MemoryObjects;
    type Images = ImagePipeline;
    type Hasher = Argon2Hasher;
    type Tokens = JwtCodec;
    type Otp = TotpCodec;
    type Clock = ManualClock;

    fn users(&self) -> &MemoryStore {
        &self.store
    }
    fn sessions(&self) -> &MemoryStore {
        &self.store
    }
    fn email_tokens(&self) -> &MemoryStore {
        &self.store
    }
    fn throttle(&self) -> &MemoryStore {
        &self.store
    }
    fn outbox(&self) -> &MemoryStore {
        &self.store
    }
    fn requests(&self) -> &MemoryStore {
        &self.store
    }
    fn second_factors(&self) -> &MemoryStore {
        &self.store
    }
    fn pictures(&self) -> &MemoryStore {
        &self.store
    }
    fn request_counts(&self) -> &MemoryStore {
        &self.store
    }
    fn audit(&self) -> &MemoryStore {
        &self.store
    }
    fn objects(&self) -> &MemoryObjects {
        &self.objects
    }
    fn images(&self) -> &ImagePipeline {
        &self.images
    }
    fn hasher(&self) -> &Argon2Hasher {
        &self.hasher
    }
    fn tokens(&self) -> &JwtCodec {
        &self.tokens
    }
    fn otp(&self) -> &TotpCodec {
        &self.otp
    }
    fn clock(&self) -> &ManualClock {
        &self.clock
    }
}
