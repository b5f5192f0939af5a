//! Second factors: the domain's [`SecondFactorStore`] on the `totp_secrets`, `recovery_codes` and `mfa_challenges`
//! tables, with `users.mfa_enabled` kept in step.
//!
//! Which code is right and what a change does are the domain's decisions ([`SecondFactorChange`]); the store applies
//! one in a single transaction, in the order the port states, and checks only the preconditions it names. The
//! transaction starts by locking the user's row (`FOR NO KEY UPDATE`, the lock its later update of `mfa_enabled` or
//! `last_login_at` takes anyway, so a deletion of the user waits for it) and then the user's secret (`FOR UPDATE`):
//! changes of one user's second factor run one after the other, and each checks its requirement on the state the
//! previous one left. Every consumption (the login step, a time step, a recovery code) is one conditional statement
//! as well, so of two changes racing with one proof exactly one finds it unused.
//!
//! Counting a code tried on a pending login step is one conditional `UPDATE`, atomic on its own.

use diesel::dsl::now as database_now;
use diesel::prelude::{
    BoolExpressionMethods as _, ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, SelectableHelper as _,
};
use diesel::result::Error as DieselError;
use diesel::upsert::excluded;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use time::OffsetDateTime;
use users_domain::ports::{
    MfaChallenge, NewMfaChallenge, PortError, SecondFactorAction, SecondFactorChange, SecondFactorError,
    SecondFactorProof, SecondFactorStore, TotpRecord,
};
use users_domain::session::{Session, TokenHash};
use users_domain::user::UserId;
use uuid::Uuid;

use crate::audit::insert_events;
use crate::errors::{TxError, query_error};
use crate::outbox::insert_mail;
use crate::repository::PgRepository;
use crate::reused::Reuse as _;
use crate::rows::{SessionRow, TotpRow};
use crate::schema::{mfa_challenges, recovery_codes, totp_secrets, users};
use crate::{sessions, throttle};

impl SecondFactorStore for PgRepository {
    async fn find_totp(&self, user_id: UserId) -> Result<Option<TotpRecord>, PortError> {
        let mut connection = self.connection().await?;
        let found = totp_secrets::table
            .find(user_id.as_uuid())
            .select(TotpRow::as_select())
            .get_result::<TotpRow>(&mut connection)
            .await
            .optional();
        match found {
            Ok(row) => Ok(row.map(TotpRecord::from)),
            Err(error) => Err(query_error(error, &mut connection, "finding a TOTP secret")),
        }
    }

    async fn recovery_codes_left(&self, user_id: UserId) -> Result<u32, PortError> {
        let mut connection = self.connection().await?;
        let counted = recovery_codes::table
            .filter(recovery_codes::user_id.eq(user_id.as_uuid()))
            .filter(recovery_codes::used_at.is_null())
            .count()
            .get_result::<i64>(&mut connection)
            .await;
        match counted {
            Ok(count) => u32::try_from(count).map_err(|error| {
                PortError::Unknown(anyhow::Error::new(error).context("a recovery code count out of range"))
            }),
            Err(error) => Err(query_error(error, &mut connection, "counting recovery codes")),
        }
    }

    async fn apply_second_factor(&self, change: SecondFactorChange) -> Result<Option<Session>, SecondFactorError> {
        // A session of another user would log the wrong account in; refused as a bug before anything is written.
        if change.start_session.as_ref().is_some_and(|session| session.user_id != change.user_id) {
            return Err(SecondFactorError::Port(PortError::Unknown(anyhow::anyhow!(
                "a second-factor change may only start a session of its own user"
            ))));
        }
        let mut connection = self.connection().await?;
        let applied = apply(&mut connection, &change).await;
        match applied {
            Ok(session) => Ok(session.map(Session::from)),
            Err(error) => Err(error.into_port(&mut connection, "applying a second-factor change")),
        }
    }

    async fn create_mfa_challenge(&self, challenge: NewMfaChallenge) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        let inserted = diesel::insert_into(mfa_challenges::table)
            .values((
                mfa_challenges::token_hash.eq(challenge.token_hash.as_str()),
                mfa_challenges::user_id.eq(challenge.user_id.as_uuid()),
                mfa_challenges::created_at.eq(database_now),
                mfa_challenges::expires_at.eq(challenge.expires_at),
            ))
            .execute(&mut connection)
            .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(error) => Err(query_error(error, &mut connection, "storing a pending login step")),
        }
    }

    async fn take_mfa_attempt(
        &self,
        token_hash: TokenHash,
        now: OffsetDateTime,
        max_attempts: u32,
    ) -> Result<Option<MfaChallenge>, PortError> {
        // The column is an `integer`; a limit beyond it allows as many tries as the column can count.
        let max_attempts = i32::try_from(max_attempts).unwrap_or(i32::MAX);
        let mut connection = self.connection().await?;
        // One statement: a concurrent try on the same row waits for this one and re-checks the count it left, so
        // no more than `max_attempts` tries ever pass.
        let taken = diesel::update(mfa_challenges::table.find(token_hash.as_str()))
            .filter(mfa_challenges::expires_at.gt(now))
            .filter(mfa_challenges::attempts.lt(max_attempts))
            .set(mfa_challenges::attempts.eq(mfa_challenges::attempts + 1))
            .returning((mfa_challenges::user_id, mfa_challenges::expires_at, mfa_challenges::attempts))
            .reused()
            .get_result::<(Uuid, OffsetDateTime, i32)>(&mut connection)
            .await
            .optional();
        match taken {
            Ok(Some((user_id, expires_at, attempts))) => {
                let attempts = u32::try_from(attempts).map_err(|error| {
                    PortError::Unknown(anyhow::Error::new(error).context("a negative count of login step attempts"))
                })?;
                Ok(Some(MfaChallenge { user_id: UserId::from_uuid(user_id), expires_at, attempts }))
            }
            Ok(None) => Ok(None),
            Err(error) => Err(query_error(error, &mut connection, "counting a try on a pending login step")),
        }
    }
}

/// Applies `change` in one transaction, in the order the port states, and returns the session it started.
async fn apply(
    connection: &mut AsyncPgConnection,
    change: &SecondFactorChange,
) -> Result<Option<SessionRow>, TxError<SecondFactorError>> {
    let user_id = change.user_id.as_uuid();
    let now = change.now;
    connection
        .transaction::<_, TxError<SecondFactorError>, _>(async |connection| {
            let Some(current) = lock(connection, user_id).await? else {
                return Err(TxError::Abort(SecondFactorError::StateChanged));
            };
            if !requirement_holds(&change.action, change.proof.as_ref(), current.as_ref()) {
                return Err(TxError::Abort(SecondFactorError::StateChanged));
            }
            if let Some(hash) = &change.consume_challenge
                && !consume_challenge(connection, hash, user_id, now).await?
            {
                return Err(TxError::Abort(SecondFactorError::ChallengeUnusable));
            }
            if let Some(proof) = &change.proof
                && !consume_proof(connection, proof, user_id, now).await?
            {
                return Err(TxError::Abort(SecondFactorError::ProofRejected));
            }
            apply_action(connection, &change.action, user_id, now).await?;
            let session = match &change.start_session {
                Some(session) => Some(sessions::insert_session(connection, session, now).await?),
                None => None,
            };
            if let Some(key) = &change.clear_failures {
                throttle::clear(connection, key).await?;
            }
            for mail in &change.mails {
                insert_mail(connection, mail).await?;
            }
            insert_events(connection, &change.events).await?;
            Ok(session)
        })
        .await
}

/// Locks user `user_id` and their secret, and returns the secret as locked; `None` when the user does not exist,
/// `Some(None)` when they have no secret.
///
/// The user's row comes first, in the mode their later update takes, so that this transaction queues behind (or
/// ahead of) a deletion of the user instead of deadlocking with it (a deletion locks the user, then removes the
/// secret). Once the user is locked, the secret's own lock only backs up that no other change of it runs.
async fn lock(connection: &mut AsyncPgConnection, user_id: Uuid) -> Result<Option<Option<TotpRow>>, DieselError> {
    let user = users::table
        .find(user_id)
        .select(users::id)
        .for_no_key_update()
        .get_result::<Uuid>(connection)
        .await
        .optional()?;
    if user.is_none() {
        return Ok(None);
    }
    let secret = totp_secrets::table
        .find(user_id)
        .select(TotpRow::as_select())
        .for_update()
        .get_result::<TotpRow>(connection)
        .await
        .optional()?;
    Ok(Some(secret))
}

/// Whether `action` may be applied to the user's secret as it stands (`None`: no secret), with `proof`.
///
/// Staging needs the second factor off; enabling needs an unconfirmed secret that is the one the domain checked;
/// replacing the codes and disabling need it on. A proof needs the second factor on, except a time step that
/// confirms the unconfirmed secret it was checked against.
fn requirement_holds(
    action: &SecondFactorAction,
    proof: Option<&SecondFactorProof>,
    current: Option<&TotpRow>,
) -> bool {
    let enabled = current.is_some_and(|row| row.enabled);
    let action_holds = match action {
        SecondFactorAction::Keep => true,
        SecondFactorAction::Stage { .. } => !enabled,
        SecondFactorAction::Enable { secret, .. } => current.is_some_and(|row| !row.enabled && row.secret == secret.0),
        SecondFactorAction::ReplaceRecoveryCodes(_) | SecondFactorAction::Disable => enabled,
    };
    let proof_holds = match (proof, action) {
        (None, _) | (Some(SecondFactorProof::Step(_)), SecondFactorAction::Enable { .. }) => true,
        (Some(_), _) => enabled,
    };
    action_holds && proof_holds
}

/// Deletes the pending login step `hash` if it is the user's and expires after `now`; `false` when it is not
/// usable.
async fn consume_challenge(
    connection: &mut AsyncPgConnection,
    hash: &TokenHash,
    user_id: Uuid,
    now: OffsetDateTime,
) -> Result<bool, DieselError> {
    let consumed = diesel::delete(mfa_challenges::table.find(hash.as_str()))
        .filter(mfa_challenges::user_id.eq(user_id))
        .filter(mfa_challenges::expires_at.gt(now))
        .execute(connection)
        .await?;
    Ok(consumed > 0)
}

/// Consumes a proof, compare-and-set: a time step only when it is later than the last one accepted (which it then
/// becomes), a recovery code only when it is one of the user's unused codes (which is then used). `false` when the
/// proof is not accepted.
async fn consume_proof(
    connection: &mut AsyncPgConnection,
    proof: &SecondFactorProof,
    user_id: Uuid,
    now: OffsetDateTime,
) -> Result<bool, DieselError> {
    let consumed = match proof {
        SecondFactorProof::Step(step) => {
            diesel::update(totp_secrets::table.find(user_id))
                .filter(totp_secrets::last_used_step.is_null().or(totp_secrets::last_used_step.lt(*step)))
                .set(totp_secrets::last_used_step.eq(*step))
                .execute(connection)
                .await?
        }
        SecondFactorProof::RecoveryCode(hash) => {
            diesel::update(recovery_codes::table.find((user_id, hash.as_str())))
                .filter(recovery_codes::used_at.is_null())
                .set(recovery_codes::used_at.eq(now))
                .execute(connection)
                .await?
        }
    };
    Ok(consumed > 0)
}

/// Applies the action to the secret, the recovery codes, the pending login steps and `users.mfa_enabled`.
async fn apply_action(
    connection: &mut AsyncPgConnection,
    action: &SecondFactorAction,
    user_id: Uuid,
    now: OffsetDateTime,
) -> Result<(), DieselError> {
    match action {
        SecondFactorAction::Keep => {}
        SecondFactorAction::Stage { secret } => {
            // The requirement held under the lock, so a row in the way is an unconfirmed secret: replaced whole.
            diesel::insert_into(totp_secrets::table)
                .values((
                    totp_secrets::user_id.eq(user_id),
                    totp_secrets::secret.eq(&secret.0),
                    totp_secrets::enabled.eq(false),
                    totp_secrets::last_used_step.eq(None::<i64>),
                    totp_secrets::created_at.eq(now),
                    totp_secrets::enabled_at.eq(None::<OffsetDateTime>),
                ))
                .on_conflict(totp_secrets::user_id)
                .do_update()
                .set((
                    totp_secrets::secret.eq(excluded(totp_secrets::secret)),
                    totp_secrets::enabled.eq(false),
                    totp_secrets::last_used_step.eq(None::<i64>),
                    totp_secrets::created_at.eq(excluded(totp_secrets::created_at)),
                    totp_secrets::enabled_at.eq(None::<OffsetDateTime>),
                ))
                .execute(connection)
                .await?;
        }
        SecondFactorAction::Enable { recovery_codes, .. } => {
            diesel::update(totp_secrets::table.find(user_id))
                .set((totp_secrets::enabled.eq(true), totp_secrets::enabled_at.eq(now)))
                .execute(connection)
                .await?;
            replace_recovery_codes(connection, user_id, recovery_codes, now).await?;
            set_mfa_enabled(connection, user_id, true, now).await?;
        }
        SecondFactorAction::ReplaceRecoveryCodes(codes) => {
            replace_recovery_codes(connection, user_id, codes, now).await?;
        }
        SecondFactorAction::Disable => {
            diesel::delete(totp_secrets::table.find(user_id)).execute(connection).await?;
            diesel::delete(recovery_codes::table.filter(recovery_codes::user_id.eq(user_id)))
                .execute(connection)
                .await?;
            diesel::delete(mfa_challenges::table.filter(mfa_challenges::user_id.eq(user_id)))
                .execute(connection)
                .await?;
            set_mfa_enabled(connection, user_id, false, now).await?;
        }
    }
    Ok(())
}

/// Deletes every recovery code of the user, used or not, and stores `codes` unused. A hash given twice is stored
/// once.
async fn replace_recovery_codes(
    connection: &mut AsyncPgConnection,
    user_id: Uuid,
    codes: &[TokenHash],
    now: OffsetDateTime,
) -> Result<(), DieselError> {
    diesel::delete(recovery_codes::table.filter(recovery_codes::user_id.eq(user_id))).execute(connection).await?;
    if codes.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = codes
        .iter()
        .map(|code| {
            (
                recovery_codes::user_id.eq(user_id),
                recovery_codes::code_hash.eq(code.as_str()),
                recovery_codes::created_at.eq(now),
            )
        })
        .collect();
    diesel::insert_into(recovery_codes::table).values(rows).on_conflict_do_nothing().execute(connection).await?;
    Ok(())
}

/// Sets `users.mfa_enabled`, and `updated_at` to `now` when the flag changes.
async fn set_mfa_enabled(
    connection: &mut AsyncPgConnection,
    user_id: Uuid,
    enabled: bool,
    now: OffsetDateTime,
) -> Result<(), DieselError> {
    diesel::update(users::table.find(user_id))
        .filter(users::mfa_enabled.ne(enabled))
        .set((users::mfa_enabled.eq(enabled), users::updated_at.eq(now)))
        .execute(connection)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use users_domain::ports::SealedSecret;

    use super::*;

    fn row(secret: &[u8], enabled: bool) -> TotpRow {
        TotpRow { secret: secret.to_vec(), enabled, last_used_step: None }
    }

    fn enable(secret: &[u8]) -> SecondFactorAction {
        SecondFactorAction::Enable { secret: SealedSecret(secret.to_vec()), recovery_codes: Vec::new() }
    }

    #[test]
    fn each_action_requires_its_state() {
        let stage = SecondFactorAction::Stage { secret: SealedSecret(vec![1]) };
        let (staged, on) = (row(b"a", false), row(b"a", true));
        for (action, none, unconfirmed, enabled) in [
            (SecondFactorAction::Keep, true, true, true),
            (stage, true, true, false),
            (enable(b"a"), false, true, false),
            (SecondFactorAction::ReplaceRecoveryCodes(Vec::new()), false, false, true),
            (SecondFactorAction::Disable, false, false, true),
        ] {
            assert_eq!(requirement_holds(&action, None, None), none, "{action:?} without a secret");
            assert_eq!(requirement_holds(&action, None, Some(&staged)), unconfirmed, "{action:?} unconfirmed");
            assert_eq!(requirement_holds(&action, None, Some(&on)), enabled, "{action:?} enabled");
        }
        assert!(!requirement_holds(&enable(b"b"), None, Some(&staged)), "another secret than the one checked");
    }

    #[test]
    fn a_proof_needs_the_second_factor_on_unless_a_step_confirms_it() {
        let step = SecondFactorProof::Step(7);
        let code = SecondFactorProof::RecoveryCode(TokenHash::of("code"));
        let (staged, on) = (row(b"a", false), row(b"a", true));
        assert!(requirement_holds(&SecondFactorAction::Keep, Some(&step), Some(&on)));
        assert!(requirement_holds(&SecondFactorAction::Keep, Some(&code), Some(&on)));
        assert!(!requirement_holds(&SecondFactorAction::Keep, Some(&step), Some(&staged)));
        assert!(!requirement_holds(&SecondFactorAction::Keep, Some(&code), None));
        assert!(requirement_holds(&enable(b"a"), Some(&step), Some(&staged)));
        assert!(!requirement_holds(&enable(b"a"), Some(&code), Some(&staged)));
        assert!(requirement_holds(&SecondFactorAction::Disable, Some(&code), Some(&on)));
    }
}
