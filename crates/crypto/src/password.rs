//! Password hashing with argon2id behind a load-shedding semaphore.
//!
//! Argon2id with OWASP's parameters costs tens of milliseconds of CPU and 19 MiB of memory per call, so the work runs
//! on threads of its own at a lower scheduling priority (see `users-cpu`: a login flood must not slow the cheap
//! requests down) and at most `max_concurrent` calls run at once. A caller that cannot get a slot within
//! `queue_timeout` gets [`PortError::Unavailable`], which the HTTP edge answers with 503: under a login storm the
//! service degrades by refusing some logins quickly instead of making every request slow.
//!
//! The 19 MiB come from a pool with one buffer per slot that is reused rather than freed (see the `memory` module
//! for why freeing them makes the process keep hundreds of MiB), so argon2 holds at most `max_concurrent` × 19 MiB.

mod memory;

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{Error as PhcError, Output, ParamsString, PasswordHash as PhcHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::RngCore as _;
use rand::rngs::OsRng;
use tokio::sync::Semaphore;
use users_cpu::CpuThreads;
use users_domain::ports::{PasswordHasher, PortError};
use users_domain::user::{PasswordCandidate, PasswordError};
use users_domain::{Password, PasswordHash};

use self::memory::MemoryPool;

/// The threads hashing and the strength estimate run on, below the priority of the HTTP workers (see `users-cpu`).
static PASSWORD_THREADS: CpuThreads = CpuThreads::new("password-work");

/// Argon2 memory cost in KiB (19 MiB, OWASP's recommendation for argon2id with t=2, p=1).
pub const MEMORY_KIB: u32 = 19_456;
/// Argon2 iterations.
pub const ITERATIONS: u32 = 2;
/// Argon2 lanes.
pub const PARALLELISM: u32 = 1;

/// Longest salt a stored hash may carry, in bytes (what the `argon2` crate's own verifier accepts too).
const MAX_SALT_BYTES: usize = 64;

/// How much hashing may run at once, and how long a caller may wait for a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HasherConfig {
    /// Hashes and verifies running at the same time; 0 is treated as 1. Each running call holds one 19 MiB argon2
    /// buffer, kept for reuse once allocated.
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

/// The argon2id [`PasswordHasher`]: cheap to clone, all clones share one semaphore and one memory pool.
#[derive(Clone)]
pub struct Argon2Hasher {
    /// The parameters of new hashes; verification takes its parameters from the stored hash.
    params: Params,
    permits: Arc<Semaphore>,
    /// One argon2 buffer per permit, taken by whoever holds the permit.
    memory: Arc<MemoryPool>,
    queue_timeout: Duration,
    /// A PHC string of a random, forgotten password with the current parameters, verified when the account is
    /// unknown so that answering "no such account" takes as long as answering "wrong password".
    dummy: Arc<str>,
}

impl std::fmt::Debug for Argon2Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Argon2Hasher")
            .field("available_permits", &self.permits.available_permits())
            .field("memory_buffers", &self.memory.allocated())
            .field("queue_timeout", &self.queue_timeout)
            .finish_non_exhaustive()
    }
}

impl Argon2Hasher {
    /// Builds the hasher. Its dummy hash (for unknown accounts) is a PHC string with a random salt and a random
    /// output: verifying against it costs exactly one argon2 computation with the current parameters, like a real
    /// hash, and no password can match it, so nothing needs hashing at start-up. The 19 MiB buffers are allocated
    /// the first time that many calls run at once and kept in the pool from then on, never freed.
    ///
    /// # Errors
    /// [`HasherError`] if argon2 refuses the parameters or the operating system's random generator fails.
    pub fn new(config: HasherConfig) -> Result<Self, HasherError> {
        let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).map_err(HasherError::Params)?;
        let memory = MemoryPool::new(params.block_count());
        let dummy = dummy_phc(&params).map_err(HasherError::Dummy)?;
        Ok(Self {
            params,
            // A semaphore without permits would refuse every call; one slot is the least that works.
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            memory: Arc::new(memory),
            queue_timeout: config.queue_timeout,
            dummy: dummy.into(),
        })
    }

    /// Waits for a slot, then runs `work` on a password thread (see [`PASSWORD_THREADS`]) while holding it, lending it
    /// the slot's argon2 buffer ([`Params::block_count`] blocks of the current parameters).
    async fn run<T, F>(&self, work: F) -> Result<T, PortError>
    where
        F: FnOnce(&mut [Block]) -> Result<T, PortError> + Send + 'static,
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
        let memory = Arc::clone(&self.memory);
        // The permit moves into the blocking task: if the caller gives up (client gone, request timeout) the CPU
        // work still runs to its end, and the slot must stay taken until it does or the semaphore would undercount.
        // The lease holds both and gives the buffer back before it releases the permit.
        let task = PASSWORD_THREADS.spawn(move || {
            let mut lease = memory.lease(permit);
            work(lease.memory())
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
        let params = self.params.clone();
        self.run(move |memory| {
            let phc = hash_phc(&params, password.expose().as_bytes(), memory)
                .map_err(|error| PortError::Unknown(anyhow::Error::new(error).context("argon2 hashing failed")))?;
            Ok(PasswordHash::new(phc))
        })
        .await
    }

    async fn judge(
        &self,
        candidate: PasswordCandidate,
        clues: Vec<String>,
    ) -> Result<Result<Password, PasswordError>, PortError> {
        // The strength estimate takes from a few to several hundred milliseconds of CPU (zxcvbn's substitution
        // search on symbol-heavy input), so it waits for a slot like a hash and runs on a password thread.
        self.run(move |_memory| Ok(candidate.judge(&clues))).await
    }

    fn unusable(&self) -> PasswordHash {
        // A fresh random output for each account; the start-up dummy (also random) if that cannot be encoded.
        PasswordHash::new(dummy_phc(&self.params).unwrap_or_else(|_| self.dummy.to_string()))
    }

    async fn verify(&self, candidate: String, hash: Option<PasswordHash>) -> Result<bool, PortError> {
        let dummy = Arc::clone(&self.dummy);
        self.run(move |memory| {
            let (stored, is_real) = match &hash {
                Some(hash) => (hash.as_str(), true),
                None => (&*dummy, false),
            };
            // The error says what is wrong with the stored string but never repeats it: it is a credential.
            let matches = verify_phc(stored, candidate.as_bytes(), memory).map_err(|error| {
                PortError::Unknown(anyhow::Error::new(error).context("stored password hash is not a usable PHC string"))
            })?;
            Ok(matches && is_real)
        })
        .await
    }
}

/// Hashes `password` with a fresh salt, argon2id v19 and `params` into the PHC string the `argon2` crate's
/// `PasswordHasher` would produce for that salt: `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`.
/// A PHC string of the current parameters with a random salt and a random output, which no password matches.
fn dummy_phc(params: &Params) -> Result<String, PhcError> {
    let salt = SaltString::generate(&mut OsRng);
    let mut output = [0_u8; Params::DEFAULT_OUTPUT_LEN];
    OsRng.fill_bytes(&mut output);
    let phc = PhcHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&output)?),
    };
    Ok(phc.to_string())
}

fn hash_phc(params: &Params, password: &[u8], memory: &mut [Block]) -> Result<String, PhcError> {
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buffer = [0_u8; MAX_SALT_BYTES];
    let salt_bytes = salt.decode_b64(&mut salt_buffer)?;
    let (algorithm, version) = (Algorithm::Argon2id, Version::V0x13);
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = argon2_output(algorithm, version, params.clone(), password, salt_bytes, output_len, memory)?;
    let phc = PhcHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: ParamsString::try_from(params)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Whether `candidate` is the password behind the PHC string `stored`, recomputed with the algorithm, version,
/// parameters (m, t, p, keyid, data, output length) and salt written in `stored`, so hashes made with older
/// parameters keep verifying after the parameters change.
///
/// # Errors
/// If `stored` is not an argon2 PHC string with salt and output, or argon2 refuses what it says. Without salt and
/// output there is nothing to compare against: that is a corrupt row, not a wrong password.
fn verify_phc(stored: &str, candidate: &[u8], memory: &mut [Block]) -> Result<bool, PhcError> {
    let parsed = PhcHash::new(stored)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(PhcError::PhcStringField);
    };
    let algorithm = Algorithm::try_from(parsed.algorithm)?;
    let version = parsed.version.map(Version::try_from).transpose()?.unwrap_or_default();
    let params = Params::try_from(&parsed)?;
    let mut salt_buffer = [0_u8; MAX_SALT_BYTES];
    let salt_bytes = salt.decode_b64(&mut salt_buffer)?;
    let computed = argon2_output(algorithm, version, params, candidate, salt_bytes, expected.len(), memory)?;
    // `Output`'s equality is constant-time.
    Ok(computed == expected)
}

/// Runs argon2 in `memory` if it is large enough for `params` (its leading `block_count()` blocks), else in a
/// buffer allocated for this call only, which only a stored hash with a larger memory cost than the current one
/// needs.
fn argon2_output(
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: &[u8],
    output_len: usize,
    memory: &mut [Block],
) -> Result<Output, PhcError> {
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    let mut one_off = Vec::new();
    let memory = match memory.get_mut(..blocks) {
        Some(pooled) => pooled,
        None => {
            // A corrupt row could ask for terabytes: refuse what cannot be reserved instead of aborting the process.
            one_off.try_reserve_exact(blocks).map_err(|_| PhcError::from(argon2::Error::MemoryTooMuch))?;
            one_off.resize(blocks, Block::new());
            one_off.as_mut_slice()
        }
    };
    Output::init_with(output_len, |out| Ok(argon2.hash_password_into_with_memory(password, salt, out, &mut *memory)?))
}
#[cfg(test)]
mod tests {
    use std::time::Instant;

    use argon2::ParamsBuilder;
    use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
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
    async fn password_work_runs_on_the_password_threads() {
        let thread = hasher(HasherConfig::default())
            .run(|_memory| Ok(std::thread::current().name().map(str::to_owned)))
            .await
            .unwrap();
        assert_eq!(thread.as_deref(), Some("password-work"));
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
    async fn the_strength_estimate_takes_a_hashing_slot_off_the_async_workers() {
        let hasher = hasher(HasherConfig { max_concurrent: 1, queue_timeout: Duration::from_millis(20) });
        let candidate = || Password::check_length("4@8({[<3=6&#|!1|7|5$+%2", PasswordPolicy::default()).unwrap();
        // With the only slot held, the estimate sheds like a hash would: it does not run on the caller's thread.
        let held = Arc::clone(&hasher.permits).acquire_owned().await.unwrap();
        let shed = hasher.judge(candidate(), Vec::new()).await;
        assert!(matches!(shed, Err(PortError::Unavailable(_))), "{shed:?}");
        drop(held);
        let judged = hasher.judge(candidate(), Vec::new()).await.unwrap();
        assert!(judged.is_ok(), "a strong password is accepted once a slot is free");
        let weak = Password::check_length("passwordpassword", PasswordPolicy::default()).unwrap();
        assert!(matches!(hasher.judge(weak, Vec::new()).await.unwrap(), Err(PasswordError::TooWeak { .. })));
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

    /// The `argon2` crate's own hasher and verifier with the current parameters, as used before the pool.
    fn plain_argon2() -> Argon2<'static> {
        Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).unwrap(),
        )
    }

    #[tokio::test]
    async fn hashes_are_what_the_argon2_crate_makes_and_verifies() {
        // One slot, so every hash after the first runs in a buffer still holding the previous call's blocks.
        let hasher = hasher(HasherConfig { max_concurrent: 1, queue_timeout: Duration::from_secs(30) });
        for secret in [SECRET, "another-password-entirely", SECRET] {
            let hash = hasher.hash(Password::parse(secret, PasswordPolicy::default(), &[]).unwrap()).await.unwrap();
            let parsed = PhcHash::new(hash.as_str()).unwrap();
            assert_eq!(plain_argon2().verify_password(secret.as_bytes(), &parsed), Ok(()));
            assert_eq!(plain_argon2().verify_password(b"violet-kettle-orbit-98", &parsed), Err(PhcError::Password));
            let salt = parsed.salt.unwrap();
            let remade = plain_argon2().hash_password(secret.as_bytes(), salt).unwrap().to_string();
            assert_eq!(remade, hash.as_str(), "same salt, same string");
        }
        assert_eq!(hasher.memory.allocated(), 1);
    }

    #[tokio::test]
    async fn hashes_made_by_the_argon2_crate_verify() {
        let salt = SaltString::generate(&mut OsRng);
        let phc = plain_argon2().hash_password(SECRET.as_bytes(), &salt).unwrap().to_string();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let hasher = hasher(HasherConfig::default());
        assert!(hasher.verify(SECRET.to_owned(), Some(PasswordHash::new(phc.clone()))).await.unwrap());
        assert!(!hasher.verify("violet-kettle-orbit-98".to_owned(), Some(PasswordHash::new(phc))).await.unwrap());
    }

    #[tokio::test]
    async fn stored_algorithm_version_lanes_output_length_and_data_are_honoured() {
        let hasher = hasher(HasherConfig::default());
        let with_data = {
            let mut builder = ParamsBuilder::new();
            builder.m_cost(4_096).t_cost(3).p_cost(1).output_len(16).data("c29tZS1kYXRh".parse().unwrap());
            builder.build().unwrap()
        };
        for (algorithm, version, params) in [
            (Algorithm::Argon2i, Version::V0x10, Params::new(8_192, 1, 2, Some(64)).unwrap()),
            (Algorithm::Argon2d, Version::V0x13, Params::new(1_024, 2, 4, None).unwrap()),
            (Algorithm::Argon2id, Version::V0x13, with_data),
        ] {
            let salt = SaltString::generate(&mut OsRng);
            let phc = Argon2::new(algorithm, version, params).hash_password(SECRET.as_bytes(), &salt).unwrap();
            let phc = phc.to_string();
            assert!(hasher.verify(SECRET.to_owned(), Some(PasswordHash::new(phc.clone()))).await.unwrap(), "{phc}");
            assert!(!hasher.verify("something-else".to_owned(), Some(PasswordHash::new(phc.clone()))).await.unwrap());
        }
    }

    #[tokio::test]
    async fn a_stored_hash_needing_more_memory_than_the_pool_verifies_without_growing_it() {
        let bigger = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(32_768, 1, 1, None).unwrap());
        let salt = SaltString::generate(&mut OsRng);
        let phc = bigger.hash_password(SECRET.as_bytes(), &salt).unwrap().to_string();
        let hasher = hasher(HasherConfig { max_concurrent: 1, queue_timeout: Duration::from_secs(30) });
        assert!(hasher.verify(SECRET.to_owned(), Some(PasswordHash::new(phc.clone()))).await.unwrap());
        assert!(!hasher.verify("something-else".to_owned(), Some(PasswordHash::new(phc))).await.unwrap());
        assert_eq!((hasher.memory.allocated(), hasher.memory.free()), (1, 1), "only the slot's own buffer is kept");
        assert_eq!(hasher.memory.blocks(), 19_456);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_never_holds_more_buffers_than_slots_and_reuses_them() {
        let hasher = hasher(HasherConfig { max_concurrent: 2, queue_timeout: Duration::from_secs(600) });
        assert_eq!((hasher.memory.allocated(), hasher.memory.free()), (0, 0), "nothing is allocated before use");
        let hash = hasher.hash(password()).await.unwrap();
        assert_eq!((hasher.memory.allocated(), hasher.memory.free()), (1, 1), "the first buffer is kept");
        for _ in 0..10 {
            assert!(hasher.verify(SECRET.to_owned(), Some(hash.clone())).await.unwrap());
            assert!(!hasher.verify(SECRET.to_owned(), None).await.unwrap());
            assert_eq!((hasher.memory.allocated(), hasher.memory.free()), (1, 1), "one call at a time, one buffer");
        }
        let mut calls = tokio::task::JoinSet::new();
        for call in 0..12 {
            let (hasher, hash) = (hasher.clone(), hash.clone());
            calls.spawn(async move {
                if call % 3 == 0 {
                    hasher.hash(password()).await.map(|_| true)
                } else {
                    hasher.verify(SECRET.to_owned(), Some(hash)).await
                }
            });
        }
        while let Some(result) = calls.join_next().await {
            assert!(result.unwrap().unwrap());
            assert!(hasher.memory.allocated() <= 2, "{hasher:?}");
            assert!(hasher.memory.free() <= hasher.memory.allocated());
        }
        assert_eq!(hasher.memory.free(), hasher.memory.allocated(), "every buffer is back");
        assert!(hasher.memory.allocated() <= 2);
    }

    #[tokio::test]
    async fn a_panic_during_hashing_gives_the_buffer_and_the_slot_back() {
        let hasher = hasher(HasherConfig { max_concurrent: 1, queue_timeout: Duration::from_secs(30) });
        let result = hasher.run(|_| -> Result<(), PortError> { panic!("argon2 blew up") }).await;
        assert!(matches!(result, Err(PortError::Unknown(_))), "{result:?}");
        assert_eq!((hasher.memory.allocated(), hasher.memory.free()), (1, 1));
        assert_eq!(hasher.permits.available_permits(), 1);
        assert!(!hasher.verify(SECRET.to_owned(), None).await.unwrap());
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
