//! Every storage port over one mutex-guarded state.
//!
//! A change runs on a copy of the state, which replaces the state only when the change succeeds: what a database
//! transaction gives the Postgres adapter. Uniqueness of emails and nicknames is case-insensitive, as there.
//! Changes are serialised by the mutex, so a compare-and-set (a token, a time step, a recovery code, a try on a
//! pending login step) is one check and one write that nothing can come between.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use time::{Duration, OffsetDateTime};
use users_domain::audit::{AuditEvent, EventQuery};
use users_domain::permissions::Role;
use users_domain::ports::{
    AccountRequest, AccountRequestKind, AccountRequests, AuditTrail, BackoffPolicy, Clock, EmailTokenPurpose,
    EmailTokenRecord, EmailTokenStore, FailureCount, Guard, InsertUserError, LoginThrottle, MailOutbox, MfaChallenge,
    NewAccount, NewEmailToken, NewMfaChallenge, OutboxMessage, OutgoingMail, PictureRecords, PictureWriteError,
    PortError, RefreshRecord, RequestCounter, Rotation, SecondFactorAction, SecondFactorChange, SecondFactorError,
    SecondFactorProof, SecondFactorStore, SessionEnd, SessionStore, StoredPicture, TotpRecord, UpdateError, UserCursor,
    UserQuery, UserSort, UserStore, UserUpdate, WindowCount,
};
use users_domain::session::{NewSession, Session, SessionId, TokenHash};
use users_domain::user::{EmailAddress, Nickname, User, UserId};
use uuid::Uuid;

use crate::clock::ManualClock;

/// Where a queued mail stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailState {
    /// Waiting (or leased to a dispatcher until `next_attempt_at`).
    Pending,
    /// Delivered.
    Sent,
    /// Given up after the last attempt.
    Dead,
}

/// A mail in the outbox, as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMail {
    /// The outbox row.
    pub id: Uuid,
    /// The mail.
    pub mail: OutgoingMail,
    /// Where it stands.
    pub state: MailState,
    /// Delivery attempts made.
    pub attempts: u32,
    /// When it may be claimed next.
    pub next_attempt_at: OffsetDateTime,
    /// The last delivery error.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone)]
struct EmailTokenRow {
    hash: TokenHash,
    new_email: Option<EmailAddress>,
    expires_at: OffsetDateTime,
    used: bool,
}

#[derive(Debug, Clone)]
struct RefreshRow {
    session: SessionId,
    /// When the token was spent: exchanged, or discarded by a retry.
    used_at: Option<OffsetDateTime>,
    /// The token it was last exchanged for.
    successor: Option<TokenHash>,
}

impl RefreshRow {
    fn unused(session: SessionId) -> Self {
        Self { session, used_at: None, successor: None }
    }
}

#[derive(Debug, Clone)]
struct RequestRow {
    id: Uuid,
    kind: AccountRequestKind,
    email: EmailAddress,
    available_at: OffsetDateTime,
}

#[derive(Debug, Clone, Default)]
struct State {
    users: BTreeMap<Uuid, User>,
    sessions: HashMap<SessionId, Session>,
    refresh_tokens: HashMap<TokenHash, RefreshRow>,
    email_tokens: HashMap<(UserId, EmailTokenPurpose), EmailTokenRow>,
    failures: HashMap<String, FailureCount>,
    outbox: Vec<QueuedMail>,
    requests: Vec<RequestRow>,
    pictures: BTreeMap<Uuid, StoredPicture>,
    totp: HashMap<UserId, TotpRecord>,
    /// Each user's recovery codes, by hash, with whether the code was used.
    recovery_codes: HashMap<UserId, HashMap<TokenHash, bool>>,
    mfa_challenges: HashMap<TokenHash, MfaChallenge>,
}

/// Every storage port in memory; clones share the state.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    /// The rate-limit windows, apart from the state: counting a request must not copy every user.
    windows: Arc<Mutex<Windows>>,
    /// The audit trail, apart from the state for the same reason; a change's events are appended only when the
    /// change is kept.
    events: Arc<Mutex<Vec<AuditEvent>>>,
    clock: ManualClock,
    unavailable: Arc<AtomicBool>,
}

/// Requests counted per (route, client address): when the current window started, and how many it saw.
type Windows = HashMap<(&'static str, IpAddr), (OffsetDateTime, u32)>;

fn unknown(message: String) -> PortError {
    PortError::Unknown(anyhow::Error::msg(message))
}

impl MemoryStore {
    /// An empty store that stamps new rows with `clock`.
    #[must_use]
    pub fn new(clock: ManualClock) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
            windows: Arc::new(Mutex::new(HashMap::new())),
            events: Arc::new(Mutex::new(Vec::new())),
            clock,
            unavailable: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Makes every call fail with [`PortError::Unavailable`] (`true`) or work again (`false`).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Every mail ever queued, oldest first, whatever became of it.
    #[must_use]
    pub fn outbox_mails(&self) -> Vec<QueuedMail> {
        self.lock().outbox.clone()
    }

    /// Every event of the trail, in the order written.
    #[must_use]
    pub fn audit_events(&self) -> Vec<AuditEvent> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Appends the events of a change that was kept.
    fn append(&self, events: Vec<AuditEvent>) {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).extend(events);
    }

    /// [`Self::change`], appending `events` when the change is kept and `written` says it wrote something.
    fn change_recorded<T, E: From<PortError>>(
        &self,
        events: Vec<AuditEvent>,
        written: impl FnOnce(&T) -> bool,
        change: impl FnOnce(&mut State) -> Result<T, E>,
    ) -> Result<T, E> {
        let value = self.change(change)?;
        if written(&value) {
            self.append(events);
        }
        Ok(value)
    }

    /// The number of sessions stored, revoked ones included.
    #[must_use]
    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check(&self) -> Result<(), PortError> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(PortError::Unavailable(anyhow::anyhow!("the memory store is switched off")));
        }
        Ok(())
    }

    /// Reads the state.
    fn read<T>(&self, read: impl FnOnce(&State) -> T) -> Result<T, PortError> {
        self.check()?;
        Ok(read(&self.lock()))
    }

    /// Runs a change on a copy of the state and keeps it only when it succeeds.
    fn change<T, E: From<PortError>>(&self, change: impl FnOnce(&mut State) -> Result<T, E>) -> Result<T, E> {
        self.check()?;
        let mut state = self.lock();
        let mut next = state.clone();
        let value = change(&mut next)?;
        *state = next;
        Ok(value)
    }
}

impl State {
    fn email_taken(&self, email: &EmailAddress, besides: Option<UserId>) -> bool {
        let canonical = email.canonical();
        self.users.values().any(|user| Some(user.id) != besides && user.email.canonical() == canonical)
    }

    fn nickname_taken(&self, nickname: &Nickname, besides: Option<UserId>) -> bool {
        let lower = nickname.as_str().to_lowercase();
        self.users.values().any(|user| Some(user.id) != besides && user.nickname.as_str().to_lowercase() == lower)
    }

    fn queue(&mut self, mail: OutgoingMail, now: OffsetDateTime) {
        self.outbox.push(QueuedMail {
            id: Uuid::now_v7(),
            mail,
            state: MailState::Pending,
            attempts: 0,
            next_attempt_at: now,
            last_error: None,
        });
    }

    fn store_token(&mut self, token: NewEmailToken) {
        self.email_tokens.insert(
            (token.user_id, token.purpose),
            EmailTokenRow { hash: token.hash, new_email: token.new_email, expires_at: token.expires_at, used: false },
        );
    }

    fn check_guard(&self, id: UserId, guard: Guard) -> Result<&User, UpdateError> {
        let user = self.users.get(&id.as_uuid()).ok_or(UpdateError::NotFound)?;
        if guard.role.is_some_and(|role| role != user.role) {
            return Err(UpdateError::RoleChanged);
        }
        if guard.another_admin
            && !self.users.values().any(|other| other.id != id && other.role == Role::Admin && !other.is_locked)
        {
            return Err(UpdateError::LastAdmin);
        }
        Ok(user)
    }

    /// Stores a session started at `at` with its first refresh token, and records the login on its user.
    fn start_session(&mut self, session: NewSession, at: OffsetDateTime) -> Result<Session, PortError> {
        let user = self
            .users
            .get_mut(&session.user_id.as_uuid())
            .ok_or_else(|| unknown(format!("a session for user {}, who does not exist", session.user_id)))?;
        user.last_login_at = Some(at);
        let stored = Session {
            id: session.id,
            user_id: session.user_id,
            created_at: at,
            last_used_at: at,
            expires_at: session.expires_at,
            revoked_at: None,
            user_agent: session.user_agent,
            ip: session.ip,
        };
        self.sessions.insert(stored.id, stored.clone());
        self.refresh_tokens.insert(session.refresh_token_hash, RefreshRow::unused(session.id));
        Ok(stored)
    }

    /// Sets the user's `mfa_enabled`, and `updated_at` when the flag changes.
    fn set_mfa_enabled(&mut self, user_id: UserId, enabled: bool, now: OffsetDateTime) {
        if let Some(user) = self.users.get_mut(&user_id.as_uuid())
            && user.mfa_enabled != enabled
        {
            user.mfa_enabled = enabled;
            user.updated_at = now;
        }
    }

    /// Consumes a proof of `user_id`, compare-and-set; `false` when it is not accepted.
    fn consume_proof(&mut self, user_id: UserId, proof: &SecondFactorProof) -> bool {
        match proof {
            SecondFactorProof::Step(step) => {
                let Some(record) = self.totp.get_mut(&user_id) else { return false };
                if record.last_used_step.is_some_and(|last| last >= *step) {
                    return false;
                }
                record.last_used_step = Some(*step);
                true
            }
            SecondFactorProof::RecoveryCode(hash) => {
                let Some(used) = self.recovery_codes.get_mut(&user_id).and_then(|codes| codes.get_mut(hash)) else {
                    return false;
                };
                !std::mem::replace(used, true)
            }
        }
    }

    /// Applies a second-factor action whose requirement holds.
    fn apply_action(&mut self, user_id: UserId, action: SecondFactorAction, now: OffsetDateTime) {
        let codes = |hashes: Vec<TokenHash>| hashes.into_iter().map(|hash| (hash, false)).collect();
        match action {
            SecondFactorAction::Keep => {}
            SecondFactorAction::Stage { secret } => {
                self.totp.insert(user_id, TotpRecord { secret, enabled: false, last_used_step: None });
            }
            SecondFactorAction::Enable { recovery_codes, .. } => {
                if let Some(record) = self.totp.get_mut(&user_id) {
                    record.enabled = true;
                }
                self.recovery_codes.insert(user_id, codes(recovery_codes));
                self.set_mfa_enabled(user_id, true, now);
            }
            SecondFactorAction::ReplaceRecoveryCodes(recovery_codes) => {
                self.recovery_codes.insert(user_id, codes(recovery_codes));
            }
            SecondFactorAction::Disable => {
                self.totp.remove(&user_id);
                self.recovery_codes.remove(&user_id);
                self.mfa_challenges.retain(|_, challenge| challenge.user_id != user_id);
                self.set_mfa_enabled(user_id, false, now);
            }
        }
    }

    fn end_sessions(&mut self, user_id: UserId, end: SessionEnd, now: OffsetDateTime) {
        let keep = match end {
            SessionEnd::Keep => return,
            SessionEnd::All => None,
            SessionEnd::AllBut(keep) => Some(keep),
        };
        for session in self.sessions.values_mut() {
            if session.user_id == user_id && session.revoked_at.is_none() && Some(session.id) != keep {
                session.revoked_at = Some(now);
            }
        }
        // Logins waiting for their second step would start sessions after the fact: they end too.
        self.mfa_challenges.retain(|_, challenge| challenge.user_id != user_id);
    }
}

impl UserStore for MemoryStore {
    async fn insert_user(&self, account: NewAccount) -> Result<User, InsertUserError> {
        let now = self.clock.now();
        self.change_recorded(
            account.events,
            |_| true,
            |state| {
                let new = account.user;
                if state.email_taken(&new.email, None) {
                    return Err(InsertUserError::EmailTaken);
                }
                if state.nickname_taken(&new.nickname, None) {
                    return Err(InsertUserError::NicknameTaken);
                }
                let user = User {
                    id: new.id,
                    email: new.email,
                    nickname: new.nickname,
                    first_name: new.first_name,
                    last_name: new.last_name,
                    bio: new.bio,
                    profile_picture_id: None,
                    linkedin_profile_url: new.linkedin_profile_url,
                    github_profile_url: new.github_profile_url,
                    role: new.role,
                    is_professional: false,
                    professional_status_updated_at: None,
                    email_verified: new.email_verified,
                    pending_email: None,
                    is_locked: false,
                    password_hash: new.password_hash,
                    created_at: now,
                    updated_at: now,
                    last_login_at: None,
                    mfa_enabled: false,
                };
                if let Some(token) = account.token {
                    if token.user_id != user.id {
                        return Err(
                            unknown(format!("a token of user {} stored with user {}", token.user_id, user.id)).into()
                        );
                    }
                    state.store_token(token);
                }
                state.users.insert(user.id.as_uuid(), user.clone());
                for mail in account.mails {
                    state.queue(mail, now);
                }
                Ok(user)
            },
        )
    }

    async fn find_user(&self, id: UserId) -> Result<Option<User>, PortError> {
        self.read(|state| state.users.get(&id.as_uuid()).cloned())
    }

    async fn find_user_by_email(&self, email: EmailAddress) -> Result<Option<User>, PortError> {
        let canonical = email.canonical();
        self.read(|state| state.users.values().find(|user| user.email.canonical() == canonical).cloned())
    }

    async fn nickname_exists(&self, nickname: Nickname) -> Result<bool, PortError> {
        self.read(|state| state.nickname_taken(&nickname, None))
    }

    async fn another_unlocked_admin(&self, besides: UserId) -> Result<bool, PortError> {
        self.read(|state| {
            state.users.values().any(|user| user.id != besides && user.role == Role::Admin && !user.is_locked)
        })
    }

    async fn list_users(&self, query: UserQuery) -> Result<Vec<User>, PortError> {
        self.read(|state| list(state, &query))?
    }

    async fn update_user(&self, mut update: UserUpdate) -> Result<User, UpdateError> {
        let events = std::mem::take(&mut update.events);
        self.change_recorded(
            events,
            |_| true,
            |state| {
                let now = update.now;
                state.check_guard(update.id, update.guard)?;
                if let Some(hash) = &update.consume_token {
                    let token = state
                        .email_tokens
                        .iter_mut()
                        .find(|((user_id, _), row)| *user_id == update.id && row.hash == *hash)
                        .map(|(_, row)| row)
                        .filter(|row| !row.used && row.expires_at > now)
                        .ok_or(UpdateError::TokenUnusable)?;
                    token.used = true;
                }
                let fields = update.fields;
                let changes_anything = !fields.is_empty();
                if let Some(email) = &fields.email
                    && state.email_taken(email, Some(update.id))
                {
                    return Err(UpdateError::EmailTaken);
                }
                if let Some(nickname) = &fields.profile.nickname
                    && state.nickname_taken(nickname, Some(update.id))
                {
                    return Err(UpdateError::NicknameTaken);
                }
                let user = state.users.get_mut(&update.id.as_uuid()).ok_or(UpdateError::NotFound)?;
                let profile = fields.profile;
                if let Some(nickname) = profile.nickname {
                    user.nickname = nickname;
                }
                if let Some(first_name) = profile.first_name {
                    user.first_name = first_name;
                }
                if let Some(last_name) = profile.last_name {
                    user.last_name = last_name;
                }
                if let Some(bio) = profile.bio {
                    user.bio = bio;
                }
                if let Some(url) = profile.linkedin_profile_url {
                    user.linkedin_profile_url = url;
                }
                if let Some(url) = profile.github_profile_url {
                    user.github_profile_url = url;
                }
                if let Some(email) = fields.email {
                    user.email = email;
                }
                if let Some(pending) = fields.pending_email {
                    user.pending_email = pending;
                }
                if let Some(verified) = fields.email_verified {
                    user.email_verified = verified;
                }
                if let Some(role) = fields.role {
                    user.role = role;
                }
                if let Some(locked) = fields.is_locked {
                    user.is_locked = locked;
                }
                if let Some((professional, at)) = fields.professional {
                    user.is_professional = professional;
                    user.professional_status_updated_at = Some(at);
                }
                if let Some(hash) = fields.password_hash {
                    user.password_hash = hash;
                }
                if changes_anything {
                    user.updated_at = now;
                }
                let user = user.clone();
                state.email_tokens.retain(|(user_id, purpose), row| {
                    *user_id != update.id || row.used || !update.drop_tokens.contains(purpose)
                });
                if let Some(token) = update.issue_token {
                    if token.user_id != update.id {
                        return Err(unknown(format!(
                            "a token of user {} issued with user {}",
                            token.user_id, update.id
                        ))
                        .into());
                    }
                    state.store_token(token);
                }
                state.end_sessions(update.id, update.end_sessions, now);
                if let Some(key) = update.clear_failures {
                    state.failures.remove(&key);
                }
                for mail in update.mails {
                    state.queue(mail, now);
                }
                Ok(user)
            },
        )
    }

    async fn delete_user(&self, id: UserId, guard: Guard, events: Vec<AuditEvent>) -> Result<(), UpdateError> {
        self.change_recorded(
            events,
            |_| true,
            |state| {
                state.check_guard(id, guard)?;
                state.users.remove(&id.as_uuid());
                let gone: Vec<SessionId> =
                    state.sessions.values().filter(|session| session.user_id == id).map(|session| session.id).collect();
                state.sessions.retain(|_, session| session.user_id != id);
                state.refresh_tokens.retain(|_, row| !gone.contains(&row.session));
                state.email_tokens.retain(|(user_id, _), _| *user_id != id);
                state.pictures.retain(|_, picture| picture.user_id != id);
                state.totp.remove(&id);
                state.recovery_codes.remove(&id);
                state.mfa_challenges.retain(|_, challenge| challenge.user_id != id);
                Ok(())
            },
        )
    }

    async fn ping(&self) -> Result<(), PortError> {
        self.check()
    }
}

/// The sort key of a user in `sort` order, comparable with a cursor's.
fn sort_key(user: &User, sort: UserSort) -> UserCursor {
    UserCursor::after(user, sort)
}

/// Orders two cursors of the same order (the listing never mixes them).
fn compare(a: &UserCursor, b: &UserCursor) -> std::cmp::Ordering {
    match (a, b) {
        (UserCursor::CreatedAt(at_a, id_a), UserCursor::CreatedAt(at_b, id_b)) => {
            (at_a, id_a.as_uuid()).cmp(&(at_b, id_b.as_uuid()))
        }
        (UserCursor::Email(key_a, id_a), UserCursor::Email(key_b, id_b))
        | (UserCursor::Nickname(key_a, id_a), UserCursor::Nickname(key_b, id_b)) => {
            (key_a.to_lowercase(), id_a.as_uuid()).cmp(&(key_b.to_lowercase(), id_b.as_uuid()))
        }
        _ => std::cmp::Ordering::Equal,
    }
}

fn list(state: &State, query: &UserQuery) -> Result<Vec<User>, PortError> {
    if let Some(after) = &query.after
        && !after.fits(query.sort)
    {
        return Err(unknown(format!(
            "a user listing sorted by {} was given a cursor of another order",
            query.sort.as_str()
        )));
    }
    let prefix = query.prefix.as_deref().filter(|prefix| !prefix.is_empty()).map(str::to_lowercase);
    let descending = query.sort == UserSort::CreatedAtDesc;
    let mut users: Vec<(UserCursor, &User)> = state
        .users
        .values()
        .filter(|user| query.roles.contains(&user.role))
        .filter(|user| query.email_verified.is_none_or(|wanted| user.email_verified == wanted))
        .filter(|user| query.is_locked.is_none_or(|wanted| user.is_locked == wanted))
        .filter(|user| query.is_professional.is_none_or(|wanted| user.is_professional == wanted))
        .filter(|user| {
            prefix.as_ref().is_none_or(|prefix| {
                [
                    Some(user.email.as_str()),
                    Some(user.nickname.as_str()),
                    user.first_name.as_ref().map(|name| name.as_str()),
                    user.last_name.as_ref().map(|name| name.as_str()),
                ]
                .into_iter()
                .flatten()
                .any(|value| value.to_lowercase().starts_with(prefix.as_str()))
            })
        })
        .map(|user| (sort_key(user, query.sort), user))
        .filter(|(key, _)| {
            query.after.as_ref().is_none_or(|after| {
                let order = compare(key, after);
                if descending { order.is_lt() } else { order.is_gt() }
            })
        })
        .collect();
    users.sort_by(|(a, _), (b, _)| if descending { compare(b, a) } else { compare(a, b) });
    Ok(users.into_iter().take(query.limit as usize).map(|(_, user)| user.clone()).collect())
}

impl SessionStore for MemoryStore {
    async fn start_session(
        &self,
        session: NewSession,
        at: OffsetDateTime,
        events: Vec<AuditEvent>,
    ) -> Result<Session, PortError> {
        self.change_recorded(events, |_| true, |state| state.start_session(session, at))
    }

    async fn find_session_with_user(&self, id: SessionId) -> Result<Option<(Session, User)>, PortError> {
        self.read(|state| {
            let session = state.sessions.get(&id)?;
            let user = state.users.get(&session.user_id.as_uuid())?;
            Some((session.clone(), user.clone()))
        })
    }

    async fn find_refresh_token(&self, hash: TokenHash) -> Result<Option<RefreshRecord>, PortError> {
        self.read(|state| {
            let row = state.refresh_tokens.get(&hash)?;
            let session = state.sessions.get(&row.session)?;
            let user = state.users.get(&session.user_id.as_uuid())?;
            let rotation = match (row.used_at, &row.successor) {
                (Some(at), Some(successor)) => Some(Rotation {
                    at,
                    successor: successor.clone(),
                    successor_used: state.refresh_tokens.get(successor).is_some_and(|next| next.used_at.is_some()),
                }),
                _ => None,
            };
            Some(RefreshRecord { session: session.clone(), user: user.clone(), used: row.used_at.is_some(), rotation })
        })
    }

    async fn rotate_refresh_token(
        &self,
        session: SessionId,
        presented: TokenHash,
        next: TokenHash,
        now: OffsetDateTime,
    ) -> Result<Option<Session>, PortError> {
        self.change(|state| {
            let usable =
                state.refresh_tokens.get(&presented).is_some_and(|row| row.session == session && row.used_at.is_none())
                    && state.sessions.get(&session).is_some_and(|stored| stored.revoked_at.is_none());
            if !usable {
                return Ok(None);
            }
            if let Some(row) = state.refresh_tokens.get_mut(&presented) {
                row.used_at = Some(now);
                row.successor = Some(next.clone());
            }
            state.refresh_tokens.insert(next, RefreshRow::unused(session));
            let stored =
                state.sessions.get_mut(&session).ok_or_else(|| unknown(format!("session {session} vanished")))?;
            stored.last_used_at = now;
            Ok(Some(stored.clone()))
        })
    }

    async fn replace_refresh_successor(
        &self,
        session: SessionId,
        presented: TokenHash,
        successor: TokenHash,
        next: TokenHash,
        now: OffsetDateTime,
    ) -> Result<Option<Session>, PortError> {
        self.change(|state| {
            let Some(stored) = state.sessions.get(&session).filter(|stored| stored.revoked_at.is_none()).cloned()
            else {
                return Ok(None);
            };
            let retried = state.refresh_tokens.get(&presented).is_some_and(|row| {
                row.session == session && row.used_at.is_some() && row.successor.as_ref() == Some(&successor)
            });
            let replaceable =
                state.refresh_tokens.get(&successor).is_some_and(|row| row.session == session && row.used_at.is_none());
            if !(retried && replaceable) {
                return Ok(None);
            }
            // Spent with no successor: presenting the discarded token later is a reuse.
            if let Some(row) = state.refresh_tokens.get_mut(&successor) {
                row.used_at = Some(now);
            }
            if let Some(row) = state.refresh_tokens.get_mut(&presented) {
                row.successor = Some(next.clone());
            }
            state.refresh_tokens.insert(next, RefreshRow::unused(session));
            Ok(Some(stored))
        })
    }

    async fn revoke_session(
        &self,
        id: SessionId,
        owner: Option<UserId>,
        now: OffsetDateTime,
        events: Vec<AuditEvent>,
    ) -> Result<bool, PortError> {
        self.change_recorded(
            events,
            |revoked| *revoked,
            |state| {
                let Some(session) = state.sessions.get_mut(&id) else { return Ok(false) };
                if owner.is_some_and(|owner| owner != session.user_id) || session.revoked_at.is_some() {
                    return Ok(false);
                }
                session.revoked_at = Some(now);
                Ok(true)
            },
        )
    }

    async fn end_sessions(
        &self,
        user_id: UserId,
        end: SessionEnd,
        now: OffsetDateTime,
        events: Vec<AuditEvent>,
    ) -> Result<(), PortError> {
        self.change_recorded(
            events,
            |()| true,
            |state| {
                state.end_sessions(user_id, end, now);
                Ok(())
            },
        )
    }

    async fn list_sessions(&self, user_id: UserId, now: OffsetDateTime) -> Result<Vec<Session>, PortError> {
        self.read(|state| {
            let mut sessions: Vec<Session> = state
                .sessions
                .values()
                .filter(|session| {
                    session.user_id == user_id && session.revoked_at.is_none() && session.expires_at > now
                })
                .cloned()
                .collect();
            sessions.sort_by_key(|session| std::cmp::Reverse((session.created_at, session.id.as_uuid())));
            sessions
        })
    }
}

/// Whether `action` may be applied to the user's secret as it stands (`None`: no secret), with `proof`: staging
/// needs the second factor off, enabling an unconfirmed secret equal to the one checked, replacing the codes and
/// disabling the second factor on; a proof needs it on, except a time step that confirms the unconfirmed secret.
fn requirement_holds(
    action: &SecondFactorAction,
    proof: Option<&SecondFactorProof>,
    current: Option<&TotpRecord>,
) -> bool {
    let enabled = current.is_some_and(|record| record.enabled);
    let action_holds = match action {
        SecondFactorAction::Keep => true,
        SecondFactorAction::Stage { .. } => !enabled,
        SecondFactorAction::Enable { secret, .. } => {
            current.is_some_and(|record| !record.enabled && record.secret == *secret)
        }
        SecondFactorAction::ReplaceRecoveryCodes(_) | SecondFactorAction::Disable => enabled,
    };
    let proof_holds = match (proof, action) {
        (None, _) | (Some(SecondFactorProof::Step(_)), SecondFactorAction::Enable { .. }) => true,
        (Some(_), _) => enabled,
    };
    action_holds && proof_holds
}

impl SecondFactorStore for MemoryStore {
    async fn find_totp(&self, user_id: UserId) -> Result<Option<TotpRecord>, PortError> {
        self.read(|state| state.totp.get(&user_id).cloned())
    }

    async fn recovery_codes_left(&self, user_id: UserId) -> Result<u32, PortError> {
        self.read(|state| {
            let left =
                state.recovery_codes.get(&user_id).map_or(0, |codes| codes.values().filter(|used| !**used).count());
            u32::try_from(left).unwrap_or(u32::MAX)
        })
    }

    async fn apply_second_factor(&self, mut change: SecondFactorChange) -> Result<Option<Session>, SecondFactorError> {
        let events = std::mem::take(&mut change.events);
        self.change_recorded(
            events,
            |_| true,
            |state| {
                let user_id = change.user_id;
                let now = change.now;
                if change.start_session.as_ref().is_some_and(|session| session.user_id != user_id) {
                    return Err(unknown(format!(
                        "a second-factor change of user {user_id} starting another's session"
                    ))
                    .into());
                }
                if !state.users.contains_key(&user_id.as_uuid())
                    || !requirement_holds(&change.action, change.proof.as_ref(), state.totp.get(&user_id))
                {
                    return Err(SecondFactorError::StateChanged);
                }
                if let Some(hash) = &change.consume_challenge {
                    let usable = state
                        .mfa_challenges
                        .get(hash)
                        .is_some_and(|challenge| challenge.user_id == user_id && challenge.expires_at > now);
                    if !usable {
                        return Err(SecondFactorError::ChallengeUnusable);
                    }
                    state.mfa_challenges.remove(hash);
                }
                if let Some(proof) = &change.proof
                    && !state.consume_proof(user_id, proof)
                {
                    return Err(SecondFactorError::ProofRejected);
                }
                state.apply_action(user_id, change.action, now);
                let session = change.start_session.map(|session| state.start_session(session, now)).transpose()?;
                if let Some(key) = change.clear_failures {
                    state.failures.remove(&key);
                }
                for mail in change.mails {
                    state.queue(mail, now);
                }
                Ok(session)
            },
        )
    }

    async fn create_mfa_challenge(&self, challenge: NewMfaChallenge) -> Result<(), PortError> {
        self.change(|state| {
            if !state.users.contains_key(&challenge.user_id.as_uuid()) {
                return Err(unknown(format!("a login step for user {}, who does not exist", challenge.user_id)));
            }
            if state.mfa_challenges.contains_key(&challenge.token_hash) {
                return Err(unknown("a login step with the hash of another".to_owned()));
            }
            let stored = MfaChallenge { user_id: challenge.user_id, expires_at: challenge.expires_at, attempts: 0 };
            state.mfa_challenges.insert(challenge.token_hash, stored);
            Ok(())
        })
    }

    async fn take_mfa_attempt(
        &self,
        token_hash: TokenHash,
        now: OffsetDateTime,
        max_attempts: u32,
    ) -> Result<Option<MfaChallenge>, PortError> {
        self.change(|state| {
            let Some(challenge) = state
                .mfa_challenges
                .get_mut(&token_hash)
                .filter(|challenge| challenge.expires_at > now && challenge.attempts < max_attempts)
            else {
                return Ok(None);
            };
            challenge.attempts += 1;
            Ok(Some(challenge.clone()))
        })
    }
}

impl EmailTokenStore for MemoryStore {
    async fn find_email_token(&self, hash: TokenHash) -> Result<Option<EmailTokenRecord>, PortError> {
        self.read(|state| {
            state.email_tokens.iter().find(|(_, row)| row.hash == hash && !row.used).map(|((user_id, purpose), row)| {
                EmailTokenRecord {
                    user_id: *user_id,
                    purpose: *purpose,
                    new_email: row.new_email.clone(),
                    expires_at: row.expires_at,
                }
            })
        })
    }
}

impl LoginThrottle for MemoryStore {
    async fn login_failures(&self, key: String) -> Result<Option<FailureCount>, PortError> {
        self.read(|state| state.failures.get(&key).copied())
    }

    async fn record_login_failure(
        &self,
        key: String,
        now: OffsetDateTime,
        policy: BackoffPolicy,
        events: Vec<AuditEvent>,
    ) -> Result<Option<OffsetDateTime>, PortError> {
        self.change_recorded(
            events,
            |_| true,
            |state| {
                let count = state.failures.entry(key).or_insert(FailureCount { failures: 0, blocked_until: None });
                count.failures = count.failures.saturating_add(1);
                if let Some(block) = policy.block_for(count.failures) {
                    let until = now + block;
                    count.blocked_until = Some(count.blocked_until.map_or(until, |current| current.max(until)));
                }
                Ok(count.blocked_until)
            },
        )
    }

    async fn clear_login_failures(&self, key: String) -> Result<(), PortError> {
        self.change(|state| {
            state.failures.remove(&key);
            Ok(())
        })
    }
}

impl RequestCounter for MemoryStore {
    async fn count_request(
        &self,
        route: &'static str,
        client: IpAddr,
        now: OffsetDateTime,
        window: Duration,
    ) -> Result<WindowCount, PortError> {
        self.check()?;
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let (started, hits) = windows.entry((route, client)).or_insert((now, 0));
        if now - *started >= window {
            *started = now;
            *hits = 0;
        }
        *hits = hits.saturating_add(1);
        Ok(WindowCount { hits: *hits, ends_at: *started + window })
    }
}

impl MailOutbox for MemoryStore {
    async fn queue_mail(&self, mail: OutgoingMail) -> Result<(), PortError> {
        let now = self.clock.now();
        self.change(|state| {
            state.queue(mail, now);
            Ok(())
        })
    }

    async fn claim_due_mail(
        &self,
        now: OffsetDateTime,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<OutboxMessage>, PortError> {
        self.change(|state| {
            let mut claimed = Vec::new();
            for queued in &mut state.outbox {
                if claimed.len() >= limit as usize {
                    break;
                }
                if queued.state == MailState::Pending && queued.next_attempt_at <= now {
                    queued.next_attempt_at = now + lease;
                    claimed.push(OutboxMessage { id: queued.id, mail: queued.mail.clone(), attempts: queued.attempts });
                }
            }
            Ok(claimed)
        })
    }

    async fn release_mail(
        &self,
        ids: Vec<Uuid>,
        held_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(), PortError> {
        self.change(|state| {
            for queued in &mut state.outbox {
                if ids.contains(&queued.id)
                    && queued.state == MailState::Pending
                    && queued.next_attempt_at == held_until
                {
                    queued.next_attempt_at = now;
                }
            }
            Ok(())
        })
    }

    async fn mark_mail_sent(&self, id: Uuid, _now: OffsetDateTime) -> Result<(), PortError> {
        self.change(|state| {
            if let Some(queued) =
                state.outbox.iter_mut().find(|queued| queued.id == id && queued.state != MailState::Sent)
            {
                queued.state = MailState::Sent;
                queued.attempts += 1;
                // Delivered: the links it carried are not kept.
                queued.mail.text.clear();
                queued.mail.html.clear();
            }
            Ok(())
        })
    }

    async fn mark_mail_failed(
        &self,
        id: Uuid,
        retry_at: Option<OffsetDateTime>,
        error: String,
    ) -> Result<(), PortError> {
        self.change(|state| {
            if let Some(queued) =
                state.outbox.iter_mut().find(|queued| queued.id == id && queued.state == MailState::Pending)
            {
                queued.attempts += 1;
                queued.last_error = Some(error);
                match retry_at {
                    Some(at) => queued.next_attempt_at = at,
                    None => {
                        // A dead letter keeps what explains it (recipient, subject, error), not its links.
                        queued.state = MailState::Dead;
                        queued.mail.text.clear();
                        queued.mail.html.clear();
                    }
                }
            }
            Ok(())
        })
    }
}

impl AccountRequests for MemoryStore {
    async fn queue_account_request(
        &self,
        kind: AccountRequestKind,
        email: EmailAddress,
        now: OffsetDateTime,
    ) -> Result<(), PortError> {
        self.change(|state| {
            let canonical = email.canonical();
            if !state.requests.iter().any(|row| row.kind == kind && row.email.canonical() == canonical) {
                state.requests.push(RequestRow { id: Uuid::now_v7(), kind, email, available_at: now });
            }
            Ok(())
        })
    }

    async fn claim_account_requests(
        &self,
        now: OffsetDateTime,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<AccountRequest>, PortError> {
        self.change(|state| {
            let mut claimed = Vec::new();
            for row in &mut state.requests {
                if claimed.len() >= limit as usize {
                    break;
                }
                if row.available_at <= now {
                    row.available_at = now + lease;
                    claimed.push(AccountRequest { id: row.id, kind: row.kind, email: row.email.clone() });
                }
            }
            Ok(claimed)
        })
    }

    async fn finish_account_request(&self, id: Uuid) -> Result<(), PortError> {
        self.change(|state| {
            state.requests.retain(|row| row.id != id);
            Ok(())
        })
    }
}

impl PictureRecords for MemoryStore {
    async fn insert_active_picture(
        &self,
        picture: StoredPicture,
        now: OffsetDateTime,
        events: Vec<AuditEvent>,
    ) -> Result<Option<StoredPicture>, PictureWriteError> {
        self.change_recorded(
            events,
            |_| true,
            |state| {
                let user = state.users.get_mut(&picture.user_id.as_uuid()).ok_or(PictureWriteError::UserGone)?;
                user.updated_at = now;
                let previous_id = user.profile_picture_id.replace(picture.id);
                let previous = previous_id.and_then(|id| state.pictures.get_mut(&id)).map(|previous| {
                    previous.archived = true;
                    previous.clone()
                });
                state.pictures.insert(picture.id, StoredPicture { archived: false, ..picture });
                Ok(previous)
            },
        )
    }

    async fn misplaced_pictures(&self, limit: u32) -> Result<Vec<StoredPicture>, PortError> {
        self.read(|state| {
            let mut misplaced: Vec<StoredPicture> =
                state.pictures.values().filter(|picture| !picture.is_placed()).cloned().collect();
            misplaced.sort_by_key(|picture| (picture.created_at, picture.id));
            misplaced.truncate(limit as usize);
            misplaced
        })
    }

    async fn finish_move(&self, id: Uuid, from: String, to: String, archived: bool) -> Result<bool, PortError> {
        self.change(|state| match state.pictures.get_mut(&id) {
            Some(picture) if picture.prefix == from && picture.archived == archived => {
                picture.prefix = to;
                Ok(true)
            }
            _ => Ok(false),
        })
    }

    async fn active_picture(&self, user_id: UserId) -> Result<Option<StoredPicture>, PortError> {
        self.read(|state| {
            let id = state.users.get(&user_id.as_uuid())?.profile_picture_id?;
            state.pictures.get(&id).cloned()
        })
    }

    async fn archived_pictures(&self, user_id: UserId) -> Result<Vec<StoredPicture>, PortError> {
        self.read(|state| {
            let mut archived: Vec<StoredPicture> = state
                .pictures
                .values()
                .filter(|picture| picture.user_id == user_id && picture.archived)
                .cloned()
                .collect();
            archived.sort_by_key(|picture| std::cmp::Reverse((picture.created_at, picture.id)));
            archived
        })
    }

    async fn archive_active_picture(
        &self,
        user_id: UserId,
        now: OffsetDateTime,
        events: Vec<AuditEvent>,
    ) -> Result<Option<StoredPicture>, PortError> {
        self.change_recorded(events, Option::is_some, |state| {
            let Some(user) = state.users.get_mut(&user_id.as_uuid()) else { return Ok(None) };
            let Some(id) = user.profile_picture_id.take() else { return Ok(None) };
            user.updated_at = now;
            Ok(state.pictures.get_mut(&id).map(|picture| {
                picture.archived = true;
                picture.clone()
            }))
        })
    }

    async fn restore_picture(
        &self,
        user_id: UserId,
        id: Uuid,
        now: OffsetDateTime,
        events: Vec<AuditEvent>,
    ) -> Result<Option<(StoredPicture, Option<StoredPicture>)>, PortError> {
        self.change_recorded(events, Option::is_some, |state| {
            let restorable =
                state.pictures.get(&id).is_some_and(|picture| picture.user_id == user_id && picture.archived);
            let Some(user) = state.users.get_mut(&user_id.as_uuid()).filter(|_| restorable) else { return Ok(None) };
            user.updated_at = now;
            let previous_id = user.profile_picture_id.replace(id);
            let previous = previous_id.and_then(|previous| state.pictures.get_mut(&previous)).map(|previous| {
                previous.archived = true;
                previous.clone()
            });
            let restored = state.pictures.get_mut(&id).map(|restored| {
                restored.archived = false;
                restored.clone()
            });
            Ok(restored.map(|restored| (restored, previous)))
        })
    }
}

impl AuditTrail for MemoryStore {
    async fn record_events(&self, events: Vec<AuditEvent>) -> Result<(), PortError> {
        self.check()?;
        self.append(events);
        Ok(())
    }

    async fn list_events(&self, query: EventQuery) -> Result<Vec<AuditEvent>, PortError> {
        self.check()?;
        let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let mut matching: Vec<AuditEvent> = events
            .iter()
            .filter(|event| query.after.is_none_or(|after| (event.at, event.id) < after))
            .filter(|event| query.kinds.is_empty() || query.kinds.contains(&event.kind))
            .filter(|event| query.actor_id.is_none_or(|actor| event.actor_id == Some(actor)))
            .filter(|event| query.subject_id.is_none_or(|subject| event.subject_id == Some(subject)))
            .filter(|event| query.since.is_none_or(|since| event.at >= since))
            .filter(|event| query.until.is_none_or(|until| event.at < until))
            .cloned()
            .collect();
        matching.sort_by_key(|event| std::cmp::Reverse((event.at, event.id)));
        matching.truncate(query.limit as usize);
        Ok(matching)
    }
}
