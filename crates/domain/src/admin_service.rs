//! User administration for MANAGER and ADMIN: listing, reading, creating, changing and deleting users, each
//! decided by the permission matrix against the target's current role, plus the last-ADMIN rule that storage
//! enforces under a lock.

use crate::account_service::{RegisterError, Registration};
use crate::accounts::{EmailTokenPurpose, NewEmailToken};
use crate::admin::{AdminChanges, AdminWriteError, UserCursor, UserQuery, UserSort};
use crate::permissions::{Action, Denied, Role, Target, authorize, can_see};
use crate::ports::{Clock, InsertUserError, OutgoingMail, PasswordHasher, PortError, TokenCodec, UserRepository};
use crate::service::{Principal, Service};
use crate::session::RefreshToken;
use crate::user::{PasswordError, User, UserId};

/// The most users one page may hold.
pub const MAX_PAGE: u32 = 100;

/// Why an administrative request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The caller's role may not do this (403).
    #[error("forbidden")]
    Forbidden,
    /// No such user, or one the caller may not see (the same 404).
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
    /// The password breaks the policy.
    #[error("password {0}")]
    WeakPassword(#[from] PasswordError),
    /// The cursor was made for another sort order.
    #[error("cursor does not fit the sort order")]
    CursorMismatch,
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

impl From<Denied> for AdminError {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::NotFound => Self::NotFound,
            Denied::Forbidden => Self::Forbidden,
        }
    }
}

impl From<AdminWriteError> for AdminError {
    fn from(error: AdminWriteError) -> Self {
        match error {
            AdminWriteError::LastAdmin => Self::LastAdmin,
            AdminWriteError::NicknameTaken => Self::NicknameTaken,
            AdminWriteError::EmailTaken => Self::EmailTaken,
            AdminWriteError::NotFound => Self::NotFound,
            AdminWriteError::Port(error) => Self::Port(error),
        }
    }
}

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

impl<R, H, T, C> Service<R, H, T, C>
where
    R: UserRepository,
    H: PasswordHasher,
    T: TokenCodec,
    C: Clock,
{
    /// Loads a target user and decides `action` on it for the caller. Callers who may not use the routes at all
    /// are refused before any lookup, so they learn nothing about which ids exist.
    async fn target(&self, actor: &Principal, id: UserId, action: Action) -> Result<User, AdminError> {
        if !actor.user.role.administers_users() && action != Action::ManagePicture {
            return Err(AdminError::Forbidden);
        }
        let target = self.repo.find_user(id).await?;
        let facts = target.as_ref().map(|user| Target { is_self: user.id == actor.user.id, role: user.role });
        authorize(actor.user.role, action, facts)?;
        target.ok_or(AdminError::NotFound)
    }

    /// The last unlocked ADMIN removing themself (demotion, lock or deletion) is answered `last_admin`, which says
    /// more than the generic refusal of changing one's own role; anyone else removing themself stays forbidden.
    async fn refuse_last_admin_removing_themself(
        &self,
        target: &User,
        actor: &Principal,
        removes_admin: bool,
    ) -> Result<(), AdminError> {
        let last_admin_themself =
            removes_admin && target.id == actor.user.id && target.role == Role::Admin && !target.is_locked;
        if last_admin_themself && !self.repo.another_unlocked_admin(target.id).await? {
            return Err(AdminError::LastAdmin);
        }
        Ok(())
    }

    /// One page of the users the caller may see.
    ///
    /// # Errors
    /// [`AdminError::Forbidden`] for roles below MANAGER, [`AdminError::CursorMismatch`], or a dependency failure.
    pub async fn list_users(&self, actor: &Principal, request: ListUsers) -> Result<UserPage, AdminError> {
        authorize(actor.user.role, Action::ListUsers, None)?;
        if request.after.as_ref().is_some_and(|cursor| !cursor.fits(request.sort)) {
            return Err(AdminError::CursorMismatch);
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
        let mut users = self.repo.list_users(query).await?;
        let more = users.len() > limit as usize;
        users.truncate(limit as usize);
        let next = if more { users.last().map(|last| UserCursor::after(last, request.sort)) } else { None };
        Ok(UserPage { users, next })
    }

    /// One user, if the caller may see them.
    ///
    /// # Errors
    /// [`AdminError::Forbidden`], [`AdminError::NotFound`], or a dependency failure.
    pub async fn get_user(&self, actor: &Principal, id: UserId) -> Result<User, AdminError> {
        self.target(actor, id, Action::ReadUser).await
    }

    /// Creates a user with a role and verification state within the caller's rights. An unverified user gets a
    /// verification mail, as at registration.
    ///
    /// # Errors
    /// [`AdminError::Forbidden`] for a role above the caller's rights, [`AdminError::EmailTaken`],
    /// [`AdminError::NicknameTaken`], [`AdminError::WeakPassword`], or a dependency failure.
    pub async fn create_user(&self, actor: &Principal, request: AdminCreate) -> Result<User, AdminError> {
        let role = request.role.unwrap_or(if request.email_verified { Role::Authenticated } else { Role::Anonymous });
        authorize(actor.user.role, Action::CreateUser { role }, None)?;
        let password_hash = self.hash_new_password(&request.registration).await.map_err(|error| match error {
            RegisterError::WeakPassword(error) => AdminError::WeakPassword(error),
            RegisterError::NicknameTaken => AdminError::NicknameTaken,
            RegisterError::Port(error) => AdminError::Port(error),
        })?;
        match self.create_account(&request.registration, password_hash, role, request.email_verified).await {
            Ok(user) => Ok(user),
            Err(InsertUserError::NicknameTaken) => Err(AdminError::NicknameTaken),
            Err(InsertUserError::EmailTaken) => Err(AdminError::EmailTaken),
            Err(InsertUserError::Port(error)) => Err(error.into()),
        }
    }

    /// Changes another user within the caller's rights: each requested change is checked on its own against the
    /// matrix. Becoming professional and being locked each queue a mail to the user.
    ///
    /// # Errors
    /// [`AdminError::NotFound`] for an invisible or missing user, [`AdminError::Forbidden`] for a change the
    /// caller may not make, [`AdminError::LastAdmin`], [`AdminError::NicknameTaken`], or a dependency failure.
    pub async fn update_user(
        &self,
        actor: &Principal,
        id: UserId,
        mut changes: AdminChanges,
    ) -> Result<User, AdminError> {
        let target = self.target(actor, id, Action::ReadUser).await?;
        let facts = Some(Target { is_self: target.id == actor.user.id, role: target.role });
        let mut actions = Vec::new();
        // A new address takes effect at once. It counts as unverified unless this very request vouches for it,
        // which needs the right to set the verification state even when the flag itself does not change.
        changes.email = changes.email.filter(|email| email.canonical() != target.email.canonical());
        changes.email_token = None;
        // One's own address changes only through `PATCH /me`, which asks for the current password and waits for
        // the new address to confirm: a stolen staff token must not be enough to move an account to another inbox.
        if changes.email.is_some() && target.id == actor.user.id {
            return Err(AdminError::Forbidden);
        }
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
        let becomes_professional = changes.is_professional == Some(true) && !target.is_professional;
        if changes.is_professional.is_some_and(|professional| professional != target.is_professional) {
            actions.push(Action::SetProfessional);
        }
        let removes_admin = changes.role.is_some_and(|role| role != Role::Admin) || changes.is_locked == Some(true);
        self.refuse_last_admin_removing_themself(&target, actor, removes_admin).await?;
        for action in actions {
            authorize(actor.user.role, action, facts)?;
        }
        if changes.is_empty() {
            return Ok(target);
        }
        let changes = AdminChanges { expected_role: Some(target.role), ..changes };
        let mut mails: Vec<OutgoingMail> = Vec::new();
        if becomes_professional {
            mails.push(self.mails.professional_upgrade(&target.email, &target.nickname));
        }
        if changes.is_locked == Some(true) && !target.is_locked {
            mails.push(self.mails.account_locked(&target.email));
        }
        let mut changes = changes;
        if let Some(new_email) = changes.email.clone() {
            mails.push(self.mails.email_changed_by_admin(&target.email, &new_email));
            if changes.email_verified != Some(true) {
                let now = self.clock.now();
                let secret = RefreshToken::generate();
                changes.email_token = Some(NewEmailToken {
                    hash: secret.hash(),
                    user_id: target.id,
                    purpose: EmailTokenPurpose::Verify,
                    new_email: None,
                    expires_at: now + self.config.verify_token_ttl,
                    drops: vec![EmailTokenPurpose::EmailChange, EmailTokenPurpose::PasswordReset],
                    replaces_password: None,
                });
                mails.push(self.mails.verify_email(&new_email, &target.nickname, target.id, secret.expose()));
            }
        }
        Ok(self.repo.admin_update_user(id, changes, mails, self.clock.now()).await?)
    }

    /// Deletes another user within the caller's rights, with their sessions.
    ///
    /// # Errors
    /// [`AdminError::NotFound`], [`AdminError::Forbidden`], [`AdminError::LastAdmin`], or a dependency failure.
    pub async fn delete_user(&self, actor: &Principal, id: UserId) -> Result<(), AdminError> {
        if id == actor.user.id {
            // An ADMIN may leave through this route while another unlocked ADMIN remains (the permission matrix
            // allows it; the deletion re-checks under a lock); the last one is told `last_admin`.
            self.refuse_last_admin_removing_themself(&actor.user, actor, true).await?;
        }
        let target = self.target(actor, id, Action::DeleteUser).await?;
        Ok(self.repo.admin_delete_user(id, Some(target.role)).await?)
    }
}

#[cfg(test)]
mod tests {
    use std::future::ready;

    use super::*;
    use crate::ports::{MockPasswordHasher, MockTokenCodec, MockUserRepository};
    use crate::service::tests::{STRONG, service, session_of, user};
    use crate::user::EmailAddress;

    fn actor(role: Role) -> Principal {
        let me = user(role, true, false);
        let session_id = session_of(&me, false).id;
        Principal { user: me, session_id }
    }

    fn repo_with_target(target: Option<User>) -> MockUserRepository {
        let mut repo = MockUserRepository::new();
        repo.expect_find_user().returning(move |_| Box::pin(ready(Ok(target.clone()))));
        repo
    }

    fn admin_service(
        repo: MockUserRepository,
    ) -> Service<MockUserRepository, MockPasswordHasher, MockTokenCodec, crate::ports::MockClock> {
        service(repo, MockPasswordHasher::new(), MockTokenCodec::new())
    }

    #[tokio::test]
    async fn plain_users_are_refused_before_any_lookup() {
        let mut repo = MockUserRepository::new();
        repo.expect_find_user().never();
        repo.expect_list_users().never();
        let svc = admin_service(repo);
        let me = actor(Role::Authenticated);
        assert!(matches!(svc.get_user(&me, UserId::generate()).await, Err(AdminError::Forbidden)));
        let list = ListUsers {
            limit: 10,
            sort: UserSort::CreatedAt,
            after: None,
            prefix: None,
            role: None,
            email_verified: None,
            is_locked: None,
            is_professional: None,
        };
        assert!(matches!(svc.list_users(&me, list).await, Err(AdminError::Forbidden)));
    }

    #[tokio::test]
    async fn a_manager_gets_the_same_404_for_an_admin_a_manager_and_an_unknown_id() {
        for target in [Some(user(Role::Admin, true, false)), Some(user(Role::Manager, true, false)), None] {
            let mut repo = repo_with_target(target);
            repo.expect_admin_update_user().never();
            repo.expect_admin_delete_user().never();
            let svc = admin_service(repo);
            let me = actor(Role::Manager);
            let id = UserId::generate();
            assert!(matches!(svc.get_user(&me, id).await, Err(AdminError::NotFound)));
            let lock = AdminChanges { is_locked: Some(true), ..AdminChanges::default() };
            assert!(matches!(svc.update_user(&me, id, lock).await, Err(AdminError::NotFound)));
            assert!(matches!(svc.delete_user(&me, id).await, Err(AdminError::NotFound)));
        }
    }

    #[tokio::test]
    async fn a_manager_may_not_promote_to_manager_or_create_an_admin() {
        let mut repo = repo_with_target(Some(user(Role::Authenticated, true, false)));
        repo.expect_admin_update_user().never();
        repo.expect_insert_user().never();
        let svc = admin_service(repo);
        let me = actor(Role::Manager);
        let promote = AdminChanges { role: Some(Role::Manager), ..AdminChanges::default() };
        assert!(matches!(svc.update_user(&me, UserId::generate(), promote).await, Err(AdminError::Forbidden)));
        let create = AdminCreate {
            registration: Registration {
                email: EmailAddress::parse("new@example.com").unwrap(),
                password: STRONG.to_owned(),
                nickname: None,
                first_name: None,
                last_name: None,
                bio: None,
                linkedin_profile_url: None,
                github_profile_url: None,
            },
            role: Some(Role::Admin),
            email_verified: true,
        };
        assert!(matches!(svc.create_user(&me, create).await, Err(AdminError::Forbidden)));
    }

    #[tokio::test]
    async fn locking_and_granting_professional_status_queue_their_mails() {
        let mut repo = repo_with_target(Some(user(Role::Authenticated, true, false)));
        repo.expect_admin_update_user()
            .times(1)
            .withf(|_, changes, mails, _| {
                changes.is_locked == Some(true)
                    && mails.len() == 2
                    && mails.iter().any(|m| m.subject == "You now have professional status")
                    && mails.iter().any(|m| m.subject == "Your account has been locked")
            })
            .returning(|_, _, _, _| Box::pin(ready(Ok(user(Role::Authenticated, true, true)))));
        let svc = admin_service(repo);
        let changes = AdminChanges { is_locked: Some(true), is_professional: Some(true), ..AdminChanges::default() };
        let updated = svc.update_user(&actor(Role::Admin), UserId::generate(), changes).await.unwrap();
        assert!(updated.is_locked);
    }

    #[tokio::test]
    async fn nobody_changes_their_own_role_or_locks_themself() {
        let me = actor(Role::Admin);
        let myself = me.user.clone();
        for changes in [
            AdminChanges { role: Some(Role::Manager), ..AdminChanges::default() },
            AdminChanges { is_locked: Some(true), ..AdminChanges::default() },
        ] {
            let mut repo = repo_with_target(Some(myself.clone()));
            repo.expect_another_unlocked_admin().returning(|_| Box::pin(ready(Ok(true))));
            repo.expect_admin_update_user().never();
            let svc = admin_service(repo);
            assert!(matches!(svc.update_user(&me, myself.id, changes).await, Err(AdminError::Forbidden)));
        }
    }

    #[tokio::test]
    async fn the_last_admin_removing_themself_is_told_last_admin() {
        let me = actor(Role::Admin);
        let myself = me.user.clone();
        for changes in [
            AdminChanges { role: Some(Role::Manager), ..AdminChanges::default() },
            AdminChanges { is_locked: Some(true), ..AdminChanges::default() },
        ] {
            let mut repo = repo_with_target(Some(myself.clone()));
            repo.expect_another_unlocked_admin().returning(|_| Box::pin(ready(Ok(false))));
            repo.expect_admin_update_user().never();
            let svc = admin_service(repo);
            assert!(matches!(svc.update_user(&me, myself.id, changes).await, Err(AdminError::LastAdmin)));
        }
        let mut repo = MockUserRepository::new();
        repo.expect_another_unlocked_admin().returning(|_| Box::pin(ready(Ok(false))));
        repo.expect_admin_delete_user().never();
        assert!(matches!(admin_service(repo).delete_user(&me, myself.id).await, Err(AdminError::LastAdmin)));
    }

    #[tokio::test]
    async fn a_manager_lists_only_users_below_manager_and_gets_a_cursor_when_more_remain() {
        let mut repo = MockUserRepository::new();
        repo.expect_list_users()
            .times(1)
            .withf(|query| query.roles == vec![Role::Anonymous, Role::Authenticated] && query.limit == 3)
            .returning(|_| {
                let users = (0..3).map(|_| user(Role::Authenticated, true, false)).collect();
                Box::pin(ready(Ok(users)))
            });
        let svc = admin_service(repo);
        let request = ListUsers {
            limit: 2,
            sort: UserSort::Email,
            after: None,
            prefix: None,
            role: None,
            email_verified: None,
            is_locked: None,
            is_professional: None,
        };
        let page = svc.list_users(&actor(Role::Manager), request.clone()).await.unwrap();
        assert_eq!(page.users.len(), 2);
        assert!(matches!(page.next, Some(UserCursor::Email(..))));

        // Asking a manager's listing for admins narrows the visible roles to none.
        let mut repo = MockUserRepository::new();
        repo.expect_list_users()
            .times(1)
            .withf(|query| query.roles.is_empty())
            .returning(|_| Box::pin(ready(Ok(vec![]))));
        let svc = admin_service(repo);
        let admins = ListUsers { role: Some(Role::Admin), ..request.clone() };
        assert!(svc.list_users(&actor(Role::Manager), admins).await.unwrap().users.is_empty());

        // A cursor made for another order is refused.
        let svc = admin_service(MockUserRepository::new());
        let wrong = ListUsers { after: Some(UserCursor::Nickname("a".to_owned(), UserId::generate())), ..request };
        assert!(matches!(svc.list_users(&actor(Role::Admin), wrong).await, Err(AdminError::CursorMismatch)));
    }

    #[tokio::test]
    async fn staff_cannot_change_their_own_email_through_the_admin_route() {
        for role in [Role::Manager, Role::Admin] {
            let me = actor(role);
            let mut repo = repo_with_target(Some(me.user.clone()));
            repo.expect_admin_update_user().never();
            let changes = AdminChanges {
                email: Some(EmailAddress::parse("thief@evil.example").unwrap()),
                ..AdminChanges::default()
            };
            let result = admin_service(repo).update_user(&me, me.user.id, changes).await;
            assert!(matches!(result, Err(AdminError::Forbidden)), "{role}: {result:?}");
        }
    }
}
