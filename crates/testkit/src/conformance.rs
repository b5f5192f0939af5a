//! A conformance suite for storage adapters: the semantics the domain's storage ports document, checked through
//! the ports alone, so that every adapter set (the Postgres one, the in-memory one) is held to the same contract.
//!
//! Each check is a `pub async fn` that takes a fresh, empty store and panics on the first broken promise. The
//! [`conformance_tests!`](crate::conformance_tests) macro turns the whole list into one `#[tokio::test]` per check,
//! given an expression that makes a fresh store:
//!
//! ```ignore
//! users_testkit::conformance_tests!(async { (MemoryStore::new(), ()) });
//! ```
//!
//! The expression yields the store and a value kept alive until the check ends (a test database, say).
//!
//! The checks only assert what any faithful adapter can return: timestamps they pass in have whole microseconds (a
//! database keeps no more), times an adapter sets itself (creation, queueing) are compared with each other but
//! never with a value, mails queued in one change are compared as a set, and sorted listings use values whose order
//! is the same byte by byte and under common collations. Claims of queued mail are made at least an hour ahead of
//! the real time, since an adapter may stamp queued mail with its own clock.

use std::collections::BTreeSet;

use time::{Duration, OffsetDateTime};
use users_domain::Role;
use users_domain::audit::{AuditEvent, EventQuery, EventType};
use users_domain::ports::{
    AccountRequestKind, AccountRequests, AuditTrail, BackoffPolicy, EmailTokenPurpose, EmailTokenStore, FailureCount,
    Guard, InsertUserError, LoginThrottle, MailOutbox, MfaChallenge, NewAccount, NewEmailToken, NewMfaChallenge,
    OutgoingMail, PictureRecords, PictureSize, PictureVariant, PictureWriteError, PortError, ProfileChanges,
    RequestCounter, Rotation, SealedSecret, SecondFactorAction, SecondFactorChange, SecondFactorError,
    SecondFactorProof, SecondFactorStore, SessionEnd, SessionStore, StoredPicture, TotpRecord, UpdateError, UserCursor,
    UserFields, UserQuery, UserSort, UserStore, UserUpdate,
};
use users_domain::session::{NewSession, RefreshToken, Session, SessionId, TokenHash};
use users_domain::user::{
    Bio, EmailAddress, NewUser, Nickname, PasswordHash, PersonName, ProfileUrl, ProfileUrlKind, User, UserId,
};
use uuid::Uuid;

/// Every storage port at once: what an adapter set must implement to run the suite.
pub trait Storage:
    UserStore
    + SessionStore
    + EmailTokenStore
    + LoginThrottle
    + MailOutbox
    + AccountRequests
    + SecondFactorStore
    + PictureRecords
    + RequestCounter
    + AuditTrail
{
}

impl<T> Storage for T where
    T: UserStore
        + SessionStore
        + EmailTokenStore
        + LoginThrottle
        + MailOutbox
        + AccountRequests
        + SecondFactorStore
        + PictureRecords
        + RequestCounter
        + AuditTrail
{
}

/// Generates one `#[tokio::test]` per conformance check. `$fresh` is an expression (evaluated anew for each
/// test) that makes a future of `(store, keep)`: a fresh, empty store, and a value that must live as long as the
/// check (`()` when there is none). The calling crate needs `tokio` with the `macros` and `rt` features.
#[macro_export]
macro_rules! conformance_tests {
    ($fresh:expr) => {
        $crate::conformance_tests!(@checks $fresh;
            users_are_inserted_and_found,
            duplicate_emails_and_nicknames_are_refused_case_insensitively,
            a_new_account_is_stored_with_its_token_and_mails_or_not_at_all,
            another_unlocked_admin_counts_neither_the_user_nor_locked_admins,
            a_change_writes_the_columns_it_names_and_updated_at,
            a_change_applies_every_part_in_order,
            a_failed_change_stores_nothing,
            the_role_guard_holds_a_change_to_the_role_it_was_decided_for,
            the_admin_guard_needs_another_unlocked_admin,
            email_tokens_are_consumed_once,
            concurrent_uses_of_one_email_token_let_exactly_one_apply,
            an_issued_token_replaces_the_previous_one_and_survives_a_drop_of_its_purpose,
            changes_end_the_sessions_they_name,
            deleting_a_user_takes_what_hangs_off_them,
            deleting_a_user_checks_its_guard,
            sessions_are_started_and_found_with_their_user,
            refresh_tokens_rotate_by_compare_and_set,
            concurrent_rotations_of_one_token_let_exactly_one_win,
            a_retry_replaces_the_unused_successor_by_compare_and_set,
            concurrent_replacements_of_one_successor_let_exactly_one_win,
            sessions_are_revoked_once_and_only_by_their_owner,
            sessions_are_listed_newest_first_while_active,
            email_tokens_are_found_while_unused,
            login_failures_are_counted_and_blocked_by_the_policy,
            a_login_block_is_never_shortened,
            login_failures_are_cleared_per_key,
            requests_are_counted_per_route_and_address_in_fixed_windows,
            mail_is_claimed_oldest_first_under_leases,
            mail_is_marked_sent_retried_and_dead,
            untried_mail_is_handed_back_from_its_claim_only,
            account_requests_are_deduplicated_claimed_and_finished,
            a_new_picture_becomes_active_and_archives_the_previous_one,
            a_picture_of_a_missing_user_is_refused,
            pictures_are_moved_archived_and_restored,
            users_are_listed_in_every_order_and_page,
            users_are_listed_with_every_filter,
            the_listing_prefix_is_literal_and_case_insensitive,
            a_staged_secret_is_replaced_until_the_second_factor_is_on,
            enabling_needs_the_secret_that_was_checked_and_stores_the_recovery_codes,
            a_time_step_is_accepted_once_and_only_after_the_last_one,
            a_recovery_code_is_accepted_once,
            replaced_recovery_codes_stop_working,
            disabling_clears_the_second_factor_and_the_pending_login_steps,
            login_step_tries_are_counted_up_to_the_limit_while_unexpired,
            a_login_step_is_consumed_once_and_only_by_its_own_user,
            a_failed_second_factor_change_stores_nothing,
            a_second_factor_change_starts_its_session_and_clears_the_backoff,
            concurrent_changes_with_one_time_step_let_exactly_one_apply,
            concurrent_tries_on_the_last_attempt_let_exactly_one_through,
            deleting_a_user_takes_their_second_factor,
            events_are_written_with_their_change_and_not_with_a_refused_one,
            events_of_revocations_are_written_only_when_a_session_ends,
            events_are_listed_newest_first_with_filters_and_pages,
            events_outlive_the_user_they_name,
        );
    };
    (@checks $fresh:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let (store, _keep) = $fresh.await;
                $crate::conformance::$check(store).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------------------------

/// `at` cut to whole microseconds.
#[must_use]
pub fn micros(at: OffsetDateTime) -> OffsetDateTime {
    at.replace_nanosecond(at.nanosecond() / 1_000 * 1_000).unwrap()
}

/// The current time in whole microseconds.
#[must_use]
pub fn now() -> OffsetDateTime {
    micros(OffsetDateTime::now_utc())
}

fn email(raw: &str) -> EmailAddress {
    EmailAddress::parse(raw).unwrap()
}

fn nickname(raw: &str) -> Nickname {
    Nickname::parse(raw).unwrap()
}

fn name(raw: &str) -> Option<PersonName> {
    PersonName::parse(raw).unwrap()
}

fn hash(raw: &str) -> PasswordHash {
    PasswordHash::new(format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ${raw}"))
}

/// A new unverified ANONYMOUS user with this email and nickname.
#[must_use]
pub fn new_user(address: &str, nick: &str) -> NewUser {
    NewUser {
        id: UserId::generate(),
        email: email(address),
        nickname: nickname(nick),
        first_name: None,
        last_name: None,
        bio: None,
        linkedin_profile_url: None,
        github_profile_url: None,
        role: Role::Anonymous,
        email_verified: false,
        password_hash: hash("aGFzaGhhc2g"),
    }
}

fn account(user: NewUser) -> NewAccount {
    NewAccount { user, token: None, mails: Vec::new(), events: Vec::new() }
}

async fn insert<S: Storage>(store: &S, address: &str, nick: &str) -> User {
    store.insert_user(account(new_user(address, nick))).await.unwrap()
}

async fn insert_with_role<S: Storage>(store: &S, address: &str, nick: &str, role: Role) -> User {
    let mut user = new_user(address, nick);
    user.role = role;
    user.email_verified = role != Role::Anonymous;
    store.insert_user(account(user)).await.unwrap()
}

async fn set_locked<S: Storage>(store: &S, user: &User, locked: bool) -> User {
    let mut update = UserUpdate::new(user.id, now());
    update.fields.is_locked = Some(locked);
    store.update_user(update).await.unwrap()
}

/// A mail whose subject names it.
fn mail(to: &str, subject: &str) -> OutgoingMail {
    OutgoingMail {
        to: email(to),
        subject: subject.to_owned(),
        text: format!("{subject}\n\nplain text"),
        html: format!("<p>{subject}</p>"),
    }
}

fn token(user_id: UserId, purpose: EmailTokenPurpose, expires_at: OffsetDateTime) -> NewEmailToken {
    let new_email = (purpose == EmailTokenPurpose::EmailChange).then(|| email("new-address@example.com"));
    NewEmailToken { hash: RefreshToken::generate().hash(), user_id, purpose, new_email, expires_at }
}

/// Stores `token` through a change that does nothing else.
async fn issue<S: Storage>(store: &S, token: &NewEmailToken) {
    let mut update = UserUpdate::new(token.user_id, now());
    update.issue_token = Some(token.clone());
    store.update_user(update).await.unwrap();
}

/// A change of `user` that consumes `hash`.
fn consuming(user: UserId, hash: &TokenHash, at: OffsetDateTime) -> UserUpdate {
    let mut update = UserUpdate::new(user, at);
    update.consume_token = Some(hash.clone());
    update
}

async fn token_exists<S: Storage>(store: &S, hash: &TokenHash) -> bool {
    store.find_email_token(hash.clone()).await.unwrap().is_some()
}

/// A new session of `user_id` created at `at`, ending 30 days later, with its first refresh token's hash.
fn new_session(user_id: UserId, at: OffsetDateTime) -> (NewSession, TokenHash) {
    let refresh = RefreshToken::generate().hash();
    let session = NewSession {
        id: SessionId::generate(),
        user_id,
        expires_at: at + Duration::days(30),
        refresh_token_hash: refresh.clone(),
        user_agent: Some("curl/8.5".to_owned()),
        ip: Some("203.0.113.7".to_owned()),
    };
    (session, refresh)
}

async fn start<S: Storage>(store: &S, user_id: UserId, at: OffsetDateTime) -> (Session, TokenHash) {
    let (session, refresh) = new_session(user_id, at);
    (store.start_session(session, at, Vec::new()).await.unwrap(), refresh)
}

async fn session<S: Storage>(store: &S, id: SessionId) -> Session {
    store.find_session_with_user(id).await.unwrap().unwrap().0
}

/// The subjects of every mail pending now, claimed far enough ahead that anything queued counts as due, with a
/// lease of zero so a later look sees them again.
async fn pending_subjects<S: Storage>(store: &S) -> BTreeSet<String> {
    let ahead = now() + Duration::days(365);
    let claimed = store.claim_due_mail(ahead, 10_000, Duration::ZERO).await.unwrap();
    claimed.into_iter().map(|message| message.mail.subject).collect()
}

fn subjects(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

/// A complete picture of `user_id` created at `created_at`, under its active prefix.
/// The ids of the pictures with a recorded move, sorted.
async fn misplaced<S: Storage>(store: &S, limit: u32) -> Vec<Uuid> {
    sorted(store.misplaced_pictures(limit).await.unwrap().into_iter().map(|picture| picture.id))
}

fn sorted(ids: impl IntoIterator<Item = Uuid>) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = ids.into_iter().collect();
    ids.sort();
    ids
}

fn picture(user_id: UserId, created_at: OffsetDateTime) -> StoredPicture {
    let id = Uuid::now_v7();
    let variants = PictureSize::ALL
        .iter()
        .map(|size| PictureVariant {
            size: *size,
            content_type: if *size == PictureSize::Thumb { "image/png" } else { "image/jpeg" }.to_owned(),
            width: size.max_edge(),
            height: size.max_edge() / 2,
            bytes: u64::from(size.max_edge()) * 10,
            sha256: format!("{:064x}", size.max_edge()),
        })
        .collect();
    StoredPicture {
        id,
        user_id,
        created_at,
        archived: false,
        prefix: StoredPicture::active_prefix(user_id, id),
        variants,
    }
}

/// `picture` with its variants in one order and its archive flag as given, for comparisons that do not depend on
/// the order an adapter returns the variants in.
fn normalised(mut picture: StoredPicture) -> StoredPicture {
    picture.variants.sort_by_key(|variant| variant.size.as_str());
    picture
}

fn archived(picture: &StoredPicture) -> StoredPicture {
    normalised(StoredPicture { archived: true, ..picture.clone() })
}

fn ids(users: &[User]) -> Vec<UserId> {
    users.iter().map(|user| user.id).collect()
}

/// A first page of everyone, in `sort` order, `limit` at most.
pub fn query(sort: UserSort, limit: u32) -> UserQuery {
    UserQuery {
        limit,
        sort,
        after: None,
        prefix: None,
        roles: Role::ALL.to_vec(),
        email_verified: None,
        is_locked: None,
        is_professional: None,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------------------------------

/// An inserted user reads back as given, with the defaults a new user gets; lookups by email and nickname ignore
/// case.
pub async fn users_are_inserted_and_found<S: Storage>(store: S) {
    let mut new = new_user("Ada.Lovelace@Example.com", "Ada_L");
    new.first_name = name("Ada");
    new.last_name = name("Lovelace");
    new.bio = Bio::parse("Analyst.\nPoet of science.").unwrap();
    new.linkedin_profile_url = ProfileUrl::parse("https://www.linkedin.com/in/ada", ProfileUrlKind::LinkedIn).unwrap();
    new.github_profile_url = ProfileUrl::parse("https://github.com/ada", ProfileUrlKind::GitHub).unwrap();
    new.role = Role::Authenticated;
    new.email_verified = true;
    let user = store.insert_user(account(new.clone())).await.unwrap();
    assert_eq!(user.id, new.id);
    assert_eq!(user.email.as_str(), "Ada.Lovelace@example.com");
    assert_eq!(user.nickname, new.nickname);
    assert_eq!((&user.first_name, &user.last_name, &user.bio), (&new.first_name, &new.last_name, &new.bio));
    assert_eq!(
        (&user.linkedin_profile_url, &user.github_profile_url),
        (&new.linkedin_profile_url, &new.github_profile_url)
    );
    assert_eq!((user.role, user.email_verified), (Role::Authenticated, true));
    assert_eq!(user.password_hash, new.password_hash);
    assert_eq!(user.profile_picture_id, None);
    assert!(!user.is_professional && user.professional_status_updated_at.is_none());
    assert!(!user.is_locked && user.pending_email.is_none() && user.last_login_at.is_none());
    assert!(!user.mfa_enabled, "a new user has no second factor");
    assert_eq!(user.created_at, user.updated_at);

    assert_eq!(store.find_user(user.id).await.unwrap(), Some(user.clone()));
    assert_eq!(store.find_user_by_email(email("ada.lovelace@example.com")).await.unwrap(), Some(user.clone()));
    assert_eq!(store.find_user_by_email(email("ADA.LOVELACE@EXAMPLE.COM")).await.unwrap(), Some(user.clone()));
    assert_eq!(store.find_user_by_email(email("ada@example.com")).await.unwrap(), None);
    assert_eq!(store.find_user(UserId::generate()).await.unwrap(), None);
    assert!(store.nickname_exists(nickname("ada_l")).await.unwrap());
    assert!(store.nickname_exists(nickname("ADA_L")).await.unwrap());
    assert!(!store.nickname_exists(nickname("ada_m")).await.unwrap());
    store.ping().await.unwrap();
}

/// An email or nickname another user has, in any case, is refused, and nothing of the refused user is stored.
pub async fn duplicate_emails_and_nicknames_are_refused_case_insensitively<S: Storage>(store: S) {
    let grace = insert(&store, "grace@example.com", "grace").await;
    let taken_email = store.insert_user(account(new_user("GRACE@Example.com", "hopper"))).await;
    assert!(matches!(taken_email, Err(InsertUserError::EmailTaken)), "{taken_email:?}");
    let taken_nickname = store.insert_user(account(new_user("hopper@example.com", "GRACE"))).await;
    assert!(matches!(taken_nickname, Err(InsertUserError::NicknameTaken)), "{taken_nickname:?}");
    assert!(!store.nickname_exists(nickname("hopper")).await.unwrap());
    assert_eq!(store.find_user_by_email(email("hopper@example.com")).await.unwrap(), None);
    assert_eq!(store.list_users(query(UserSort::CreatedAt, 10)).await.unwrap(), [grace]);
}

/// A new account's token and mails are stored with it; when the insert fails, neither is.
pub async fn a_new_account_is_stored_with_its_token_and_mails_or_not_at_all<S: Storage>(store: S) {
    let expires = now() + Duration::hours(24);
    let user = new_user("ada@example.com", "ada");
    let verify = token(user.id, EmailTokenPurpose::Verify, expires);
    let created = NewAccount {
        user: user.clone(),
        token: Some(verify.clone()),
        mails: vec![mail("ada@example.com", "welcome"), mail("ada@example.com", "verify")],
        events: Vec::new(),
    };
    store.insert_user(created).await.unwrap();
    let record = store.find_email_token(verify.hash.clone()).await.unwrap().unwrap();
    assert_eq!((record.user_id, record.purpose, record.expires_at), (user.id, EmailTokenPurpose::Verify, expires));
    assert_eq!(pending_subjects(&store).await, subjects(&["welcome", "verify"]));

    let clash = new_user("ADA@example.com", "other");
    let clash_token = token(clash.id, EmailTokenPurpose::Verify, expires);
    let refused = NewAccount {
        user: clash,
        token: Some(clash_token.clone()),
        mails: vec![mail("ada@example.com", "x")],
        events: Vec::new(),
    };
    assert!(matches!(store.insert_user(refused).await, Err(InsertUserError::EmailTaken)));
    assert!(!token_exists(&store, &clash_token.hash).await, "a refused account's token is not stored");
    assert_eq!(pending_subjects(&store).await, subjects(&["welcome", "verify"]), "nor are its mails");

    // A token bound to another user is refused as a bug, and takes the account with it.
    let stray = new_user("stray@example.com", "stray");
    let foreign =
        NewAccount { token: Some(token(user.id, EmailTokenPurpose::PasswordReset, expires)), ..account(stray) };
    assert!(matches!(store.insert_user(foreign).await, Err(InsertUserError::Port(PortError::Unknown(_)))));
    assert_eq!(store.find_user_by_email(email("stray@example.com")).await.unwrap(), None);
}

/// `another_unlocked_admin` answers whether an unlocked ADMIN other than the one named exists.
pub async fn another_unlocked_admin_counts_neither_the_user_nor_locked_admins<S: Storage>(store: S) {
    let first = insert_with_role(&store, "first@example.com", "first", Role::Admin).await;
    assert!(!store.another_unlocked_admin(first.id).await.unwrap(), "alone");
    let locked = insert_with_role(&store, "locked@example.com", "locked", Role::Admin).await;
    set_locked(&store, &locked, true).await;
    insert_with_role(&store, "manager@example.com", "manager", Role::Manager).await;
    assert!(!store.another_unlocked_admin(first.id).await.unwrap(), "a locked ADMIN and a MANAGER do not count");
    assert!(store.another_unlocked_admin(locked.id).await.unwrap(), "the first one counts for the locked one");
    let second = insert_with_role(&store, "second@example.com", "second", Role::Admin).await;
    assert!(store.another_unlocked_admin(first.id).await.unwrap());
    assert!(store.another_unlocked_admin(second.id).await.unwrap());
}

/// A change writes exactly the columns it names (clearing those set to `Some(None)`) and sets `updated_at` to its
/// time; a change without columns leaves the row, `updated_at` included, as it was.
pub async fn a_change_writes_the_columns_it_names_and_updated_at<S: Storage>(store: S) {
    let mut new = new_user("ada@example.com", "ada");
    new.first_name = name("Ada");
    new.bio = Bio::parse("Analyst").unwrap();
    let before = store.insert_user(account(new)).await.unwrap();
    let at = now() + Duration::minutes(1);
    let github = ProfileUrl::parse("https://github.com/lovelace", ProfileUrlKind::GitHub).unwrap();
    let linkedin = ProfileUrl::parse("https://linkedin.com/in/lovelace", ProfileUrlKind::LinkedIn).unwrap();
    let mut update = UserUpdate::new(before.id, at);
    update.fields = UserFields {
        profile: ProfileChanges {
            nickname: Some(nickname("Countess")),
            first_name: Some(None),
            last_name: Some(name("Lovelace")),
            bio: Some(None),
            linkedin_profile_url: Some(linkedin.clone()),
            github_profile_url: Some(github.clone()),
        },
        email: Some(email("countess@example.com")),
        pending_email: Some(Some(email("pending@example.com"))),
        email_verified: Some(true),
        role: Some(Role::Manager),
        is_locked: Some(true),
        professional: Some((true, at - Duration::seconds(5))),
        password_hash: Some(hash("bmV3aGFzaA")),
    };
    let after = store.update_user(update).await.unwrap();
    let expected = User {
        nickname: nickname("Countess"),
        first_name: None,
        last_name: name("Lovelace"),
        bio: None,
        linkedin_profile_url: linkedin,
        github_profile_url: github,
        email: email("countess@example.com"),
        pending_email: Some(email("pending@example.com")),
        email_verified: true,
        role: Role::Manager,
        is_locked: true,
        is_professional: true,
        professional_status_updated_at: Some(at - Duration::seconds(5)),
        password_hash: hash("bmV3aGFzaA"),
        updated_at: at,
        ..before.clone()
    };
    assert_eq!(after, expected);
    assert_eq!(store.find_user(before.id).await.unwrap(), Some(expected.clone()));

    // Nothing to write: the row is returned as it is, `updated_at` included.
    let unchanged = store.update_user(UserUpdate::new(before.id, at + Duration::minutes(1))).await.unwrap();
    assert_eq!(unchanged, expected);
    // One's own address in another case is no conflict.
    let mut recase = UserUpdate::new(before.id, at + Duration::minutes(2));
    recase.fields.email = Some(email("COUNTESS@example.com"));
    recase.fields.profile.nickname = Some(nickname("COUNTESS"));
    let recased = store.update_user(recase).await.unwrap();
    assert_eq!((recased.email.as_str(), recased.nickname.as_str()), ("COUNTESS@example.com", "COUNTESS"));
    assert_eq!(recased.updated_at, at + Duration::minutes(2));
}

/// Every part of a change is applied: the token consumed, columns written, tokens dropped, a token issued,
/// sessions ended, the backoff cleared and mails queued.
pub async fn a_change_applies_every_part_in_order<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let t0 = now();
    let (kept, _) = start(&store, user.id, t0).await;
    let (ended, _) = start(&store, user.id, t0).await;
    let verify = token(user.id, EmailTokenPurpose::Verify, t0 + Duration::hours(1));
    let reset = token(user.id, EmailTokenPurpose::PasswordReset, t0 + Duration::hours(1));
    issue(&store, &verify).await;
    issue(&store, &reset).await;
    store.record_login_failure("ada@example.com".to_owned(), t0, BackoffPolicy::default(), Vec::new()).await.unwrap();

    let at = t0 + Duration::minutes(1);
    let change = token(user.id, EmailTokenPurpose::EmailChange, at + Duration::hours(1));
    let mut update = consuming(user.id, &verify.hash, at);
    update.fields.email_verified = Some(true);
    update.drop_tokens = vec![EmailTokenPurpose::PasswordReset];
    update.issue_token = Some(change.clone());
    update.end_sessions = SessionEnd::AllBut(kept.id);
    update.clear_failures = Some("ada@example.com".to_owned());
    update.mails = vec![mail("ada@example.com", "first"), mail("ada@example.com", "second")];
    let after = store.update_user(update).await.unwrap();

    assert!(after.email_verified);
    assert!(!token_exists(&store, &verify.hash).await, "consumed");
    assert!(!token_exists(&store, &reset.hash).await, "dropped");
    let issued = store.find_email_token(change.hash.clone()).await.unwrap().unwrap();
    assert_eq!((issued.purpose, issued.new_email), (EmailTokenPurpose::EmailChange, change.new_email));
    assert_eq!(session(&store, kept.id).await.revoked_at, None);
    assert_eq!(session(&store, ended.id).await.revoked_at, Some(at));
    assert_eq!(store.login_failures("ada@example.com".to_owned()).await.unwrap(), None);
    assert_eq!(pending_subjects(&store).await, subjects(&["first", "second"]));
}

/// A change that fails, on its guard, its token or a taken nickname or email, stores none of its parts.
pub async fn a_failed_change_stores_nothing<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    insert(&store, "victor@example.com", "victor").await;
    let t0 = now();
    let (live, _) = start(&store, user.id, t0).await;
    let reset = token(user.id, EmailTokenPurpose::PasswordReset, t0 + Duration::hours(1));
    issue(&store, &reset).await;
    store.record_login_failure("ada@example.com".to_owned(), t0, BackoffPolicy::default(), Vec::new()).await.unwrap();
    let before = store.find_user(user.id).await.unwrap().unwrap();
    let failures = store.login_failures("ada@example.com".to_owned()).await.unwrap();

    let at = t0 + Duration::minutes(1);
    let fresh = token(user.id, EmailTokenPurpose::Verify, at + Duration::hours(1));
    let full = |consume: &TokenHash| {
        let mut update = consuming(user.id, consume, at);
        update.fields.profile.first_name = Some(name("Changed"));
        update.fields.email_verified = Some(true);
        update.drop_tokens = EmailTokenPurpose::ALL.to_vec();
        update.issue_token = Some(fresh.clone());
        update.end_sessions = SessionEnd::All;
        update.clear_failures = Some("ada@example.com".to_owned());
        update.mails = vec![mail("ada@example.com", "never")];
        update
    };
    let mut nickname_taken = full(&reset.hash);
    nickname_taken.fields.profile.nickname = Some(nickname("VICTOR"));
    let mut email_taken = full(&reset.hash);
    email_taken.fields.email = Some(email("Victor@example.com"));
    let mut role_changed = full(&reset.hash);
    role_changed.guard.role = Some(Role::Authenticated);
    let mut last_admin = full(&reset.hash);
    last_admin.guard.another_admin = true;
    let unknown_token = full(&RefreshToken::generate().hash());
    for (update, what) in [
        (nickname_taken, "a taken nickname"),
        (email_taken, "a taken email"),
        (role_changed, "a changed role"),
        (last_admin, "no other admin"),
        (unknown_token, "an unknown token"),
    ] {
        let outcome = store.update_user(update).await;
        let expected = match what {
            "a taken nickname" => matches!(outcome, Err(UpdateError::NicknameTaken)),
            "a taken email" => matches!(outcome, Err(UpdateError::EmailTaken)),
            "a changed role" => matches!(outcome, Err(UpdateError::RoleChanged)),
            "no other admin" => matches!(outcome, Err(UpdateError::LastAdmin)),
            _ => matches!(outcome, Err(UpdateError::TokenUnusable)),
        };
        assert!(expected, "{what}: {outcome:?}");
        assert_eq!(store.find_user(user.id).await.unwrap(), Some(before.clone()), "{what}: the row is unchanged");
        assert!(token_exists(&store, &reset.hash).await, "{what}: the token is neither consumed nor dropped");
        assert!(!token_exists(&store, &fresh.hash).await, "{what}: no token is issued");
        assert_eq!(session(&store, live.id).await.revoked_at, None, "{what}: no session ends");
        assert_eq!(store.login_failures("ada@example.com".to_owned()).await.unwrap(), failures, "{what}");
        assert!(pending_subjects(&store).await.is_empty(), "{what}: no mail is queued");
    }
    let missing = store.update_user(UserUpdate::new(UserId::generate(), at)).await;
    assert!(matches!(missing, Err(UpdateError::NotFound)), "{missing:?}");
}

/// `Guard::role` refuses a change when the row holds another role, and lets it through when it holds that one.
pub async fn the_role_guard_holds_a_change_to_the_role_it_was_decided_for<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let mut wrong = UserUpdate::new(user.id, now());
    wrong.guard.role = Some(Role::Manager);
    wrong.fields.role = Some(Role::Authenticated);
    assert!(matches!(store.update_user(wrong).await, Err(UpdateError::RoleChanged)));
    assert_eq!(store.find_user(user.id).await.unwrap().unwrap().role, Role::Anonymous);
    let mut right = UserUpdate::new(user.id, now());
    right.guard.role = Some(Role::Anonymous);
    right.fields.role = Some(Role::Authenticated);
    assert_eq!(store.update_user(right).await.unwrap().role, Role::Authenticated);
}

/// `Guard::another_admin` refuses a change unless an unlocked ADMIN other than the target exists; a locked ADMIN
/// does not count.
pub async fn the_admin_guard_needs_another_unlocked_admin<S: Storage>(store: S) {
    let first = insert_with_role(&store, "first@example.com", "first", Role::Admin).await;
    let demote = |user: &User| {
        let mut update = UserUpdate::new(user.id, now());
        update.guard = Guard { role: Some(Role::Admin), another_admin: true };
        update.fields.role = Some(Role::Manager);
        update
    };
    assert!(matches!(store.update_user(demote(&first)).await, Err(UpdateError::LastAdmin)));
    let locked = insert_with_role(&store, "locked@example.com", "locked", Role::Admin).await;
    set_locked(&store, &locked, true).await;
    assert!(matches!(store.update_user(demote(&first)).await, Err(UpdateError::LastAdmin)), "a locked one");
    assert_eq!(store.find_user(first.id).await.unwrap().unwrap().role, Role::Admin);

    let second = insert_with_role(&store, "second@example.com", "second", Role::Admin).await;
    assert_eq!(store.update_user(demote(&first)).await.unwrap().role, Role::Manager);
    assert!(matches!(store.update_user(demote(&second)).await, Err(UpdateError::LastAdmin)), "now the last one");
    // The guard only asks whether another exists: a MANAGER's change passes while one does.
    let manager = store.find_user(first.id).await.unwrap().unwrap();
    let mut update = UserUpdate::new(manager.id, now());
    update.guard.another_admin = true;
    update.fields.is_locked = Some(true);
    assert!(store.update_user(update).await.unwrap().is_locked);
}

/// A token is consumed only by its own user, unused and before it expires, and only once.
pub async fn email_tokens_are_consumed_once<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let other = insert(&store, "bob@example.com", "bob").await;
    let at = now();
    let valid = token(user.id, EmailTokenPurpose::Verify, at + Duration::hours(1));
    let expiring = token(user.id, EmailTokenPurpose::PasswordReset, at + Duration::minutes(1));
    let theirs = token(other.id, EmailTokenPurpose::Verify, at + Duration::hours(1));
    issue(&store, &valid).await;
    issue(&store, &expiring).await;
    issue(&store, &theirs).await;

    store.update_user(consuming(user.id, &valid.hash, at)).await.unwrap();
    let again = store.update_user(consuming(user.id, &valid.hash, at)).await;
    assert!(matches!(again, Err(UpdateError::TokenUnusable)), "used: {again:?}");
    // `expires_at` must be after the change's time: at it, the token is expired.
    let expired = store.update_user(consuming(user.id, &expiring.hash, at + Duration::minutes(1))).await;
    assert!(matches!(expired, Err(UpdateError::TokenUnusable)), "expired: {expired:?}");
    assert!(token_exists(&store, &expiring.hash).await, "a refused use leaves the token unused");
    let foreign = store.update_user(consuming(user.id, &theirs.hash, at)).await;
    assert!(matches!(foreign, Err(UpdateError::TokenUnusable)), "another user's: {foreign:?}");
    assert!(token_exists(&store, &theirs.hash).await);
    store.update_user(consuming(user.id, &expiring.hash, at + Duration::seconds(59))).await.unwrap();
}

/// Of two concurrent changes consuming one token, exactly one applies.
pub async fn concurrent_uses_of_one_email_token_let_exactly_one_apply<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let at = now();
    let reset = token(user.id, EmailTokenPurpose::PasswordReset, at + Duration::hours(1));
    issue(&store, &reset).await;
    let mut first = consuming(user.id, &reset.hash, at);
    first.mails = vec![mail("ada@example.com", "first")];
    let mut second = consuming(user.id, &reset.hash, at);
    second.mails = vec![mail("ada@example.com", "second")];
    let (a, b) = tokio::join!(store.update_user(first), store.update_user(second));
    let applied = [&a, &b].iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(applied, 1, "{a:?} / {b:?}");
    assert!([&a, &b].iter().any(|outcome| matches!(outcome, Err(UpdateError::TokenUnusable))));
    assert_eq!(pending_subjects(&store).await.len(), 1, "only the winner's mail is queued");
}

/// Issuing a token replaces the user's token of that purpose; drops come before the issue, so a change that drops
/// a purpose and issues a token of it keeps the new one; drops leave other purposes alone.
pub async fn an_issued_token_replaces_the_previous_one_and_survives_a_drop_of_its_purpose<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let other = insert(&store, "bob@example.com", "bob").await;
    let expires = now() + Duration::hours(1);
    let first = token(user.id, EmailTokenPurpose::Verify, expires);
    let second = token(user.id, EmailTokenPurpose::Verify, expires);
    let reset = token(user.id, EmailTokenPurpose::PasswordReset, expires);
    let theirs = token(other.id, EmailTokenPurpose::Verify, expires);
    issue(&store, &first).await;
    issue(&store, &reset).await;
    issue(&store, &theirs).await;
    issue(&store, &second).await;
    assert!(!token_exists(&store, &first.hash).await, "replaced");
    assert!(token_exists(&store, &second.hash).await);

    let third = token(user.id, EmailTokenPurpose::Verify, expires);
    let mut update = UserUpdate::new(user.id, now());
    update.drop_tokens = vec![EmailTokenPurpose::Verify];
    update.issue_token = Some(third.clone());
    store.update_user(update).await.unwrap();
    assert!(!token_exists(&store, &second.hash).await, "dropped");
    assert!(token_exists(&store, &third.hash).await, "issued after the drop");
    assert!(token_exists(&store, &reset.hash).await, "another purpose is untouched");
    assert!(token_exists(&store, &theirs.hash).await, "another user's token is untouched");

    let mut drop_change = UserUpdate::new(user.id, now());
    drop_change.drop_tokens = vec![EmailTokenPurpose::EmailChange];
    store.update_user(drop_change).await.unwrap();
    assert!(token_exists(&store, &third.hash).await && token_exists(&store, &reset.hash).await);

    // A used token is replaced by the next one of its purpose too.
    store.update_user(consuming(user.id, &third.hash, now())).await.unwrap();
    let fourth = token(user.id, EmailTokenPurpose::Verify, expires);
    issue(&store, &fourth).await;
    assert!(token_exists(&store, &fourth.hash).await);
}

/// `SessionEnd` through a change or `end_sessions`: `Keep` ends none, `AllBut` all but one, `All` every one, of
/// that user only, and a session already revoked keeps its first revocation time.
pub async fn changes_end_the_sessions_they_name<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let other = insert(&store, "bob@example.com", "bob").await;
    let t0 = now();
    let (one, _) = start(&store, user.id, t0).await;
    let (two, _) = start(&store, user.id, t0).await;
    let (three, _) = start(&store, user.id, t0).await;
    let (theirs, _) = start(&store, other.id, t0).await;

    store.end_sessions(user.id, SessionEnd::Keep, t0 + Duration::seconds(1), Vec::new()).await.unwrap();
    let mut keep = UserUpdate::new(user.id, t0 + Duration::seconds(1));
    keep.end_sessions = SessionEnd::Keep;
    store.update_user(keep).await.unwrap();
    for id in [one.id, two.id, three.id] {
        assert_eq!(session(&store, id).await.revoked_at, None);
    }

    let t1 = t0 + Duration::seconds(2);
    store.end_sessions(user.id, SessionEnd::AllBut(one.id), t1, Vec::new()).await.unwrap();
    assert_eq!(session(&store, one.id).await.revoked_at, None);
    assert_eq!(session(&store, two.id).await.revoked_at, Some(t1));
    assert_eq!(session(&store, three.id).await.revoked_at, Some(t1));

    let t2 = t0 + Duration::seconds(3);
    let mut all = UserUpdate::new(user.id, t2);
    all.end_sessions = SessionEnd::All;
    store.update_user(all).await.unwrap();
    assert_eq!(session(&store, one.id).await.revoked_at, Some(t2));
    assert_eq!(session(&store, two.id).await.revoked_at, Some(t1), "the first revocation time stays");
    assert_eq!(session(&store, theirs.id).await.revoked_at, None, "another user's session is untouched");

    let t3 = t0 + Duration::seconds(4);
    store.end_sessions(other.id, SessionEnd::All, t3, Vec::new()).await.unwrap();
    assert_eq!(session(&store, theirs.id).await.revoked_at, Some(t3));
}

/// Deleting a user deletes their sessions, refresh tokens, email tokens and picture records, frees their email and
/// nickname, and leaves queued mail, login failures and other users alone.
pub async fn deleting_a_user_takes_what_hangs_off_them<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let other = insert(&store, "bob@example.com", "bob").await;
    let t0 = now();
    let (gone, refresh) = start(&store, user.id, t0).await;
    let (kept, kept_refresh) = start(&store, other.id, t0).await;
    let verify = token(user.id, EmailTokenPurpose::Verify, t0 + Duration::hours(1));
    let theirs = token(other.id, EmailTokenPurpose::Verify, t0 + Duration::hours(1));
    issue(&store, &verify).await;
    issue(&store, &theirs).await;
    let old = picture(user.id, t0);
    store.insert_active_picture(old, t0, Vec::new()).await.unwrap();
    store.insert_active_picture(picture(user.id, t0 + Duration::seconds(1)), t0, Vec::new()).await.unwrap();
    let their_picture = picture(other.id, t0);
    store.insert_active_picture(their_picture.clone(), t0, Vec::new()).await.unwrap();
    store.record_login_failure("ada@example.com".to_owned(), t0, BackoffPolicy::default(), Vec::new()).await.unwrap();
    let mut farewell = UserUpdate::new(user.id, t0);
    farewell.mails = vec![mail("ada@example.com", "farewell")];
    store.update_user(farewell).await.unwrap();

    store.delete_user(user.id, Guard::default(), Vec::new()).await.unwrap();
    assert_eq!(store.find_user(user.id).await.unwrap(), None);
    assert_eq!(store.find_session_with_user(gone.id).await.unwrap(), None);
    assert_eq!(store.find_refresh_token(refresh).await.unwrap(), None);
    assert!(!token_exists(&store, &verify.hash).await);
    assert_eq!(store.active_picture(user.id).await.unwrap(), None);
    assert!(store.archived_pictures(user.id).await.unwrap().is_empty());
    assert_eq!(pending_subjects(&store).await, subjects(&["farewell"]), "queued mail stays");
    assert!(store.login_failures("ada@example.com".to_owned()).await.unwrap().is_some(), "failures stay");

    assert!(store.find_session_with_user(kept.id).await.unwrap().is_some());
    assert!(store.find_refresh_token(kept_refresh).await.unwrap().is_some());
    assert!(token_exists(&store, &theirs.hash).await);
    assert_eq!(store.active_picture(other.id).await.unwrap().map(normalised), Some(normalised(their_picture)));

    insert(&store, "ADA@example.com", "ADA").await;
    let again = store.delete_user(user.id, Guard::default(), Vec::new()).await;
    assert!(matches!(again, Err(UpdateError::NotFound)), "{again:?}");
}

/// A deletion checks its guard like a change: the user exists, has the expected role, and (when asked) leaves an
/// unlocked ADMIN behind; a refused deletion deletes nothing.
pub async fn deleting_a_user_checks_its_guard<S: Storage>(store: S) {
    let missing = store.delete_user(UserId::generate(), Guard::default(), Vec::new()).await;
    assert!(matches!(missing, Err(UpdateError::NotFound)), "{missing:?}");
    let user = insert(&store, "ada@example.com", "ada").await;
    let wrong_role =
        store.delete_user(user.id, Guard { role: Some(Role::Manager), another_admin: false }, Vec::new()).await;
    assert!(matches!(wrong_role, Err(UpdateError::RoleChanged)), "{wrong_role:?}");
    assert!(store.find_user(user.id).await.unwrap().is_some());

    let admin = insert_with_role(&store, "admin@example.com", "admin", Role::Admin).await;
    let guard = Guard { role: Some(Role::Admin), another_admin: true };
    assert!(matches!(store.delete_user(admin.id, guard, Vec::new()).await, Err(UpdateError::LastAdmin)));
    let locked = insert_with_role(&store, "locked@example.com", "locked", Role::Admin).await;
    set_locked(&store, &locked, true).await;
    assert!(
        matches!(store.delete_user(admin.id, guard, Vec::new()).await, Err(UpdateError::LastAdmin)),
        "a locked one"
    );
    assert!(store.find_user(admin.id).await.unwrap().is_some());
    insert_with_role(&store, "second@example.com", "second", Role::Admin).await;
    store.delete_user(admin.id, guard, Vec::new()).await.unwrap();
    assert_eq!(store.find_user(admin.id).await.unwrap(), None);
    store.delete_user(user.id, Guard { role: Some(Role::Anonymous), another_admin: false }, Vec::new()).await.unwrap();
}

// ---------------------------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------------------------

/// A session is stored as started, with its first refresh token, and records the login on the user.
pub async fn sessions_are_started_and_found_with_their_user<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let at = now();
    let (new, refresh) = new_session(user.id, at);
    let started = store.start_session(new.clone(), at, Vec::new()).await.unwrap();
    assert_eq!(
        started,
        Session {
            id: new.id,
            user_id: user.id,
            created_at: at,
            last_used_at: at,
            expires_at: new.expires_at,
            revoked_at: None,
            user_agent: new.user_agent.clone(),
            ip: new.ip.clone(),
        }
    );
    let (found, owner) = store.find_session_with_user(new.id).await.unwrap().unwrap();
    assert_eq!(found, started);
    assert_eq!(owner.last_login_at, Some(at), "the login is recorded on the user");
    assert_eq!(owner, store.find_user(user.id).await.unwrap().unwrap());
    let record = store.find_refresh_token(refresh).await.unwrap().unwrap();
    assert_eq!((record.session, record.user, record.used), (started, owner, false));
    assert_eq!(store.find_session_with_user(SessionId::generate()).await.unwrap(), None);
    assert_eq!(store.find_refresh_token(RefreshToken::generate().hash()).await.unwrap(), None);
}

/// A rotation exchanges an unused token of an unrevoked session for a new one and records the use; anything else
/// (a used token, another session's token, a revoked session) changes nothing and answers `None`.
pub async fn refresh_tokens_rotate_by_compare_and_set<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let t0 = now();
    let (started, first) = start(&store, user.id, t0).await;
    let (other, _) = start(&store, user.id, t0).await;
    let second = RefreshToken::generate().hash();
    let t1 = t0 + Duration::minutes(1);
    let rotated = store.rotate_refresh_token(started.id, first.clone(), second.clone(), t1).await.unwrap();
    assert_eq!(rotated, Some(Session { last_used_at: t1, ..started.clone() }));
    assert!(store.find_refresh_token(first.clone()).await.unwrap().unwrap().used);
    let current = store.find_refresh_token(second.clone()).await.unwrap().unwrap();
    assert_eq!((current.used, current.session.id), (false, started.id));

    let stray = RefreshToken::generate().hash();
    let t2 = t0 + Duration::minutes(2);
    assert_eq!(store.rotate_refresh_token(started.id, first.clone(), stray.clone(), t2).await.unwrap(), None, "used");
    assert_eq!(store.rotate_refresh_token(other.id, second.clone(), stray.clone(), t2).await.unwrap(), None, "not its");
    assert_eq!(store.find_refresh_token(stray.clone()).await.unwrap(), None, "no successor was stored");
    assert_eq!(session(&store, started.id).await.last_used_at, t1, "the last use is unchanged");
    assert!(!store.find_refresh_token(second.clone()).await.unwrap().unwrap().used);

    assert!(store.revoke_session(started.id, None, t2, Vec::new()).await.unwrap());
    assert_eq!(store.rotate_refresh_token(started.id, second.clone(), stray.clone(), t2).await.unwrap(), None);
    assert!(!store.find_refresh_token(second).await.unwrap().unwrap().used, "a revoked session's token stays");
    assert_eq!(store.find_refresh_token(stray).await.unwrap(), None);
}

/// Of two concurrent rotations of one token, exactly one succeeds and only its successor is stored.
pub async fn concurrent_rotations_of_one_token_let_exactly_one_win<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let at = now();
    let (started, first) = start(&store, user.id, at).await;
    let (a, b) = (RefreshToken::generate().hash(), RefreshToken::generate().hash());
    let later = at + Duration::seconds(1);
    let (won_a, won_b) = tokio::join!(
        store.rotate_refresh_token(started.id, first.clone(), a.clone(), later),
        store.rotate_refresh_token(started.id, first.clone(), b.clone(), later),
    );
    let (won_a, won_b) = (won_a.unwrap(), won_b.unwrap());
    assert!(won_a.is_some() != won_b.is_some(), "exactly one wins: {won_a:?} / {won_b:?}");
    let (winner, loser) = if won_a.is_some() { (a, b) } else { (b, a) };
    assert!(!store.find_refresh_token(winner).await.unwrap().unwrap().used);
    assert_eq!(store.find_refresh_token(loser).await.unwrap(), None);
}

/// A rotation records its time and successor; a retry replaces an unused successor of a spent token with a new
/// current token, discarding the successor and leaving the session as it was; anything else (a stale or used
/// successor, an unused presented token, another session, a revoked session) changes nothing and answers `None`.
pub async fn a_retry_replaces_the_unused_successor_by_compare_and_set<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let t0 = now();
    let (started, first) = start(&store, user.id, t0).await;
    let (other, other_first) = start(&store, user.id, t0).await;
    let second = RefreshToken::generate().hash();
    let t1 = t0 + Duration::minutes(1);
    let rotated = store.rotate_refresh_token(started.id, first.clone(), second.clone(), t1).await.unwrap().unwrap();
    let rotation = store.find_refresh_token(first.clone()).await.unwrap().unwrap().rotation;
    assert_eq!(rotation, Some(Rotation { at: t1, successor: second.clone(), successor_used: false }));
    assert_eq!(store.find_refresh_token(second.clone()).await.unwrap().unwrap().rotation, None, "not exchanged");

    let third = RefreshToken::generate().hash();
    let t2 = t1 + Duration::seconds(5);
    let replaced = store.replace_refresh_successor(started.id, first.clone(), second.clone(), third.clone(), t2).await;
    assert_eq!(replaced.unwrap(), Some(rotated.clone()), "the session is unchanged, its last use too");
    assert_eq!(session(&store, started.id).await, rotated);
    let discarded = store.find_refresh_token(second.clone()).await.unwrap().unwrap();
    assert_eq!((discarded.used, discarded.rotation), (true, None), "the successor is spent, with no successor");
    let current = store.find_refresh_token(third.clone()).await.unwrap().unwrap();
    assert_eq!((current.used, current.session.id), (false, started.id));
    let rotation = store.find_refresh_token(first.clone()).await.unwrap().unwrap().rotation;
    assert_eq!(rotation, Some(Rotation { at: t1, successor: third.clone(), successor_used: false }));

    let stray = RefreshToken::generate().hash();
    let refused = [
        (started.id, first.clone(), second.clone(), "a stale successor"),
        (started.id, second.clone(), third.clone(), "not the successor of the presented token"),
        (started.id, third.clone(), stray.clone(), "an unused presented token"),
        (other.id, first.clone(), third.clone(), "another session"),
        (other.id, other_first.clone(), third.clone(), "not exchanged"),
    ];
    for (in_session, presented, successor, why) in refused {
        let outcome = store.replace_refresh_successor(in_session, presented, successor, stray.clone(), t2).await;
        assert_eq!(outcome.unwrap(), None, "{why}");
    }
    assert_eq!(store.find_refresh_token(stray.clone()).await.unwrap(), None, "no token was stored");
    assert!(!store.find_refresh_token(third.clone()).await.unwrap().unwrap().used, "the current token stays");

    // Once the successor is used, its parent's retry is refused.
    let fourth = RefreshToken::generate().hash();
    store.rotate_refresh_token(started.id, third.clone(), fourth.clone(), t2).await.unwrap().unwrap();
    let rotation = store.find_refresh_token(first.clone()).await.unwrap().unwrap().rotation.unwrap();
    assert!(rotation.successor_used);
    let outcome = store.replace_refresh_successor(started.id, first.clone(), third, stray.clone(), t2).await;
    assert_eq!(outcome.unwrap(), None, "a used successor");

    // A revoked session's tokens are never replaced.
    let fifth = RefreshToken::generate().hash();
    store.rotate_refresh_token(started.id, fourth.clone(), fifth.clone(), t2).await.unwrap().unwrap();
    assert!(store.revoke_session(started.id, None, t2, Vec::new()).await.unwrap());
    let outcome = store.replace_refresh_successor(started.id, fourth, fifth.clone(), stray.clone(), t2).await;
    assert_eq!(outcome.unwrap(), None, "a revoked session");
    assert!(!store.find_refresh_token(fifth).await.unwrap().unwrap().used);
    assert_eq!(store.find_refresh_token(stray).await.unwrap(), None);
}

/// Of two concurrent retries replacing one successor, exactly one succeeds and only its token is stored.
pub async fn concurrent_replacements_of_one_successor_let_exactly_one_win<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let at = now();
    let (started, first) = start(&store, user.id, at).await;
    let second = RefreshToken::generate().hash();
    store.rotate_refresh_token(started.id, first.clone(), second.clone(), at).await.unwrap().unwrap();
    let (a, b) = (RefreshToken::generate().hash(), RefreshToken::generate().hash());
    let later = at + Duration::seconds(1);
    let (won_a, won_b) = tokio::join!(
        store.replace_refresh_successor(started.id, first.clone(), second.clone(), a.clone(), later),
        store.replace_refresh_successor(started.id, first.clone(), second.clone(), b.clone(), later),
    );
    let (won_a, won_b) = (won_a.unwrap(), won_b.unwrap());
    assert!(won_a.is_some() != won_b.is_some(), "exactly one wins: {won_a:?} / {won_b:?}");
    let (winner, loser) = if won_a.is_some() { (a, b) } else { (b, a) };
    assert!(!store.find_refresh_token(winner.clone()).await.unwrap().unwrap().used);
    assert_eq!(store.find_refresh_token(loser).await.unwrap(), None);
    assert!(store.find_refresh_token(second).await.unwrap().unwrap().used, "the replaced successor is spent");
    let rotation = store.find_refresh_token(first).await.unwrap().unwrap().rotation.unwrap();
    assert_eq!(rotation.successor, winner);
}

/// A session is revoked once (keeping its first revocation time), and with an owner only if it is theirs.
pub async fn sessions_are_revoked_once_and_only_by_their_owner<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let other = insert(&store, "bob@example.com", "bob").await;
    let t0 = now();
    let (mine, _) = start(&store, user.id, t0).await;
    let t1 = t0 + Duration::minutes(1);
    assert!(!store.revoke_session(mine.id, Some(other.id), t1, Vec::new()).await.unwrap(), "not theirs");
    assert_eq!(session(&store, mine.id).await.revoked_at, None);
    assert!(store.revoke_session(mine.id, Some(user.id), t1, Vec::new()).await.unwrap());
    assert!(
        !store.revoke_session(mine.id, None, t1 + Duration::minutes(1), Vec::new()).await.unwrap(),
        "already revoked"
    );
    assert_eq!(session(&store, mine.id).await.revoked_at, Some(t1));
    assert!(!store.revoke_session(SessionId::generate(), None, t1, Vec::new()).await.unwrap());

    // Without an owner any session; an expired one that was never revoked is revoked too.
    let (mut expiring, _) = new_session(user.id, t0);
    expiring.expires_at = t0 + Duration::seconds(1);
    let expiring = store.start_session(expiring, t0, Vec::new()).await.unwrap();
    assert!(store.revoke_session(expiring.id, None, t1, Vec::new()).await.unwrap());
    assert_eq!(session(&store, expiring.id).await.revoked_at, Some(t1));
}

/// The list holds the user's unrevoked sessions that end after the given time, newest first.
pub async fn sessions_are_listed_newest_first_while_active<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let other = insert(&store, "bob@example.com", "bob").await;
    let t0 = now();
    let (oldest, _) = start(&store, user.id, t0 - Duration::hours(3)).await;
    let (middle, _) = start(&store, user.id, t0 - Duration::hours(2)).await;
    let (newest, _) = start(&store, user.id, t0 - Duration::hours(1)).await;
    let (revoked, _) = start(&store, user.id, t0 - Duration::minutes(30)).await;
    store.revoke_session(revoked.id, None, t0, Vec::new()).await.unwrap();
    let (mut ending, _) = new_session(user.id, t0 - Duration::minutes(20));
    ending.expires_at = t0 + Duration::minutes(5);
    let ending = store.start_session(ending, t0 - Duration::minutes(20), Vec::new()).await.unwrap();
    start(&store, other.id, t0).await;

    let listed = store.list_sessions(user.id, t0).await.unwrap();
    assert_eq!(listed, [ending.clone(), newest.clone(), middle.clone(), oldest.clone()]);
    let later = store.list_sessions(user.id, t0 + Duration::minutes(5)).await.unwrap();
    assert_eq!(later, [newest, middle, oldest], "a session is gone from the list at its end");
    assert!(store.list_sessions(UserId::generate(), t0).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------------------------
// Email tokens
// ---------------------------------------------------------------------------------------------------------------

/// An unused token is found as stored, expired or not; a used, replaced, dropped or unknown one is not.
pub async fn email_tokens_are_found_while_unused<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let at = now();
    let expired = token(user.id, EmailTokenPurpose::Verify, at - Duration::hours(1));
    let change = token(user.id, EmailTokenPurpose::EmailChange, at + Duration::hours(1));
    issue(&store, &expired).await;
    issue(&store, &change).await;
    let found = store.find_email_token(expired.hash.clone()).await.unwrap().unwrap();
    assert_eq!(
        (found.user_id, found.purpose, found.new_email, found.expires_at),
        (user.id, EmailTokenPurpose::Verify, None, expired.expires_at),
        "an expired token is still found"
    );
    let found = store.find_email_token(change.hash.clone()).await.unwrap().unwrap();
    assert_eq!((found.purpose, found.new_email), (EmailTokenPurpose::EmailChange, change.new_email.clone()));

    store.update_user(consuming(user.id, &change.hash, at)).await.unwrap();
    assert_eq!(store.find_email_token(change.hash).await.unwrap(), None, "used");
    let replacing = token(user.id, EmailTokenPurpose::Verify, at + Duration::hours(1));
    issue(&store, &replacing).await;
    assert_eq!(store.find_email_token(expired.hash).await.unwrap(), None, "replaced");
    let mut drop_verify = UserUpdate::new(user.id, at);
    drop_verify.drop_tokens = vec![EmailTokenPurpose::Verify];
    store.update_user(drop_verify).await.unwrap();
    assert_eq!(store.find_email_token(replacing.hash).await.unwrap(), None, "dropped");
    assert_eq!(store.find_email_token(RefreshToken::generate().hash()).await.unwrap(), None, "unknown");
}

// ---------------------------------------------------------------------------------------------------------------
// Login throttle
// ---------------------------------------------------------------------------------------------------------------

/// Failures are counted per key; past the policy's threshold each one blocks until `now + block_for(count)`.
pub async fn login_failures_are_counted_and_blocked_by_the_policy<S: Storage>(store: S) {
    let policy = BackoffPolicy { after: 3, base: Duration::seconds(10), max: Duration::seconds(40) };
    let key = "ada@example.com".to_owned();
    let t0 = now();
    assert_eq!(store.login_failures(key.clone()).await.unwrap(), None);
    assert_eq!(store.record_login_failure(key.clone(), t0, policy, Vec::new()).await.unwrap(), None);
    assert_eq!(store.record_login_failure(key.clone(), t0, policy, Vec::new()).await.unwrap(), None);
    assert_eq!(
        store.login_failures(key.clone()).await.unwrap(),
        Some(FailureCount { failures: 2, blocked_until: None })
    );
    for (count, offset, block) in [(3, 0, 10), (4, 1, 20), (5, 2, 40), (6, 3, 40)] {
        let at = t0 + Duration::seconds(offset);
        let until = store.record_login_failure(key.clone(), at, policy, Vec::new()).await.unwrap();
        assert_eq!(until, Some(at + Duration::seconds(block)), "failure {count}");
        assert_eq!(
            store.login_failures(key.clone()).await.unwrap(),
            Some(FailureCount { failures: count, blocked_until: until })
        );
    }
    assert_eq!(store.login_failures("bob@example.com".to_owned()).await.unwrap(), None, "keys are separate");
}

/// A failure never shortens a block already in place: the later end stays and is returned.
pub async fn a_login_block_is_never_shortened<S: Storage>(store: S) {
    let long = BackoffPolicy { after: 1, base: Duration::hours(1), max: Duration::hours(1) };
    let short = BackoffPolicy { after: 1, base: Duration::seconds(1), max: Duration::seconds(1) };
    let key = "ada@example.com".to_owned();
    let t0 = now();
    assert_eq!(
        store.record_login_failure(key.clone(), t0, long, Vec::new()).await.unwrap(),
        Some(t0 + Duration::hours(1))
    );
    let later = t0 + Duration::minutes(1);
    assert_eq!(
        store.record_login_failure(key.clone(), later, short, Vec::new()).await.unwrap(),
        Some(t0 + Duration::hours(1))
    );
    assert_eq!(
        store.login_failures(key).await.unwrap(),
        Some(FailureCount { failures: 2, blocked_until: Some(t0 + Duration::hours(1)) })
    );
}

/// Clearing forgets a key's failures and block, and no other key's.
pub async fn login_failures_are_cleared_per_key<S: Storage>(store: S) {
    let policy = BackoffPolicy { after: 1, base: Duration::minutes(1), max: Duration::minutes(1) };
    let t0 = now();
    for key in ["ada@example.com", "unparsed:abc"] {
        store.record_login_failure(key.to_owned(), t0, policy, Vec::new()).await.unwrap();
    }
    store.clear_login_failures("ada@example.com".to_owned()).await.unwrap();
    assert_eq!(store.login_failures("ada@example.com".to_owned()).await.unwrap(), None);
    assert!(store.login_failures("unparsed:abc".to_owned()).await.unwrap().is_some());
    store.clear_login_failures("nobody@example.com".to_owned()).await.unwrap();
    // Counting starts over after a clear.
    assert_eq!(
        store.record_login_failure("ada@example.com".to_owned(), t0, policy, Vec::new()).await.unwrap(),
        Some(t0 + Duration::minutes(1))
    );
    assert_eq!(store.login_failures("ada@example.com".to_owned()).await.unwrap().unwrap().failures, 1);
}

/// Requests are counted per route and address into a window that starts with the first of them and ends after
/// the window's length; the first request after that starts a new one.
pub async fn requests_are_counted_per_route_and_address_in_fixed_windows<S: Storage>(store: S) {
    let window = Duration::minutes(1);
    let ada = std::net::IpAddr::from([203, 0, 113, 1]);
    let bob: std::net::IpAddr = "2001:db8::2".parse().unwrap();
    let t0 = now();
    for (step, expected) in [(0, 1), (10, 2), (59, 3)] {
        let counted = store.count_request("login", ada, t0 + Duration::seconds(step), window).await.unwrap();
        assert_eq!((counted.hits, counted.ends_at), (expected, t0 + window), "after {step} s");
    }
    assert_eq!(store.count_request("register", ada, t0, window).await.unwrap().hits, 1, "routes count apart");
    assert_eq!(store.count_request("login", bob, t0, window).await.unwrap().hits, 1, "addresses count apart");
    let later = t0 + window;
    let fresh = store.count_request("login", ada, later, window).await.unwrap();
    assert_eq!((fresh.hits, fresh.ends_at), (1, later + window), "a new window once the old one ended");
}

// ---------------------------------------------------------------------------------------------------------------
// Outboxes
// ---------------------------------------------------------------------------------------------------------------

/// Due mail is claimed oldest first up to the limit and leased: not claimed again until the lease ends.
pub async fn mail_is_claimed_oldest_first_under_leases<S: Storage>(store: S) {
    store.queue_mail(mail("ada@example.com", "first")).await.unwrap();
    store.queue_mail(mail("bob@example.com", "second")).await.unwrap();
    store.queue_mail(mail("eve@example.com", "third")).await.unwrap();
    let t0 = now() + Duration::hours(1);
    let lease = Duration::minutes(2);
    let claimed = store.claim_due_mail(t0, 2, lease).await.unwrap();
    let names: Vec<&str> = claimed.iter().map(|message| message.mail.subject.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
    assert_eq!(claimed[0].mail, mail("ada@example.com", "first"));
    assert!(claimed.iter().all(|message| message.attempts == 0));
    let rest = store.claim_due_mail(t0, 10, lease).await.unwrap();
    assert_eq!(rest.iter().map(|message| message.mail.subject.as_str()).collect::<Vec<_>>(), ["third"]);
    assert!(store.claim_due_mail(t0 + Duration::minutes(1), 10, lease).await.unwrap().is_empty(), "all leased");
    let expired = store.claim_due_mail(t0 + lease, 10, lease).await.unwrap();
    assert_eq!(expired.len(), 3, "every lease ended");
    assert_eq!(
        expired.iter().map(|message| message.id).collect::<Vec<_>>(),
        [claimed[0].id, claimed[1].id, rest[0].id]
    );
}

/// A delivered mail is never claimed again; a failed one comes back at its retry time with the attempt counted,
/// or never when given up on; late reports do not revive a mail sent or dead.
pub async fn mail_is_marked_sent_retried_and_dead<S: Storage>(store: S) {
    store.queue_mail(mail("ada@example.com", "sent")).await.unwrap();
    store.queue_mail(mail("bob@example.com", "flaky")).await.unwrap();
    let t0 = now() + Duration::hours(1);
    let lease = Duration::minutes(2);
    let claimed = store.claim_due_mail(t0, 10, lease).await.unwrap();
    let (sent, flaky) = (claimed[0].id, claimed[1].id);
    store.mark_mail_sent(sent, t0).await.unwrap();
    store.mark_mail_failed(flaky, Some(t0 + Duration::minutes(10)), "421 try later".to_owned()).await.unwrap();
    assert!(store.claim_due_mail(t0 + Duration::minutes(5), 10, lease).await.unwrap().is_empty());
    let retried = store.claim_due_mail(t0 + Duration::minutes(10), 10, lease).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!((retried[0].id, retried[0].attempts), (flaky, 1));

    store.mark_mail_failed(flaky, None, "550 no such user".to_owned()).await.unwrap();
    store.mark_mail_failed(sent, Some(t0), "late report".to_owned()).await.unwrap();
    assert!(store.claim_due_mail(t0 + Duration::days(30), 10, lease).await.unwrap().is_empty(), "sent and dead");
    store.mark_mail_sent(Uuid::now_v7(), t0).await.unwrap();
    store.mark_mail_failed(Uuid::now_v7(), None, "unknown".to_owned()).await.unwrap();
}

/// Mail claimed but not tried is handed back due at once, so the next claim takes it before the lease would have
/// ended; a mail claimed again under another lease since, or already delivered, is left as it is.
pub async fn untried_mail_is_handed_back_from_its_claim_only<S: Storage>(store: S) {
    store.queue_mail(mail("ada@example.com", "tried")).await.unwrap();
    store.queue_mail(mail("bob@example.com", "untried")).await.unwrap();
    store.queue_mail(mail("eve@example.com", "taken over")).await.unwrap();
    // Nanoseconds a timestamp column does not keep: the hand-back must still find the lease end the claim stored.
    let t0 = now() + Duration::hours(1) + Duration::nanoseconds(999);
    let lease = Duration::minutes(2);
    let claimed = store.claim_due_mail(t0, 10, lease).await.unwrap();
    let (tried, untried, taken_over) = (claimed[0].id, claimed[1].id, claimed[2].id);
    store.mark_mail_sent(tried, t0).await.unwrap();
    // The lease ran out, and another dispatcher claimed the two mails not sent under a lease of its own.
    let t1 = t0 + lease;
    let other = store.claim_due_mail(t1, 10, lease).await.unwrap();
    assert_eq!(other.iter().map(|message| message.id).collect::<Vec<_>>(), [untried, taken_over]);

    // The first dispatcher, stopping, hands back all three under its old lease: only what it still holds moves,
    // and here that is nothing (one sent, two claimed again since).
    store.release_mail(vec![tried, untried, taken_over], t0 + lease, t1).await.unwrap();
    assert!(store.claim_due_mail(t1 + Duration::minutes(1), 10, lease).await.unwrap().is_empty(), "still held");

    // The second dispatcher hands back what it did not try: due at once, claimed by the next claim, in full.
    let t2 = t1 + Duration::seconds(30);
    store.release_mail(vec![taken_over], t1 + lease, t2).await.unwrap();
    let again = store.claim_due_mail(t2, 10, lease).await.unwrap();
    assert_eq!(again.len(), 1, "only the mail handed back is due before any lease ends");
    assert_eq!((again[0].id, &again[0].mail), (taken_over, &mail("eve@example.com", "taken over")));
    assert_eq!(again[0].attempts, 0, "handing back is not an attempt");
    store.release_mail(Vec::new(), t2, t2).await.unwrap();
}

/// A request of one kind for one address (in any case) waits once; claims are oldest first, leased, and a
/// finished request is gone, after which the same request can be queued again.
pub async fn account_requests_are_deduplicated_claimed_and_finished<S: Storage>(store: S) {
    let t0 = now();
    let at = |seconds: i64| t0 + Duration::seconds(seconds);
    let reset = AccountRequestKind::PasswordReset;
    let verification = AccountRequestKind::Verification;
    store.queue_account_request(reset, email("Ada@Example.com"), at(0)).await.unwrap();
    store.queue_account_request(reset, email("ada@example.com"), at(1)).await.unwrap();
    store.queue_account_request(verification, email("ada@example.com"), at(2)).await.unwrap();
    store.queue_account_request(reset, email("bob@example.com"), at(3)).await.unwrap();

    let lease = Duration::minutes(2);
    let first = store.claim_account_requests(at(10), 1, lease).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].kind, first[0].email.as_str()), (reset, "Ada@example.com"));
    // The oldest are chosen; the order they come back in is not part of the contract.
    let rest = store.claim_account_requests(at(10), 10, lease).await.unwrap();
    let rest_view: BTreeSet<_> = rest.iter().map(|request| (request.kind.as_str(), request.email.as_str())).collect();
    assert_eq!(rest_view, BTreeSet::from([("verification", "ada@example.com"), ("password_reset", "bob@example.com")]));
    assert!(store.claim_account_requests(at(20), 10, lease).await.unwrap().is_empty(), "all leased");

    // A claimed request still waits, so it absorbs a repeat.
    store.queue_account_request(reset, email("ADA@example.com"), at(30)).await.unwrap();
    store.finish_account_request(first[0].id).await.unwrap();
    let after_lease = store.claim_account_requests(at(10) + lease, 10, lease).await.unwrap();
    let after_lease: BTreeSet<Uuid> = after_lease.iter().map(|request| request.id).collect();
    assert_eq!(after_lease, rest.iter().map(|request| request.id).collect(), "the finished one is gone");

    store.queue_account_request(reset, email("ada@example.com"), at(200)).await.unwrap();
    let again = store.claim_account_requests(at(200), 10, lease).await.unwrap();
    assert_eq!(again.len(), 1, "a finished request can be queued again");
    assert_ne!(again[0].id, first[0].id);
    for request in rest.iter().chain(&again) {
        store.finish_account_request(request.id).await.unwrap();
    }
    store.finish_account_request(Uuid::now_v7()).await.unwrap();
    assert!(store.claim_account_requests(at(10_000), 10, lease).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------------------------
// Pictures
// ---------------------------------------------------------------------------------------------------------------

/// A new picture becomes the user's active one and is what the user points to; the previous one is archived and
/// returned; the archive lists newest first.
pub async fn a_new_picture_becomes_active_and_archives_the_previous_one<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let other = insert(&store, "bob@example.com", "bob").await;
    let t0 = now();
    let first = picture(user.id, t0);
    let changed = t0 + Duration::seconds(30);
    assert_eq!(store.insert_active_picture(first.clone(), changed, Vec::new()).await.unwrap(), None);
    let pointed = store.find_user(user.id).await.unwrap().unwrap();
    assert_eq!((pointed.profile_picture_id, pointed.updated_at), (Some(first.id), changed));
    assert_eq!(store.active_picture(user.id).await.unwrap().map(normalised), Some(normalised(first.clone())));

    let second = picture(user.id, t0 + Duration::seconds(1));
    let previous = store.insert_active_picture(second.clone(), changed, Vec::new()).await.unwrap();
    assert_eq!(previous.map(normalised), Some(archived(&first)));
    let third = picture(user.id, t0 + Duration::seconds(2));
    let previous = store.insert_active_picture(third.clone(), changed, Vec::new()).await.unwrap();
    assert_eq!(previous.map(normalised), Some(archived(&second)));
    assert_eq!(store.active_picture(user.id).await.unwrap().map(normalised), Some(normalised(third.clone())));
    let history: Vec<_> = store.archived_pictures(user.id).await.unwrap().into_iter().map(normalised).collect();
    assert_eq!(history, [archived(&second), archived(&first)]);
    assert_eq!(store.find_user(user.id).await.unwrap().unwrap().profile_picture_id, Some(third.id));

    assert_eq!(store.active_picture(other.id).await.unwrap(), None, "another user has none");
    assert!(store.archived_pictures(other.id).await.unwrap().is_empty());
}

/// Recording a picture of a user who does not exist is refused and stores nothing.
pub async fn a_picture_of_a_missing_user_is_refused<S: Storage>(store: S) {
    let ghost = UserId::generate();
    let outcome = store.insert_active_picture(picture(ghost, now()), now(), Vec::new()).await;
    assert!(matches!(outcome, Err(PictureWriteError::UserGone)), "{outcome:?}");
    assert_eq!(store.active_picture(ghost).await.unwrap(), None);
}

/// Archiving records a move of the picture's objects, which finishing re-points only from where and for the state
/// it started with; archiving the active picture clears the user's pointer; restoring makes an archived picture of
/// that user active again, archiving the active one, and records both moves.
pub async fn pictures_are_moved_archived_and_restored<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let other = insert(&store, "bob@example.com", "bob").await;
    let t0 = now();
    let first = picture(user.id, t0);
    let second = picture(user.id, t0 + Duration::seconds(1));
    let theirs = picture(other.id, t0);
    store.insert_active_picture(first.clone(), t0, Vec::new()).await.unwrap();
    store.insert_active_picture(second.clone(), t0, Vec::new()).await.unwrap();
    store.insert_active_picture(theirs.clone(), t0, Vec::new()).await.unwrap();
    store.insert_active_picture(picture(other.id, t0 + Duration::seconds(1)), t0, Vec::new()).await.unwrap();

    // Each upload archived the one before, whose objects are still under the active prefix: two recorded moves
    // (both made at `t0`, so in no particular order between them), and at most `limit` of them.
    assert_eq!(misplaced(&store, 10).await, sorted([first.id, theirs.id]));
    assert!(matches!(misplaced(&store, 1).await[..], [one] if one == first.id || one == theirs.id));
    let archive = StoredPicture::archive_prefix(user.id, Uuid::now_v7());
    let from = first.prefix.clone();
    // Not from where the picture is, not for the state it has, not an unknown picture: nothing changes.
    let elsewhere = "profile_pictures/elsewhere".to_owned();
    assert!(!store.finish_move(first.id, elsewhere, archive.clone(), true).await.unwrap());
    assert!(!store.finish_move(first.id, from.clone(), archive.clone(), false).await.unwrap());
    assert!(!store.finish_move(Uuid::now_v7(), from.clone(), archive.clone(), true).await.unwrap());
    assert!(store.finish_move(first.id, from.clone(), archive.clone(), true).await.unwrap());
    assert!(!store.finish_move(first.id, from, archive.clone(), true).await.unwrap(), "done already");
    let first = StoredPicture { prefix: archive, ..first };
    assert_eq!(
        store.archived_pictures(user.id).await.unwrap().into_iter().map(normalised).collect::<Vec<_>>(),
        [archived(&first)]
    );
    assert_eq!(misplaced(&store, 10).await, [theirs.id]);

    let t1 = t0 + Duration::minutes(1);
    let (restored, previous) = store.restore_picture(user.id, first.id, t1, Vec::new()).await.unwrap().unwrap();
    assert_eq!(normalised(restored), normalised(first.clone()));
    assert_eq!(previous.map(normalised), Some(archived(&second)));
    let pointed = store.find_user(user.id).await.unwrap().unwrap();
    assert_eq!((pointed.profile_picture_id, pointed.updated_at), (Some(first.id), t1));
    assert_eq!(store.restore_picture(user.id, first.id, t1, Vec::new()).await.unwrap(), None, "the active one");
    assert_eq!(store.restore_picture(user.id, theirs.id, t1, Vec::new()).await.unwrap(), None, "another user's");
    assert_eq!(store.restore_picture(user.id, Uuid::now_v7(), t1, Vec::new()).await.unwrap(), None, "an unknown one");
    assert_eq!(store.active_picture(user.id).await.unwrap().map(|picture| picture.id), Some(first.id));
    // The restored picture's objects are under the archive, the newly archived one's under the active prefix.
    assert_eq!(misplaced(&store, 10).await, sorted([first.id, theirs.id, second.id]));

    let t2 = t0 + Duration::minutes(2);
    let taken_down = store.archive_active_picture(user.id, t2, Vec::new()).await.unwrap();
    assert_eq!(taken_down.map(normalised), Some(archived(&first)));
    let pointed = store.find_user(user.id).await.unwrap().unwrap();
    assert_eq!((pointed.profile_picture_id, pointed.updated_at), (None, t2));
    assert_eq!(store.active_picture(user.id).await.unwrap(), None);
    assert_eq!(store.archive_active_picture(user.id, t2, Vec::new()).await.unwrap(), None, "nothing left to archive");
    let history: Vec<_> = store.archived_pictures(user.id).await.unwrap().into_iter().map(normalised).collect();
    assert_eq!(history, [archived(&second), archived(&first)]);

    let (restored, previous) = store.restore_picture(user.id, second.id, t2, Vec::new()).await.unwrap().unwrap();
    assert_eq!((restored.id, restored.archived, previous), (second.id, false, None));
    assert_eq!(store.archive_active_picture(UserId::generate(), t2, Vec::new()).await.unwrap(), None);
    assert_eq!(store.restore_picture(UserId::generate(), second.id, t2, Vec::new()).await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------------------------
// Listing
// ---------------------------------------------------------------------------------------------------------------

/// Every sort order lists by its key, then the id, and paging with cursors walks the same list without overlap.
pub async fn users_are_listed_in_every_order_and_page<S: Storage>(store: S) {
    let mut users = Vec::new();
    for (address, nick) in [
        ("delta@example.com", "alpha"),
        ("Charlie@example.com", "bravo"),
        ("alpha@example.com", "delta"),
        ("echo@example.com", "Echo"),
        ("bravo@example.com", "Charlie"),
    ] {
        users.push(insert(&store, address, nick).await);
    }
    let by = |order: &[&str]| -> Vec<UserId> {
        order.iter().map(|nick| users.iter().find(|user| user.nickname.as_str() == *nick).unwrap().id).collect()
    };
    let mut by_creation = users.clone();
    by_creation.sort_by_key(|user| (user.created_at, user.id));
    let oldest_first = ids(&by_creation);
    let newest_first: Vec<UserId> = oldest_first.iter().rev().copied().collect();
    for (sort, expected) in [
        (UserSort::CreatedAt, oldest_first),
        (UserSort::CreatedAtDesc, newest_first),
        (UserSort::Email, by(&["delta", "Charlie", "bravo", "alpha", "Echo"])),
        (UserSort::Nickname, by(&["alpha", "bravo", "Charlie", "delta", "Echo"])),
    ] {
        let all = store.list_users(query(sort, 100)).await.unwrap();
        assert_eq!(ids(&all), expected, "{sort:?}");
        let mut paged = Vec::new();
        let mut page_query = query(sort, 2);
        loop {
            let page = store.list_users(page_query.clone()).await.unwrap();
            assert!(page.len() <= 2);
            paged.extend(ids(&page));
            let Some(last) = page.last() else { break };
            page_query.after = Some(UserCursor::after(last, sort));
        }
        assert_eq!(paged, expected, "{sort:?} in pages of two");
    }
    assert!(store.list_users(query(UserSort::Email, 0)).await.unwrap().is_empty(), "a limit of zero");
    // A cursor's text key is compared lower-cased, whatever case it comes in.
    let mut upper = query(UserSort::Email, 100);
    upper.after = Some(UserCursor::Email("BRAVO@EXAMPLE.COM".to_owned(), by(&["Charlie"])[0]));
    assert_eq!(ids(&store.list_users(upper).await.unwrap()), by(&["bravo", "alpha", "Echo"]));
}

/// The listing keeps only the roles asked for (none: nobody) and honours each flag filter.
pub async fn users_are_listed_with_every_filter<S: Storage>(store: S) {
    let anonymous = insert(&store, "anon@example.com", "anon").await;
    let authenticated = insert_with_role(&store, "auth@example.com", "auth", Role::Authenticated).await;
    let manager = insert_with_role(&store, "manager@example.com", "manager", Role::Manager).await;
    let manager = set_locked(&store, &manager, true).await;
    let admin = insert_with_role(&store, "admin@example.com", "admin", Role::Admin).await;
    let mut professional = UserUpdate::new(admin.id, now());
    professional.fields.professional = Some((true, now()));
    let admin = store.update_user(professional).await.unwrap();

    let list = |edit: &dyn Fn(&mut UserQuery)| {
        let mut listing = query(UserSort::Email, 100);
        edit(&mut listing);
        let store = &store;
        async move { ids(&store.list_users(listing).await.unwrap()) }
    };
    assert_eq!(list(&|_| {}).await, ids(&[admin.clone(), anonymous.clone(), authenticated.clone(), manager.clone()]));
    assert!(list(&|listing| listing.roles = Vec::new()).await.is_empty());
    assert_eq!(
        list(&|listing| listing.roles = vec![Role::Manager, Role::Admin]).await,
        ids(&[admin.clone(), manager.clone()])
    );
    assert_eq!(list(&|listing| listing.email_verified = Some(false)).await, vec![anonymous.id]);
    assert_eq!(
        list(&|listing| listing.email_verified = Some(true)).await,
        ids(&[admin.clone(), authenticated.clone(), manager.clone()])
    );
    assert_eq!(list(&|listing| listing.is_locked = Some(true)).await, vec![manager.id]);
    assert_eq!(list(&|listing| listing.is_professional = Some(true)).await, vec![admin.id]);
    assert_eq!(
        list(&|listing| {
            listing.is_professional = Some(false);
            listing.is_locked = Some(false);
            listing.roles = vec![Role::Anonymous, Role::Manager, Role::Admin];
        })
        .await,
        vec![anonymous.id]
    );
}

/// The prefix matches the start of the email, nickname, first or last name, ignoring case, and takes `%`, `_`
/// and `\` literally.
pub async fn the_listing_prefix_is_literal_and_case_insensitive<S: Storage>(store: S) {
    let with_names = |address: &str, nick: &str, first: &str, last: &str| {
        let mut user = new_user(address, nick);
        user.first_name = name(first);
        user.last_name = name(last);
        user
    };
    let mut users = Vec::new();
    for user in [
        with_names("percent@example.com", "pct_user", "50%off", "Smith"),
        with_names("fifty@example.com", "pctxuser", "50xoff", "Jones"),
        with_names("under@example.com", "under", "Mary", "a_b"),
        with_names("cross@example.com", "cross", "Maria", "axb"),
        with_names("slash@example.com", "slash", "\\dir", "Doe"),
    ] {
        users.push(store.insert_user(account(user)).await.unwrap());
    }
    let matching = |prefix: &str| {
        let mut listing = query(UserSort::Email, 100);
        listing.prefix = Some(prefix.to_owned());
        let store = &store;
        async move {
            let found = store.list_users(listing).await.unwrap();
            found.iter().map(|user| user.nickname.as_str().to_owned()).collect::<BTreeSet<_>>()
        }
    };
    let named = |names: &[&str]| names.iter().map(|name| (*name).to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(matching("50%").await, named(&["pct_user"]), "% is literal");
    assert_eq!(matching("%").await, named(&[]), "% alone matches nothing");
    assert_eq!(matching("pct_").await, named(&["pct_user"]), "_ is literal");
    assert_eq!(matching("A_").await, named(&["under"]), "_ is literal, and case is ignored");
    assert_eq!(matching("\\").await, named(&["slash"]), "\\ is literal");
    assert_eq!(matching("PERC").await, named(&["pct_user"]), "the email");
    assert_eq!(matching("Fif").await, named(&["pctxuser"]));
    assert_eq!(matching("PCT").await, named(&["pct_user", "pctxuser"]), "the nickname");
    assert_eq!(matching("mar").await, named(&["under", "cross"]), "the first name");
    assert_eq!(matching("jON").await, named(&["pctxuser"]), "the last name");
    assert_eq!(matching("ith").await, named(&[]), "a prefix, not a substring");
    assert_eq!(matching("").await.len(), users.len(), "an empty prefix is no filter");
}

// ---------------------------------------------------------------------------------------------------------------
// Second factors
// ---------------------------------------------------------------------------------------------------------------

/// A sealed secret: 40 bytes of `byte`, as opaque to the store as a real one.
fn sealed(byte: u8) -> SealedSecret {
    SealedSecret(vec![byte; 40])
}

/// The hashes of recovery codes named `names`.
fn recovery_codes(names: &[&str]) -> Vec<TokenHash> {
    names.iter().map(|name| TokenHash::of(name)).collect()
}

/// A change of `user_id` at `at` that stages `secret`.
fn staging(user_id: UserId, secret: SealedSecret, at: OffsetDateTime) -> SecondFactorChange {
    let mut change = SecondFactorChange::new(user_id, at);
    change.action = SecondFactorAction::Stage { secret };
    change
}

/// A change of `user_id` at `at` that enables `secret` with a code of time step `step` and these recovery codes.
fn enabling(
    user_id: UserId,
    secret: SealedSecret,
    step: i64,
    codes: &[&str],
    at: OffsetDateTime,
) -> SecondFactorChange {
    let mut change = SecondFactorChange::new(user_id, at);
    change.proof = Some(SecondFactorProof::Step(step));
    change.action = SecondFactorAction::Enable { secret, recovery_codes: recovery_codes(codes) };
    change
}

/// A change of `user_id` at `at` that only consumes `proof`.
fn proving(user_id: UserId, proof: SecondFactorProof, at: OffsetDateTime) -> SecondFactorChange {
    let mut change = SecondFactorChange::new(user_id, at);
    change.proof = Some(proof);
    change
}

/// A recovery code named `name` as a proof.
fn recovery(name: &str) -> SecondFactorProof {
    SecondFactorProof::RecoveryCode(TokenHash::of(name))
}

/// Stages secret `byte` for `user_id` and enables it with a code of step `step` and these recovery codes.
async fn turn_on<S: Storage>(store: &S, user_id: UserId, byte: u8, step: i64, codes: &[&str]) {
    let at = now();
    assert_eq!(store.apply_second_factor(staging(user_id, sealed(byte), at)).await.unwrap(), None);
    assert_eq!(store.apply_second_factor(enabling(user_id, sealed(byte), step, codes, at)).await.unwrap(), None);
}

/// Stores a pending login step of `user_id` expiring at `expires_at`, and returns its hash.
async fn pending_step<S: Storage>(store: &S, user_id: UserId, expires_at: OffsetDateTime) -> TokenHash {
    let token_hash = RefreshToken::generate().hash();
    let challenge = NewMfaChallenge { token_hash: token_hash.clone(), user_id, expires_at };
    store.create_mfa_challenge(challenge).await.unwrap();
    token_hash
}

async fn totp<S: Storage>(store: &S, user_id: UserId) -> Option<TotpRecord> {
    store.find_totp(user_id).await.unwrap()
}

async fn user<S: Storage>(store: &S, user_id: UserId) -> User {
    store.find_user(user_id).await.unwrap().unwrap()
}

/// Staging stores an unconfirmed secret, replacing an unconfirmed one; once the second factor is on, staging is
/// refused and changes nothing; a user who does not exist is refused too.
pub async fn a_staged_secret_is_replaced_until_the_second_factor_is_on<S: Storage>(store: S) {
    let ada = insert(&store, "ada@example.com", "ada").await;
    let at = now();
    assert_eq!(totp(&store, ada.id).await, None);
    assert_eq!(store.recovery_codes_left(ada.id).await.unwrap(), 0);

    assert_eq!(store.apply_second_factor(staging(ada.id, sealed(1), at)).await.unwrap(), None);
    let staged = TotpRecord { secret: sealed(1), enabled: false, last_used_step: None };
    assert_eq!(totp(&store, ada.id).await, Some(staged));
    store.apply_second_factor(staging(ada.id, sealed(2), at)).await.unwrap();
    let restaged = TotpRecord { secret: sealed(2), enabled: false, last_used_step: None };
    assert_eq!(totp(&store, ada.id).await, Some(restaged), "the unconfirmed secret is replaced");
    assert!(!user(&store, ada.id).await.mfa_enabled, "staging does not turn the second factor on");
    assert_eq!(user(&store, ada.id).await, ada, "nor changes the user");

    store.apply_second_factor(enabling(ada.id, sealed(2), 100, &["one"], at)).await.unwrap();
    let mut refused = staging(ada.id, sealed(3), at);
    refused.mails = vec![mail("ada@example.com", "never")];
    let outcome = store.apply_second_factor(refused).await;
    assert!(matches!(outcome, Err(SecondFactorError::StateChanged)), "{outcome:?}");
    let enabled = TotpRecord { secret: sealed(2), enabled: true, last_used_step: Some(100) };
    assert_eq!(totp(&store, ada.id).await, Some(enabled), "the enabled secret stays");
    assert!(pending_subjects(&store).await.is_empty(), "no mail of a refused change");

    let ghost = store.apply_second_factor(staging(UserId::generate(), sealed(1), at)).await;
    assert!(matches!(ghost, Err(SecondFactorError::StateChanged)), "{ghost:?}");
}

/// Enabling needs an unconfirmed secret equal to the one the code was checked against; it turns the second factor
/// on (the secret, the user's `mfa_enabled` and `updated_at`), consumes the code's step and stores the recovery
/// codes, of that user only.
pub async fn enabling_needs_the_secret_that_was_checked_and_stores_the_recovery_codes<S: Storage>(store: S) {
    let ada = insert(&store, "ada@example.com", "ada").await;
    let bob = insert(&store, "bob@example.com", "bob").await;
    let at = now() + Duration::minutes(1);
    let nothing_staged = store.apply_second_factor(enabling(ada.id, sealed(1), 10, &["one"], at)).await;
    assert!(matches!(nothing_staged, Err(SecondFactorError::StateChanged)), "{nothing_staged:?}");
    assert_eq!(totp(&store, ada.id).await, None);

    store.apply_second_factor(staging(ada.id, sealed(1), at)).await.unwrap();
    let other_secret = store.apply_second_factor(enabling(ada.id, sealed(2), 10, &["one"], at)).await;
    assert!(matches!(other_secret, Err(SecondFactorError::StateChanged)), "{other_secret:?}");
    let unconfirmed = TotpRecord { secret: sealed(1), enabled: false, last_used_step: None };
    assert_eq!(totp(&store, ada.id).await, Some(unconfirmed.clone()));
    assert_eq!(store.recovery_codes_left(ada.id).await.unwrap(), 0);
    // Only a time step confirms; a proof of a login needs the second factor on.
    let early_login = store.apply_second_factor(proving(ada.id, SecondFactorProof::Step(10), at)).await;
    assert!(matches!(early_login, Err(SecondFactorError::StateChanged)), "{early_login:?}");
    assert_eq!(totp(&store, ada.id).await, Some(unconfirmed));
    assert_eq!(user(&store, ada.id).await, ada);

    let mut enable = enabling(ada.id, sealed(1), 10, &["one", "two", "three"], at);
    enable.mails = vec![mail("ada@example.com", "enabled")];
    assert_eq!(store.apply_second_factor(enable).await.unwrap(), None);
    let enabled = TotpRecord { secret: sealed(1), enabled: true, last_used_step: Some(10) };
    assert_eq!(totp(&store, ada.id).await, Some(enabled));
    assert_eq!(user(&store, ada.id).await, User { mfa_enabled: true, updated_at: at, ..ada.clone() });
    assert_eq!(store.recovery_codes_left(ada.id).await.unwrap(), 3);
    assert_eq!(pending_subjects(&store).await, subjects(&["enabled"]));

    let twice = store.apply_second_factor(enabling(ada.id, sealed(1), 11, &["four"], at)).await;
    assert!(matches!(twice, Err(SecondFactorError::StateChanged)), "{twice:?}");
    assert_eq!(store.recovery_codes_left(ada.id).await.unwrap(), 3);
    assert_eq!(totp(&store, bob.id).await, None, "another user is untouched");
    assert_eq!(store.recovery_codes_left(bob.id).await.unwrap(), 0);
    assert_eq!(user(&store, bob.id).await, bob);
}

/// A time step is accepted only when it is later than the last one accepted, which it then becomes: a replayed
/// or older step is rejected and changes nothing.
pub async fn a_time_step_is_accepted_once_and_only_after_the_last_one<S: Storage>(store: S) {
    let ada = insert(&store, "ada@example.com", "ada").await;
    turn_on(&store, ada.id, 1, 10, &["one"]).await;
    let at = now();
    let step = |step: i64| {
        let mut change = proving(ada.id, SecondFactorProof::Step(step), at);
        change.mails = vec![mail("ada@example.com", &format!("step {step}"))];
        change
    };
    for (replayed, what) in [(10, "the step that confirmed"), (9, "an older step")] {
        let outcome = store.apply_second_factor(step(replayed)).await;
        assert!(matches!(outcome, Err(SecondFactorError::ProofRejected)), "{what}: {outcome:?}");
        assert_eq!(totp(&store, ada.id).await.unwrap().last_used_step, Some(10), "{what}");
    }
    assert_eq!(store.apply_second_factor(step(11)).await.unwrap(), None);
    assert_eq!(totp(&store, ada.id).await.unwrap().last_used_step, Some(11));
    let again = store.apply_second_factor(step(11)).await;
    assert!(matches!(again, Err(SecondFactorError::ProofRejected)), "{again:?}");
    store.apply_second_factor(step(13)).await.unwrap();
    let skipped = store.apply_second_factor(step(12)).await;
    assert!(matches!(skipped, Err(SecondFactorError::ProofRejected)), "{skipped:?}");
    assert_eq!(totp(&store, ada.id).await.unwrap().last_used_step, Some(13));
    assert_eq!(pending_subjects(&store).await, subjects(&["step 11", "step 13"]), "only accepted changes mail");
}

/// A recovery code is accepted once, and only from its own user's unused codes.
pub async fn a_recovery_code_is_accepted_once<S: Storage>(store: S) {
    let ada = insert(&store, "ada@example.com", "ada").await;
    let bob = insert(&store, "bob@example.com", "bob").await;
    turn_on(&store, ada.id, 1, 10, &["ada-one", "ada-two"]).await;
    turn_on(&store, bob.id, 2, 10, &["bob-one"]).await;
    let at = now();
    assert_eq!(store.apply_second_factor(proving(ada.id, recovery("ada-one"), at)).await.unwrap(), None);
    assert_eq!(store.recovery_codes_left(ada.id).await.unwrap(), 1);
    for (code, what) in [("ada-one", "a used code"), ("bob-one", "another user's code"), ("nobody", "an unknown one")] {
        let outcome = store.apply_second_factor(proving(ada.id, recovery(code), at)).await;
        assert!(matches!(outcome, Err(SecondFactorError::ProofRejected)), "{what}: {outcome:?}");
    }
    assert_eq!(store.recovery_codes_left(ada.id).await.unwrap(), 1);
    assert_eq!(store.recovery_codes_left(bob.id).await.unwrap(), 1, "another user's code stays unused");
    assert_eq!(totp(&store, ada.id).await.unwrap().last_used_step, Some(10), "a code leaves the step alone");
    store.apply_second_factor(proving(ada.id, recovery("ada-two"), at)).await.unwrap();
    assert_eq!(store.recovery_codes_left(ada.id).await.unwrap(), 0);
    store.apply_second_factor(proving(bob.id, recovery("bob-one"), at)).await.unwrap();
}

/// Replacing the recovery codes (which needs the second factor on) makes every old code, used or not, fail, and
/// the new ones work once.
pub async fn replaced_recovery_codes_stop_working<S: Storage>(store: S) {
    let ada = insert(&store, "ada@example.com", "ada").await;
    let bob = insert(&store, "bob@example.com", "bob").await;
    turn_on(&store, ada.id, 1, 10, &["old-one", "old-two", "old-three"]).await;
    let at = now();
    store.apply_second_factor(proving(ada.id, recovery("old-one"), at)).await.unwrap();

    let mut replace = proving(ada.id, recovery("old-two"), at);
    replace.action = SecondFactorAction::ReplaceRecoveryCodes(recovery_codes(&["new-one", "new-two"]));
    assert_eq!(store.apply_second_factor(replace).await.unwrap(), None);
    assert_eq!(store.recovery_codes_left(ada.id).await.unwrap(), 2);
    for old in ["old-one", "old-two", "old-three"] {
        let outcome = store.apply_second_factor(proving(ada.id, recovery(old), at)).await;
        assert!(matches!(outcome, Err(SecondFactorError::ProofRejected)), "{old}: {outcome:?}");
    }
    store.apply_second_factor(proving(ada.id, recovery("new-one"), at)).await.unwrap();
    assert_eq!(store.recovery_codes_left(ada.id).await.unwrap(), 1);
    let reused = store.apply_second_factor(proving(ada.id, recovery("new-one"), at)).await;
    assert!(matches!(reused, Err(SecondFactorError::ProofRejected)), "{reused:?}");
    assert!(user(&store, ada.id).await.mfa_enabled);

    let mut off = SecondFactorChange::new(bob.id, at);
    off.action = SecondFactorAction::ReplaceRecoveryCodes(recovery_codes(&["bob-one"]));
    let outcome = store.apply_second_factor(off).await;
    assert!(matches!(outcome, Err(SecondFactorError::StateChanged)), "second factor off: {outcome:?}");
    assert_eq!(store.recovery_codes_left(bob.id).await.unwrap(), 0);
}

/// Disabling (which needs the second factor on) deletes the secret, the recovery codes and the user's pending
/// login steps, and turns `mfa_enabled` off with `updated_at`; other users keep theirs; a new secret can be staged.
pub async fn disabling_clears_the_second_factor_and_the_pending_login_steps<S: Storage>(store: S) {
    let ada = insert(&store, "ada@example.com", "ada").await;
    let bob = insert(&store, "bob@example.com", "bob").await;
    turn_on(&store, ada.id, 1, 10, &["one", "two"]).await;
    turn_on(&store, bob.id, 2, 10, &["bob-one"]).await;
    let t0 = now();
    let expires = t0 + Duration::minutes(5);
    let mine = pending_step(&store, ada.id, expires).await;
    let theirs = pending_step(&store, bob.id, expires).await;

    let at = t0 + Duration::minutes(1);
    let mut disable = proving(ada.id, recovery("one"), at);
    disable.action = SecondFactorAction::Disable;
    disable.mails = vec![mail("ada@example.com", "disabled")];
    assert_eq!(store.apply_second_factor(disable).await.unwrap(), None);
    assert_eq!(totp(&store, ada.id).await, None);
    assert_eq!(store.recovery_codes_left(ada.id).await.unwrap(), 0);
    let after = user(&store, ada.id).await;
    assert_eq!((after.mfa_enabled, after.updated_at), (false, at));
    assert_eq!(store.take_mfa_attempt(mine, t0, 5).await.unwrap(), None, "the pending login step is gone");
    assert_eq!(pending_subjects(&store).await, subjects(&["disabled"]));

    assert!(store.take_mfa_attempt(theirs, t0, 5).await.unwrap().is_some(), "another user's step stays");
    assert!(totp(&store, bob.id).await.is_some_and(|record| record.enabled));
    assert_eq!(store.recovery_codes_left(bob.id).await.unwrap(), 1);
    assert!(user(&store, bob.id).await.mfa_enabled);

    let mut again = SecondFactorChange::new(ada.id, at);
    again.action = SecondFactorAction::Disable;
    let outcome = store.apply_second_factor(again).await;
    assert!(matches!(outcome, Err(SecondFactorError::StateChanged)), "already off: {outcome:?}");
    let code = store.apply_second_factor(proving(ada.id, recovery("two"), at)).await;
    assert!(matches!(code, Err(SecondFactorError::StateChanged)), "no proof without a second factor: {code:?}");
    store.apply_second_factor(staging(ada.id, sealed(3), at)).await.unwrap();
    assert_eq!(
        totp(&store, ada.id).await,
        Some(TotpRecord { secret: sealed(3), enabled: false, last_used_step: None })
    );
}

/// Each try on a pending login step is counted and returned with the step, while the step expires after `now` and
/// fewer than the limit were tried; otherwise `None`, and nothing changes.
pub async fn login_step_tries_are_counted_up_to_the_limit_while_unexpired<S: Storage>(store: S) {
    let ada = insert(&store, "ada@example.com", "ada").await;
    let t0 = now();
    let expires = t0 + Duration::minutes(5);
    let hash = pending_step(&store, ada.id, expires).await;
    for attempts in 1..=3 {
        let taken = store.take_mfa_attempt(hash.clone(), t0, 3).await.unwrap();
        assert_eq!(taken, Some(MfaChallenge { user_id: ada.id, expires_at: expires, attempts }));
    }
    assert_eq!(store.take_mfa_attempt(hash.clone(), t0, 3).await.unwrap(), None, "used up");
    assert_eq!(store.take_mfa_attempt(hash.clone(), t0, 3).await.unwrap(), None, "and not counted further");
    let higher = store.take_mfa_attempt(hash.clone(), t0, 4).await.unwrap();
    assert_eq!(higher.map(|challenge| challenge.attempts), Some(4), "the limit is the caller's");

    let fresh = pending_step(&store, ada.id, expires).await;
    assert_eq!(store.take_mfa_attempt(fresh.clone(), expires, 5).await.unwrap(), None, "expired at its end");
    let before_end = store.take_mfa_attempt(fresh, expires - Duration::seconds(1), 5).await.unwrap();
    assert_eq!(before_end.map(|challenge| challenge.attempts), Some(1), "an expired try counted nothing");
    let unknown = RefreshToken::generate().hash();
    assert_eq!(store.take_mfa_attempt(unknown, t0, 5).await.unwrap(), None);
}

/// A change consumes a pending login step only when it is the user's and expires after the change's time, and
/// only once.
pub async fn a_login_step_is_consumed_once_and_only_by_its_own_user<S: Storage>(store: S) {
    let ada = insert(&store, "ada@example.com", "ada").await;
    let bob = insert(&store, "bob@example.com", "bob").await;
    turn_on(&store, ada.id, 1, 10, &["ada-one", "ada-two"]).await;
    turn_on(&store, bob.id, 2, 10, &["bob-one"]).await;
    let t0 = now();
    let expires = t0 + Duration::minutes(5);
    let hash = pending_step(&store, ada.id, expires).await;
    let login = |user_id: UserId, proof: SecondFactorProof, at: OffsetDateTime| {
        let mut change = proving(user_id, proof, at);
        change.consume_challenge = Some(hash.clone());
        change
    };

    let foreign = store.apply_second_factor(login(bob.id, recovery("bob-one"), t0)).await;
    assert!(matches!(foreign, Err(SecondFactorError::ChallengeUnusable)), "another user's: {foreign:?}");
    assert_eq!(store.recovery_codes_left(bob.id).await.unwrap(), 1, "the proof is not consumed");
    let expired = store.apply_second_factor(login(ada.id, recovery("ada-one"), expires)).await;
    assert!(matches!(expired, Err(SecondFactorError::ChallengeUnusable)), "expired: {expired:?}");
    assert_eq!(store.recovery_codes_left(ada.id).await.unwrap(), 2);

    store.apply_second_factor(login(ada.id, recovery("ada-one"), expires - Duration::seconds(1))).await.unwrap();
    assert_eq!(store.take_mfa_attempt(hash.clone(), t0, 5).await.unwrap(), None, "consumed");
    let again = store.apply_second_factor(login(ada.id, recovery("ada-two"), t0)).await;
    assert!(matches!(again, Err(SecondFactorError::ChallengeUnusable)), "second consumption: {again:?}");
    assert_eq!(store.recovery_codes_left(ada.id).await.unwrap(), 1);
    let unknown = {
        let mut change = proving(ada.id, recovery("ada-two"), t0);
        change.consume_challenge = Some(RefreshToken::generate().hash());
        store.apply_second_factor(change).await
    };
    assert!(matches!(unknown, Err(SecondFactorError::ChallengeUnusable)), "unknown: {unknown:?}");
}

/// A change that fails (its requirement, its login step or its proof) stores none of its parts: the login step is
/// still pending, the proof unused, the action not applied, no session started, the backoff kept, no mail queued.
pub async fn a_failed_second_factor_change_stores_nothing<S: Storage>(store: S) {
    let ada = insert(&store, "ada@example.com", "ada").await;
    let bob = insert(&store, "bob@example.com", "bob").await;
    turn_on(&store, ada.id, 1, 10, &["one"]).await;
    let t0 = now();
    let key = "ada@example.com".to_owned();
    store.record_login_failure(key.clone(), t0, BackoffPolicy::default(), Vec::new()).await.unwrap();
    let failures = store.login_failures(key.clone()).await.unwrap();
    let expires = t0 + Duration::minutes(5);
    let hash = pending_step(&store, ada.id, expires).await;
    let theirs = pending_step(&store, bob.id, expires).await;
    let before = user(&store, ada.id).await;
    let record = totp(&store, ada.id).await;

    let at = t0 + Duration::seconds(1);
    let (session, _) = new_session(ada.id, at);
    let full = |challenge: &TokenHash, proof: SecondFactorProof, action: SecondFactorAction| {
        let mut change = proving(ada.id, proof, at);
        change.consume_challenge = Some(challenge.clone());
        change.action = action;
        change.start_session = Some(session.clone());
        change.clear_failures = Some(key.clone());
        change.mails = vec![mail("ada@example.com", "never")];
        change
    };
    let replace = SecondFactorAction::ReplaceRecoveryCodes(recovery_codes(&["new"]));
    let stage = SecondFactorAction::Stage { secret: sealed(9) };
    let cases = [
        (full(&hash, SecondFactorProof::Step(10), SecondFactorAction::Keep), "a replayed step"),
        (full(&hash, SecondFactorProof::Step(9), replace.clone()), "an older step"),
        (full(&hash, recovery("unknown"), SecondFactorAction::Disable), "an unknown recovery code"),
        (full(&theirs, SecondFactorProof::Step(11), replace), "another user's login step"),
        (full(&hash, recovery("one"), stage), "staging with the second factor on"),
    ];
    for (change, what) in cases {
        let outcome = store.apply_second_factor(change).await;
        let expected = match what {
            "another user's login step" => matches!(outcome, Err(SecondFactorError::ChallengeUnusable)),
            "staging with the second factor on" => matches!(outcome, Err(SecondFactorError::StateChanged)),
            _ => matches!(outcome, Err(SecondFactorError::ProofRejected)),
        };
        assert!(expected, "{what}: {outcome:?}");
        assert_eq!(user(&store, ada.id).await, before, "{what}: the user is unchanged, no login recorded");
        assert_eq!(totp(&store, ada.id).await, record, "{what}: the secret and its last step are unchanged");
        assert_eq!(store.recovery_codes_left(ada.id).await.unwrap(), 1, "{what}: the codes are unchanged");
        assert_eq!(store.find_session_with_user(session.id).await.unwrap(), None, "{what}: no session");
        assert_eq!(store.login_failures(key.clone()).await.unwrap(), failures, "{what}: the backoff stays");
        assert!(pending_subjects(&store).await.is_empty(), "{what}: no mail is queued");
    }
    let pending = store.take_mfa_attempt(hash, t0, 5).await.unwrap();
    assert_eq!(pending.map(|challenge| challenge.attempts), Some(1), "the login step is still pending, untried");
    assert!(store.take_mfa_attempt(theirs, t0, 5).await.unwrap().is_some());
    store.apply_second_factor(proving(ada.id, recovery("one"), at)).await.unwrap();
}

/// A change that starts a session stores it with its first refresh token, records the login on the user, clears
/// the backoff and returns the session; a session of another user is refused as a bug, storing nothing.
pub async fn a_second_factor_change_starts_its_session_and_clears_the_backoff<S: Storage>(store: S) {
    let ada = insert(&store, "ada@example.com", "ada").await;
    let bob = insert(&store, "bob@example.com", "bob").await;
    turn_on(&store, ada.id, 1, 10, &["one"]).await;
    let t0 = now();
    let key = "ada@example.com".to_owned();
    store.record_login_failure(key.clone(), t0, BackoffPolicy::default(), Vec::new()).await.unwrap();
    let hash = pending_step(&store, ada.id, t0 + Duration::minutes(5)).await;

    let at = t0 + Duration::seconds(1);
    let (stray, _) = new_session(bob.id, at);
    let mut foreign = proving(ada.id, SecondFactorProof::Step(11), at);
    foreign.start_session = Some(stray.clone());
    let outcome = store.apply_second_factor(foreign).await;
    assert!(matches!(outcome, Err(SecondFactorError::Port(PortError::Unknown(_)))), "{outcome:?}");
    assert_eq!(store.find_session_with_user(stray.id).await.unwrap(), None);
    assert_eq!(totp(&store, ada.id).await.unwrap().last_used_step, Some(10), "the step is not consumed");

    let (new, refresh) = new_session(ada.id, at);
    let mut login = proving(ada.id, SecondFactorProof::Step(11), at);
    login.consume_challenge = Some(hash.clone());
    login.start_session = Some(new.clone());
    login.clear_failures = Some(key.clone());
    login.mails = vec![mail("ada@example.com", "signed in")];
    let started = store.apply_second_factor(login).await.unwrap().unwrap();
    assert_eq!(
        started,
        Session {
            id: new.id,
            user_id: ada.id,
            created_at: at,
            last_used_at: at,
            expires_at: new.expires_at,
            revoked_at: None,
            user_agent: new.user_agent.clone(),
            ip: new.ip.clone(),
        }
    );
    let (found, owner) = store.find_session_with_user(new.id).await.unwrap().unwrap();
    assert_eq!(found, started);
    assert_eq!(owner.last_login_at, Some(at), "the login is recorded on the user");
    assert!(owner.mfa_enabled);
    let token = store.find_refresh_token(refresh).await.unwrap().unwrap();
    assert_eq!((token.session.id, token.used), (new.id, false));
    assert_eq!(store.login_failures(key).await.unwrap(), None, "the backoff is cleared");
    assert_eq!(store.take_mfa_attempt(hash, t0, 5).await.unwrap(), None, "the login step is consumed");
    assert_eq!(totp(&store, ada.id).await.unwrap().last_used_step, Some(11));
    assert_eq!(pending_subjects(&store).await, subjects(&["signed in"]));
}

/// Of two concurrent changes proving with one time step, exactly one applies; the other is rejected and stores
/// nothing.
pub async fn concurrent_changes_with_one_time_step_let_exactly_one_apply<S: Storage>(store: S) {
    let ada = insert(&store, "ada@example.com", "ada").await;
    turn_on(&store, ada.id, 1, 10, &["one"]).await;
    let at = now();
    let mut first = proving(ada.id, SecondFactorProof::Step(11), at);
    first.mails = vec![mail("ada@example.com", "first")];
    let mut second = proving(ada.id, SecondFactorProof::Step(11), at);
    second.mails = vec![mail("ada@example.com", "second")];
    let (a, b) = tokio::join!(store.apply_second_factor(first), store.apply_second_factor(second));
    assert_eq!([&a, &b].iter().filter(|outcome| outcome.is_ok()).count(), 1, "{a:?} / {b:?}");
    assert!([&a, &b].iter().any(|outcome| matches!(outcome, Err(SecondFactorError::ProofRejected))));
    assert_eq!(pending_subjects(&store).await.len(), 1, "only the winner's mail is queued");
    assert_eq!(totp(&store, ada.id).await.unwrap().last_used_step, Some(11));
}

/// Of two concurrent tries on a pending login step with one attempt left, exactly one is let through.
pub async fn concurrent_tries_on_the_last_attempt_let_exactly_one_through<S: Storage>(store: S) {
    let ada = insert(&store, "ada@example.com", "ada").await;
    let t0 = now();
    let hash = pending_step(&store, ada.id, t0 + Duration::minutes(5)).await;
    for _ in 0..2 {
        store.take_mfa_attempt(hash.clone(), t0, 3).await.unwrap().unwrap();
    }
    let (a, b) = tokio::join!(store.take_mfa_attempt(hash.clone(), t0, 3), store.take_mfa_attempt(hash.clone(), t0, 3));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.is_some() != b.is_some(), "exactly one try passes: {a:?} / {b:?}");
    assert_eq!(a.or(b).map(|challenge| challenge.attempts), Some(3));
    assert_eq!(store.take_mfa_attempt(hash, t0, 3).await.unwrap(), None);
}

/// Deleting a user deletes their secret, recovery codes and pending login steps, and no one else's.
pub async fn deleting_a_user_takes_their_second_factor<S: Storage>(store: S) {
    let ada = insert(&store, "ada@example.com", "ada").await;
    let bob = insert(&store, "bob@example.com", "bob").await;
    turn_on(&store, ada.id, 1, 10, &["one", "two"]).await;
    turn_on(&store, bob.id, 2, 10, &["bob-one"]).await;
    let t0 = now();
    let mine = pending_step(&store, ada.id, t0 + Duration::minutes(5)).await;
    let theirs = pending_step(&store, bob.id, t0 + Duration::minutes(5)).await;

    store.delete_user(ada.id, Guard::default(), Vec::new()).await.unwrap();
    assert_eq!(totp(&store, ada.id).await, None);
    assert_eq!(store.recovery_codes_left(ada.id).await.unwrap(), 0);
    assert_eq!(store.take_mfa_attempt(mine, t0, 5).await.unwrap(), None);
    let gone = store.apply_second_factor(proving(ada.id, recovery("two"), t0)).await;
    assert!(matches!(gone, Err(SecondFactorError::StateChanged)), "a deleted user: {gone:?}");

    assert!(totp(&store, bob.id).await.is_some());
    assert_eq!(store.recovery_codes_left(bob.id).await.unwrap(), 1);
    assert!(store.take_mfa_attempt(theirs, t0, 5).await.unwrap().is_some());
}

// ---------------------------------------------------------------------------------------------------------------
// The audit trail
// ---------------------------------------------------------------------------------------------------------------

fn event(kind: EventType, subject: Option<UserId>, at: OffsetDateTime) -> AuditEvent {
    let mut event = AuditEvent::new(kind, at, &users_domain::audit::ClientInfo::default());
    event.subject_id = subject;
    event
}

async fn all_events<S: Storage>(store: &S) -> Vec<AuditEvent> {
    store.list_events(EventQuery { limit: 1000, ..EventQuery::default() }).await.unwrap()
}

/// Events travel in a change and are written with it, details and all; a refused change writes none.
pub async fn events_are_written_with_their_change_and_not_with_a_refused_one<S: Storage>(store: S) {
    let t0 = now();
    let ada = new_user("ada@example.com", "ada");
    let registered = event(EventType::UserRegistered, Some(ada.id), t0)
        .actor(ada.id, None)
        .detail("role", "ANONYMOUS")
        .change("email", "a", "b");
    let registered =
        AuditEvent { ip: Some("203.0.113.7".to_owned()), user_agent: Some("ua/1".to_owned()), ..registered };
    let mut new = account(ada.clone());
    new.events = vec![registered.clone()];
    store.insert_user(new).await.unwrap();
    assert_eq!(all_events(&store).await, vec![registered.clone()], "read back exactly as written");

    let clash = new_user("ADA@example.com", "other");
    let mut refused = account(clash.clone());
    refused.events = vec![event(EventType::UserRegistered, Some(clash.id), t0)];
    assert!(store.insert_user(refused).await.is_err());
    let mut update = UserUpdate::new(ada.id, t0 + Duration::seconds(1));
    update.guard.role = Some(Role::Admin);
    update.events = vec![event(EventType::UserUpdated, Some(ada.id), t0 + Duration::seconds(1))];
    assert!(matches!(store.update_user(update).await, Err(UpdateError::RoleChanged)));
    let mut deletion = vec![event(EventType::UserDeleted, Some(ada.id), t0)];
    assert!(
        store
            .delete_user(ada.id, Guard { role: Some(Role::Manager), another_admin: false }, deletion.clone())
            .await
            .is_err()
    );
    assert_eq!(all_events(&store).await.len(), 1, "refused changes write no event");

    let mut update = UserUpdate::new(ada.id, t0 + Duration::seconds(2));
    update.fields.email_verified = Some(true);
    let verified = event(EventType::UserEmailVerified, Some(ada.id), t0 + Duration::seconds(2));
    update.events = vec![verified.clone()];
    store.update_user(update).await.unwrap();
    let (session, _) = new_session(ada.id, t0 + Duration::seconds(3));
    let login = event(EventType::LoginSucceeded, Some(ada.id), t0 + Duration::seconds(3));
    store.start_session(session, t0 + Duration::seconds(3), vec![login.clone()]).await.unwrap();
    let failed = event(EventType::LoginFailed, Some(ada.id), t0 + Duration::seconds(4));
    store
        .record_login_failure("ada@example.com".to_owned(), t0, BackoffPolicy::default(), vec![failed.clone()])
        .await
        .unwrap();
    let throttled = event(EventType::LoginThrottled, None, t0 + Duration::seconds(5));
    store.record_events(vec![throttled.clone()]).await.unwrap();
    deletion[0].at = t0 + Duration::seconds(6);
    store.delete_user(ada.id, Guard::default(), deletion.clone()).await.unwrap();
    let kinds: Vec<EventType> = all_events(&store).await.iter().map(|event| event.kind).collect();
    assert_eq!(
        kinds,
        [
            EventType::UserDeleted,
            EventType::LoginThrottled,
            EventType::LoginFailed,
            EventType::LoginSucceeded,
            EventType::UserEmailVerified,
            EventType::UserRegistered
        ]
    );
}

/// A revocation writes its events only when it revoked a session; ending sessions writes them with the change.
pub async fn events_of_revocations_are_written_only_when_a_session_ends<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let t0 = now();
    let (session, _) = start(&store, user.id, t0).await;
    let revoked = event(EventType::SessionRevoked, Some(user.id), t0);
    assert!(store.revoke_session(session.id, None, t0, vec![revoked.clone()]).await.unwrap());
    let again = event(EventType::SessionRevoked, Some(user.id), t0);
    assert!(!store.revoke_session(session.id, None, t0, vec![again]).await.unwrap());
    assert_eq!(all_events(&store).await, vec![revoked]);

    let all = event(EventType::SessionRevoked, Some(user.id), t0 + Duration::seconds(1));
    store.end_sessions(user.id, SessionEnd::All, t0 + Duration::seconds(1), vec![all.clone()]).await.unwrap();
    assert_eq!(all_events(&store).await.first(), Some(&all));

    let picture = picture(user.id, t0);
    let uploaded = event(EventType::PictureUploaded, Some(user.id), t0 + Duration::seconds(2));
    store.insert_active_picture(picture.clone(), t0, vec![uploaded.clone()]).await.unwrap();
    let deleted = event(EventType::PictureDeleted, Some(user.id), t0 + Duration::seconds(3));
    assert!(store.archive_active_picture(user.id, t0, vec![deleted.clone()]).await.unwrap().is_some());
    let nothing = event(EventType::PictureDeleted, Some(user.id), t0 + Duration::seconds(4));
    assert!(store.archive_active_picture(user.id, t0, vec![nothing]).await.unwrap().is_none());
    let unknown = event(EventType::PictureRestored, Some(user.id), t0 + Duration::seconds(5));
    assert!(store.restore_picture(user.id, uuid::Uuid::now_v7(), t0, vec![unknown]).await.unwrap().is_none());
    let restored = event(EventType::PictureRestored, Some(user.id), t0 + Duration::seconds(6));
    assert!(store.restore_picture(user.id, picture.id, t0, vec![restored.clone()]).await.unwrap().is_some());
    let kinds: Vec<EventType> = all_events(&store).await.iter().map(|event| event.kind).collect();
    assert_eq!(
        kinds,
        [
            EventType::PictureRestored,
            EventType::PictureDeleted,
            EventType::PictureUploaded,
            EventType::SessionRevoked,
            EventType::SessionRevoked
        ]
    );
}

/// The listing: newest first by time then id, each filter on its own, and keyset pages that meet.
pub async fn events_are_listed_newest_first_with_filters_and_pages<S: Storage>(store: S) {
    let t0 = now();
    let (ada, bob) = (UserId::generate(), UserId::generate());
    let mut written = Vec::new();
    for i in 0..12_i64 {
        let kind = if i % 3 == 0 { EventType::LoginFailed } else { EventType::LoginSucceeded };
        let subject = if i % 2 == 0 { ada } else { bob };
        // Pairs share a time, so the id breaks the tie.
        let mut event = event(kind, Some(subject), t0 + Duration::seconds(i / 2));
        event.actor_id = Some(if i < 6 { ada } else { bob });
        written.push(event);
    }
    store.record_events(written.clone()).await.unwrap();
    let mut newest_first = written.clone();
    newest_first.sort_by_key(|event| std::cmp::Reverse((event.at, event.id)));
    assert_eq!(all_events(&store).await, newest_first);

    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_events(EventQuery { limit: 5, after, ..EventQuery::default() }).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.at, last.id));
        paged.extend(page);
    }
    assert_eq!(paged, newest_first, "pages meet without overlap");

    let query = |f: fn(&mut EventQuery)| {
        let mut query = EventQuery { limit: 100, ..EventQuery::default() };
        f(&mut query);
        query
    };
    let by_kind = store.list_events(query(|q| q.kinds = vec![EventType::LoginFailed])).await.unwrap();
    assert_eq!(by_kind.len(), 4);
    let both =
        store.list_events(query(|q| q.kinds = vec![EventType::LoginFailed, EventType::LoginSucceeded])).await.unwrap();
    assert_eq!(both.len(), 12);
    let mut subject_query = EventQuery { limit: 100, subject_id: Some(ada), ..EventQuery::default() };
    assert_eq!(store.list_events(subject_query.clone()).await.unwrap().len(), 6);
    subject_query.actor_id = Some(bob);
    assert_eq!(store.list_events(subject_query).await.unwrap().len(), 3);
    let window = EventQuery {
        limit: 100,
        since: Some(t0 + Duration::seconds(2)),
        until: Some(t0 + Duration::seconds(4)),
        ..EventQuery::default()
    };
    let in_window = store.list_events(window).await.unwrap();
    assert_eq!(in_window.len(), 4, "since is inclusive, until exclusive");
    assert!(
        in_window.iter().all(|event| event.at >= t0 + Duration::seconds(2) && event.at < t0 + Duration::seconds(4))
    );
}

/// Deleting a user keeps the events that name them.
pub async fn events_outlive_the_user_they_name<S: Storage>(store: S) {
    let user = insert(&store, "ada@example.com", "ada").await;
    let t0 = now();
    store.record_events(vec![event(EventType::LoginFailed, Some(user.id), t0)]).await.unwrap();
    let deleted = event(EventType::UserDeleted, Some(user.id), t0 + Duration::seconds(1));
    store.delete_user(user.id, Guard::default(), vec![deleted]).await.unwrap();
    let query = EventQuery { limit: 10, subject_id: Some(user.id), ..EventQuery::default() };
    assert_eq!(store.list_events(query).await.unwrap().len(), 2);
}
