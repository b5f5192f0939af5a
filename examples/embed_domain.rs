//! The domain without any server: `Service` over the in-memory adapters, through a whole account's life.
//!
//! Run it with `cargo run -p users-examples --example embed_domain`.

#![allow(clippy::print_stdout, reason = "an example reports what it does on standard output")]

use users_domain::accounts::{EmailConfirmation, Registration};
use users_domain::admin::AdminChanges;
use users_domain::sessions::ClientInfo;
use users_domain::{EmailAddress, Role, Service, ServiceConfig};
use users_memory::MemoryPorts;

/// What the walk-through saw, for the test that runs it.
#[derive(Debug)]
pub struct Summary {
    /// The role right after registration.
    pub registered_role: Role,
    /// The role once the address was verified.
    pub verified_role: Role,
    /// Whether the refreshed access token authenticated.
    pub refreshed: bool,
    /// Whether the administrator's change (professional status) was applied.
    pub professional: bool,
    /// The subjects of every mail queued, in order.
    pub mails: Vec<String>,
}

/// Registers, verifies, logs in, refreshes, and lets an administrator grant professional status.
///
/// # Errors
/// Whatever step fails.
pub async fn walk_through() -> anyhow::Result<Summary> {
    let ports = MemoryPorts::new()?;
    let service = Service::new(ports.clone(), ServiceConfig::default());
    let password = "violet-kettle-orbit-97";

    // Register: the account starts ANONYMOUS, and a verification mail is queued in the same change.
    let email = EmailAddress::parse("ada@example.com")?;
    let registration = Registration {
        email: email.clone(),
        password: password.to_owned(),
        nickname: None,
        first_name: None,
        last_name: None,
        bio: None,
        linkedin_profile_url: None,
        github_profile_url: None,
    };
    service.register(registration, ClientInfo::default()).await?;
    let queued = ports.store().outbox_mails();
    let mail = queued.last().ok_or_else(|| anyhow::anyhow!("no verification mail"))?;
    println!("mail to {}: {}", mail.mail.to, mail.mail.subject);

    // Follow the link in the mail: `.../verify-email/{user_id}/{token}`.
    let link = mail.mail.text.split_whitespace().find(|word| word.contains("/verify-email/")).unwrap_or_default();
    let mut parts = link.rsplit('/');
    let token = parts.next().unwrap_or_default();
    let user_id = users_domain::UserId::from_uuid(parts.next().unwrap_or_default().parse()?);
    let registered_role = Role::Anonymous;
    let EmailConfirmation::Verified(user) = service.verify_email(user_id, token, ClientInfo::default()).await? else {
        anyhow::bail!("the link was not a verification link");
    };
    println!("verified {} as {}", user.email, user.role);

    // Log in, then exchange the refresh token for a new pair.
    let pair = service.login("ada@example.com", password, ClientInfo::default()).await?;
    let next = service.refresh(pair.refresh_token.expose(), ClientInfo::default()).await?;
    let refreshed = service.authenticate(next.access_token.expose()).await.is_ok();
    println!("refreshed: {refreshed}");

    // An administrator grants professional status; the user is mailed about it.
    service.create_admin(EmailAddress::parse("root@example.com")?, password).await?;
    let admin_pair = service.login("root@example.com", password, ClientInfo::default()).await?;
    let admin = service.authenticate(admin_pair.access_token.expose()).await?;
    let changes = AdminChanges { is_professional: Some(true), ..AdminChanges::default() };
    let updated = service.update_user(&admin, user.id, changes).await?;
    println!("{} is professional: {}", updated.email, updated.is_professional);

    let mails = ports.store().outbox_mails().into_iter().map(|queued| queued.mail.subject).collect();
    Ok(Summary { registered_role, verified_role: user.role, refreshed, professional: updated.is_professional, mails })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let summary = walk_through().await?;
    println!("{summary:#?}");
    Ok(())
}
