//! User administration for MANAGER and ADMIN: listing, reading, creating, changing and deleting users, each
//! decided by the permission matrix against the target's current role, and the last-ADMIN rule.
//!
//! Every write is decided on the target as read and applied with a [`Guard`] on that state: the role it was decided
//! for (a concurrent promotion cannot slip a target out of the caller's reach between the check and the write) and,
//! for a change that may take an unlocked ADMIN away, that another one remains.

mod bootstrap;

pub use bootstrap::CreateAdminError;

use crate::accounts::{RegisterError, Registration};
use crate::audit::{AuditEvent, EventType};
use crate::permissions::{Action, Denied, Role, Target, authorize, can_see};
use crate::ports::{
    EmailTokenPurpose, Guard, InsertUserError, PortError, Ports, ProfileChanges, SessionEnd, UpdateError, UserCursor,
    UserQuery, UserSort, UserStore as _, UserUpdate,
};
use crate::service::Service;
use crate::sessions::Principal;
use crate::user::{EmailAddress, PasswordError, User, UserId};

/// The most users one page may hold.
pub const MAX_PAGE: u32 = 100;

/// A listing request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListUsers {
    /// 1 to [`MAX_PAGE`].
    pub limit: u32,
    /// The order.
    pub sort: UserSort,
    /// Continue after this point.
    pub after: Option<UserCursor>,
    /// A literal prefix of email, nickname or name.
    pub prefix: Option<String>,
    /// Only this role.
    pub role: Option<Role>,
    /// Filter on `email_verified`.
    pub email_verified: Option<bool>,
    /// Filter on `is_locked`.
    pub is_locked: Option<bool>,
    /// Filter on `is_professional`.
    pub is_professional: Option<bool>,
}

/// One page of users, and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPage {
    /// The users of this page.
    pub users: Vec<User>,
    /// The cursor of the next page, when there is one.
    pub next: Option<UserCursor>,
}

/// A user created by an administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminCreate {
    /// The same fields as a registration.
    pub registration: Registration,
    /// The role, within the caller's rights (default AUTHENTICATED when verified, else ANONYMOUS).
    pub role: Option<Role>,
    /// Whether the address counts as verified; when not, a verification mail goes out.
    pub email_verified: bool,
}

/// What an administrator changes on another user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminChanges {
    /// Profile fields.
    pub profile: ProfileChanges,
    /// A new role.
    pub role: Option<Role>,
    /// Grant or withdraw professional status.
    pub is_professional: Option<bool>,
    /// Lock or unlock.
    pub is_locked: Option<bool>,
    /// Mark the email verified or not.
    pub email_verified: Option<bool>,
    /// A new login address, effective at once: a pending email change is cancelled, links mailed before die, and
    /// unless the same request vouches for it (`email_verified: true`), the address is unverified and gets a
    /// verification link.
    pub email: Option<EmailAddress>,
}

impl AdminChanges {
    /// Whether the request changes nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Why a listing was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListUsersError {
    /// The caller's role may not list users.
    #[error("forbidden")]
    Forbidden,
    /// The cursor was made for another sort order.
    #[error("cursor does not fit the sort order")]
    CursorMismatch,
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Why reading a user was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetUserError {
    /// The caller's role may not read users.
    #[error("forbidden")]
    Forbidden,
    /// No such user, or one the caller may not see (the same answer).
    #[error("not found")]
    NotFound,
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Why creating a user was refused; nothing was stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateUserError {
    /// The caller may not create a user with this role.
    #[error("forbidden")]
    Forbidden,
    /// The email belongs to another account.
    #[error("email taken")]
    EmailTaken,
    /// The nickname belongs to another account.
    #[error("nickname taken")]
    NicknameTaken,
    /// The password breaks the policy.
    #[error("password {0}")]
    WeakPassword(#[from] PasswordError),
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Why changing a user was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateUserError {
    /// The caller may not make one of the changes.
    #[error("forbidden")]
    Forbidden,
    /// No such user, or one the caller may not see.
    #[error("not found")]
    NotFound,
    /// The email belongs to another account.
    #[error("email taken")]
    EmailTaken,
    /// The nickname belongs to another account.
    #[error("nickname taken")]
    NicknameTaken,
    /// The change would leave no unlocked ADMIN.
    #[error("last admin")]
    LastAdmin,
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Why deleting a user was refused; nothing was deleted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeleteUserError {
    /// The caller may not delete this user.
    #[error("forbidden")]
    Forbidden,
    /// No such user, or one the caller may not see.
    #[error("not found")]
    NotFound,
    /// The deletion would leave no unlocked ADMIN.
    #[error("last admin")]
    LastAdmin,
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// A refusal of the matrix, as each operation's error.
macro_rules! from_denied {
    ($($error:ident),*) => {$(
        impl From<Denied> for $error {
            fn from(denied: Denied) -> Self {
                match denied {
                    Denied::NotFound => Self::NotFound,
                    Denied::Forbidden => Self::Forbidden,
                }
            }
        }
    )*};
}
from_denied!(GetUserError, UpdateUserError, DeleteUserError);

impl From<Denied> for ListUsersError {
    fn from(_: Denied) -> Self {
        Self::Forbidden
    }
}

impl From<Denied> for CreateUserError {
    fn from(_: Denied) -> Self {
        Self::Forbidden
    }
}

/// How often a change refused because the target's role changed meanwhile is decided again.
const DECIDE_ATTEMPTS: usize = 3;

impl<P: Ports> Service<P> {
    /// Loads a target user and decides `action` on it for the caller. Callers who may not use the routes at all
    /// are refused before any lookup, so they learn nothing about which ids exist.
    pub(crate) async fn target(&self, actor: &Principal, id: UserId, action: Action) -> Result<User, GetUserError> {
        if !actor.user.role.administers_users() && action != Action::ManagePicture {
            return Err(GetUserError::Forbidden);
        }
        let target = self.ports.users().find_user(id).await?;
        let facts = target.as_ref().map(|user| Target { is_self: user.id == actor.user.id, role: user.role });
        authorize(actor.user.role, action, facts)?;
        target.ok_or(GetUserError::NotFound)
    }

    /// Whether the caller, an unlocked ADMIN removing themself, is the last one: answered `last_admin`, which says
    /// more than the generic refusal of changing one's own role. The write re-checks under a lock.
    async fn last_admin_removing_themself(&self, target: &User, actor: &Principal) -> Result<bool, PortError> {
        let themself = target.id == actor.user.id && target.role == Role::Admin && !target.is_locked;
        Ok(themself && !self.ports.users().another_unlocked_admin(target.id).await?)
    }

    /// One page of the users the caller may see.
    ///
    /// # Errors
    /// [`ListUsersError`] as described on its variants.
    pub async fn list_users(&self, actor: &Principal, request: ListUsers) -> Result<UserPage, ListUsersError> {
        authorize(actor.user.role, Action::ListUsers, None)?;
        if request.after.as_ref().is_some_and(|cursor| !cursor.fits(request.sort)) {
            return Err(ListUsersError::CursorMismatch);
        }
        let roles = Role::ALL
            .into_iter()
            .filter(|role| can_see(actor.user.role, Target { is_self: false, role: *role }))
            .filter(|role| request.role.is_none_or(|wanted| wanted == *role))
            .collect();
        let limit = request.limit.clamp(1, MAX_PAGE);
        let query = UserQuery {
            limit: limit + 1,
            sort: request.sort,
            after: request.after,
            prefix: request.prefix,
            roles,
            email_verified: request.email_verified,
            is_locked: request.is_locked,
            is_professional: request.is_professional,
        };
        let mut users = self.ports.users().list_users(query).await?;
        let more = users.len() > limit as usize;
        users.truncate(limit as usize);
        let next = if more { users.last().map(|last| UserCursor::after(last, request.sort)) } else { None };
        Ok(UserPage { users, next })
    }

    /// One user, if the caller may see them.
    ///
    /// # Errors
    /// [`GetUserError`] as described on its variants.
    pub async fn get_user(&self, actor: &Principal, id: UserId) -> Result<User, GetUserError> {
        self.target(actor, id, Action::ReadUser).await
    }

    /// Creates a user with a role and verification state within the caller's rights. An unverified user gets a
    /// verification mail, as at registration.
    ///
    /// # Errors
    /// [`CreateUserError`] as described on its variants.
    pub async fn create_user(&self, actor: &Principal, request: AdminCreate) -> Result<User, CreateUserError> {
        let role = request.role.unwrap_or(if request.email_verified { Role::Authenticated } else { Role::Anonymous });
        authorize(actor.user.role, Action::CreateUser { role }, None)?;
        let password_hash = self.hash_new_password(&request.registration).await.map_err(|error| match error {
            RegisterError::WeakPassword(error) => CreateUserError::WeakPassword(error),
            RegisterError::NicknameTaken => CreateUserError::NicknameTaken,
            RegisterError::Port(error) => CreateUserError::Port(error),
        })?;
        let event = self.event(EventType::UserCreated, &actor.client).actor(actor.user.id, Some(actor.session_id));
        match self.create_account(&request.registration, password_hash, role, request.email_verified, event).await {
            Ok(user) => Ok(user),
            Err(InsertUserError::NicknameTaken) => Err(CreateUserError::NicknameTaken),
            Err(InsertUserError::EmailTaken) => Err(CreateUserError::EmailTaken),
            Err(InsertUserError::Port(error)) => Err(error.into()),
        }
    }

    /// Changes another user within the caller's rights: each requested change is checked on its own against the
    /// matrix. Becoming professional, being locked and an address changed by an administrator each queue a mail.
    ///
    /// # Errors
    /// [`UpdateUserError`] as described on its variants.
    pub async fn update_user(
        &self,
        actor: &Principal,
        id: UserId,
        changes: AdminChanges,
    ) -> Result<User, UpdateUserError> {
        for _ in 0..DECIDE_ATTEMPTS {
            let target = self.target(actor, id, Action::ReadUser).await.map_err(|error| match error {
                GetUserError::Forbidden => UpdateUserError::Forbidden,
                GetUserError::NotFound => UpdateUserError::NotFound,
                GetUserError::Port(error) => UpdateUserError::Port(error),
            })?;
            let Some(update) = self.decide_admin_update(actor, &target, changes.clone()).await? else {
                return Ok(target);
            };
            return match self.ports.users().update_user(update).await {
                Ok(user) => Ok(user),
                Err(UpdateError::RoleChanged) => continue,
                Err(UpdateError::NotFound) => Err(UpdateUserError::NotFound),
                Err(UpdateError::LastAdmin) => Err(UpdateUserError::LastAdmin),
                Err(UpdateError::NicknameTaken) => Err(UpdateUserError::NicknameTaken),
                Err(UpdateError::EmailTaken) => Err(UpdateUserError::EmailTaken),
                Err(UpdateError::Port(error)) => Err(error.into()),
                Err(other) => Err(PortError::Unknown(anyhow::Error::new(other)).into()),
            };
        }
        // The role kept changing under us; whatever it is now, this caller's decision no longer stands.
        Err(UpdateUserError::NotFound)
    }

    /// Decides an administrator's change on the target as read: which changes the caller may make, the values to
    /// write, the mails, and the guard. `None` when nothing changes.
    async fn decide_admin_update(
        &self,
        actor: &Principal,
        target: &User,
        mut changes: AdminChanges,
    ) -> Result<Option<UserUpdate>, UpdateUserError> {
        let facts = Some(Target { is_self: target.id == actor.user.id, role: target.role });
        let mut actions = Vec::new();
        // A value equal to the row as read is no change: writing it anyway would silently undo a change that
        // commits in between (an administrator's lock undone by a "no-op" request of the locked user, say).
        changes.email = changes.email.filter(|email| email.canonical() != target.email.canonical());
        changes.role = changes.role.filter(|role| *role != target.role);
        changes.is_locked = changes.is_locked.filter(|locked| *locked != target.is_locked);
        changes.is_professional =
            changes.is_professional.filter(|professional| *professional != target.is_professional);
        // One's own address changes only through `PATCH /me`, which asks for the current password and waits for
        // the new address to confirm: a stolen staff token must not be enough to move an account to another inbox.
        if changes.email.is_some() && target.id == actor.user.id {
            return Err(UpdateUserError::Forbidden);
        }
        // A new address counts as unverified unless this very request vouches for it, which needs the right to set
        // the verification state even when the flag itself does not change.
        if changes.email.is_some() {
            actions.push(Action::UpdateProfile);
            if changes.email_verified == Some(true) {
                actions.push(Action::SetEmailVerified);
            } else {
                changes.email_verified = Some(false);
            }
        }
        if !changes.profile.is_empty() {
            actions.push(Action::UpdateProfile);
        }
        if let Some(role) = changes.role.filter(|role| *role != target.role) {
            actions.push(Action::SetRole(role));
        }
        if changes.is_locked.is_some_and(|locked| locked != target.is_locked) {
            actions.push(Action::SetLocked);
        }
        if changes.email.is_none() && changes.email_verified.is_some_and(|verified| verified != target.email_verified) {
            actions.push(Action::SetEmailVerified);
        }
        if changes.is_professional.is_some_and(|professional| professional != target.is_professional) {
            actions.push(Action::SetProfessional);
        }
        let demotes = changes.role.is_some_and(|role| role != Role::Admin);
        let locks = changes.is_locked == Some(true);
        if (demotes || locks) && self.last_admin_removing_themself(target, actor).await? {
            return Err(UpdateUserError::LastAdmin);
        }
        for action in actions {
            authorize(actor.user.role, action, facts)?;
        }
        if changes.is_empty() {
            return Ok(None);
        }

        let now = self.now();
        let mut update = UserUpdate::new(target.id, now);
        update.guard =
            Guard { role: Some(target.role), another_admin: target.role == Role::Admin && (demotes || locks) };
        let fields = &mut update.fields;
        fields.profile = changes.profile;
        fields.is_locked = changes.is_locked;
        fields.email_verified = changes.email_verified;
        // Verifying an address promotes ANONYMOUS, also when an administrator vouches for it, unless the same
        // request sets a role of its own.
        fields.role = changes.role.or_else(|| {
            (changes.email_verified == Some(true))
                .then(|| target.role.once_verified())
                .filter(|role| *role != target.role)
        });
        // The status time records when the status last changed, so granting it twice keeps the first time.
        fields.professional = changes
            .is_professional
            .filter(|professional| *professional != target.is_professional)
            .map(|professional| (professional, now));
        if changes.is_professional == Some(true) && !target.is_professional {
            update.mails.push(self.mails.professional_upgrade(&target.email, &target.nickname));
        }
        if changes.is_locked == Some(true) && !target.is_locked {
            update.mails.push(self.mails.account_locked(&target.email));
        }
        if let Some(new_email) = changes.email {
            update.fields.email = Some(new_email.clone());
            update.fields.pending_email = Some(None);
            // Links mailed to the old address (or for a pending change) must not act on the new one.
            update.drop_tokens = EmailTokenPurpose::ALL.to_vec();
            update.mails.push(self.mails.email_changed_by_admin(&target.email, &new_email));
            if changes.email_verified != Some(true) {
                let (secret, token) = self.email_token(target.id, EmailTokenPurpose::Verify, None, now);
                update.issue_token = Some(token);
                update.mails.push(self.mails.verify_email(&new_email, &target.nickname, target.id, secret.expose()));
            }
        }
        // A lock keeps sessions (an unlock restores them); every request of a locked user is refused meanwhile.
        update.end_sessions = SessionEnd::Keep;
        update.events = self.admin_update_events(actor, target, &update.fields);
        Ok(Some(update))
    }

    /// The events of an administrator's change: the lock or unlock on its own, the address change on its own, and
    /// every other changed field in one `user.updated` (a role as `from`/`to`).
    fn admin_update_events(
        &self,
        actor: &Principal,
        target: &User,
        fields: &crate::ports::UserFields,
    ) -> Vec<AuditEvent> {
        let mut events = Vec::new();
        match fields.is_locked {
            Some(true) => events.push(self.event_by(EventType::UserLocked, actor, target.id)),
            Some(false) => events.push(self.event_by(EventType::UserUnlocked, actor, target.id)),
            None => {}
        }
        if fields.email.is_some() {
            events.push(
                self.event_by(EventType::UserEmailChanged, actor, target.id)
                    .detail("by", "staff")
                    .detail("email_verified", fields.email_verified.unwrap_or(false)),
            );
        }
        let mut names = crate::accounts::changed_profile_fields(&fields.profile);
        if fields.email.is_none() && fields.email_verified.is_some() {
            names.push("email_verified");
        }
        if fields.role.is_some() {
            names.push("role");
        }
        if fields.professional.is_some() {
            names.push("is_professional");
        }
        if !names.is_empty() {
            let mut event = self.event_by(EventType::UserUpdated, actor, target.id).detail("fields", names);
            if let Some(role) = fields.role {
                event = event.change("role", target.role.as_str(), role.as_str());
            }
            events.push(event);
        }
        events
    }

    /// Deletes another user within the caller's rights, with their sessions, tokens and pictures.
    ///
    /// # Errors
    /// [`DeleteUserError`] as described on its variants.
    pub async fn delete_user(&self, actor: &Principal, id: UserId) -> Result<(), DeleteUserError> {
        // An ADMIN may leave through this route while another unlocked ADMIN remains (the permission matrix allows
        // it; the deletion re-checks under a lock); the last one is told `last_admin`.
        if id == actor.user.id && self.last_admin_removing_themself(&actor.user, actor).await? {
            return Err(DeleteUserError::LastAdmin);
        }
        let target = self.target(actor, id, Action::DeleteUser).await.map_err(|error| match error {
            GetUserError::Forbidden => DeleteUserError::Forbidden,
            GetUserError::NotFound => DeleteUserError::NotFound,
            GetUserError::Port(error) => DeleteUserError::Port(error),
        })?;
        let guard = Guard { role: Some(target.role), another_admin: target.role == Role::Admin };
        let event = self.event_by(EventType::UserDeleted, actor, target.id).detail("role", target.role.as_str());
        self.delete_user_with_pictures(id, guard, vec![event]).await.map_err(|error| match error {
            UpdateError::LastAdmin => DeleteUserError::LastAdmin,
            UpdateError::NotFound | UpdateError::RoleChanged => DeleteUserError::NotFound,
            UpdateError::Port(error) => DeleteUserError::Port(error),
            other => DeleteUserError::Port(PortError::Unknown(anyhow::Error::new(other))),
        })
    }
}
