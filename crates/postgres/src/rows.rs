//! Row structs: the shapes diesel reads from and writes to the tables, private to the adapter.
//!
//! Rows are input like any other: a stored user is turned back into a [`User`] only through the domain's own
//! parsers, so a row edited by hand or written by an older version cannot smuggle an invalid value past the rules.

use anyhow::Context as _;
use diesel::prelude::{Insertable, Queryable, QueryableByName, Selectable};
use time::OffsetDateTime;
use users_domain::permissions::Role;
use users_domain::ports::{
    EmailTokenPurpose, EmailTokenRecord, NewEmailToken, OutboxMessage, OutgoingMail, PictureSize, PictureVariant,
    PortError, SealedSecret, StoredPicture, TotpRecord,
};
use users_domain::session::{NewSession, Session, SessionId, TokenHash};
use users_domain::user::{
    Bio, EmailAddress, NewUser, Nickname, PasswordHash, PersonName, ProfileUrl, ProfileUrlKind, User, UserId,
};
use uuid::Uuid;

use crate::schema::{
    email_tokens, mail_outbox, picture_variants, pictures, refresh_tokens, sessions, totp_secrets, users,
};

/// A `users` row as read back; `failed_login_count` is left out because the domain's [`User`] has no such field.
/// Read by name too, for the listing's raw query.
#[derive(Debug, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = users)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct UserRow {
    id: Uuid,
    email: String,
    nickname: String,
    first_name: Option<String>,
    last_name: Option<String>,
    bio: Option<String>,
    profile_picture_id: Option<Uuid>,
    linkedin_profile_url: Option<String>,
    github_profile_url: Option<String>,
    role: String,
    is_professional: bool,
    professional_status_updated_at: Option<OffsetDateTime>,
    email_verified: bool,
    pending_email: Option<String>,
    is_locked: bool,
    password_hash: String,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    last_login_at: Option<OffsetDateTime>,
    mfa_enabled: bool,
}

impl UserRow {
    /// The domain's user; a row the domain refuses is corrupt data, not absence.
    pub(crate) fn into_user(self) -> Result<User, PortError> {
        User::try_from(self).map_err(PortError::Unknown)
    }
}

impl TryFrom<UserRow> for User {
    type Error = anyhow::Error;

    fn try_from(row: UserRow) -> Result<Self, Self::Error> {
        let id = row.id;
        // The message names the row and the column but never the value: stored values are personal data.
        let invalid = |column: &str| format!("users row {id}: column {column} holds a value the domain refuses");
        let email = EmailAddress::parse(&row.email).with_context(|| invalid("email"))?;
        // A nickname that no longer parses (written by hand or by an older version) must not make the account
        // unreadable for every request about its address: it reads back as a valid stand-in derived from the id,
        // with a warning, until someone sets a new one.
        let nickname = Nickname::parse(&row.nickname).unwrap_or_else(|error| {
            tracing::warn!(user_id = %id, column = "nickname", error = %error, "replacing a stored nickname the domain refuses");
            Nickname::stand_in(UserId::from_uuid(id))
        });
        // Optional profile fields that no longer parse (written by an older version or by hand) read back as
        // absent, with a warning, rather than making the whole account unreadable: its owner can still log in and
        // fix them, and lists that contain the row still answer.
        let first_name =
            lenient(id, "first_name", parse_optional(row.first_name, PersonName::parse).map_err(Into::into));
        let last_name = lenient(id, "last_name", parse_optional(row.last_name, PersonName::parse).map_err(Into::into));
        let bio = lenient(id, "bio", parse_optional(row.bio, Bio::parse).map_err(Into::into));
        let linkedin_profile_url = lenient(
            id,
            "linkedin_profile_url",
            parse_optional(row.linkedin_profile_url, |raw| ProfileUrl::parse(raw, ProfileUrlKind::LinkedIn))
                .map_err(Into::into),
        );
        let github_profile_url = lenient(
            id,
            "github_profile_url",
            parse_optional(row.github_profile_url, |raw| ProfileUrl::parse(raw, ProfileUrlKind::GitHub))
                .map_err(Into::into),
        );
        let role = Role::parse(&row.role).with_context(|| invalid("role"))?;
        let pending_email = lenient(
            id,
            "pending_email",
            row.pending_email.as_deref().map(EmailAddress::parse).transpose().map_err(Into::into),
        );
        Ok(Self {
            id: UserId::from_uuid(row.id),
            email,
            nickname,
            first_name,
            last_name,
            bio,
            profile_picture_id: row.profile_picture_id,
            linkedin_profile_url,
            github_profile_url,
            role,
            is_professional: row.is_professional,
            professional_status_updated_at: row.professional_status_updated_at,
            email_verified: row.email_verified,
            pending_email,
            is_locked: row.is_locked,
            password_hash: PasswordHash::new(row.password_hash),
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_login_at: row.last_login_at,
            mfa_enabled: row.mfa_enabled,
        })
    }
}

/// An optional profile field that no longer parses (written by an older version or by hand) reads back as absent,
/// with a warning naming the row and column but not the value, rather than making the whole account unreadable:
/// its owner can still log in and fix it, and lists that contain the row still answer.
fn lenient<T>(id: uuid::Uuid, column: &str, parsed: Result<Option<T>, anyhow::Error>) -> Option<T> {
    parsed.unwrap_or_else(|error| {
        tracing::warn!(user_id = %id, column, error = %error, "ignoring a stored value the domain refuses");
        None
    })
}

/// Parses a nullable column with a domain parser that itself answers `None` for blank input.
fn parse_optional<T, E>(
    value: Option<String>,
    parse: impl FnOnce(&str) -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    value.as_deref().map(parse).transpose().map(Option::flatten)
}

/// A `users` row to insert; the timestamps and the flags the domain does not set come from the column defaults.
#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct NewUserRow<'a> {
    id: Uuid,
    email: &'a str,
    nickname: &'a str,
    first_name: Option<&'a str>,
    last_name: Option<&'a str>,
    bio: Option<&'a str>,
    linkedin_profile_url: Option<&'a str>,
    github_profile_url: Option<&'a str>,
    role: &'static str,
    email_verified: bool,
    password_hash: &'a str,
}

impl<'a> From<&'a NewUser> for NewUserRow<'a> {
    fn from(user: &'a NewUser) -> Self {
        Self {
            id: user.id.as_uuid(),
            email: user.email.as_str(),
            nickname: user.nickname.as_str(),
            first_name: user.first_name.as_ref().map(PersonName::as_str),
            last_name: user.last_name.as_ref().map(PersonName::as_str),
            bio: user.bio.as_ref().map(Bio::as_str),
            linkedin_profile_url: user.linkedin_profile_url.as_ref().map(ProfileUrl::as_str),
            github_profile_url: user.github_profile_url.as_ref().map(ProfileUrl::as_str),
            role: user.role.as_str(),
            email_verified: user.email_verified,
            password_hash: user.password_hash.as_str(),
        }
    }
}

/// A `sessions` row as read back.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = sessions)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct SessionRow {
    id: Uuid,
    user_id: Uuid,
    created_at: OffsetDateTime,
    last_used_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    revoked_at: Option<OffsetDateTime>,
    user_agent: Option<String>,
    ip: Option<String>,
}

impl From<SessionRow> for Session {
    fn from(row: SessionRow) -> Self {
        Self {
            id: SessionId::from_uuid(row.id),
            user_id: UserId::from_uuid(row.user_id),
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            user_agent: row.user_agent,
            ip: row.ip,
        }
    }
}

/// A `sessions` row to insert. Both timestamps are the login time the service passes in, not the database's
/// clock, so that the domain's clock alone decides expiry.
#[derive(Debug, Insertable)]
#[diesel(table_name = sessions)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct NewSessionRow<'a> {
    id: Uuid,
    user_id: Uuid,
    created_at: OffsetDateTime,
    last_used_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    user_agent: Option<&'a str>,
    ip: Option<&'a str>,
}

impl<'a> NewSessionRow<'a> {
    /// The row for a session started at `at`.
    pub(crate) fn new(session: &'a NewSession, at: OffsetDateTime) -> Self {
        Self {
            id: session.id.as_uuid(),
            user_id: session.user_id.as_uuid(),
            created_at: at,
            last_used_at: at,
            expires_at: session.expires_at,
            user_agent: session.user_agent.as_deref(),
            ip: session.ip.as_deref(),
        }
    }
}

/// A `refresh_tokens` row to insert: only the token's hash is ever stored.
#[derive(Debug, Insertable)]
#[diesel(table_name = refresh_tokens)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct NewRefreshTokenRow<'a> {
    token_hash: &'a str,
    session_id: Uuid,
    created_at: OffsetDateTime,
}

impl<'a> NewRefreshTokenRow<'a> {
    /// The row for the first refresh token of `session`, issued at `at`.
    pub(crate) fn first_of(session: &'a NewSession, at: OffsetDateTime) -> Self {
        Self { token_hash: session.refresh_token_hash.as_str(), session_id: session.id.as_uuid(), created_at: at }
    }

    /// The row for `hash`, the token that replaces a used one in `session_id`'s family, issued at `at`.
    pub(crate) fn next_of(hash: &'a TokenHash, session_id: Uuid, at: OffsetDateTime) -> Self {
        Self { token_hash: hash.as_str(), session_id, created_at: at }
    }
}

/// An `email_tokens` row to insert; `created_at` comes from the database and `used_at` starts out empty.
#[derive(Debug, Insertable)]
#[diesel(table_name = email_tokens)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct NewEmailTokenRow<'a> {
    token_hash: &'a str,
    user_id: Uuid,
    purpose: &'static str,
    new_email: Option<&'a str>,
    expires_at: OffsetDateTime,
}

impl<'a> From<&'a NewEmailToken> for NewEmailTokenRow<'a> {
    fn from(token: &'a NewEmailToken) -> Self {
        Self {
            token_hash: token.hash.as_str(),
            user_id: token.user_id.as_uuid(),
            purpose: token.purpose.as_str(),
            new_email: token.new_email.as_ref().map(EmailAddress::as_str),
            expires_at: token.expires_at,
        }
    }
}

/// An `email_tokens` row as read back: what the domain needs to judge a token.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = email_tokens)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct EmailTokenRow {
    user_id: Uuid,
    purpose: String,
    new_email: Option<String>,
    expires_at: OffsetDateTime,
}

impl TryFrom<EmailTokenRow> for EmailTokenRecord {
    type Error = anyhow::Error;

    /// Parses the purpose and the address through the domain's parsers; the table's checks keep both valid, so
    /// only a row written around them fails.
    fn try_from(row: EmailTokenRow) -> Result<Self, Self::Error> {
        let user_id = row.user_id;
        // As for users, the message names the row and the column but never the value.
        let invalid = |column: &str| {
            format!("email_tokens row of user {user_id}: column {column} holds a value the domain refuses")
        };
        let purpose = EmailTokenPurpose::parse(&row.purpose).with_context(|| invalid("purpose"))?;
        let new_email =
            row.new_email.as_deref().map(EmailAddress::parse).transpose().with_context(|| invalid("new_email"))?;
        Ok(Self { user_id: UserId::from_uuid(user_id), purpose, new_email, expires_at: row.expires_at })
    }
}

/// A `mail_outbox` row to insert: pending, due at once, with a fresh time-ordered id.
#[derive(Debug, Insertable)]
#[diesel(table_name = mail_outbox)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct NewMailRow<'a> {
    id: Uuid,
    to_address: &'a str,
    subject: &'a str,
    text_body: &'a str,
    html_body: &'a str,
}

impl<'a> From<&'a OutgoingMail> for NewMailRow<'a> {
    fn from(mail: &'a OutgoingMail) -> Self {
        Self {
            id: Uuid::now_v7(),
            to_address: mail.to.as_str(),
            subject: &mail.subject,
            text_body: &mail.text,
            html_body: &mail.html,
        }
    }
}

/// A `mail_outbox` row as claimed by the dispatcher (read with a raw query, hence `QueryableByName`).
#[derive(Debug, QueryableByName)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct ClaimedMailRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub(crate) id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    to_address: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    subject: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    text_body: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    html_body: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    attempts: i32,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub(crate) created_at: OffsetDateTime,
}

impl TryFrom<ClaimedMailRow> for OutboxMessage {
    type Error = anyhow::Error;

    /// Parses the recipient through the domain's parser, like every other stored address; the subject's lack of
    /// CR and LF is guaranteed by a check constraint.
    fn try_from(row: ClaimedMailRow) -> Result<Self, Self::Error> {
        let id = row.id;
        // As for users, the message names the row and the column but never the address.
        let to = EmailAddress::parse(&row.to_address)
            .with_context(|| format!("mail_outbox row {id}: column to_address holds a value the domain refuses"))?;
        let attempts = u32::try_from(row.attempts)
            .with_context(|| format!("mail_outbox row {id}: column attempts is negative"))?;
        Ok(Self {
            id,
            mail: OutgoingMail { to, subject: row.subject, text: row.text_body, html: row.html_body },
            attempts,
        })
    }
}

/// A `totp_secrets` row as read back: what the domain's [`TotpRecord`] holds, the sealed secret as stored.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = totp_secrets)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct TotpRow {
    pub(crate) secret: Vec<u8>,
    pub(crate) enabled: bool,
    pub(crate) last_used_step: Option<i64>,
}

impl From<TotpRow> for TotpRecord {
    fn from(row: TotpRow) -> Self {
        Self { secret: SealedSecret(row.secret), enabled: row.enabled, last_used_step: row.last_used_step }
    }
}

/// A `pictures` row as read back.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = pictures)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct PictureRow {
    pub(crate) id: Uuid,
    user_id: Uuid,
    created_at: OffsetDateTime,
    archived: bool,
    prefix: String,
}

/// A `picture_variants` row as read back.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = picture_variants)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct PictureVariantRow {
    size: String,
    content_type: String,
    width: i32,
    height: i32,
    bytes: i64,
    sha256: String,
}

impl TryFrom<PictureVariantRow> for PictureVariant {
    type Error = anyhow::Error;

    /// Parses the size name and checks that the numbers fit the domain's unsigned types (the column checks keep
    /// them positive, so only a row written around them fails).
    fn try_from(row: PictureVariantRow) -> Result<Self, Self::Error> {
        let invalid = |column: &str| format!("picture_variants row: column {column} holds a value the domain refuses");
        let size = PictureSize::parse(&row.size).with_context(|| invalid("size"))?;
        Ok(Self {
            size,
            content_type: row.content_type,
            width: u32::try_from(row.width).with_context(|| invalid("width"))?,
            height: u32::try_from(row.height).with_context(|| invalid("height"))?,
            bytes: u64::try_from(row.bytes).with_context(|| invalid("bytes"))?,
            sha256: row.sha256,
        })
    }
}

/// A `pictures` row with the `picture_variants` rows of its sizes, as one join reads them.
#[derive(Debug)]
pub(crate) struct PictureWithVariants {
    /// The picture.
    pub(crate) picture: PictureRow,
    /// Its sizes, in any order.
    pub(crate) variants: Vec<PictureVariantRow>,
}

impl TryFrom<PictureWithVariants> for StoredPicture {
    type Error = anyhow::Error;

    /// A picture with its sizes, listed in the order of [`PictureSize::ALL`] whatever order they were read in.
    fn try_from(PictureWithVariants { picture: row, variants }: PictureWithVariants) -> Result<Self, Self::Error> {
        let id = row.id;
        let mut variants = variants
            .into_iter()
            .map(PictureVariant::try_from)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("a size of picture {id}"))?;
        variants.sort_by_key(|variant| PictureSize::ALL.iter().position(|size| *size == variant.size));
        Ok(Self {
            id,
            user_id: UserId::from_uuid(row.user_id),
            created_at: row.created_at,
            archived: row.archived,
            prefix: row.prefix,
            variants,
        })
    }
}

/// A `pictures` row to insert: always active, since a new picture is the user's current one.
#[derive(Debug, Insertable)]
#[diesel(table_name = pictures)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct NewPictureRow<'a> {
    id: Uuid,
    user_id: Uuid,
    created_at: OffsetDateTime,
    archived: bool,
    prefix: &'a str,
}

impl<'a> From<&'a StoredPicture> for NewPictureRow<'a> {
    fn from(picture: &'a StoredPicture) -> Self {
        Self {
            id: picture.id,
            user_id: picture.user_id.as_uuid(),
            created_at: picture.created_at,
            archived: false,
            prefix: &picture.prefix,
        }
    }
}

/// A `picture_variants` row to insert.
#[derive(Debug, Insertable)]
#[diesel(table_name = picture_variants)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct NewPictureVariantRow<'a> {
    picture_id: Uuid,
    size: &'static str,
    content_type: &'a str,
    width: i32,
    height: i32,
    bytes: i64,
    sha256: &'a str,
}

impl<'a> NewPictureVariantRow<'a> {
    /// The row of one size of picture `picture_id`; fails when a number does not fit its signed column.
    pub(crate) fn new(picture_id: Uuid, variant: &'a PictureVariant) -> anyhow::Result<Self> {
        let too_large = |what: &str| format!("the {what} of a picture size does not fit its column");
        Ok(Self {
            picture_id,
            size: variant.size.as_str(),
            content_type: &variant.content_type,
            width: i32::try_from(variant.width).with_context(|| too_large("width"))?,
            height: i32::try_from(variant.height).with_context(|| too_large("height"))?,
            bytes: i64::try_from(variant.bytes).with_context(|| too_large("length"))?,
            sha256: &variant.sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> UserRow {
        let now = OffsetDateTime::now_utc();
        UserRow {
            id: Uuid::now_v7(),
            email: "Ada@example.com".to_owned(),
            nickname: "ada_l".to_owned(),
            first_name: Some("Ada".to_owned()),
            last_name: None,
            bio: Some("   ".to_owned()),
            profile_picture_id: None,
            linkedin_profile_url: None,
            github_profile_url: Some("https://github.com/ada".to_owned()),
            role: "MANAGER".to_owned(),
            is_professional: false,
            professional_status_updated_at: None,
            email_verified: true,
            pending_email: None,
            is_locked: false,
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
            created_at: now,
            updated_at: now,
            last_login_at: None,
            mfa_enabled: true,
        }
    }

    #[test]
    fn a_valid_row_becomes_a_user_through_the_domain_parsers() {
        let user = User::try_from(row()).unwrap();
        assert_eq!(user.email.as_str(), "Ada@example.com");
        assert_eq!(user.role, Role::Manager);
        assert_eq!(user.first_name.unwrap().as_str(), "Ada");
        assert_eq!(user.bio, None, "a blank stored bio reads as no bio");
        assert_eq!(user.github_profile_url.unwrap().as_str(), "https://github.com/ada");
        assert!(user.mfa_enabled);
    }

    #[test]
    fn a_row_with_an_unknown_role_is_refused_without_echoing_the_value() {
        let mut bad = row();
        bad.role = "SUPERUSER".to_owned();
        let error = User::try_from(bad).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("column role"), "{message}");
        assert!(!message.contains("SUPERUSER"), "{message}");
    }

    #[test]
    fn a_row_with_a_malformed_email_is_refused_but_a_malformed_optional_field_reads_back_as_absent() {
        let mut bad_email = row();
        bad_email.email = "not an email".to_owned();
        assert!(User::try_from(bad_email).is_err());
        let mut bad_url = row();
        bad_url.linkedin_profile_url = Some("http://linkedin.com/in/ada".to_owned());
        bad_url.first_name = Some("A\u{202E}da".to_owned());
        let user = User::try_from(bad_url).unwrap();
        assert_eq!(user.linkedin_profile_url, None);
        assert_eq!(user.first_name, None);
    }

    #[test]
    fn a_refused_nickname_reads_back_as_a_stand_in_derived_from_the_id() {
        let mut bad = row();
        bad.nickname = "ada lovelace".to_owned();
        let id = bad.id;
        let user = User::try_from(bad).unwrap();
        assert_eq!(user.nickname, Nickname::stand_in(UserId::from_uuid(id)));
    }

    fn token_row(purpose: &str, new_email: Option<&str>) -> EmailTokenRow {
        EmailTokenRow {
            user_id: Uuid::now_v7(),
            purpose: purpose.to_owned(),
            new_email: new_email.map(str::to_owned),
            expires_at: OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn an_email_token_row_is_read_through_the_domain_parsers() {
        let record = EmailTokenRecord::try_from(token_row("email_change", Some("Ada@new.example.com"))).unwrap();
        assert_eq!(record.purpose, EmailTokenPurpose::EmailChange);
        assert_eq!(record.new_email.unwrap().as_str(), "Ada@new.example.com");
        let record = EmailTokenRecord::try_from(token_row("password_reset", None)).unwrap();
        assert_eq!(record.purpose, EmailTokenPurpose::PasswordReset);
    }

    #[test]
    fn an_email_token_row_with_an_unknown_purpose_or_a_bad_address_is_refused_without_echoing_it() {
        let error = EmailTokenRecord::try_from(token_row("admin", None)).unwrap_err();
        assert!(!format!("{error:#}").contains("admin"), "{error:#}");
        let error = EmailTokenRecord::try_from(token_row("email_change", Some("not an address"))).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("new_email") && !message.contains("not an address"), "{message}");
    }

    fn variant_row(size: &str, width: i32) -> PictureVariantRow {
        PictureVariantRow {
            size: size.to_owned(),
            content_type: "image/png".to_owned(),
            width,
            height: 10,
            bytes: 123,
            sha256: "ab".repeat(32),
        }
    }

    fn picture_row() -> PictureRow {
        PictureRow {
            id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            created_at: OffsetDateTime::now_utc(),
            archived: true,
            prefix: "profile_pictures/x/archive/y".to_owned(),
        }
    }

    fn with(variants: Vec<PictureVariantRow>) -> PictureWithVariants {
        PictureWithVariants { picture: picture_row(), variants }
    }

    #[test]
    fn a_picture_lists_its_sizes_from_largest_to_smallest_whatever_the_read_order() {
        let rows = vec![variant_row("thumb", 64), variant_row("original", 1024), variant_row("medium", 256)];
        let picture = StoredPicture::try_from(with(rows)).unwrap();
        let sizes: Vec<PictureSize> = picture.variants.iter().map(|variant| variant.size).collect();
        assert_eq!(sizes, PictureSize::ALL);
        assert!(picture.archived);
        assert_eq!(picture.variant(PictureSize::Medium).unwrap().width, 256);
    }

    #[test]
    fn a_size_row_with_an_unknown_size_or_a_negative_number_is_refused() {
        assert!(StoredPicture::try_from(with(vec![variant_row("huge", 10)])).is_err());
        assert!(StoredPicture::try_from(with(vec![variant_row("thumb", -1)])).is_err());
    }
}
