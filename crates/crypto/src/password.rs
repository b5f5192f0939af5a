//! Password hashing with argon2id behind a load-shedding semaphore.
//!
//! Argon2id with OWASP's parameters costs tens of milliseconds of CPU and 19 MiB of memory per call, so the work runs
//! on tokio's blocking pool and at most `max_concurrent` calls run at once. A caller that cannot get a slot within
//! `queue_timeout` gets [`PortError::Unavailable`], which the HTTP edge answers with 503: under a login storm the
//! service degrades by refusing some logins quickly instead of making every request slow.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{
    Error as PhcError, PasswordHash as PhcHash, PasswordHasher as _, PasswordVerifier as _, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore as _;
use rand::rngs::OsRng;
use tokio::sync::Semaphore;
use users_domain::ports::{PasswordHasher, PortError};
use users_domain::{Password, PasswordHash};

/// Argon2 memory cost in KiB (19 MiB, OWASP's recommendation for argon2id with t=2, p=1).
pub const MEMORY_KIB: u32 = 19_456;
/// Argon2 iterations.
pub const ITERATIONS: u32 = 2;
/// Argon2 lanes.
pub const PARALLELISM: u32 = 1;

/// How much hashing may run at once, and how long a caller may wait for a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HasherConfig {
    /// Hashes and verifies running at the same time; 0 is treated as 1.
    pub max_concurrent: usize,
    /// How long a call waits for a slot before it is refused with [`PortError::Unavailable`].
    pub queue_timeout: Duration,
}

impl Default for HasherConfig {
    /// One slot per available core and a 5 s queue.
    fn default() -> Self {
        // Argon2 with p=1 keeps one core busy, so more slots than cores would only make every call slower.
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self { max_concurrent: cores, queue_timeout: Duration::from_secs(5) }
    }
}

/// Why the hasher could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HasherError {
    /// The argon2 crate refused the parameters.
    #[error("argon2 parameters rejected")]
    Params(#[source] argon2::Error),
    /// The dummy hash used for unknown accounts could not be computed.
    #[error("could not compute the dummy password hash")]
    Dummy(#[source] PhcError),
}

/// The argon2id [`PasswordHasher`]: cheap to clone, all clones share one semaphore.
#[derive(Clone)]
pub struct Argon2Hasher {
    argon2: Argon2<'static>,
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
    /// A PHC string of a random, forgotten password with the current parameters, verified when the account is
    /// unknown so that answering "no such account" takes as long as answering "wrong password".
    dummy: Arc<str>,
}

impl std::fmt::Debug for Argon2Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Argon2Hasher")
            .field("available_permits", &self.permits.available_permits())
            .field("queue_timeout", &self.queue_timeout)
            .finish_non_exhaustive()
    }
}

impl Argon2Hasher {
    /// Builds the hasher and computes its dummy hash (one full argon2 hash, done here on the calling thread, so
    /// call it at start-up).
    ///
    /// # Errors
    /// [`HasherError`] if argon2 refuses the parameters or the operating system's random generator fails.
    pub fn new(config: HasherConfig) -> Result<Self, HasherError> {
        let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).map_err(HasherError::Params)?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut secret = [0_u8; 32];
        OsRng.fill_bytes(&mut secret);
        let salt = SaltString::generate(&mut OsRng);
        let dummy = argon2.hash_password(&secret, &salt).map_err(HasherError::Dummy)?.to_string();
        Ok(Self {
            argon2,
            // A semaphore without permits would refuse every call; one slot is the least that works.
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            queue_timeout: config.queue_timeout,
            dummy: dummy.into(),
        })
    }

    /// Waits for a slot, then runs `work` on the blocking pool while holding it.
    async fn run<T, F>(&self, work: F) -> Result<T, PortError>
    where
        F: FnOnce(&Argon2<'static>) -> Result<T, PortError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = tokio::time::timeout(self.queue_timeout, Arc::clone(&self.permits).acquire_owned())
            .await
            .map_err(|_elapsed| {
                PortError::Unavailable(anyhow::anyhow!(
                    "password hasher saturated: no slot within {:?}",
                    self.queue_timeout
                ))
            })?
            .map_err(|closed| PortError::Unavailable(anyhow::Error::new(closed).context("password hasher closed")))?;
        let argon2 = self.argon2.clone();
        // The permit moves into the blocking task: if the caller gives up (client gone, request timeout) the CPU
        // work still runs to its end, and the slot must stay taken until it does or the semaphore would undercount.
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work(&argon2)
        });
        match task.await {
            Ok(result) => result,
            Err(join) if join.is_cancelled() => {
                Err(PortError::Unavailable(anyhow::anyhow!("password hashing cancelled: the runtime is shutting down")))
            }
            Err(_panicked) => Err(PortError::Unknown(anyhow::anyhow!("password hashing task panicked"))),
        }
    }
}

impl PasswordHasher for Argon2Hasher {
    async fn hash(&self, password: Password) -> Result<PasswordHash, PortError> {
        self.run(move |argon2| {
            let salt = SaltString::generate(&mut OsRng);
            let phc = argon2
                .hash_password(password.expose().as_bytes(), &salt)
                .map_err(|error| PortError::Unknown(anyhow::Error::new(error).context("argon2 hashing failed")))?;
            Ok(PasswordHash::new(phc.to_string()))
        })
        .await
    }

    async fn verify(&self, candidate: String, hash: Option<PasswordHash>) -> Result<bool, PortError> {
        let dummy = Arc::clone(&self.dummy);
        self.run(move |argon2| {
            let (stored, is_real) = match &hash {
                Some(hash) => (hash.as_str(), true),
                None => (&*dummy, false),
            };
            // The error says what is wrong with the stored string but never repeats it: it is a credential.
            let unusable = |error: PhcError| {
                PortError::Unknown(anyhow::Error::new(error).context("stored password hash is not a usable PHC string"))
            };
            let parsed = PhcHash::new(stored).map_err(unusable)?;
            // Without salt and output the verifier would quietly answer "no match"; that is a corrupt row, not a
            // wrong password.
            if parsed.salt.is_none() || parsed.hash.is_none() {
                return Err(unusable(PhcError::PhcStringField));
            }
            // verify_password takes algorithm, version and cost from the stored string, not from `argon2`, so
            // hashes made with older parameters keep verifying after the parameters change.
            match argon2.verify_password(candidate.as_bytes(), &parsed) {
                Ok(()) => Ok(is_real),
                Err(PhcError::Password) => Ok(false),
                Err(error) => Err(unusable(error)),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use users_domain::PasswordPolicy;

    use super::*;

    const SECRET: &str = "violet-kettle-orbit-97";

    fn hasher(config: HasherConfig) -> Argon2Hasher {
        Argon2Hasher::new(config).unwrap()
    }

    fn password() -> Password {
        Password::parse(SECRET, PasswordPolicy::default(), &[]).unwrap()
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_nothing_else() {
        let hasher = hasher(HasherConfig::default());
        let hash = hasher.hash(password()).await.unwrap();
        assert!(hasher.verify(SECRET.to_owned(), Some(hash.clone())).await.unwrap());
        assert!(!hasher.verify("violet-kettle-orbit-98".to_owned(), Some(hash.clone())).await.unwrap());
        assert!(!hasher.verify(String::new(), Some(hash)).await.unwrap());
    }

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_a_fresh_salt() {
        let hasher = hasher(HasherConfig::default());
        let first = hasher.hash(password()).await.unwrap();
        let second = hasher.hash(password()).await.unwrap();
        assert!(first.as_str().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{}", first.as_str());
        assert_ne!(first, second, "each hash gets its own salt");
    }

    #[tokio::test]
    async fn an_unknown_account_runs_a_full_verify_and_answers_false() {
        let hasher = hasher(HasherConfig::default());
        assert!(hasher.dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(!hasher.verify(SECRET.to_owned(), None).await.unwrap());
        // Whatever the candidate, the dummy never matches: its password was random and is gone.
        assert!(!hasher.verify(String::new(), None).await.unwrap());
    }

    #[tokio::test]
    async fn malformed_stored_hashes_are_errors_not_panics_or_mismatches() {
        let hasher = hasher(HasherConfig::default());
        let good = hasher.hash(password()).await.unwrap();
        let without_output = good.as_str().rsplit_once('$').unwrap().0.to_owned();
        for stored in [
            String::new(),
            "not a hash".to_owned(),
            "$argon2id$".to_owned(),
            "$argon2id$v=19$m=19456,t=2,p=1".to_owned(),
            without_output,
            "$argon2id$v=19$m=1,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA".to_owned(),
            "$scrypt$ln=16,r=8,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA".to_owned(),
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW".to_owned(),
        ] {
            let result = hasher.verify(SECRET.to_owned(), Some(PasswordHash::new(stored.clone()))).await;
            assert!(matches!(result, Err(PortError::Unknown(_))), "{stored:?}: {result:?}");
        }
    }

    #[tokio::test]
    async fn stored_parameters_win_over_current_ones() {
        // A hash made with cheaper parameters (as if the policy had changed since) still verifies.
        let old = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(8_192, 1, 1, None).unwrap());
        let salt = SaltString::generate(&mut OsRng);
        let phc = old.hash_password(SECRET.as_bytes(), &salt).unwrap().to_string();
        assert!(phc.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"));
        let hasher = hasher(HasherConfig::default());
        assert!(hasher.verify(SECRET.to_owned(), Some(PasswordHash::new(phc.clone()))).await.unwrap());
        assert!(!hasher.verify("something-else-entirely".to_owned(), Some(PasswordHash::new(phc))).await.unwrap());
    }

    #[tokio::test]
    async fn a_saturated_hasher_sheds_load_with_unavailable() {
        let hasher = hasher(HasherConfig { max_concurrent: 1, queue_timeout: Duration::from_millis(20) });
        let hash = hasher.hash(password()).await.unwrap();
        // Holding the only slot stands in for a long verify in flight, without racing against its duration.
        let held = Arc::clone(&hasher.permits).acquire_owned().await.unwrap();
        let verify = hasher.verify(SECRET.to_owned(), Some(hash.clone())).await;
        assert!(matches!(verify, Err(PortError::Unavailable(_))), "{verify:?}");
        let dummy = hasher.verify(SECRET.to_owned(), None).await;
        assert!(matches!(dummy, Err(PortError::Unavailable(_))), "{dummy:?}");
        let new_hash = hasher.hash(password()).await;
        assert!(matches!(new_hash, Err(PortError::Unavailable(_))), "{new_hash:?}");
        drop(held);
        assert!(hasher.verify(SECRET.to_owned(), Some(hash)).await.unwrap());
    }

    #[tokio::test]
    async fn a_queued_call_runs_once_a_slot_frees_up_within_the_timeout() {
        let hasher = hasher(HasherConfig { max_concurrent: 1, queue_timeout: Duration::from_secs(30) });
        let hash = hasher.hash(password()).await.unwrap();
        let held = Arc::clone(&hasher.permits).acquire_owned().await.unwrap();
        let queued = tokio::spawn({
            let hasher = hasher.clone();
            async move { hasher.verify(SECRET.to_owned(), Some(hash)).await }
        });
        // Clones share the semaphore: the spawned call waits on the very slot held here.
        tokio::task::yield_now().await;
        assert!(!queued.is_finished());
        drop(held);
        assert!(queued.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn zero_concurrency_is_treated_as_one_slot() {
        let hasher = hasher(HasherConfig { max_concurrent: 0, queue_timeout: Duration::from_millis(20) });
        assert_eq!(hasher.permits.available_permits(), 1);
        assert!(!hasher.verify(SECRET.to_owned(), None).await.unwrap());
    }

    #[tokio::test]
    async fn a_slot_stays_taken_until_the_blocking_work_ends_even_if_the_caller_gives_up() {
        let hasher = hasher(HasherConfig { max_concurrent: 1, queue_timeout: Duration::from_secs(30) });
        // Blocking work that ends only when told to, standing in for an argon2 run of unknown length.
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let call = tokio::spawn({
            let hasher = hasher.clone();
            async move { hasher.run(move |_| finished.recv().map_err(|e| PortError::Unknown(e.into()))).await }
        });
        wait_until(|| hasher.permits.available_permits() == 0).await;
        // The client disconnects: the request future is dropped while the blocking work is still running.
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        assert_eq!(hasher.permits.available_permits(), 0, "the core is still busy, so the slot must stay taken");
        finish.send(()).unwrap();
        wait_until(|| hasher.permits.available_permits() == 1).await;
    }

    /// Polls a condition until it holds, failing the test after a generous deadline.
    async fn wait_until(condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "condition not met within 10 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Resident memory after a burst of verifies. Each test must run alone in its own process, since RSS is per process:
/// `cargo test -p users-crypto --lib -- --ignored --exact --nocapture password::rss::<name>`.
#[cfg(test)]
mod rss {
    use std::time::Duration;

    use users_domain::ports::PasswordHasher as _;
    use users_domain::{Password, PasswordPolicy};

    use super::{Argon2Hasher, HasherConfig};

    const SECRET: &str = "violet-kettle-orbit-97";
    const CALLS: usize = 50;

    /// `VmRSS` and `VmHWM` of this process, in MiB.
    fn rss_mib() -> (u64, u64) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let field = |name: &str| -> u64 {
            let line = status.lines().find(|line| line.starts_with(name)).unwrap();
            line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    async fn setup() -> (Argon2Hasher, users_domain::PasswordHash) {
        let hasher =
            Argon2Hasher::new(HasherConfig { max_concurrent: 2, queue_timeout: Duration::from_secs(600) }).unwrap();
        let password = Password::parse(SECRET, PasswordPolicy::default(), &[]).unwrap();
        let hash = hasher.hash(password).await.unwrap();
        (hasher, hash)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement: run alone, see the module docs"]
    async fn sequential() {
        let (hasher, hash) = setup().await;
        eprintln!("rss before: {:?} MiB (rss, hwm)", rss_mib());
        for _ in 0..CALLS {
            assert!(hasher.verify(SECRET.to_owned(), Some(hash.clone())).await.unwrap());
        }
        eprintln!("rss after {CALLS} sequential verifies on 2 permits: {:?} MiB (rss, hwm)", rss_mib());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement: run alone, see the module docs"]
    async fn burst() {
        let (hasher, hash) = setup().await;
        eprintln!("rss before: {:?} MiB (rss, hwm)", rss_mib());
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..CALLS {
            let (hasher, hash) = (hasher.clone(), hash.clone());
            calls.spawn(async move { hasher.verify(SECRET.to_owned(), Some(hash)).await });
        }
        while let Some(result) = calls.join_next().await {
            assert!(result.unwrap().unwrap());
        }
        eprintln!("rss after a burst of {CALLS} verifies on 2 permits: {:?} MiB (rss, hwm)", rss_mib());
    }
}
