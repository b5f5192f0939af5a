//! The conformance suite of the storage ports: what every adapter set must do, checked through the ports alone.
//!
//! Each check takes a fresh, empty store implementing every storage port ([`Storage`]) and asserts the semantics the
//! port traits document: atomic changes, case-insensitive uniqueness, the preconditions of a [`UserUpdate`],
//! compare-and-set rotation, leases, keyset listing. The same checks run against Postgres and against memory, so a
//! rule that holds in the domain's tests over memory also holds in production. An adapter crate runs them all with
//! [`crate::conformance_tests!`].

use time::{Duration, OffsetDateTime};
use users_domain::permissions::Role;
use users_domain::ports::{
    AccountRequestKind, AccountRequests, BackoffPolicy, EmailTokenPurpose, EmailTokenStore, Guard, InsertUserError,
    LoginThrottle, MailOutbox, NewAccount, NewEmailToken, OutgoingMail, PictureRecords, PictureSize, PictureVariant,
    PictureWriteError, ProfileChanges, SessionEnd, SessionStore, StoredPicture, UpdateError, UserCursor, UserQuery,
    UserSort, UserStore, UserUpdate,
};
use users_domain::session::{NewSession, RefreshToken, SessionId, TokenHash};
use users_domain::user::{EmailAddress, NewUser, Nickname, PasswordHash, PersonName, User, UserId};
use uuid::Uuid;

/// Every storage port at once: what one adapter set's store implements.
pub trait Storage:
    UserStore + SessionStore + EmailTokenStore + LoginThrottle + MailOutbox + AccountRequests + PictureRecords
{
}

impl<S> Storage for S where
    S: UserStore + SessionStore + EmailTokenStore + LoginThrottle + MailOutbox + AccountRequests + PictureRecords
{
}

/// Defines one `#[tokio::test]` per conformance check, each on a fresh store made by `$make`, an expression that
/// evaluates to a future of `(store, guard)`; `guard` is kept alive for the test (a test database, say).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            users_are_found_by_id_and_by_email_and_unique_case_insensitively,
            a_failed_insert_stores_neither_token_nor_mail,
            an_update_applies_every_part_of_the_change,
            a_failed_update_changes_nothing,
            the_guard_checks_the_role_and_that_another_unlocked_admin_remains,
            a_token_is_consumed_once_and_never_after_it_expired,
            deleting_a_user_takes_what_hangs_off_them_and_checks_the_guard,
            sessions_are_started_found_revoked_and_listed,
            rotation_is_compare_and_set,
            the_throttle_counts_blocks_without_shortening_and_clears,
            the_outbox_claims_with_leases_and_records_outcomes,
            account_requests_are_deduplicated_claimed_and_finished,
            pictures_move_between_active_and_archive,
            listing_orders_pages_and_filters_like_the_query_says,
        );
    };
    (@each $make:expr; $($check:ident),+ $(,)?) => {$(
        #[tokio::test]
        async fn $check() {
            let (store, _guard) = $make.await;
            $crate::conformance::$check(&store).await;
        }
    )+};
}

/// A time in whole microseconds (what Postgres keeps), so values read back compare equal.
fn now() -> OffsetDateTime {
    let at = OffsetDateTime::now_utc();
    at.replace_nanosecond(at.nanosecond() / 1000 * 1000).unwrap_or(at)
}

fn email(raw: &str) -> EmailAddress {
    EmailAddress::parse(raw).unwrap()
}

fn new_user(address: &str, nickname: &str, role: Role) -> NewUser {
    NewUser {
        id: UserId::generate(),
        email: email(address),
        nickname: Nickname::parse(nickname).unwrap(),
        first_name: PersonName::parse("Ada").unwrap(),
        last_name: None,
        bio: None,
        linkedin_profile_url: None,
        github_profile_url: None,
        role,
        email_verified: true,
        password_hash: PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".to_owned()),
    }
}

fn mail(to: &str, subject: &str) -> OutgoingMail {
    OutgoingMail { to: email(to), subject: subject.to_owned(), text: "text".to_owned(), html: "<p>html</p>".to_owned() }
}

fn email_token(user: UserId, purpose: EmailTokenPurpose, expires_at: OffsetDateTime) -> (String, NewEmailToken) {
    let secret = RefreshToken::generate();
    let new_email = (purpose == EmailTokenPurpose::EmailChange).then(|| email("next@example.com"));
    let token = NewEmailToken { hash: secret.hash(), user_id: user, purpose, new_email, expires_at };
    (secret.expose().to_owned(), token)
}

async fn insert<S: Storage>(store: &S, address: &str, nickname: &str, role: Role) -> User {
    let account = NewAccount { user: new_user(address, nickname, role), token: None, mails: Vec::new() };
    store.insert_user(account).await.unwrap()
}

/// Every pending mail's subject, in queue order (claimed far in the future, so every lease has ended).
async fn queued_subjects<S: Storage>(store: &S) -> Vec<String> {
    let later = now() + Duration::days(365);
    let claimed = store.claim_due_mail(later, 1000, Duration::seconds(1)).await.unwrap();
    claimed.into_iter().map(|message| message.mail.subject).collect()
}

async fn start_session<S: Storage>(store: &S, user: &User, at: OffsetDateTime) -> (SessionId, TokenHash) {
    let refresh = RefreshToken::generate();
    let session = NewSession {
        id: SessionId::generate(),
        user_id: user.id,
        expires_at: at + Duration::days(30),
        refresh_token_hash: refresh.hash(),
        user_agent: Some("conformance".to_owned()),
        ip: Some("192.0.2.1".to_owned()),
    };
    let stored = store.start_session(session, at).await.unwrap();
    (stored.id, refresh.hash())
}

/// Insert, the lookups, and uniqueness of email and nickname whatever their case.
pub async fn users_are_found_by_id_and_by_email_and_unique_case_insensitively<S: Storage>(store: &S) {
    let ada = insert(store, "Ada@Example.com", "ada", Role::Authenticated).await;
    assert_eq!(store.find_user(ada.id).await.unwrap().as_ref(), Some(&ada));
    assert_eq!(store.find_user_by_email(email("ADA@example.com")).await.unwrap().map(|user| user.id), Some(ada.id));
    assert!(store.find_user(UserId::generate()).await.unwrap().is_none());
    assert!(store.nickname_exists(Nickname::parse("ADA").unwrap()).await.unwrap());
    assert!(!store.nickname_exists(Nickname::parse("grace").unwrap()).await.unwrap());
    let same_email =
        NewAccount { user: new_user("ada@EXAMPLE.com", "other", Role::Anonymous), token: None, mails: vec![] };
    assert!(matches!(store.insert_user(same_email).await, Err(InsertUserError::EmailTaken)));
    let same_nickname =
        NewAccount { user: new_user("b@example.com", "AdA", Role::Anonymous), token: None, mails: vec![] };
    assert!(matches!(store.insert_user(same_nickname).await, Err(InsertUserError::NicknameTaken)));
    assert!(store.ping().await.is_ok());
}

/// An insert that fails leaves neither its token nor its mails behind.
pub async fn a_failed_insert_stores_neither_token_nor_mail<S: Storage>(store: &S) {
    insert(store, "ada@example.com", "ada", Role::Authenticated).await;
    let user = new_user("ada@example.com", "someone", Role::Anonymous);
    let (secret, token) = email_token(user.id, EmailTokenPurpose::Verify, now() + Duration::hours(1));
    let account = NewAccount { user, token: Some(token), mails: vec![mail("ada@example.com", "verify")] };
    assert!(matches!(store.insert_user(account).await, Err(InsertUserError::EmailTaken)));
    assert!(store.find_email_token(TokenHash::of(&secret)).await.unwrap().is_none());
    assert!(queued_subjects(store).await.is_empty());

    let user = new_user("grace@example.com", "grace", Role::Anonymous);
    let (secret, token) = email_token(user.id, EmailTokenPurpose::Verify, now() + Duration::hours(1));
    let account = NewAccount { user, token: Some(token), mails: vec![mail("grace@example.com", "verify")] };
    let grace = store.insert_user(account).await.unwrap();
    let found = store.find_email_token(TokenHash::of(&secret)).await.unwrap().unwrap();
    assert_eq!((found.user_id, found.purpose), (grace.id, EmailTokenPurpose::Verify));
    assert_eq!(queued_subjects(store).await, ["verify"]);
}

/// A full change: token consumed, columns written, tokens dropped, token issued, sessions ended, backoff cleared,
/// mails queued.
pub async fn an_update_applies_every_part_of_the_change<S: Storage>(store: &S) {
    let at = now();
    let ada = insert(store, "ada@example.com", "ada", Role::Anonymous).await;
    let (verify, verify_token) = email_token(ada.id, EmailTokenPurpose::Verify, at + Duration::hours(1));
    let (reset, reset_token) = email_token(ada.id, EmailTokenPurpose::PasswordReset, at + Duration::hours(1));
    let mut issue = UserUpdate::new(ada.id, at);
    issue.issue_token = Some(verify_token);
    store.update_user(issue).await.unwrap();
    let mut issue = UserUpdate::new(ada.id, at);
    issue.issue_token = Some(reset_token);
    store.update_user(issue).await.unwrap();
    let (kept, _) = start_session(store, &ada, at).await;
    let (ended, _) = start_session(store, &ada, at).await;
    store.record_login_failure("ada@example.com".to_owned(), at, BackoffPolicy::default()).await.unwrap();

    let (change, change_token) = email_token(ada.id, EmailTokenPurpose::EmailChange, at + Duration::hours(1));
    let mut update = UserUpdate::new(ada.id, at + Duration::seconds(5));
    update.guard.role = Some(Role::Anonymous);
    update.consume_token = Some(TokenHash::of(&verify));
    update.fields.email_verified = Some(true);
    update.fields.role = Some(Role::Authenticated);
    update.fields.pending_email = Some(Some(email("next@example.com")));
    update.fields.professional = Some((true, at));
    update.fields.profile = ProfileChanges {
        bio: Some(None),
        nickname: Some(Nickname::parse("ada2").unwrap()),
        ..ProfileChanges::default()
    };
    update.drop_tokens = vec![EmailTokenPurpose::PasswordReset];
    update.issue_token = Some(change_token);
    update.end_sessions = SessionEnd::AllBut(kept);
    update.clear_failures = Some("ada@example.com".to_owned());
    update.mails = vec![mail("ada@example.com", "one"), mail("next@example.com", "two")];
    let updated = store.update_user(update).await.unwrap();

    assert!(updated.email_verified && updated.is_professional);
    assert_eq!(updated.role, Role::Authenticated);
    assert_eq!(updated.nickname.as_str(), "ada2");
    assert_eq!(updated.pending_email, Some(email("next@example.com")));
    assert_eq!(updated.professional_status_updated_at, Some(at));
    assert_eq!(store.find_user(ada.id).await.unwrap().as_ref(), Some(&updated));
    assert!(store.find_email_token(TokenHash::of(&verify)).await.unwrap().is_none(), "consumed");
    assert!(store.find_email_token(TokenHash::of(&reset)).await.unwrap().is_none(), "dropped");
    let issued = store.find_email_token(TokenHash::of(&change)).await.unwrap().unwrap();
    assert_eq!(issued.new_email, Some(email("next@example.com")));
    let (kept_session, _) = store.find_session_with_user(kept).await.unwrap().unwrap();
    let (ended_session, _) = store.find_session_with_user(ended).await.unwrap().unwrap();
    assert!(kept_session.revoked_at.is_none());
    assert!(ended_session.revoked_at.is_some());
    assert!(store.login_failures("ada@example.com".to_owned()).await.unwrap().is_none());
    assert_eq!(queued_subjects(store).await, ["one", "two"]);

    // A change that sets nothing leaves the row as it was.
    let unchanged = store.update_user(UserUpdate::new(ada.id, at + Duration::hours(1))).await.unwrap();
    assert_eq!(unchanged, updated);
}

/// A change that fails at any step leaves the user, the tokens, the sessions and the outbox as they were.
pub async fn a_failed_update_changes_nothing<S: Storage>(store: &S) {
    let at = now();
    let ada = insert(store, "ada@example.com", "ada", Role::Authenticated).await;
    insert(store, "grace@example.com", "grace", Role::Authenticated).await;
    let (verify, verify_token) = email_token(ada.id, EmailTokenPurpose::Verify, at + Duration::hours(1));
    let mut issue = UserUpdate::new(ada.id, at);
    issue.issue_token = Some(verify_token);
    store.update_user(issue).await.unwrap();
    let (session, _) = start_session(store, &ada, at).await;
    let stored = store.find_user(ada.id).await.unwrap().unwrap();

    for (field, expected) in [("nickname", "nickname"), ("email", "email")] {
        let mut update = UserUpdate::new(ada.id, at);
        update.consume_token = Some(TokenHash::of(&verify));
        update.fields.is_locked = Some(true);
        if field == "nickname" {
            update.fields.profile.nickname = Some(Nickname::parse("GRACE").unwrap());
        } else {
            update.fields.email = Some(email("Grace@example.com"));
        }
        update.drop_tokens = EmailTokenPurpose::ALL.to_vec();
        update.end_sessions = SessionEnd::All;
        update.mails = vec![mail("ada@example.com", "never")];
        let error = store.update_user(update).await.unwrap_err();
        let matched = match expected {
            "nickname" => matches!(error, UpdateError::NicknameTaken),
            _ => matches!(error, UpdateError::EmailTaken),
        };
        assert!(matched, "{field}: {error:?}");
    }
    assert_eq!(store.find_user(ada.id).await.unwrap(), Some(stored));
    assert!(store.find_email_token(TokenHash::of(&verify)).await.unwrap().is_some());
    assert!(store.find_session_with_user(session).await.unwrap().unwrap().0.revoked_at.is_none());
    assert!(queued_subjects(store).await.is_empty());

    let missing = store.update_user(UserUpdate::new(UserId::generate(), at)).await;
    assert!(matches!(missing, Err(UpdateError::NotFound)));
}

/// `Guard::role` and `Guard::another_admin`.
pub async fn the_guard_checks_the_role_and_that_another_unlocked_admin_remains<S: Storage>(store: &S) {
    let at = now();
    let first = insert(store, "first@example.com", "first", Role::Admin).await;
    let second = insert(store, "second@example.com", "second", Role::Admin).await;
    let mut stale = UserUpdate::new(first.id, at);
    stale.guard.role = Some(Role::Manager);
    stale.fields.is_locked = Some(true);
    assert!(matches!(store.update_user(stale).await, Err(UpdateError::RoleChanged)));

    let mut lock_second = UserUpdate::new(second.id, at);
    lock_second.guard = Guard { role: Some(Role::Admin), another_admin: true };
    lock_second.fields.is_locked = Some(true);
    assert!(store.update_user(lock_second).await.unwrap().is_locked);
    assert!(!store.another_unlocked_admin(first.id).await.unwrap(), "a locked ADMIN does not count");
    assert!(store.another_unlocked_admin(second.id).await.unwrap());

    let mut demote_first = UserUpdate::new(first.id, at);
    demote_first.guard = Guard { role: Some(Role::Admin), another_admin: true };
    demote_first.fields.role = Some(Role::Authenticated);
    assert!(matches!(store.update_user(demote_first.clone()).await, Err(UpdateError::LastAdmin)));
    assert_eq!(store.find_user(first.id).await.unwrap().unwrap().role, Role::Admin);
    // Without the guard the store applies what it is told: the rule is the domain's to ask for.
    demote_first.guard.another_admin = false;
    assert_eq!(store.update_user(demote_first).await.unwrap().role, Role::Authenticated);
}

/// A token works once, only for its user, and not once expired.
pub async fn a_token_is_consumed_once_and_never_after_it_expired<S: Storage>(store: &S) {
    let at = now();
    let ada = insert(store, "ada@example.com", "ada", Role::Anonymous).await;
    let grace = insert(store, "grace@example.com", "grace", Role::Anonymous).await;
    let (secret, new_token) = email_token(ada.id, EmailTokenPurpose::Verify, at + Duration::minutes(10));
    let mut issue = UserUpdate::new(ada.id, at);
    issue.issue_token = Some(new_token);
    store.update_user(issue).await.unwrap();

    let mut expired = UserUpdate::new(ada.id, at + Duration::minutes(10));
    expired.consume_token = Some(TokenHash::of(&secret));
    assert!(matches!(store.update_user(expired).await, Err(UpdateError::TokenUnusable)));
    let mut foreign = UserUpdate::new(grace.id, at);
    foreign.consume_token = Some(TokenHash::of(&secret));
    assert!(matches!(store.update_user(foreign).await, Err(UpdateError::TokenUnusable)));

    let mut consume = UserUpdate::new(ada.id, at);
    consume.consume_token = Some(TokenHash::of(&secret));
    consume.fields.email_verified = Some(true);
    store.update_user(consume.clone()).await.unwrap();
    assert!(matches!(store.update_user(consume).await, Err(UpdateError::TokenUnusable)));

    // A new token of the same purpose replaces the older one (newest wins).
    let (first, first_token) = email_token(ada.id, EmailTokenPurpose::PasswordReset, at + Duration::hours(1));
    let (second, second_token) = email_token(ada.id, EmailTokenPurpose::PasswordReset, at + Duration::hours(1));
    for new_token in [first_token, second_token] {
        let mut issue = UserUpdate::new(ada.id, at);
        issue.issue_token = Some(new_token);
        store.update_user(issue).await.unwrap();
    }
    assert!(store.find_email_token(TokenHash::of(&first)).await.unwrap().is_none());
    assert!(store.find_email_token(TokenHash::of(&second)).await.unwrap().is_some());
}

/// Deleting a user removes their sessions, tokens and picture records, under the same guard as a change.
pub async fn deleting_a_user_takes_what_hangs_off_them_and_checks_the_guard<S: Storage>(store: &S) {
    let at = now();
    let admin = insert(store, "admin@example.com", "admin", Role::Admin).await;
    let ada = insert(store, "ada@example.com", "ada", Role::Authenticated).await;
    let (secret, new_token) = email_token(ada.id, EmailTokenPurpose::PasswordReset, at + Duration::hours(1));
    let mut issue = UserUpdate::new(ada.id, at);
    issue.issue_token = Some(new_token);
    store.update_user(issue).await.unwrap();
    let (session, refresh) = start_session(store, &ada, at).await;
    store.insert_active_picture(picture(ada.id, at), at).await.unwrap();

    let stale = Guard { role: Some(Role::Manager), another_admin: false };
    assert!(matches!(store.delete_user(ada.id, stale).await, Err(UpdateError::RoleChanged)));
    let last = Guard { role: Some(Role::Admin), another_admin: true };
    assert!(matches!(store.delete_user(admin.id, last).await, Err(UpdateError::LastAdmin)));
    store.delete_user(ada.id, Guard { role: Some(Role::Authenticated), another_admin: false }).await.unwrap();
    assert!(store.find_user(ada.id).await.unwrap().is_none());
    assert!(store.find_session_with_user(session).await.unwrap().is_none());
    assert!(store.find_refresh_token(refresh).await.unwrap().is_none());
    assert!(store.find_email_token(TokenHash::of(&secret)).await.unwrap().is_none());
    assert!(store.active_picture(ada.id).await.unwrap().is_none());
    assert!(matches!(store.delete_user(ada.id, Guard::default()).await, Err(UpdateError::NotFound)));
}

/// Start, lookups, revocation by owner, ending sessions, and the list of active ones.
pub async fn sessions_are_started_found_revoked_and_listed<S: Storage>(store: &S) {
    let at = now();
    let ada = insert(store, "ada@example.com", "ada", Role::Authenticated).await;
    let grace = insert(store, "grace@example.com", "grace", Role::Authenticated).await;
    let (first, refresh) = start_session(store, &ada, at).await;
    let (second, _) = start_session(store, &ada, at + Duration::seconds(1)).await;
    let (third, _) = start_session(store, &ada, at + Duration::seconds(2)).await;
    let (session, user) = store.find_session_with_user(first).await.unwrap().unwrap();
    assert_eq!((session.user_id, session.created_at, session.last_used_at), (ada.id, at, at));
    assert_eq!(user.last_login_at.map(|_| ()), Some(()));
    let record = store.find_refresh_token(refresh).await.unwrap().unwrap();
    assert_eq!((record.session.id, record.user.id, record.used), (first, ada.id, false));

    assert!(!store.revoke_session(first, Some(grace.id), at).await.unwrap(), "not grace's session");
    assert!(store.revoke_session(first, Some(ada.id), at).await.unwrap());
    assert!(!store.revoke_session(first, None, at + Duration::seconds(9)).await.unwrap(), "already revoked");
    assert_eq!(store.find_session_with_user(first).await.unwrap().unwrap().0.revoked_at, Some(at));
    let listed: Vec<SessionId> =
        store.list_sessions(ada.id, at).await.unwrap().into_iter().map(|session| session.id).collect();
    assert_eq!(listed, [third, second], "unrevoked, newest first");
    assert!(store.list_sessions(ada.id, at + Duration::days(31)).await.unwrap().is_empty(), "past their end");
    store.end_sessions(ada.id, SessionEnd::AllBut(third), at).await.unwrap();
    let listed: Vec<SessionId> =
        store.list_sessions(ada.id, at).await.unwrap().into_iter().map(|session| session.id).collect();
    assert_eq!(listed, [third]);
    store.end_sessions(ada.id, SessionEnd::All, at).await.unwrap();
    assert!(store.list_sessions(ada.id, at).await.unwrap().is_empty());
}

/// Of two exchanges of one token only the first succeeds; a revoked session exchanges nothing.
pub async fn rotation_is_compare_and_set<S: Storage>(store: &S) {
    let at = now();
    let ada = insert(store, "ada@example.com", "ada", Role::Authenticated).await;
    let (session, first) = start_session(store, &ada, at).await;
    let second = RefreshToken::generate().hash();
    let later = at + Duration::minutes(5);
    let rotated = store.rotate_refresh_token(session, first.clone(), second.clone(), later).await.unwrap();
    assert_eq!(rotated.map(|session| session.last_used_at), Some(later));
    let third = RefreshToken::generate().hash();
    assert!(store.rotate_refresh_token(session, first.clone(), third.clone(), later).await.unwrap().is_none());
    assert!(store.find_refresh_token(third.clone()).await.unwrap().is_none(), "no successor for a used token");
    assert!(store.find_refresh_token(first).await.unwrap().unwrap().used);
    assert!(!store.find_refresh_token(second.clone()).await.unwrap().unwrap().used);
    assert!(store.revoke_session(session, None, later).await.unwrap());
    assert!(store.rotate_refresh_token(session, second, third, later).await.unwrap().is_none());
}

/// Failures count up, block per the policy, never shorten a block, and clear.
pub async fn the_throttle_counts_blocks_without_shortening_and_clears<S: Storage>(store: &S) {
    let at = now();
    let policy = BackoffPolicy { after: 2, base: Duration::seconds(10), max: Duration::minutes(1) };
    let key = "ada@example.com".to_owned();
    assert!(store.login_failures(key.clone()).await.unwrap().is_none());
    assert_eq!(store.record_login_failure(key.clone(), at, policy).await.unwrap(), None);
    assert_eq!(store.record_login_failure(key.clone(), at, policy).await.unwrap(), Some(at + Duration::seconds(10)));
    assert_eq!(store.record_login_failure(key.clone(), at, policy).await.unwrap(), Some(at + Duration::seconds(20)));
    // A failure recorded with an earlier clock does not shorten the block already in place.
    let earlier = at - Duration::minutes(5);
    assert_eq!(
        store.record_login_failure(key.clone(), earlier, policy).await.unwrap(),
        Some(at + Duration::seconds(20))
    );
    let count = store.login_failures(key.clone()).await.unwrap().unwrap();
    assert_eq!((count.failures, count.blocked_until), (4, Some(at + Duration::seconds(20))));
    store.clear_login_failures(key.clone()).await.unwrap();
    assert!(store.login_failures(key).await.unwrap().is_none());
}

/// Claims lease mails; a leased mail is not claimed again until its lease ends; sent mails leave the queue,
/// failed ones come back at their retry time, dead ones never.
pub async fn the_outbox_claims_with_leases_and_records_outcomes<S: Storage>(store: &S) {
    for subject in ["one", "two", "three"] {
        store.queue_mail(mail("ada@example.com", subject)).await.unwrap();
    }
    let at = now() + Duration::seconds(1);
    let lease = Duration::minutes(2);
    let first = store.claim_due_mail(at, 2, lease).await.unwrap();
    assert_eq!(first.iter().map(|message| message.mail.subject.as_str()).collect::<Vec<_>>(), ["one", "two"]);
    assert!(first.iter().all(|message| message.attempts == 0));
    let second = store.claim_due_mail(at, 10, lease).await.unwrap();
    assert_eq!(second.iter().map(|message| message.mail.subject.as_str()).collect::<Vec<_>>(), ["three"]);
    assert!(store.claim_due_mail(at, 10, lease).await.unwrap().is_empty(), "everything is leased");

    store.mark_mail_sent(first[0].id, at).await.unwrap();
    store.mark_mail_failed(first[1].id, Some(at + Duration::minutes(1)), "refused".to_owned()).await.unwrap();
    store.mark_mail_failed(second[0].id, None, "refused for good".to_owned()).await.unwrap();
    let retried = store.claim_due_mail(at + Duration::minutes(1), 10, lease).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!((retried[0].id, retried[0].attempts), (first[1].id, 1));
    assert!(store.claim_due_mail(at + Duration::days(1), 10, lease).await.unwrap().len() == 1, "only the retried one");
}

/// A request for an address already queued for the same kind is absorbed; claims lease; finished ones are gone.
pub async fn account_requests_are_deduplicated_claimed_and_finished<S: Storage>(store: &S) {
    let at = now();
    let lease = Duration::minutes(2);
    store.queue_account_request(AccountRequestKind::PasswordReset, email("ada@example.com"), at).await.unwrap();
    store.queue_account_request(AccountRequestKind::PasswordReset, email("ADA@example.com"), at).await.unwrap();
    store.queue_account_request(AccountRequestKind::Verification, email("ada@example.com"), at).await.unwrap();
    let claimed = store.claim_account_requests(at, 10, lease).await.unwrap();
    let kinds: Vec<AccountRequestKind> = claimed.iter().map(|request| request.kind).collect();
    assert_eq!(kinds, [AccountRequestKind::PasswordReset, AccountRequestKind::Verification]);
    assert!(store.claim_account_requests(at, 10, lease).await.unwrap().is_empty(), "leased");
    store.finish_account_request(claimed[0].id).await.unwrap();
    let again = store.claim_account_requests(at + lease, 10, lease).await.unwrap();
    assert_eq!(again.iter().map(|request| request.id).collect::<Vec<_>>(), [claimed[1].id]);
}

fn picture(user: UserId, at: OffsetDateTime) -> StoredPicture {
    let id = Uuid::now_v7();
    StoredPicture {
        id,
        user_id: user,
        created_at: at,
        archived: false,
        prefix: StoredPicture::active_prefix(user, id),
        variants: PictureSize::ALL
            .into_iter()
            .map(|size| PictureVariant {
                size,
                content_type: "image/jpeg".to_owned(),
                width: size.max_edge(),
                height: size.max_edge(),
                bytes: 100,
                sha256: "0".repeat(64),
            })
            .collect(),
    }
}

/// A new picture archives the active one; archive, restore and move work on the records.
pub async fn pictures_move_between_active_and_archive<S: Storage>(store: &S) {
    let at = now();
    let ada = insert(store, "ada@example.com", "ada", Role::Authenticated).await;
    let first = picture(ada.id, at);
    let second = picture(ada.id, at + Duration::seconds(1));
    assert!(store.insert_active_picture(first.clone(), at).await.unwrap().is_none());
    let previous = store.insert_active_picture(second.clone(), at).await.unwrap().unwrap();
    assert_eq!(previous.id, first.id);
    assert_eq!(store.active_picture(ada.id).await.unwrap().map(|picture| picture.id), Some(second.id));
    assert_eq!(store.find_user(ada.id).await.unwrap().unwrap().profile_picture_id, Some(second.id));
    store.move_picture(first.id, "elsewhere/first".to_owned()).await.unwrap();
    let archived = store.archived_pictures(ada.id).await.unwrap();
    assert_eq!(archived.iter().map(|picture| picture.id).collect::<Vec<_>>(), [first.id]);
    assert_eq!(archived[0].prefix, "elsewhere/first");

    let (restored, displaced) = store.restore_picture(ada.id, first.id, at).await.unwrap().unwrap();
    assert_eq!((restored.id, displaced.map(|picture| picture.id)), (first.id, Some(second.id)));
    assert_eq!(store.active_picture(ada.id).await.unwrap().map(|picture| picture.id), Some(first.id));
    assert!(store.restore_picture(ada.id, Uuid::now_v7(), at).await.unwrap().is_none());
    let archived = store.archive_active_picture(ada.id, at).await.unwrap().unwrap();
    assert_eq!(archived.id, first.id);
    assert!(store.active_picture(ada.id).await.unwrap().is_none());
    assert!(store.find_user(ada.id).await.unwrap().unwrap().profile_picture_id.is_none());
    assert_eq!(store.archived_pictures(ada.id).await.unwrap().len(), 2);
    assert!(matches!(
        store.insert_active_picture(picture(UserId::generate(), at), at).await,
        Err(PictureWriteError::UserGone)
    ));
}

/// Keyset pages in each order, with role, flag and literal prefix filters.
pub async fn listing_orders_pages_and_filters_like_the_query_says<S: Storage>(store: &S) {
    let mut users = Vec::new();
    for (address, nickname, role) in [
        ("carol@example.com", "zed", Role::Authenticated),
        ("Alice@example.com", "yan", Role::Authenticated),
        ("bob@example.com", "Xia", Role::Manager),
        ("a_b@example.com", "wes", Role::Authenticated),
        ("a%b@example.com", "vic", Role::Anonymous),
    ] {
        users.push(insert(store, address, nickname, role).await);
    }
    let query = |sort, after, prefix: Option<&str>, roles: Vec<Role>| UserQuery {
        limit: 2,
        sort,
        after,
        prefix: prefix.map(str::to_owned),
        roles,
        email_verified: None,
        is_locked: None,
        is_professional: None,
    };
    let all = Role::ALL.to_vec();
    let emails = |page: &[User]| page.iter().map(|user| user.email.canonical()).collect::<Vec<_>>();

    let first = store.list_users(query(UserSort::Email, None, None, all.clone())).await.unwrap();
    assert_eq!(emails(&first), ["a%b@example.com", "a_b@example.com"]);
    let after = first.last().map(|user| UserCursor::after(user, UserSort::Email));
    let second = store.list_users(query(UserSort::Email, after, None, all.clone())).await.unwrap();
    assert_eq!(emails(&second), ["alice@example.com", "bob@example.com"]);

    let by_nickname = store.list_users(query(UserSort::Nickname, None, None, all.clone())).await.unwrap();
    assert_eq!(by_nickname.iter().map(|user| user.nickname.as_str()).collect::<Vec<_>>(), ["vic", "wes"]);
    let oldest = store.list_users(query(UserSort::CreatedAt, None, None, all.clone())).await.unwrap();
    assert_eq!(oldest.iter().map(|user| user.id).collect::<Vec<_>>(), [users[0].id, users[1].id]);
    let newest = store.list_users(query(UserSort::CreatedAtDesc, None, None, all.clone())).await.unwrap();
    assert_eq!(newest.iter().map(|user| user.id).collect::<Vec<_>>(), [users[4].id, users[3].id]);
    let after = newest.last().map(|user| UserCursor::after(user, UserSort::CreatedAtDesc));
    let older = store.list_users(query(UserSort::CreatedAtDesc, after, None, all.clone())).await.unwrap();
    assert_eq!(older.iter().map(|user| user.id).collect::<Vec<_>>(), [users[2].id, users[1].id]);

    // Wildcards in a prefix are literal; the prefix matches email, nickname or names, in any case.
    let literal = store.list_users(query(UserSort::Email, None, Some("A_"), all.clone())).await.unwrap();
    assert_eq!(emails(&literal), ["a_b@example.com"]);
    let percent = store.list_users(query(UserSort::Email, None, Some("a%"), all.clone())).await.unwrap();
    assert_eq!(emails(&percent), ["a%b@example.com"]);
    let nickname = store.list_users(query(UserSort::Email, None, Some("xI"), all.clone())).await.unwrap();
    assert_eq!(emails(&nickname), ["bob@example.com"]);
    let managers = store.list_users(query(UserSort::Email, None, None, vec![Role::Manager])).await.unwrap();
    assert_eq!(emails(&managers), ["bob@example.com"]);
    let mut anonymous_only = query(UserSort::Email, None, None, all);
    anonymous_only.email_verified = Some(true);
    anonymous_only.is_locked = Some(false);
    anonymous_only.is_professional = Some(false);
    anonymous_only.limit = 10;
    assert_eq!(store.list_users(anonymous_only).await.unwrap().len(), 5);
}
