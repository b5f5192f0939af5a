//! Ports: the traits through which the domain reaches storage and the other outside services.
//!
//! Each port is shaped around one kind of storage (users, sessions, email tokens, the login throttle, the outboxes,
//! second factors, picture records and objects) or one capability (hashing, signing, the clock, image processing). Ports store and
//! fetch; they never decide. Where a use case writes several rows at once, the domain works out the whole change
//! first ([`UserUpdate`], [`NewAccount`]) and the adapter applies it atomically, checking only the preconditions the
//! domain stated ([`Guard`]) and reporting which one failed.
//!
//! [`Ports`] bundles one adapter of each port behind associated types, so the services stay generic over a single
//! parameter and every call is dispatched statically. Driver errors never cross a port: adapters translate them
//! into [`PortError`] or the error of the operation.

mod audit;
mod crypto;
mod email_tokens;
mod outbox;
mod pictures;
mod rate_limits;
mod second_factor;
mod sessions;
mod throttle;
mod users;

pub use audit::AuditTrail;
pub use crypto::{Clock, InvalidToken, PasswordHasher, SystemClock, TokenCodec};
pub use email_tokens::{EmailTokenPurpose, EmailTokenRecord, EmailTokenStore, NewEmailToken};
pub use outbox::{
    AccountRequest, AccountRequestKind, AccountRequests, MailOutbox, Mailer, OutboxMessage, OutgoingMail,
};
pub use pictures::{
    EncodedImage, ImageError, ImageProcessor, MAX_DIMENSION, MAX_PIXELS, MEDIUM_EDGE, MIN_DIMENSION, ORIGINAL_EDGE,
    PictureRecords, PictureSize, PictureStore, PictureVariant, PictureWriteError, ProcessedImage, StoredObject,
    StoredPicture, THUMB_EDGE,
};
pub use rate_limits::{RequestCounter, WindowCount};
pub use second_factor::{
    MfaChallenge, NewMfaChallenge, NewTotpSecret, OneTimePasswords, SealedSecret, SecondFactorAction,
    SecondFactorChange, SecondFactorError, SecondFactorProof, SecondFactorStore, TotpRecord,
};
pub use sessions::{RefreshRecord, Rotation, SessionEnd, SessionStore};
pub use throttle::{BackoffPolicy, FailureCount, LoginThrottle};
pub use users::{
    Guard, InsertUserError, NewAccount, ProfileChanges, UpdateError, UserCursor, UserFields, UserQuery, UserSort,
    UserStore, UserUpdate,
};

#[cfg(any(test, feature = "mock"))]
pub use audit::MockAuditTrail;
#[cfg(any(test, feature = "mock"))]
pub use crypto::{MockClock, MockPasswordHasher, MockTokenCodec};
#[cfg(any(test, feature = "mock"))]
pub use email_tokens::MockEmailTokenStore;
#[cfg(any(test, feature = "mock"))]
pub use outbox::{MockAccountRequests, MockMailOutbox, MockMailer};
#[cfg(any(test, feature = "mock"))]
pub use pictures::{MockImageProcessor, MockPictureRecords, MockPictureStore};
#[cfg(any(test, feature = "mock"))]
pub use rate_limits::MockRequestCounter;
#[cfg(any(test, feature = "mock"))]
pub use second_factor::{MockOneTimePasswords, MockSecondFactorStore};
#[cfg(any(test, feature = "mock"))]
pub use sessions::MockSessionStore;
#[cfg(any(test, feature = "mock"))]
pub use throttle::MockLoginThrottle;
#[cfg(any(test, feature = "mock"))]
pub use users::MockUserStore;

/// A failure of an infrastructure dependency, opaque to the domain except for one distinction: whether the
/// dependency is unreachable (answered as 503, retry later) or failed in some other way.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The dependency cannot be reached right now (connection refused, pool timeout, shutting down).
    #[error("dependency unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// Anything else: a bug, a constraint the domain did not expect, a corrupt row.
    #[error(transparent)]
    Unknown(anyhow::Error),
}

/// One adapter of every port, bundled so that a service is generic over a single parameter.
///
/// An adapter set is usually one struct holding a connection pool (which implements several storage ports at
/// once) beside the hasher, the codec and the picture store; each accessor hands out a reference to the part that
/// implements that port.
pub trait Ports: Send + Sync + 'static {
    /// Users and the multi-row changes around them.
    type Users: UserStore;
    /// Sessions and their refresh-token families.
    type Sessions: SessionStore;
    /// Single-use email tokens, read side.
    type EmailTokens: EmailTokenStore;
    /// Failure counts of the login backoff.
    type Throttle: LoginThrottle;
    /// The mail outbox.
    type Outbox: MailOutbox;
    /// Queued enumeration-prone requests (forgotten password, resend).
    type Requests: AccountRequests;
    /// Second factors and logins waiting for their second step.
    type SecondFactors: SecondFactorStore;
    /// Picture records.
    type Pictures: PictureRecords;
    /// Per-client-address request counts of the edge's rate limits.
    type RequestCounts: RequestCounter;
    /// The audit trail.
    type Audit: AuditTrail;
    /// Picture objects.
    type Objects: PictureStore;
    /// Upload processing.
    type Images: ImageProcessor;
    /// Password hashing.
    type Hasher: PasswordHasher;
    /// Access-token signing.
    type Tokens: TokenCodec;
    /// One-time passwords of the second factor.
    type Otp: OneTimePasswords;
    /// The time.
    type Clock: Clock;

    /// The user store.
    fn users(&self) -> &Self::Users;
    /// The session store.
    fn sessions(&self) -> &Self::Sessions;
    /// The email-token store.
    fn email_tokens(&self) -> &Self::EmailTokens;
    /// The login throttle.
    fn throttle(&self) -> &Self::Throttle;
    /// The mail outbox.
    fn outbox(&self) -> &Self::Outbox;
    /// The request queue.
    fn requests(&self) -> &Self::Requests;
    /// The second-factor store.
    fn second_factors(&self) -> &Self::SecondFactors;
    /// The picture records.
    fn pictures(&self) -> &Self::Pictures;
    /// The request counts.
    fn request_counts(&self) -> &Self::RequestCounts;
    /// The audit trail.
    fn audit(&self) -> &Self::Audit;
    /// The picture objects.
    fn objects(&self) -> &Self::Objects;
    /// The image processor.
    fn images(&self) -> &Self::Images;
    /// The password hasher.
    fn hasher(&self) -> &Self::Hasher;
    /// The token codec.
    fn tokens(&self) -> &Self::Tokens;
    /// The one-time-password algorithm.
    fn otp(&self) -> &Self::Otp;
    /// The clock.
    fn clock(&self) -> &Self::Clock;
}
