//! The audit trail: which event each use case writes, with whom as actor and subject, that a refused change writes
//! none, that no secret ever reaches one, and who may read what.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use support::*;
use time::Duration;
use users_domain::Role;
use users_domain::admin::AdminChanges;
use users_domain::audit::{AuditEvent, EventQuery, EventType};
use users_domain::ports::ProfileChanges;
use users_domain::sessions::{ClientInfo, LoginError};
use users_domain::trail::AuditError;
use users_domain::user::Nickname;

fn client() -> ClientInfo {
    ClientInfo { user_agent: Some("audit-test/1.0".to_owned()), ip: Some("203.0.113.9".to_owned()) }
}

impl World {
    fn events(&self) -> Vec<AuditEvent> {
        self.store().audit_events()
    }

    fn events_of(&self, kind: EventType) -> Vec<AuditEvent> {
        self.events().into_iter().filter(|event| event.kind == kind).collect()
    }

    fn only(&self, kind: EventType) -> AuditEvent {
        let mut events = self.events_of(kind);
        assert_eq!(events.len(), 1, "one {kind} event expected, found {events:?}");
        events.remove(0)
    }
}

/// No event may hold any of these strings anywhere (details, user agent, ip).
fn assert_no_secret(events: &[AuditEvent], secrets: &[&str]) {
    for event in events {
        let text = format!("{event:?}");
        for secret in secrets {
            assert!(!text.contains(secret), "{} holds a secret: {text}", event.kind);
        }
    }
}

#[tokio::test]
async fn registration_verification_and_login_are_recorded_with_the_client() {
    let world = world();
    world.service.register(registration("ada@example.com"), client()).await.unwrap();
    let ada = world.user("ada@example.com").await;
    let registered = world.only(EventType::UserRegistered);
    assert_eq!((registered.subject_id, registered.actor_id), (Some(ada.id), Some(ada.id)));
    assert_eq!(registered.ip.as_deref(), Some("203.0.113.9"));
    assert_eq!(registered.user_agent.as_deref(), Some("audit-test/1.0"));

    let link = token_in(&world.last_mail_to("ada@example.com"));
    world.service.verify_email(ada.id, &link, client()).await.unwrap();
    let verified = world.only(EventType::UserEmailVerified);
    assert_eq!(verified.subject_id, Some(ada.id));
    assert_eq!(verified.details["role"]["from"], "ANONYMOUS");
    assert_eq!(verified.details["role"]["to"], "AUTHENTICATED");

    let pair = world.service.login("ada@example.com", PASSWORD, client()).await.unwrap();
    let principal = world.service.authenticate(pair.access_token.expose()).await.unwrap();
    let login = world.only(EventType::LoginSucceeded);
    assert_eq!((login.subject_id, login.actor_id), (Some(ada.id), Some(ada.id)));
    assert_eq!(login.session_id, Some(principal.session_id));
    assert_no_secret(&world.events(), &[PASSWORD, &link, pair.refresh_token.expose(), pair.access_token.expose()]);
}

#[tokio::test]
async fn failed_and_throttled_logins_are_recorded_and_an_unknown_address_keeps_only_its_domain() {
    let world = world_with_backoff(2, Duration::minutes(5));
    let ada = world.verified("ada@example.com").await;
    let wrong = "not-the-password-at-all";
    for _ in 0..2 {
        assert!(matches!(
            world.service.login("ada@example.com", wrong, client()).await,
            Err(LoginError::InvalidCredentials)
        ));
    }
    assert!(matches!(
        world.service.login("ada@example.com", PASSWORD, client()).await,
        Err(LoginError::RateLimited { .. })
    ));
    let failed = world.events_of(EventType::LoginFailed);
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|event| event.subject_id == Some(ada.id) && event.details["factor"] == "password"));
    let throttled = world.only(EventType::LoginThrottled);
    assert_eq!(throttled.subject_id, Some(ada.id));
    assert!(throttled.details["retry_after"].as_i64().is_some_and(|seconds| seconds > 0));

    let _ = world.service.login("Nobody.Here@Example.ORG", wrong, client()).await;
    let unknown = world.events_of(EventType::LoginFailed).pop().unwrap();
    assert_eq!(unknown.subject_id, None);
    assert_eq!(unknown.details["email_domain"], "example.org");
    assert_no_secret(&world.events(), &[wrong, PASSWORD, "nobody.here", "Nobody.Here"]);
}

#[tokio::test]
async fn a_refresh_token_presented_again_records_one_reuse_for_the_whole_family() {
    let world = world();
    let ada = world.verified("ada@example.com").await;
    let first = world.login("ada@example.com", PASSWORD).await.unwrap();
    let second = world.service.refresh(first.refresh_token.expose(), client()).await.unwrap();
    assert!(world.service.refresh(first.refresh_token.expose(), client()).await.is_err());
    assert!(world.service.refresh(second.refresh_token.expose(), client()).await.is_err());
    let reuse = world.only(EventType::SessionReuseDetected);
    assert_eq!(reuse.subject_id, Some(ada.id));
    assert_eq!(reuse.ip.as_deref(), Some("203.0.113.9"), "the reuse names the client that presented the token");
    assert_no_secret(&world.events(), &[first.refresh_token.expose(), second.refresh_token.expose()]);
}

#[tokio::test]
async fn logouts_and_revocations_are_recorded_once() {
    let world = world();
    let ada = world.verified("ada@example.com").await;
    let pair = world.login("ada@example.com", PASSWORD).await.unwrap();
    world.service.logout(pair.refresh_token.expose(), client()).await.unwrap();
    world.service.logout(pair.refresh_token.expose(), client()).await.unwrap();
    assert_eq!(world.only(EventType::SessionRevoked).details["reason"], "logout", "a second logout changes nothing");

    let principal = world.principal("ada@example.com").await;
    let other = world.principal("ada@example.com").await;
    assert!(world.service.revoke_session(&principal, other.session_id).await.unwrap());
    assert!(!world.service.revoke_session(&principal, other.session_id).await.unwrap());
    world.service.logout_all(&principal).await.unwrap();
    let revoked = world.events_of(EventType::SessionRevoked);
    assert_eq!(revoked.len(), 3);
    assert_eq!(revoked[1].details["revoked_session_id"], other.session_id.to_string());
    assert_eq!(revoked[2].details["reason"], "logout_all");
    assert!(revoked.iter().all(|event| event.subject_id == Some(ada.id)));
}

#[tokio::test]
async fn staff_changes_name_the_staff_member_as_actor_and_the_user_as_subject() {
    let world = world();
    let admin = world.admin("root@example.com").await;
    let ada = world.verified("ada@example.com").await;
    let changes = AdminChanges {
        role: Some(Role::Manager),
        is_locked: Some(true),
        profile: ProfileChanges { nickname: Some(Nickname::parse("ada_l").unwrap()), ..ProfileChanges::default() },
        ..AdminChanges::default()
    };
    world.service.update_user(&admin, ada.id, changes).await.unwrap();
    let locked = world.only(EventType::UserLocked);
    assert_eq!((locked.actor_id, locked.subject_id), (Some(admin.user.id), Some(ada.id)));
    assert_eq!(locked.session_id, Some(admin.session_id));
    let updated = world.only(EventType::UserUpdated);
    assert_eq!(updated.details["role"]["from"], "AUTHENTICATED");
    assert_eq!(updated.details["role"]["to"], "MANAGER");
    let fields: Vec<&str> = updated.details["fields"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(fields, ["nickname", "role"]);

    world.service.delete_user(&admin, ada.id).await.unwrap();
    let deleted = world.only(EventType::UserDeleted);
    assert_eq!((deleted.actor_id, deleted.subject_id), (Some(admin.user.id), Some(ada.id)));
}

#[tokio::test]
async fn a_refused_change_writes_no_event() {
    let world = world();
    let admin = world.admin("root@example.com").await;
    let before = world.events().len();
    // The last ADMIN may not lock themself: refused, so nothing is recorded.
    let lock = AdminChanges { is_locked: Some(true), ..AdminChanges::default() };
    assert!(world.service.update_user(&admin, admin.user.id, lock).await.is_err());
    // A password change with the wrong current password records the failed check only.
    let refused = world.service.change_password(&admin, "wrong-current-password-1", NEW_PASSWORD).await;
    assert!(refused.is_err());
    let after: Vec<EventType> = world.events()[before..].iter().map(|event| event.kind).collect();
    assert_eq!(after, [EventType::LoginFailed]);
    assert!(world.events_of(EventType::PasswordChanged).is_empty());
}

#[tokio::test]
async fn password_changes_and_resets_are_recorded_without_the_passwords() {
    let world = world();
    world.verified("ada@example.com").await;
    let ada = world.principal("ada@example.com").await;
    world.service.change_password(&ada, PASSWORD, NEW_PASSWORD).await.unwrap();
    assert_eq!(world.only(EventType::PasswordChanged).actor_id, Some(ada.user.id));

    world.service.forgot_password(email("ada@example.com")).await.unwrap();
    world.service.forgot_password(email("nobody@example.com")).await.unwrap();
    world.service.handle_account_requests(10).await.unwrap();
    assert_eq!(world.only(EventType::PasswordResetRequested).subject_id, Some(ada.user.id));
    let link = token_in(&world.last_mail_to("ada@example.com"));
    world.service.reset_password(&link, OTHER_PASSWORD, client()).await.unwrap();
    let reset = world.only(EventType::PasswordReset);
    assert_eq!((reset.subject_id, reset.ip.as_deref()), (Some(ada.user.id), Some("203.0.113.9")));
    assert_no_secret(&world.events(), &[PASSWORD, NEW_PASSWORD, OTHER_PASSWORD, &link]);
}

#[tokio::test]
async fn only_an_admin_reads_the_trail_and_everyone_reads_their_own_activity() {
    let world = world();
    let admin = world.admin("root@example.com").await;
    world.verified("ada@example.com").await;
    let ada = world.principal("ada@example.com").await;
    let manager = world.staff(&admin, "boss@example.com", Role::Manager).await;

    assert!(matches!(world.service.audit_events(&manager, EventQuery::default()).await, Err(AuditError::Forbidden)));
    assert!(matches!(world.service.audit_events(&ada, EventQuery::default()).await, Err(AuditError::Forbidden)));

    let everything = world.service.audit_events(&admin, EventQuery { limit: 100, ..EventQuery::default() }).await;
    assert_eq!(everything.unwrap().events.len(), world.events().len());

    // Asking for someone else's events through one's own activity still gives one's own.
    let query = EventQuery { limit: 100, subject_id: Some(admin.user.id), ..EventQuery::default() };
    let mine = world.service.my_activity(&ada, query).await.unwrap();
    assert!(!mine.events.is_empty());
    assert!(mine.events.iter().all(|event| event.subject_id == Some(ada.user.id)));
}

#[tokio::test]
async fn pages_are_newest_first_and_meet_without_overlap() {
    let world = world();
    let admin = world.admin("root@example.com").await;
    for i in 0..7 {
        world.clock().advance(Duration::seconds(1));
        world.registered(&format!("user{i}@example.com")).await;
    }
    let kinds = vec![EventType::UserRegistered];
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let query = EventQuery { limit: 3, after, kinds: kinds.clone(), ..EventQuery::default() };
        let page = world.service.audit_events(&admin, query).await.unwrap();
        seen.extend(page.events.iter().map(|event| (event.at, event.id)));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    assert!(seen.windows(2).all(|pair| pair[0] > pair[1]), "newest first, no repeats");
}

#[tokio::test]
async fn second_factor_changes_and_recovery_codes_are_recorded_without_codes() {
    let world = world();
    let enrolled = mfa::enrolled(&world, "ada@example.com").await;
    let ada = enrolled.principal;
    assert_eq!(world.only(EventType::MfaEnabled).subject_id, Some(ada.user.id));

    let token = mfa::mfa_token(&world, "ada@example.com").await;
    let recovery = enrolled.codes[0].display();
    world.service.login_second_step(&token.token, &recovery, client()).await.unwrap();
    assert_eq!(world.only(EventType::MfaRecoveryCodeUsed).subject_id, Some(ada.user.id));
    let logins = world.events_of(EventType::LoginSucceeded);
    assert_eq!(logins.last().unwrap().details["second_factor"], true);

    let now = mfa::fresh_step(&world);
    let code = mfa::code(&enrolled.secret, now);
    world.service.disable_totp(&ada, PASSWORD, &code).await.unwrap();
    assert_eq!(world.only(EventType::MfaDisabled).actor_id, Some(ada.user.id));
    assert_no_secret(&world.events(), &[&enrolled.secret, &recovery, &code, PASSWORD]);
}
