//! Registration, forgotten passwords and verification resends, resets, and one's own account (password, email,
//! deletion), driven through `Service` over the in-memory adapters (the properties the mock-based unit tests of
//! `account_service.rs` used to prove).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use time::Duration;
use users_domain::accounts::{
    ChangePasswordError, DeleteMeError, MeUpdate, RegisterError, ResetPasswordError, UpdateMeError,
};
use users_domain::ports::{Clock as _, EmailTokenPurpose, EmailTokenStore as _, Ports as _};
use users_domain::session::TokenHash;
use users_domain::sessions::AuthError;
use users_domain::{Nickname, Role};

use support::{NEW_PASSWORD, OTHER_PASSWORD, PASSWORD, email, has_link, registration, token_in, world};
use users_domain::sessions::ClientInfo;

#[tokio::test]
async fn registering_a_new_address_stores_an_anonymous_user_with_a_verify_token_and_its_mail() {
    let world = world();
    let now = world.clock().now();
    world.service.register(registration("new@example.com"), ClientInfo::default()).await.unwrap();
    let user = world.user("new@example.com").await;
    assert_eq!((user.role, user.email_verified), (Role::Anonymous, false));
    assert_eq!(world.hasher.hashes(), 1);

    let mails = world.mails();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].mail.to.as_str(), "new@example.com");
    assert!(mails[0].mail.text.contains(&format!("http://localhost:8080/verify-email/{}/", user.id)));
    // The mail carries the secret; storage keeps only its hash, for this user and purpose, for 24 hours.
    let secret = token_in(&mails[0]);
    let tokens = world.ports.email_tokens();
    let record = tokens.find_email_token(TokenHash::of(&secret)).await.unwrap().unwrap();
    assert_eq!((record.user_id, record.purpose, record.new_email), (user.id, EmailTokenPurpose::Verify, None));
    assert_eq!(record.expires_at, now + Duration::hours(24));
    assert!(tokens.find_email_token(TokenHash::from_stored(secret.clone())).await.unwrap().is_none());
}

#[tokio::test]
async fn registering_an_existing_verified_address_mails_its_owner_and_answers_the_same() {
    let world = world();
    let ada = world.verified("ada@example.com").await;
    let hashes = world.hasher.hashes();
    let mails = world.mails().len();
    let mut again = registration("ADA@example.com");
    again.password = NEW_PASSWORD.to_owned();
    assert!(world.service.register(again, ClientInfo::default()).await.is_ok());

    let sent = &world.mails()[mails..];
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].mail.to.as_str(), "ada@example.com");
    assert_eq!(sent[0].mail.subject, "You already have an account");
    assert!(!has_link(&sent[0]), "nothing to follow");
    // The password was hashed anyway, so both answers cost the same; the account is untouched.
    assert_eq!(world.hasher.hashes(), hashes + 1);
    assert_eq!(world.user("ada@example.com").await, ada);
    assert!(world.login("ada@example.com", PASSWORD).await.is_ok());
    assert!(world.login("ada@example.com", NEW_PASSWORD).await.is_err());
}

#[tokio::test]
async fn registering_an_unconfirmed_address_mails_its_owner_a_link_to_choose_the_password() {
    let world = world();
    let first = world.registered("ada@example.com").await;
    let first_link = token_in(&world.last_mail_to("ada@example.com"));
    let mails = world.mails().len();
    assert!(world.service.register(registration("ada@example.com"), ClientInfo::default()).await.is_ok());

    let sent = &world.mails()[mails..];
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].mail.subject, "Finish setting up your account");
    assert!(sent[0].mail.text.contains("http://localhost:8080/password/reset?token="));
    let ada = world.user("ada@example.com").await;
    assert_eq!(ada.id, first.id, "no second account");
    // Whatever the first registrant set dies: their link and their password.
    assert!(world.service.verify_email(ada.id, &first_link, ClientInfo::default()).await.is_err());
    assert!(world.login("ada@example.com", PASSWORD).await.is_err());
    world.service.reset_password(&token_in(&sent[0]), NEW_PASSWORD, ClientInfo::default()).await.unwrap();
    assert!(world.login("ada@example.com", NEW_PASSWORD).await.is_ok());
}

#[tokio::test]
async fn a_weak_or_personal_password_is_refused_before_anything_is_stored() {
    let world = world();
    let mut personal = registration("margaretthatcher@example.com");
    personal.password = "margaretthatcher1".to_owned();
    let mut short = registration("short@example.com");
    short.password = "k3ttle".to_owned();
    for refused in [personal, short] {
        let address = refused.email.as_str().to_owned();
        let result = world.service.register(refused, ClientInfo::default()).await;
        assert!(matches!(result, Err(RegisterError::WeakPassword(_))), "{address}: {result:?}");
        assert!(world.find(&address).await.is_none());
    }
    assert!(world.mails().is_empty());
    assert_eq!(world.hasher.hashes(), 0, "refused before hashing");
}

#[tokio::test]
async fn a_taken_chosen_nickname_is_reported_before_the_email_is_looked_at() {
    let world = world();
    let mut bob = registration("bob@example.com");
    bob.nickname = Some(Nickname::parse("taken").unwrap());
    world.service.register(bob, ClientInfo::default()).await.unwrap();
    let mails = world.mails().len();

    // For a new address and for one that has an account alike: the nickname decides, not the email.
    for address in ["new@example.com", "bob@example.com"] {
        let mut chosen = registration(address);
        chosen.nickname = Some(Nickname::parse("Taken").unwrap());
        let result = world.service.register(chosen, ClientInfo::default()).await;
        assert!(matches!(result, Err(RegisterError::NicknameTaken)), "{address}: {result:?}");
    }
    assert!(world.find("new@example.com").await.is_none());
    assert_eq!(world.mails().len(), mails, "not even the owner of bob@ was mailed");

    let mut free = registration("new@example.com");
    free.nickname = Some(Nickname::parse("free_nick").unwrap());
    world.service.register(free, ClientInfo::default()).await.unwrap();
    assert_eq!(world.user("new@example.com").await.nickname.as_str(), "free_nick");
}

#[tokio::test]
async fn forgot_and_resend_queue_the_same_work_for_every_address_and_mail_nothing_themselves() {
    let world = world();
    let ada = world.verified("ada@example.com").await;
    let bob = world.registered("bob@example.com").await;
    let mails = world.mails().len();
    for address in ["ada@example.com", "bob@example.com", "nobody@example.com"] {
        world.service.forgot_password(email(address)).await.unwrap();
        world.service.resend_verification(email(address)).await.unwrap();
    }
    assert_eq!(world.mails().len(), mails, "nothing is mailed while the request is answered");
    assert_eq!(world.user("ada@example.com").await, ada);
    assert_eq!(world.user("bob@example.com").await, bob);
    assert!(world.find("nobody@example.com").await.is_none());
    // Every one of the six was queued, known address or not.
    assert_eq!(world.service.handle_account_requests(20).await.unwrap(), 6);
}

#[tokio::test]
async fn the_worker_mails_a_link_only_where_an_account_calls_for_one_and_finishes_every_request() {
    let world = world();
    world.verified("ada@example.com").await;
    let bob = world.registered("bob@example.com").await;
    let mails = world.mails().len();
    for address in ["ada@example.com", "nobody@example.com"] {
        world.service.forgot_password(email(address)).await.unwrap();
    }
    for address in ["ada@example.com", "bob@example.com", "nobody@example.com"] {
        world.service.resend_verification(email(address)).await.unwrap();
    }
    assert_eq!(world.service.handle_account_requests(20).await.unwrap(), 5);

    let sent = &world.mails()[mails..];
    let to: Vec<(&str, &str)> =
        sent.iter().map(|queued| (queued.mail.to.as_str(), queued.mail.subject.as_str())).collect();
    // A reset for the account; a verification only for the unverified one; nothing for the unknown address.
    assert_eq!(to, [("ada@example.com", "Reset your password"), ("bob@example.com", "Verify your email address")]);
    world.service.reset_password(&token_in(&sent[0]), NEW_PASSWORD, ClientInfo::default()).await.unwrap();
    world.service.verify_email(bob.id, &token_in(&sent[1]), ClientInfo::default()).await.unwrap();

    // Every request is finished, not merely claimed: none comes back once the claim would have expired.
    world.clock().advance(Duration::minutes(10));
    assert_eq!(world.service.handle_account_requests(20).await.unwrap(), 0);
}

#[tokio::test]
async fn a_reset_with_an_unknown_token_changes_nothing() {
    let world = world();
    world.verified("ada@example.com").await;
    let pair = world.login("ada@example.com", PASSWORD).await.unwrap();
    let (mails, hashes) = (world.mails().len(), world.hasher.hashes());
    let result = world.service.reset_password("no-such-token", NEW_PASSWORD, ClientInfo::default()).await;
    assert!(matches!(result, Err(ResetPasswordError::InvalidToken)), "{result:?}");
    assert_eq!((world.mails().len(), world.hasher.hashes()), (mails, hashes));
    assert!(world.service.authenticate(pair.access_token.expose()).await.is_ok(), "the session lives");
    assert!(world.login("ada@example.com", PASSWORD).await.is_ok());
    assert!(world.login("ada@example.com", NEW_PASSWORD).await.is_err());
}

#[tokio::test]
async fn a_reset_token_used_twice_at_once_works_once() {
    let world = world();
    world.verified("ada@example.com").await;
    world.service.forgot_password(email("ada@example.com")).await.unwrap();
    world.service.handle_account_requests(10).await.unwrap();
    let token = token_in(&world.last_mail_to("ada@example.com"));
    let (mails, hashes) = (world.mails().len(), world.hasher.hashes());

    let (first, second) = tokio::join!(
        world.service.reset_password(&token, NEW_PASSWORD, ClientInfo::default()),
        world.service.reset_password(&token, OTHER_PASSWORD, ClientInfo::default()),
    );
    // Both got past the token lookup (each hashed its password): only the write decided.
    assert_eq!(world.hasher.hashes(), hashes + 2);
    let (winner, loser) = match (&first, &second) {
        (Ok(()), Err(ResetPasswordError::InvalidToken)) => (NEW_PASSWORD, OTHER_PASSWORD),
        (Err(ResetPasswordError::InvalidToken), Ok(())) => (OTHER_PASSWORD, NEW_PASSWORD),
        other => panic!("exactly one reset must win: {other:?}"),
    };
    assert!(world.login("ada@example.com", winner).await.is_ok());
    assert!(world.login("ada@example.com", loser).await.is_err());
    let sent = &world.mails()[mails..];
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].mail.subject, "Your password was changed");
}

#[tokio::test]
async fn changing_the_password_needs_the_current_one_and_keeps_only_this_session() {
    let world = world();
    world.verified("ada@example.com").await;
    let mine = world.login("ada@example.com", PASSWORD).await.unwrap();
    let ada = world.service.authenticate(mine.access_token.expose()).await.unwrap();
    let other = world.login("ada@example.com", PASSWORD).await.unwrap();
    let mails = world.mails().len();

    let result = world.service.change_password(&ada, "wrong-password-entirely", NEW_PASSWORD).await;
    assert!(matches!(result, Err(ChangePasswordError::InvalidCurrentPassword)), "{result:?}");
    assert_eq!(world.failures("ada@example.com").await.unwrap().failures, 1, "counted as a failed login");
    assert_eq!(world.mails().len(), mails);
    assert!(world.service.authenticate(other.access_token.expose()).await.is_ok());

    world.service.change_password(&ada, PASSWORD, NEW_PASSWORD).await.unwrap();
    assert_eq!(world.failures("ada@example.com").await, None);
    assert!(matches!(world.service.authenticate(other.access_token.expose()).await, Err(AuthError::InvalidToken)));
    assert!(world.service.authenticate(mine.access_token.expose()).await.is_ok(), "this session lives on");
    assert_eq!(world.last_mail_to("ada@example.com").mail.subject, "Your password was changed");
    assert!(world.login("ada@example.com", NEW_PASSWORD).await.is_ok());
}

#[tokio::test]
async fn an_email_change_needs_the_password_and_a_free_address_and_mails_both_addresses() {
    let world = world();
    let before = world.verified("ada@example.com").await;
    world.verified("bob@example.com").await;
    let ada = world.principal("ada@example.com").await;
    let mails = world.mails().len();
    let change = |address: &str, password: Option<&str>| MeUpdate {
        email: Some(email(address)),
        current_password: password.map(str::to_owned),
        ..MeUpdate::default()
    };

    let result = world.service.update_me(&ada, change("new@example.com", None)).await;
    assert!(matches!(result, Err(UpdateMeError::CurrentPasswordRequired)), "{result:?}");
    let result = world.service.update_me(&ada, change("new@example.com", Some("wrong-password-entirely"))).await;
    assert!(matches!(result, Err(UpdateMeError::InvalidCurrentPassword)), "{result:?}");
    let result = world.service.update_me(&ada, change("BOB@example.com", Some(PASSWORD))).await;
    assert!(matches!(result, Err(UpdateMeError::EmailTaken)), "{result:?}");
    assert_eq!(world.mails().len(), mails);
    assert_eq!(world.user("ada@example.com").await.pending_email, before.pending_email);

    let updated = world.service.update_me(&ada, change("new@example.com", Some(PASSWORD))).await.unwrap();
    assert_eq!(updated.email.as_str(), "ada@example.com", "the old address works until the new one confirms");
    assert_eq!(updated.pending_email, Some(email("new@example.com")));
    let sent = &world.mails()[mails..];
    assert_eq!(sent.len(), 2);
    let to_new = sent.iter().find(|queued| queued.mail.to.as_str() == "new@example.com").unwrap();
    let to_old = sent.iter().find(|queued| queued.mail.to.as_str() == "ada@example.com").unwrap();
    assert!(to_new.mail.text.contains(&format!("/verify-email/{}/", ada.user.id)));
    assert!(!has_link(to_old), "the old address is told, without the link");
    assert!(to_old.mail.text.contains("new@example.com"));
}

#[tokio::test]
async fn deleting_oneself_needs_the_current_password() {
    let world = world();
    world.verified("ada@example.com").await;
    let ada = world.principal("ada@example.com").await;
    let result = world.service.delete_me(&ada, "wrong-password-entirely").await;
    assert!(matches!(result, Err(DeleteMeError::InvalidCurrentPassword)), "{result:?}");
    assert!(world.find("ada@example.com").await.is_some());
    assert_eq!(world.store().session_count(), 1);

    world.service.delete_me(&ada, PASSWORD).await.unwrap();
    assert!(world.find("ada@example.com").await.is_none());
    assert_eq!(world.store().session_count(), 0);
}
