//! What the feature test files share: a world of the service over the in-memory adapters, and the helpers of
//! `rules.rs` (register, read the link from the outbox, verify, log in, principals, admins).
//!
//! The adapters are `users-memory`'s, with two thin wrappers so that a test can see work that leaves no row behind:
//! the password hasher counts its hashes and checks (how else to tell that an unknown address still costs a check,
//! or that a blocked one costs none), and the picture store can fail one chosen write, or switch the database off
//! right after one, to reach the clean-up paths of an upload, or hold a read so a move can happen during it.

#![allow(dead_code)]

pub mod mfa;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use time::Duration;
use tokio::sync::oneshot;
use users_domain::accounts::Registration;
use users_domain::admin::AdminCreate;
use users_domain::ports::{
    BackoffPolicy, FailureCount, LoginThrottle as _, PasswordHasher, PictureStore, PortError, Ports, StoredObject,
    UserStore as _,
};
use users_domain::session::TokenPair;
use users_domain::sessions::{ClientInfo, LoginError, Principal};
use users_domain::user::{PasswordCandidate, PasswordError};
use users_domain::{EmailAddress, Password, PasswordHash, Role, Service, ServiceConfig, User};
use users_memory::{ManualClock, MemoryObjects, MemoryPorts, MemoryStore, QueuedMail};

pub const PASSWORD: &str = "violet-kettle-orbit-97";
pub const NEW_PASSWORD: &str = "amber-lantern-quartz-42";
pub const OTHER_PASSWORD: &str = "copper-meadow-falcon-58";
pub const PICTURE: &[u8] = include_bytes!("../fixtures/32x32.png");

/// How often the hasher was asked to work.
#[derive(Debug, Clone, Default)]
pub struct HasherCalls {
    hashes: Arc<AtomicUsize>,
    verifies: Arc<AtomicUsize>,
    dummy_verifies: Arc<AtomicUsize>,
}

impl HasherCalls {
    /// New hashes computed.
    pub fn hashes(&self) -> usize {
        self.hashes.load(Ordering::SeqCst)
    }

    /// Password checks, against a stored hash or the dummy.
    pub fn verifies(&self) -> usize {
        self.verifies.load(Ordering::SeqCst)
    }

    /// Password checks against the dummy hash (no account).
    pub fn dummy_verifies(&self) -> usize {
        self.dummy_verifies.load(Ordering::SeqCst)
    }
}

/// The memory set's argon2 hasher, counting.
#[derive(Debug, Clone)]
pub struct CountingHasher {
    memory: MemoryPorts,
    calls: HasherCalls,
}

impl PasswordHasher for CountingHasher {
    async fn hash(&self, password: Password) -> Result<PasswordHash, PortError> {
        self.calls.hashes.fetch_add(1, Ordering::SeqCst);
        self.memory.hasher().hash(password).await
    }

    async fn judge(
        &self,
        candidate: PasswordCandidate,
        clues: Vec<String>,
    ) -> Result<Result<Password, PasswordError>, PortError> {
        self.memory.hasher().judge(candidate, clues).await
    }

    fn unusable(&self) -> PasswordHash {
        self.memory.hasher().unusable()
    }

    async fn verify(&self, candidate: String, hash: Option<PasswordHash>) -> Result<bool, PortError> {
        self.calls.verifies.fetch_add(1, Ordering::SeqCst);
        if hash.is_none() {
            self.calls.dummy_verifies.fetch_add(1, Ordering::SeqCst);
        }
        self.memory.hasher().verify(candidate, hash).await
    }
}

/// How the picture store misbehaves; 0 means never.
#[derive(Debug, Clone, Default)]
pub struct ObjectFaults {
    puts: Arc<AtomicUsize>,
    fail_put: Arc<AtomicUsize>,
    database_off_after_put: Arc<AtomicUsize>,
    paused_get: Arc<Mutex<Option<PausedGet>>>,
}

/// The next read's two ends: it tells `reached` when it has been asked, then waits for `resume`.
type PausedGet = (oneshot::Sender<()>, oneshot::Receiver<()>);

impl ObjectFaults {
    /// Makes the `n`th write from now fail as unavailable (and not store its object).
    pub fn fail_put(&self, n: usize) {
        self.fail_put.store(self.puts.load(Ordering::SeqCst) + n, Ordering::SeqCst);
    }

    /// Switches the database off right after the `n`th write from now has stored its object.
    pub fn database_off_after_put(&self, n: usize) {
        self.database_off_after_put.store(self.puts.load(Ordering::SeqCst) + n, Ordering::SeqCst);
    }

    /// Holds the next read until the test lets it go, so that the test can act between a caller's reading of a
    /// row and of the object it names: returns (the read has started, let it go on).
    pub fn pause_next_get(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached, started) = oneshot::channel();
        let (resume, resumed) = oneshot::channel();
        *self.paused_get.lock().unwrap() = Some((reached, resumed));
        (started, resume)
    }
}

/// The memory picture store, with the faults above.
#[derive(Debug, Clone)]
pub struct FaultyObjects {
    objects: MemoryObjects,
    store: MemoryStore,
    faults: ObjectFaults,
}

impl PictureStore for FaultyObjects {
    async fn put(&self, object: StoredObject) -> Result<(), PortError> {
        let n = self.faults.puts.fetch_add(1, Ordering::SeqCst) + 1;
        if self.faults.fail_put.load(Ordering::SeqCst) == n {
            return Err(PortError::Unavailable(anyhow::anyhow!("write {n} refused by the test")));
        }
        self.objects.put(object).await?;
        if self.faults.database_off_after_put.load(Ordering::SeqCst) == n {
            self.store.set_unavailable(true);
        }
        Ok(())
    }

    async fn get(&self, key: String) -> Result<Option<StoredObject>, PortError> {
        let paused = self.faults.paused_get.lock().unwrap().take();
        if let Some((reached, resume)) = paused {
            reached.send(()).unwrap();
            resume.await.unwrap();
        }
        self.objects.get(key).await
    }

    async fn copy(&self, from: String, to: String) -> Result<bool, PortError> {
        self.objects.copy(from, to).await
    }

    async fn delete(&self, key: String) -> Result<(), PortError> {
        self.objects.delete(key).await
    }

    async fn list(&self, prefix: String) -> Result<Vec<String>, PortError> {
        self.objects.list(prefix).await
    }

    async fn ping(&self) -> Result<(), PortError> {
        self.objects.ping().await
    }
}

/// `MemoryPorts` with the counting hasher and the faulty picture store in place of its own.
#[derive(Debug, Clone)]
pub struct TestPorts {
    memory: MemoryPorts,
    hasher: CountingHasher,
    objects: FaultyObjects,
}

impl Ports for TestPorts {
    type Users = <MemoryPorts as Ports>::Users;
    type Sessions = <MemoryPorts as Ports>::Sessions;
    type EmailTokens = <MemoryPorts as Ports>::EmailTokens;
    type Throttle = <MemoryPorts as Ports>::Throttle;
    type Outbox = <MemoryPorts as Ports>::Outbox;
    type Requests = <MemoryPorts as Ports>::Requests;
    type SecondFactors = <MemoryPorts as Ports>::SecondFactors;
    type Pictures = <MemoryPorts as Ports>::Pictures;
    type RequestCounts = <MemoryPorts as Ports>::RequestCounts;
    type Audit = <MemoryPorts as Ports>::Audit;
    type Objects = FaultyObjects;
    type Images = <MemoryPorts as Ports>::Images;
    type Hasher = CountingHasher;
    type Tokens = <MemoryPorts as Ports>::Tokens;
    type Otp = <MemoryPorts as Ports>::Otp;
    type Clock = <MemoryPorts as Ports>::Clock;

    fn users(&self) -> &Self::Users {
        self.memory.users()
    }
    fn sessions(&self) -> &Self::Sessions {
        self.memory.sessions()
    }
    fn email_tokens(&self) -> &Self::EmailTokens {
        self.memory.email_tokens()
    }
    fn throttle(&self) -> &Self::Throttle {
        self.memory.throttle()
    }
    fn outbox(&self) -> &Self::Outbox {
        self.memory.outbox()
    }
    fn requests(&self) -> &Self::Requests {
        self.memory.requests()
    }
    fn second_factors(&self) -> &Self::SecondFactors {
        self.memory.second_factors()
    }
    fn pictures(&self) -> &Self::Pictures {
        self.memory.pictures()
    }
    fn request_counts(&self) -> &Self::RequestCounts {
        self.memory.request_counts()
    }

    fn audit(&self) -> &Self::Audit {
        self.memory.audit()
    }
    fn objects(&self) -> &Self::Objects {
        &self.objects
    }
    fn images(&self) -> &Self::Images {
        self.memory.images()
    }
    fn hasher(&self) -> &Self::Hasher {
        &self.hasher
    }
    fn tokens(&self) -> &Self::Tokens {
        self.memory.tokens()
    }
    fn otp(&self) -> &Self::Otp {
        self.memory.otp()
    }
    fn clock(&self) -> &Self::Clock {
        self.memory.clock()
    }
}

#[derive(Clone)]
pub struct World {
    pub ports: MemoryPorts,
    pub hasher: HasherCalls,
    pub faults: ObjectFaults,
    pub service: Service<TestPorts>,
}

pub fn world() -> World {
    world_with(ServiceConfig::default())
}

pub fn world_with(config: ServiceConfig) -> World {
    let memory = MemoryPorts::with_clock(users_memory::ManualClock::at(time::OffsetDateTime::now_utc())).unwrap();
    let hasher = HasherCalls::default();
    let faults = ObjectFaults::default();
    let ports = TestPorts {
        memory: memory.clone(),
        hasher: CountingHasher { memory: memory.clone(), calls: hasher.clone() },
        objects: FaultyObjects {
            objects: memory.object_store().clone(),
            store: memory.store().clone(),
            faults: faults.clone(),
        },
    };
    World { service: Service::new(ports, config), ports: memory, hasher, faults }
}

/// A world whose login backoff blocks after `after` failures, first for `base`.
pub fn world_with_backoff(after: u32, base: Duration) -> World {
    let login_backoff = BackoffPolicy { after, base, max: Duration::hours(1) };
    world_with(ServiceConfig { login_backoff, ..ServiceConfig::default() })
}

pub fn email(raw: &str) -> EmailAddress {
    EmailAddress::parse(raw).unwrap()
}

pub fn registration(address: &str) -> Registration {
    Registration {
        email: email(address),
        password: PASSWORD.to_owned(),
        nickname: None,
        first_name: None,
        last_name: None,
        bio: None,
        linkedin_profile_url: None,
        github_profile_url: None,
    }
}

/// The token at the end of the link in a mail: `/verify-email/{id}/{token}` or `?token={token}`.
pub fn token_in(mail: &QueuedMail) -> String {
    let text = &mail.mail.text;
    let link = text.split_whitespace().find(|word| word.contains("/verify-email/") || word.contains("token=")).unwrap();
    link.rsplit(['/', '=']).next().unwrap().to_owned()
}

/// Whether a mail carries a link with a token.
pub fn has_link(mail: &QueuedMail) -> bool {
    mail.mail.text.split_whitespace().any(|word| word.contains("/verify-email/") || word.contains("token="))
}

impl World {
    pub fn store(&self) -> &MemoryStore {
        self.ports.store()
    }

    pub fn clock(&self) -> &ManualClock {
        self.ports.manual_clock()
    }

    pub fn mails(&self) -> Vec<QueuedMail> {
        self.store().outbox_mails()
    }

    /// Every mail queued for `to`, oldest first.
    pub fn mails_to(&self, to: &str) -> Vec<QueuedMail> {
        self.mails().into_iter().filter(|queued| queued.mail.to.as_str() == to).collect()
    }

    /// The last mail queued for `to`.
    pub fn last_mail_to(&self, to: &str) -> QueuedMail {
        self.mails_to(to).pop().unwrap()
    }

    pub async fn find(&self, address: &str) -> Option<User> {
        self.ports.users().find_user_by_email(email(address)).await.unwrap()
    }

    pub async fn user(&self, address: &str) -> User {
        self.find(address).await.unwrap()
    }

    /// The stored failures of a backoff key.
    pub async fn failures(&self, key: &str) -> Option<FailureCount> {
        self.ports.throttle().login_failures(key.to_owned()).await.unwrap()
    }

    /// Registers `address` (unverified); returns the user as stored.
    pub async fn registered(&self, address: &str) -> User {
        self.service.register(registration(address), ClientInfo::default()).await.unwrap();
        self.user(address).await
    }

    /// Registers and verifies `address`; returns the user as stored.
    pub async fn verified(&self, address: &str) -> User {
        let user = self.registered(address).await;
        self.service
            .verify_email(user.id, &token_in(&self.last_mail_to(address)), ClientInfo::default())
            .await
            .unwrap();
        self.user(address).await
    }

    pub async fn login(&self, address: &str, password: &str) -> Result<TokenPair, LoginError> {
        self.service.login(address, password, ClientInfo::default()).await
    }

    pub async fn principal(&self, address: &str) -> Principal {
        let pair = self.login(address, PASSWORD).await.unwrap();
        self.service.authenticate(pair.access_token.expose()).await.unwrap()
    }

    /// An ADMIN made by the bootstrap path, logged in.
    pub async fn admin(&self, address: &str) -> Principal {
        self.service.create_admin(email(address), PASSWORD).await.unwrap();
        self.principal(address).await
    }

    /// A verified user of `role` created by `by`, logged in.
    pub async fn staff(&self, by: &Principal, address: &str, role: Role) -> Principal {
        let create = AdminCreate { registration: registration(address), role: Some(role), email_verified: true };
        self.service.create_user(by, create).await.unwrap();
        self.principal(address).await
    }
}
