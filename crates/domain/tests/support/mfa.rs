//! Second-factor helpers shared by `second_factor.rs` and `second_factor_attacks.rs`: enrolling a user, codes at a
//! chosen time on a clock moved to a fresh step, the `mfa_token` of a right password and the second login step.

use time::{Duration, OffsetDateTime};
use users_crypto::TotpCodec;
use users_domain::ports::{Clock as _, Ports as _, TokenCodec as _};
use users_domain::second_factor::{MfaLoginError, RecoveryCode};
use users_domain::sessions::{ClientInfo, LoginError, MfaToken, Principal};

use super::{PASSWORD, World};

/// A verified user with TOTP on: their principal, base32 secret and recovery codes.
pub struct Enrolled {
    pub principal: Principal,
    pub secret: String,
    pub codes: Vec<RecoveryCode>,
}

/// Moves the clock to the start of a fresh 30-second step, so a test's codes never straddle two steps by accident.
pub fn fresh_step(world: &World) -> OffsetDateTime {
    let now = world.clock().now();
    let next = OffsetDateTime::from_unix_timestamp((now.unix_timestamp() / 30 + 1) * 30).unwrap();
    world.clock().set(next);
    next
}

/// The TOTP code of `secret` at `at`.
pub fn code(secret: &str, at: OffsetDateTime) -> String {
    TotpCodec::code_at(secret, at).unwrap()
}

/// Verifies `address`, sets TOTP up and confirms it; the clock ends two steps later, so the confirming code's
/// step is used and the step before "now" is still free.
pub async fn enrolled(world: &World, address: &str) -> Enrolled {
    world.verified(address).await;
    let principal = world.principal(address).await;
    let setup = world.service.setup_totp(&principal, PASSWORD).await.unwrap();
    assert!(setup.otpauth_uri.starts_with("otpauth://totp/"));
    let now = fresh_step(world);
    let codes = world.service.confirm_totp(&principal, &code(&setup.secret, now)).await.unwrap();
    world.clock().advance(Duration::seconds(60));
    let principal = world.service.authenticate(&principal_token(world, &principal)).await.unwrap();
    assert!(principal.user.mfa_enabled);
    Enrolled { principal, secret: setup.secret, codes }
}

/// A fresh access token of the principal's session, so the principal reads back the stored user.
pub fn principal_token(world: &World, principal: &Principal) -> String {
    let now = world.clock().now();
    let claims = users_domain::AccessClaims {
        user_id: principal.user.id,
        session_id: principal.session_id,
        issued_at: now,
        expires_at: now + Duration::minutes(5),
        token_id: uuid::Uuid::new_v4(),
    };
    world.ports.tokens().issue(&claims).unwrap().expose().to_owned()
}

/// The `mfa_token` of a right password.
pub async fn mfa_token(world: &World, address: &str) -> MfaToken {
    match world.login(address, PASSWORD).await {
        Err(LoginError::SecondFactorRequired(token)) => token,
        other => panic!("expected mfa_required, got {other:?}"),
    }
}

/// The second login step with `code`, its token pair dropped.
pub async fn second_step(world: &World, token: &MfaToken, code: &str) -> Result<(), MfaLoginError> {
    world.service.login_second_step(&token.token, code, ClientInfo::default()).await.map(drop)
}
