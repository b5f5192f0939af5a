//! Roles and the permission matrix: who may do what to whom.
//!
//! The matrix is decided here and nowhere else. Handlers ask [`authorize`] and map [`Denied`] to HTTP: a target
//! the actor may not see is `NotFound` (the same answer as a target that does not exist, so ids cannot be probed),
//! a visible target the actor may not change, or a route their role may not use, is `Forbidden`. Rules that need
//! the database, such as "the last ADMIN cannot be demoted, locked or deleted", are the service's job.

use std::fmt;

/// A user's role, ordered by privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Registered, email not verified yet.
    Anonymous,
    /// A verified user.
    Authenticated,
    /// Manages users below MANAGER.
    Manager,
    /// Manages everyone.
    Admin,
}

/// An unknown role name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be one of ANONYMOUS, AUTHENTICATED, MANAGER, ADMIN")]
pub struct UnknownRole;

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Self; 4] = [Self::Anonymous, Self::Authenticated, Self::Manager, Self::Admin];

    /// The role's name as it appears in the API and in storage.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Anonymous => "ANONYMOUS",
            Self::Authenticated => "AUTHENTICATED",
            Self::Manager => "MANAGER",
            Self::Admin => "ADMIN",
        }
    }

    /// Parses a role name (exact, upper case).
    ///
    /// # Errors
    /// [`UnknownRole`] for any other string.
    pub fn parse(raw: &str) -> Result<Self, UnknownRole> {
        Self::ALL.into_iter().find(|role| role.as_str() == raw).ok_or(UnknownRole)
    }

    /// Whether this role may use the user-administration routes at all.
    #[must_use]
    pub const fn administers_users(self) -> bool {
        matches!(self, Self::Manager | Self::Admin)
    }

    /// The role after the user's address is proven (a verification link, a reset link, an email change, or an
    /// administrator vouching for it): ANONYMOUS becomes AUTHENTICATED; no other role changes, and none is lowered.
    ///
    /// ```
    /// use users_domain::Role;
    /// assert_eq!(Role::Anonymous.once_verified(), Role::Authenticated);
    /// assert_eq!(Role::Manager.once_verified(), Role::Manager);
    /// ```
    #[must_use]
    pub const fn once_verified(self) -> Self {
        match self {
            Self::Anonymous => Self::Authenticated,
            other => other,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something an actor wants to do, possibly to a target user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// List and search users (`GET /users`).
    ListUsers,
    /// Create a user with the given role (`POST /users`).
    CreateUser {
        /// The role the new user would get.
        role: Role,
    },
    /// Read one user (`GET /users/{id}`).
    ReadUser,
    /// Change profile fields of a user through the admin route.
    UpdateProfile,
    /// Give a user the requested role.
    SetRole(Role),
    /// Lock or unlock a user.
    SetLocked,
    /// Mark a user's email as verified or not.
    SetEmailVerified,
    /// Grant or withdraw professional status.
    SetProfessional,
    /// Delete a user through the admin route.
    DeleteUser,
    /// Upload, delete, list or restore a user's profile pictures.
    ManagePicture,
    /// Turn a user's second factor off (`DELETE /users/{id}/mfa`).
    ResetSecondFactor,
}

impl Action {
    /// Every action, with every requested role spelled out.
    #[must_use]
    pub fn all() -> Vec<Self> {
        let mut actions = vec![
            Self::ListUsers,
            Self::ReadUser,
            Self::UpdateProfile,
            Self::SetLocked,
            Self::SetEmailVerified,
            Self::SetProfessional,
            Self::DeleteUser,
            Self::ManagePicture,
            Self::ResetSecondFactor,
        ];
        for role in Role::ALL {
            actions.push(Self::CreateUser { role });
            actions.push(Self::SetRole(role));
        }
        actions
    }

    /// Whether the action targets an existing user.
    #[must_use]
    pub const fn has_target(self) -> bool {
        !matches!(self, Self::ListUsers | Self::CreateUser { .. })
    }
}

/// Why an action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The actor may not see the target: answered exactly like a target that does not exist.
    #[error("not found")]
    NotFound,
    /// The actor may not use this route, or may see the target but not change it this way.
    #[error("forbidden")]
    Forbidden,
}

/// The target of an action, as far as permissions care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Whether the target is the actor themself.
    pub is_self: bool,
    /// The target's current role.
    pub role: Role,
}

/// Whether `actor` may see a user with `target`'s role at all.
#[must_use]
pub fn can_see(actor: Role, target: Target) -> bool {
    target.is_self || actor == Role::Admin || (actor == Role::Manager && target.role < Role::Manager)
}

/// The highest role `actor` may hand out.
#[must_use]
pub const fn max_assignable_role(actor: Role) -> Option<Role> {
    match actor {
        Role::Admin => Some(Role::Admin),
        Role::Manager => Some(Role::Authenticated),
        Role::Anonymous | Role::Authenticated => None,
    }
}

/// Decides whether an actor with role `actor` may perform `action` on `target`.
///
/// `target` is `None` for actions without one (listing, creating); for the others, `None` means the target does
/// not exist and gives the same [`Denied::NotFound`] as an invisible one.
///
/// # Errors
/// [`Denied`] when the action is not allowed.
pub fn authorize(actor: Role, action: Action, target: Option<Target>) -> Result<(), Denied> {
    let assignable = |role: Role| max_assignable_role(actor).is_some_and(|max| role <= max);
    // Profile pictures are the one target-bearing action a plain user may take, on themself only.
    if action == Action::ManagePicture {
        let target = target.ok_or(Denied::NotFound)?;
        return if can_see(actor, target) { Ok(()) } else { Err(Denied::NotFound) };
    }
    if !actor.administers_users() {
        return Err(Denied::Forbidden);
    }
    let target = match action {
        Action::ListUsers => return Ok(()),
        Action::CreateUser { role } => return if assignable(role) { Ok(()) } else { Err(Denied::Forbidden) },
        _ => target.ok_or(Denied::NotFound)?,
    };
    if !can_see(actor, target) {
        return Err(Denied::NotFound);
    }
    match action {
        Action::ReadUser | Action::UpdateProfile | Action::ManagePicture => Ok(()),
        // An ADMIN may delete their own account here; the service keeps the last unlocked ADMIN from doing so.
        Action::DeleteUser if target.is_self && actor == Role::Admin => Ok(()),
        // Privileged changes to oneself are refused: nobody changes their own role, and locking, deleting or
        // flagging oneself through the admin routes would bypass the checks of the self-service routes.
        _ if target.is_self => Err(Denied::Forbidden),
        Action::SetRole(role) if !assignable(role) => Err(Denied::Forbidden),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Role::ALL` is written by hand; a role added to the enum and not to it would be invisible to every listing
    /// and would make "may see all of `ALL`" (the unfiltered ADMIN listing, which then adds no role condition)
    /// true for a caller who cannot see the new role. The match below stops compiling when a role is added.
    #[test]
    fn all_names_every_role_once() {
        for role in [Role::Anonymous, Role::Authenticated, Role::Manager, Role::Admin] {
            let position = match role {
                Role::Anonymous => 0,
                Role::Authenticated => 1,
                Role::Manager => 2,
                Role::Admin => 3,
            };
            assert_eq!(Role::ALL[position], role);
        }
        assert_eq!(Role::ALL.len(), 4);
    }

    /// The matrix, written out by hand as the specification. Columns: the target is the actor themself, then
    /// another user who is ANONYMOUS, AUTHENTICATED, MANAGER, ADMIN. `Y` allowed, `F` forbidden, `N` not found;
    /// actions without a target have one column.
    const MATRIX: &str = "
        ANONYMOUS     list             F
        ANONYMOUS     create:*         F
        ANONYMOUS     read             F F F F F
        ANONYMOUS     profile          F F F F F
        ANONYMOUS     role:*           F F F F F
        ANONYMOUS     lock             F F F F F
        ANONYMOUS     verify           F F F F F
        ANONYMOUS     professional     F F F F F
        ANONYMOUS     delete           F F F F F
        ANONYMOUS     picture          Y N N N N
        ANONYMOUS     mfa              F F F F F
        AUTHENTICATED list             F
        AUTHENTICATED create:*         F
        AUTHENTICATED read             F F F F F
        AUTHENTICATED profile          F F F F F
        AUTHENTICATED role:*           F F F F F
        AUTHENTICATED lock             F F F F F
        AUTHENTICATED verify           F F F F F
        AUTHENTICATED professional     F F F F F
        AUTHENTICATED delete           F F F F F
        AUTHENTICATED picture          Y N N N N
        AUTHENTICATED mfa              F F F F F
        MANAGER       list             Y
        MANAGER       create:ANONYMOUS Y
        MANAGER       create:AUTHENTICATED Y
        MANAGER       create:MANAGER   F
        MANAGER       create:ADMIN     F
        MANAGER       read             Y Y Y N N
        MANAGER       profile          Y Y Y N N
        MANAGER       role:ANONYMOUS   F Y Y N N
        MANAGER       role:AUTHENTICATED F Y Y N N
        MANAGER       role:MANAGER     F F F N N
        MANAGER       role:ADMIN       F F F N N
        MANAGER       lock             F Y Y N N
        MANAGER       verify           F Y Y N N
        MANAGER       professional     F Y Y N N
        MANAGER       delete           F Y Y N N
        MANAGER       picture          Y Y Y N N
        MANAGER       mfa              F Y Y N N
        ADMIN         list             Y
        ADMIN         create:*         Y
        ADMIN         read             Y Y Y Y Y
        ADMIN         profile          Y Y Y Y Y
        ADMIN         role:*           F Y Y Y Y
        ADMIN         lock             F Y Y Y Y
        ADMIN         verify           F Y Y Y Y
        ADMIN         professional     F Y Y Y Y
        ADMIN         delete           Y Y Y Y Y
        ADMIN         picture          Y Y Y Y Y
        ADMIN         mfa              F Y Y Y Y
    ";

    fn action_key(action: Action) -> (String, Option<Role>) {
        match action {
            Action::ListUsers => ("list".into(), None),
            Action::CreateUser { role } => ("create".into(), Some(role)),
            Action::ReadUser => ("read".into(), None),
            Action::UpdateProfile => ("profile".into(), None),
            Action::SetRole(role) => ("role".into(), Some(role)),
            Action::SetLocked => ("lock".into(), None),
            Action::SetEmailVerified => ("verify".into(), None),
            Action::SetProfessional => ("professional".into(), None),
            Action::DeleteUser => ("delete".into(), None),
            Action::ManagePicture => ("picture".into(), None),
            Action::ResetSecondFactor => ("mfa".into(), None),
        }
    }

    /// The row of the matrix for an actor and action, honouring `*` for "any requested role".
    fn expected_row(actor: Role, action: Action) -> Vec<Result<(), Denied>> {
        let (name, requested) = action_key(action);
        let rows: Vec<Vec<&str>> =
            MATRIX.lines().map(|l| l.split_whitespace().collect()).filter(|r: &Vec<&str>| !r.is_empty()).collect();
        let matching: Vec<&Vec<&str>> = rows
            .iter()
            .filter(|row| row[0] == actor.as_str())
            .filter(|row| {
                let (row_name, row_role) = row[1].split_once(':').map_or((row[1], None), |(n, r)| (n, Some(r)));
                row_name == name
                    && match (row_role, requested) {
                        (None, None) | (Some("*"), Some(_)) => true,
                        (Some(r), Some(role)) => r == role.as_str(),
                        _ => false,
                    }
            })
            .collect();
        assert_eq!(matching.len(), 1, "the matrix must have exactly one row for {actor} {action:?}");
        matching[0][2..]
            .iter()
            .map(|cell| match *cell {
                "Y" => Ok(()),
                "F" => Err(Denied::Forbidden),
                "N" => Err(Denied::NotFound),
                other => panic!("bad cell {other}"),
            })
            .collect()
    }

    #[test]
    fn every_actor_action_target_and_requested_role_matches_the_matrix() {
        let mut checked = 0;
        for actor in Role::ALL {
            for action in Action::all() {
                let row = expected_row(actor, action);
                if action.has_target() {
                    assert_eq!(row.len(), 5, "{actor} {action:?}");
                    let self_target = Target { is_self: true, role: actor };
                    assert_eq!(authorize(actor, action, Some(self_target)), row[0], "{actor} {action:?} on self");
                    checked += 1;
                    for (column, target_role) in Role::ALL.into_iter().enumerate() {
                        let other = Target { is_self: false, role: target_role };
                        assert_eq!(
                            authorize(actor, action, Some(other)),
                            row[column + 1],
                            "{actor} {action:?} on another {target_role}"
                        );
                        checked += 1;
                    }
                } else {
                    assert_eq!(row.len(), 1, "{actor} {action:?}");
                    assert_eq!(authorize(actor, action, None), row[0], "{actor} {action:?}");
                    checked += 1;
                }
            }
        }
        // 4 actors x ((8 target actions + 4 requested roles) x 5 targets + 1 list + 4 requested roles to create).
        assert_eq!(checked, 4 * ((8 + 4) * 5 + 1 + 4));
    }

    #[test]
    fn a_missing_target_is_not_found_for_everyone_who_may_use_the_route() {
        assert_eq!(authorize(Role::Admin, Action::ReadUser, None), Err(Denied::NotFound));
        assert_eq!(authorize(Role::Manager, Action::DeleteUser, None), Err(Denied::NotFound));
        assert_eq!(authorize(Role::Authenticated, Action::ManagePicture, None), Err(Denied::NotFound));
        assert_eq!(authorize(Role::Authenticated, Action::ReadUser, None), Err(Denied::Forbidden));
    }

    #[test]
    fn role_names_round_trip_and_unknown_names_are_refused() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Ok(role));
        }
        assert_eq!(Role::parse("admin"), Err(UnknownRole));
        assert_eq!(Role::parse("ROOT"), Err(UnknownRole));
    }
}
