//! The user model and the parsed values it is built from.
//!
//! Every constrained value is a newtype with a private field and one fallible constructor, so a [`User`] can only
//! hold values that already passed their rules. Errors are typed per value and carry enough to explain the rule to
//! a caller (the HTTP edge turns them into `422 validation_failed` entries).

use std::fmt;

use rand::Rng;
use time::OffsetDateTime;
use unicode_normalization::UnicodeNormalization;
use uuid::Uuid;

use crate::permissions::Role;

/// The identifier of a user: a UUIDv7, so ids sort roughly by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Uuid);

impl UserId {
    /// A new, time-ordered id.
    #[must_use]
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps an id read from storage or a path.
    #[must_use]
    pub const fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The underlying UUID.
    #[must_use]
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a raw email address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// Nothing but whitespace was given.
    #[error("must not be empty")]
    Empty,
    /// Longer than RFC 5321 allows.
    #[error("must be at most 254 characters")]
    TooLong,
    /// Not of the form `local@domain.tld` with plain ASCII characters.
    #[error("must be an email address such as name@example.com")]
    Malformed,
}

/// An email address, trimmed, with its domain lower-cased.
///
/// Only plain ASCII addresses are accepted: no quoted local parts, comments or internationalised domains, which
/// keeps header injection and look-alike addresses out. Uniqueness is case-insensitive (the repository compares
/// lower-cased addresses), while the local part keeps the case the user typed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Parses raw input.
    ///
    /// # Errors
    /// [`EmailError`] when the input is empty, too long or not a plain address.
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(EmailError::Empty);
        }
        if trimmed.len() > 254 {
            return Err(EmailError::TooLong);
        }
        let (local, domain) = trimmed.split_once('@').ok_or(EmailError::Malformed)?;
        // Byte checks: anything outside ASCII is neither alphanumeric nor in the lists, so it is refused. Every
        // stored address goes through here again when its row is read, on every authenticated request.
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b));
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        // At least two labels, the last one (the top-level domain) not all digits.
        let domain_ok = domain.contains('.')
            && domain.split('.').all(label_ok)
            && domain.rsplit('.').next().is_some_and(|tld| tld.bytes().any(|b| b.is_ascii_alphabetic()));
        if !local_ok || !domain_ok {
            return Err(EmailError::Malformed);
        }
        let mut address = trimmed.to_owned();
        address[local.len() + 1..].make_ascii_lowercase();
        Ok(Self(address))
    }

    /// The address as stored and shown.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key under which uniqueness is decided: the whole address lower-cased.
    #[must_use]
    pub fn canonical(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress({})", self.0)
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a nickname was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NicknameError {
    /// Fewer than 3 or more than 32 characters.
    #[error("must be 3 to 32 characters long")]
    Length,
    /// Something other than ASCII letters, digits, `_` and `-`.
    #[error("may contain only letters a-z, digits, '_' and '-'")]
    Characters,
}

/// A public nickname: 3 to 32 ASCII letters, digits, `_` or `-`.
///
/// ASCII only is the safest reading of "letters/digits": it rules out control, zero-width and bidi characters and
/// look-alike letters from other scripts in one rule. Uniqueness is case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nickname(String);

const ADJECTIVES: [&str; 32] = [
    "able", "brave", "bright", "calm", "clever", "cosy", "curious", "daring", "eager", "fair", "gentle", "glad",
    "happy", "honest", "jolly", "keen", "kind", "lively", "lucky", "merry", "mighty", "nimble", "polite", "proud",
    "quick", "quiet", "sharp", "sleepy", "steady", "swift", "witty", "zesty",
];
const ANIMALS: [&str; 32] = [
    "badger", "beaver", "bison", "capybara", "cheetah", "crane", "dolphin", "eagle", "falcon", "ferret", "fox",
    "gecko", "heron", "ibex", "jaguar", "koala", "lemur", "lynx", "marmot", "newt", "otter", "owl", "panda", "puffin",
    "quokka", "raven", "seal", "tapir", "toucan", "walrus", "wombat", "yak",
];

impl Nickname {
    /// Parses raw input.
    ///
    /// # Errors
    /// [`NicknameError`] when the length or a character breaks the rule.
    pub fn parse(raw: &str) -> Result<Self, NicknameError> {
        let len = raw.chars().count();
        if !(3..=32).contains(&len) {
            return Err(NicknameError::Length);
        }
        if !raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(NicknameError::Characters);
        }
        Ok(Self(raw.to_owned()))
    }

    /// A random nickname of the form `adjective_animal_NNN`.
    #[must_use]
    pub fn generate<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let adjective = ADJECTIVES[rng.gen_range(0..ADJECTIVES.len())];
        let animal = ANIMALS[rng.gen_range(0..ANIMALS.len())];
        let number: u16 = rng.gen_range(0..1000);
        Self(format!("{adjective}_{animal}_{number:03}"))
    }

    /// A valid nickname derived from a user id (`user-` and its first 12 hex digits): what a storage adapter shows
    /// for a row whose stored nickname no longer parses, so that the account stays readable.
    #[must_use]
    pub fn stand_in(id: UserId) -> Self {
        let digits: String = id.as_uuid().simple().to_string().chars().take(12).collect();
        Self(format!("user-{digits}"))
    }

    /// The nickname as shown.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a first or last name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Longer than the field allows.
    #[error("must be at most {max} characters")]
    TooLong {
        /// The limit in characters.
        max: usize,
    },
    /// Contains control, zero-width or bidi-override characters.
    #[error("must not contain control or invisible formatting characters")]
    Invisible,
}

/// Characters that change how text renders without being visible: zero-width and bidirectional controls.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// The stored form of free text: NFKC, then trimmed, repeated until it no longer changes (trimming can expose a
/// combining mark that NFKC then composes differently), so that parsing the stored form again gives it back.
fn stored_text(raw: &str) -> String {
    let mut text: String = raw.trim().nfkc().collect::<String>().trim().to_owned();
    // Two rounds reach the fixed point for every input the property tests found; the bound keeps it finite.
    for _ in 0..4 {
        let next = text.nfkc().collect::<String>().trim().to_owned();
        if next == text {
            break;
        }
        text = next;
    }
    text
}

/// Checks free text as it will be stored: the limit counts the characters of the NFKC, trimmed form, because
/// NFKC can make text longer (U+FDFA alone becomes 18 characters).
fn check_text(raw: &str, max: usize, allow_newlines: bool) -> Result<String, TextError> {
    // Bound the work before normalising: NFKC expands a character at most 18-fold, so nothing longer can fit.
    if raw.len() > max.saturating_mul(4).saturating_mul(18) {
        return Err(TextError::TooLong { max });
    }
    let text = stored_text(raw);
    if text.chars().count() > max {
        return Err(TextError::TooLong { max });
    }
    let bad = text.chars().any(|c| {
        is_invisible_format(c) || (c.is_control() && !(allow_newlines && (c == '\n' || c == '\t' || c == '\r')))
    });
    if bad || text.nfkc().ne(text.chars()) {
        return Err(TextError::Invisible);
    }
    Ok(text)
}

/// A first or last name: at most 100 characters in its stored form (NFKC, trimmed), printable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonName(String);

impl PersonName {
    /// Parses raw input; an empty string after trimming means "no name" and gives `None`.
    ///
    /// # Errors
    /// [`TextError`] when the name is too long or holds invisible characters.
    pub fn parse(raw: &str) -> Result<Option<Self>, TextError> {
        let text = check_text(raw, 100, false)?;
        Ok((!text.is_empty()).then_some(Self(text)))
    }

    /// The name as shown.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A short biography: at most 500 characters in its stored form (NFKC, trimmed); line breaks allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bio(String);

impl Bio {
    /// Parses raw input; an empty string after trimming gives `None`.
    ///
    /// # Errors
    /// [`TextError`] when the text is too long or holds control or invisible characters.
    pub fn parse(raw: &str) -> Result<Option<Self>, TextError> {
        let text = check_text(raw, 500, true)?;
        Ok((!text.is_empty()).then_some(Self(text)))
    }

    /// The text as shown.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which site a profile URL must point to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileUrlKind {
    /// linkedin.com or one of its subdomains.
    LinkedIn,
    /// github.com or one of its subdomains.
    GitHub,
}

impl ProfileUrlKind {
    const fn site(self) -> &'static str {
        match self {
            Self::LinkedIn => "linkedin.com",
            Self::GitHub => "github.com",
        }
    }
}

/// Why a profile URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileUrlError {
    /// Not an absolute URL, or longer than 2048 characters once normalised (percent-encoded).
    #[error("must be an absolute URL of at most 2048 characters once percent-encoded")]
    Malformed,
    /// Not `https://`, or carries user credentials.
    #[error("must be an https:// URL without credentials")]
    NotHttps,
    /// Points to another site than the field asks for.
    #[error("must point to {site}")]
    WrongSite {
        /// The site the field expects.
        site: &'static str,
    },
}

/// The longest profile URL, in bytes of its normalised (stored) form.
pub const PROFILE_URL_MAX_LENGTH: usize = 2048;

/// An absolute `https://` URL to a LinkedIn or GitHub profile, at most [`PROFILE_URL_MAX_LENGTH`] bytes once
/// normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileUrl(String);

impl ProfileUrl {
    /// Parses raw input for a field of the given kind; an empty string gives `None`.
    ///
    /// # Errors
    /// [`ProfileUrlError`] when the URL is malformed, not https, or on the wrong site.
    pub fn parse(raw: &str, kind: ProfileUrlKind) -> Result<Option<Self>, ProfileUrlError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        // A cheap bound before parsing; the real limit applies to the normalised form below.
        if raw.len() > PROFILE_URL_MAX_LENGTH * 4 {
            return Err(ProfileUrlError::Malformed);
        }
        let url = url::Url::parse(raw).map_err(|_| ProfileUrlError::Malformed)?;
        if url.scheme() != "https" || !url.username().is_empty() || url.password().is_some() {
            return Err(ProfileUrlError::NotHttps);
        }
        let site = kind.site();
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if host != site && !host.ends_with(&format!(".{site}")) {
            return Err(ProfileUrlError::WrongSite { site });
        }
        // Normalisation percent-encodes what needs it, which can triple the length: the limit applies to what is
        // stored and read back, never to the raw input.
        let stored = url.to_string();
        if stored.len() > PROFILE_URL_MAX_LENGTH {
            return Err(ProfileUrlError::Malformed);
        }
        Ok(Some(Self(stored)))
    }

    /// The URL as shown.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The configurable part of the password policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Minimum length in code points after NFKC (`PASSWORD_MIN_LENGTH`, 15 by default).
    pub min_length: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self { min_length: 15 }
    }
}

/// The longest password accepted, in code points.
pub const PASSWORD_MAX_LENGTH: usize = 128;

/// Why a new password was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Shorter than the policy's minimum.
    #[error("must be at least {min} characters long")]
    TooShort {
        /// The minimum in code points.
        min: usize,
    },
    /// Longer than [`PASSWORD_MAX_LENGTH`].
    #[error("must be at most {max} characters long")]
    TooLong {
        /// The maximum in code points.
        max: usize,
    },
    /// Common, guessable or built from the user's own details.
    #[error("is too easy to guess{}", hint.as_deref().map(|h| format!(": {h}")).unwrap_or_default())]
    TooWeak {
        /// The estimator's suggestion, when it has one.
        hint: Option<String>,
    },
}

/// A new password that meets the policy, held in NFKC form (the form that is hashed).
///
/// Its `Debug` output never shows the secret.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Normalises a password as it will be hashed and compared: NFKC, never truncated.
    #[must_use]
    pub fn normalize(raw: &str) -> String {
        raw.nfkc().collect()
    }

    /// Parses a new password against the policy. `context` holds the user's own details (email, nickname, names),
    /// which a strong password must not be built from.
    ///
    /// This runs the strength estimator, which can take hundreds of milliseconds of CPU on adversarial input:
    /// services call [`Password::check_length`] and let the password hasher port run
    /// [`PasswordCandidate::judge`] off the async workers instead.
    ///
    /// # Errors
    /// [`PasswordError`] when the length is outside the policy or the strength estimate is below 3 of 4.
    pub fn parse(raw: &str, policy: PasswordPolicy, context: &[&str]) -> Result<Self, PasswordError> {
        Self::check_length(raw, policy)?.judge(&clues(context))
    }

    /// The cheap half of the policy: NFKC, then the length in code points.
    ///
    /// # Errors
    /// [`PasswordError::TooShort`] or [`PasswordError::TooLong`].
    pub fn check_length(raw: &str, policy: PasswordPolicy) -> Result<PasswordCandidate, PasswordError> {
        // Bound the work before normalising: NFKC expands a character at most 18-fold and UTF-8 takes at most
        // four bytes a character, so nothing longer than this can fit once normalised.
        if raw.len() > PASSWORD_MAX_LENGTH * 4 * 18 {
            return Err(PasswordError::TooLong { max: PASSWORD_MAX_LENGTH });
        }
        let normalized = Self::normalize(raw);
        let length = normalized.chars().count();
        if length < policy.min_length {
            return Err(PasswordError::TooShort { min: policy.min_length });
        }
        if length > PASSWORD_MAX_LENGTH {
            return Err(PasswordError::TooLong { max: PASSWORD_MAX_LENGTH });
        }
        Ok(PasswordCandidate(normalized))
    }

    /// The normalised secret, for the hasher only.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A new password of an acceptable length, not yet judged for strength. Its `Debug` output never shows it.
#[derive(Clone)]
pub struct PasswordCandidate(String);

impl PasswordCandidate {
    /// The expensive half of the policy: the strength estimate (zxcvbn, score >= 3 of 4) against the user's own
    /// details, as returned by [`clues`]. CPU-bound; the password hasher port runs it off the async workers.
    ///
    /// # Errors
    /// [`PasswordError::TooWeak`] when the estimate is below 3.
    pub fn judge(self, clues: &[String]) -> Result<Password, PasswordError> {
        let clues: Vec<&str> = clues.iter().map(String::as_str).collect();
        let estimate = zxcvbn::zxcvbn(&self.0, &clues);
        if u8::from(estimate.score()) < 3 {
            let hint = estimate.feedback().and_then(|feedback| feedback.warning().map(|warning| warning.to_string()));
            return Err(PasswordError::TooWeak { hint });
        }
        Ok(Password(self.0))
    }
}

impl fmt::Debug for PasswordCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordCandidate(<redacted>)")
    }
}

/// The words a password must not be built from, derived from a user's own details (email, nickname, names): each
/// detail whole and lower-cased; for an email also its local part, the local part without separators, and its
/// pieces split at `.`, `_`, `-`, `+` and between letters and digits; the domain's labels; and the pieces of
/// names. Pieces shorter than three characters are left out: they would match almost anything.
#[must_use]
pub fn clues(context: &[&str]) -> Vec<String> {
    let mut clues: Vec<String> = Vec::new();
    let mut push = |word: &str| {
        let word = word.to_lowercase();
        if word.chars().count() >= 3 && !clues.contains(&word) {
            clues.push(word);
        }
    };
    for item in context {
        push(item);
        let (local, domain) = item.split_once('@').unwrap_or((item, ""));
        push(local);
        push(&local.chars().filter(|c| c.is_alphanumeric()).collect::<String>());
        for piece in local.split(['.', '_', '-', '+', ' ']) {
            push(piece);
            // Letter runs and digit runs separately: "ada1815" gives "ada" and "1815".
            let mut run = String::new();
            let mut digits = false;
            for c in piece.chars() {
                if !run.is_empty() && c.is_ascii_digit() != digits {
                    push(&run);
                    run.clear();
                }
                digits = c.is_ascii_digit();
                run.push(c);
            }
            push(&run);
        }
        for label in domain.split('.') {
            push(label);
        }
    }
    clues
}

/// A password hash in PHC string format, as produced by the password hasher port.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Wraps a PHC string produced by a hasher or read from storage.
    #[must_use]
    pub const fn new(phc: String) -> Self {
        Self(phc)
    }

    /// The PHC string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// A user as stored: every field already parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user's id.
    pub id: UserId,
    /// The login address.
    pub email: EmailAddress,
    /// The public nickname.
    pub nickname: Nickname,
    /// First name, if given.
    pub first_name: Option<PersonName>,
    /// Last name, if given.
    pub last_name: Option<PersonName>,
    /// Biography, if given.
    pub bio: Option<Bio>,
    /// The id of the active profile picture, if any.
    pub profile_picture_id: Option<Uuid>,
    /// LinkedIn profile, if given.
    pub linkedin_profile_url: Option<ProfileUrl>,
    /// GitHub profile, if given.
    pub github_profile_url: Option<ProfileUrl>,
    /// The role, which decides what the user may do.
    pub role: Role,
    /// Whether the user has professional status.
    pub is_professional: bool,
    /// When professional status last changed.
    pub professional_status_updated_at: Option<OffsetDateTime>,
    /// Whether the email address was verified.
    pub email_verified: bool,
    /// A new address waiting for confirmation.
    pub pending_email: Option<EmailAddress>,
    /// Locked by an administrator.
    pub is_locked: bool,
    /// Whether a second factor (TOTP) is on: a login then needs a code after the password.
    pub mfa_enabled: bool,
    /// The argon2id hash of the password.
    pub password_hash: PasswordHash,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
    /// Last successful login.
    pub last_login_at: Option<OffsetDateTime>,
}

/// Everything needed to insert a user; the repository sets the timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// The new user's id.
    pub id: UserId,
    /// The login address.
    pub email: EmailAddress,
    /// The public nickname.
    pub nickname: Nickname,
    /// First name, if given.
    pub first_name: Option<PersonName>,
    /// Last name, if given.
    pub last_name: Option<PersonName>,
    /// Biography, if given.
    pub bio: Option<Bio>,
    /// LinkedIn profile, if given.
    pub linkedin_profile_url: Option<ProfileUrl>,
    /// GitHub profile, if given.
    pub github_profile_url: Option<ProfileUrl>,
    /// The initial role.
    pub role: Role,
    /// Whether the email address counts as verified from the start.
    pub email_verified: bool,
    /// The argon2id hash of the password.
    pub password_hash: PasswordHash,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_trimmed_and_its_domain_lower_cased() {
        let email = EmailAddress::parse("  Alice.Smith@Example.COM ").unwrap();
        assert_eq!(email.as_str(), "Alice.Smith@example.com");
        assert_eq!(email.canonical(), "alice.smith@example.com");
    }

    #[test]
    fn malformed_emails_are_rejected() {
        for raw in [
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a@@example.com",
            "a b@example.com",
            "a@exa mple.com",
            "a@-example.com",
            "a@example.123",
            "a..b@example.com",
            "bob@example.com\r\nBcc: x@y.z",
            "jos\u{e9}@example.com",
            "a@ex\u{e4}mple.com",
            "a@example.com.",
            "a@.example.com",
            "a@example..com",
            "a@example-.com",
        ] {
            assert_eq!(EmailAddress::parse(raw), Err(EmailError::Malformed), "{raw:?}");
        }
        assert_eq!(EmailAddress::parse("   "), Err(EmailError::Empty));
        let long = format!("{}@{}.com", "a".repeat(64), "b".repeat(200));
        assert_eq!(EmailAddress::parse(&long), Err(EmailError::TooLong));
    }

    #[test]
    fn nicknames_follow_the_length_and_character_rules() {
        assert!(Nickname::parse("bob").is_ok());
        assert!(Nickname::parse("Bob_the-Builder_42").is_ok());
        assert_eq!(Nickname::parse("bo"), Err(NicknameError::Length));
        assert_eq!(Nickname::parse(&"a".repeat(33)), Err(NicknameError::Length));
        assert_eq!(Nickname::parse("bob smith"), Err(NicknameError::Characters));
        assert_eq!(Nickname::parse("bob\u{200B}by"), Err(NicknameError::Characters));
        assert_eq!(Nickname::parse("b\u{202E}ob"), Err(NicknameError::Characters));
        assert_eq!(Nickname::parse("b\u{430}b"), Err(NicknameError::Characters));
    }

    #[test]
    fn stand_in_nicknames_parse() {
        let nickname = Nickname::stand_in(UserId::generate());
        assert_eq!(Nickname::parse(nickname.as_str()), Ok(nickname.clone()));
        assert!(nickname.as_str().starts_with("user-"));
    }

    #[test]
    fn generated_nicknames_are_adjective_animal_number_and_valid() {
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            let nickname = Nickname::generate(&mut rng);
            let parts: Vec<&str> = nickname.as_str().split('_').collect();
            assert_eq!(parts.len(), 3, "{nickname:?}");
            assert!(ADJECTIVES.contains(&parts[0]));
            assert!(ANIMALS.contains(&parts[1]));
            assert_eq!(parts[2].len(), 3);
            assert!(parts[2].chars().all(|c| c.is_ascii_digit()));
            assert_eq!(Nickname::parse(nickname.as_str()), Ok(nickname.clone()));
        }
    }

    #[test]
    fn names_and_bio_enforce_length_and_refuse_invisible_characters() {
        assert_eq!(PersonName::parse("  Ada ").unwrap().unwrap().as_str(), "Ada");
        assert_eq!(PersonName::parse("   ").unwrap(), None);
        assert_eq!(PersonName::parse(&"x".repeat(101)), Err(TextError::TooLong { max: 100 }));
        assert_eq!(PersonName::parse("A\u{202E}da"), Err(TextError::Invisible));
        assert_eq!(PersonName::parse("Ada\nLovelace"), Err(TextError::Invisible));
        assert!(Bio::parse("line one\nline two").unwrap().is_some());
        assert!(Bio::parse(&"é".repeat(500)).unwrap().is_some());
        assert_eq!(Bio::parse(&"é".repeat(501)), Err(TextError::TooLong { max: 500 }));
        assert_eq!(Bio::parse("bell\u{7}"), Err(TextError::Invisible));
    }

    #[test]
    fn profile_urls_must_be_https_on_the_right_site() {
        let github = ProfileUrlKind::GitHub;
        let linkedin = ProfileUrlKind::LinkedIn;
        assert!(ProfileUrl::parse("https://github.com/ada", github).unwrap().is_some());
        assert!(ProfileUrl::parse("https://www.linkedin.com/in/ada", linkedin).unwrap().is_some());
        assert_eq!(ProfileUrl::parse("", github), Ok(None));
        assert_eq!(ProfileUrl::parse("http://github.com/ada", github), Err(ProfileUrlError::NotHttps));
        assert_eq!(ProfileUrl::parse("javascript:alert(1)", github), Err(ProfileUrlError::NotHttps));
        assert_eq!(ProfileUrl::parse("https://u:p@github.com/ada", github), Err(ProfileUrlError::NotHttps));
        assert_eq!(ProfileUrl::parse("github.com/ada", github), Err(ProfileUrlError::Malformed));
        assert_eq!(
            ProfileUrl::parse("https://github.com.evil.example/ada", github),
            Err(ProfileUrlError::WrongSite { site: "github.com" })
        );
        assert_eq!(
            ProfileUrl::parse("https://notgithub.com/ada", github),
            Err(ProfileUrlError::WrongSite { site: "github.com" })
        );
        assert_eq!(
            ProfileUrl::parse("https://github.com/ada", linkedin),
            Err(ProfileUrlError::WrongSite { site: "linkedin.com" })
        );
    }

    #[test]
    fn password_length_is_counted_in_code_points_after_nfkc() {
        let policy = PasswordPolicy::default();
        // Fourteen code points is one short of the default minimum.
        assert_eq!(Password::parse("correcthorsebt", policy, &[]).unwrap_err(), PasswordError::TooShort { min: 15 });
        // "ﬁ" (one code point) becomes "fi" (two) under NFKC, so this 14-character input counts as 15.
        let ligature = "\u{FB01}ngerprint-ow9";
        assert_eq!(ligature.chars().count(), 14);
        assert!(Password::parse(ligature, policy, &[]).is_ok());
        let long = "Zq8!".repeat(33);
        assert_eq!(Password::parse(&long, policy, &[]).unwrap_err(), PasswordError::TooLong { max: 128 });
    }

    #[test]
    fn common_or_personal_passwords_are_too_weak() {
        let policy = PasswordPolicy::default();
        assert!(matches!(Password::parse("passwordpassword", policy, &[]), Err(PasswordError::TooWeak { .. })));
        assert!(matches!(Password::parse("aaaaaaaaaaaaaaaaaaaa", policy, &[]), Err(PasswordError::TooWeak { .. })));
        let context = ["margaretthatcher@example.com", "margaretthatcher"];
        assert!(matches!(Password::parse("margaretthatcher1", policy, &context), Err(PasswordError::TooWeak { .. })));
        assert!(Password::parse("violet-kettle-orbit-97", policy, &context).is_ok());
    }

    #[test]
    fn passwords_built_from_the_emails_local_part_or_its_pieces_are_too_weak() {
        let policy = PasswordPolicy::default();
        let context = ["zorblax.quendrith@example.com"];
        for password in ["zorblaxquendrith12345678", "zorblax.quendrith12345678", "quendrith12345678"] {
            assert!(
                matches!(Password::parse(password, policy, &context), Err(PasswordError::TooWeak { .. })),
                "{password}"
            );
        }
        // The same password is fine for someone whose details it does not contain.
        assert!(Password::parse("zorblaxquendrith12345678", policy, &["someone@example.com"]).is_ok());
    }

    #[test]
    fn clues_split_the_local_part_at_separators_and_between_letters_and_digits() {
        let clues = clues(&["Ada.Love-lace+news1815@Example.com"]);
        for expected in
            ["ada.love-lace+news1815", "adalovelacenews1815", "ada", "love", "lace", "news", "1815", "example"]
        {
            assert!(clues.iter().any(|clue| clue == expected), "{expected} in {clues:?}");
        }
        assert!(clues.iter().all(|clue| clue.chars().count() >= 3));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let password = Password::parse("violet-kettle-orbit-97", PasswordPolicy::default(), &[]).unwrap();
        assert!(!format!("{password:?}").contains("violet"));
        let hash = PasswordHash::new("$argon2id$v=19$secret".to_owned());
        assert!(!format!("{hash:?}").contains("secret"));
    }
}

/// Every value accepted on write must read back: parsing the stored form succeeds and gives it back unchanged, and
/// every limit holds for the stored form, whatever the input (including text that grows under NFKC or URL
/// encoding).
#[cfg(test)]
mod stored_form_tests {
    use proptest::prelude::*;

    use super::*;

    /// Characters that stress normalisation and encoding, mixed with arbitrary ones.
    fn tricky_char() -> impl Strategy<Value = char> {
        prop_oneof![
            4 => any::<char>(),
            2 => prop::char::range('a', 'z'),
            1 => prop::sample::select(vec![
                '\u{FDFA}', '\u{FB03}', '\u{0301}', '\u{0308}', '\u{1100}', '\u{1161}', '\u{3000}', '\u{00A0}',
                '\u{2126}', '\u{212B}', '\u{FF21}', '\u{2460}', '{', '}', ' ', '%', '#', '?', '/', '\\', '\n', '\t',
                '\u{200B}', '\u{202E}', '"', '<', '^', '`', '|', '@', '.', '-', '_',
            ]),
        ]
    }

    fn tricky_text(max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(tricky_char(), 0..max).prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn names_read_back_and_fit_their_limit(raw in tricky_text(140)) {
            if let Ok(Some(name)) = PersonName::parse(&raw) {
                prop_assert!(name.as_str().chars().count() <= 100);
                prop_assert_eq!(PersonName::parse(name.as_str()), Ok(Some(name.clone())));
            }
        }

        #[test]
        fn bios_read_back_and_fit_their_limit(raw in tricky_text(560)) {
            if let Ok(Some(bio)) = Bio::parse(&raw) {
                prop_assert!(bio.as_str().chars().count() <= 500);
                prop_assert_eq!(Bio::parse(bio.as_str()), Ok(Some(bio.clone())));
            }
        }

        #[test]
        fn profile_urls_read_back_and_fit_their_limit(
            path in tricky_text(2100),
            github in any::<bool>(),
            subdomain in prop::option::of("[a-z]{1,8}"),
        ) {
            let (kind, site) =
                if github { (ProfileUrlKind::GitHub, "github.com") } else { (ProfileUrlKind::LinkedIn, "linkedin.com") };
            let host = subdomain.map_or_else(|| site.to_owned(), |sub| format!("{sub}.{site}"));
            let raw = format!("https://{host}/{path}");
            if let Ok(Some(url)) = ProfileUrl::parse(&raw, kind) {
                prop_assert!(url.as_str().len() <= PROFILE_URL_MAX_LENGTH);
                prop_assert_eq!(ProfileUrl::parse(url.as_str(), kind), Ok(Some(url.clone())));
            }
        }

        #[test]
        fn nicknames_read_back(raw in tricky_text(40)) {
            if let Ok(nickname) = Nickname::parse(&raw) {
                prop_assert_eq!(Nickname::parse(nickname.as_str()), Ok(nickname.clone()));
            }
        }

        #[test]
        fn emails_read_back(local in "[A-Za-z0-9._%+-]{1,70}", domain in "[A-Za-z0-9-]{1,70}(\\.[A-Za-z]{2,10}){1,3}", pad in " {0,3}") {
            let raw = format!("{pad}{local}@{domain}{pad}");
            if let Ok(email) = EmailAddress::parse(&raw) {
                prop_assert!(email.as_str().len() <= 254);
                prop_assert_eq!(EmailAddress::parse(email.as_str()), Ok(email.clone()));
            }
        }

        #[test]
        fn arbitrary_text_never_parses_into_an_unreadable_email(raw in tricky_text(300)) {
            if let Ok(email) = EmailAddress::parse(&raw) {
                prop_assert_eq!(EmailAddress::parse(email.as_str()), Ok(email.clone()));
            }
        }
    }

    #[test]
    fn the_reported_cases_are_refused_rather_than_stored_unreadable() {
        let braces = format!("https://github.com/{}", "{".repeat(2000));
        assert_eq!(ProfileUrl::parse(&braces, ProfileUrlKind::GitHub), Err(ProfileUrlError::Malformed));
        // 677 braces are 2050 bytes once percent-encoded: over the limit although the input is under it.
        let just_over = format!("https://github.com/{}", "{".repeat(677));
        assert!(just_over.len() < PROFILE_URL_MAX_LENGTH);
        assert_eq!(ProfileUrl::parse(&just_over, ProfileUrlKind::GitHub), Err(ProfileUrlError::Malformed));
        // U+FDFA is one character that NFKC turns into eighteen.
        assert_eq!(PersonName::parse(&"\u{FDFA}".repeat(10)), Err(TextError::TooLong { max: 100 }));
        assert_eq!(Bio::parse(&"\u{FDFA}".repeat(28)), Err(TextError::TooLong { max: 500 }));
        assert!(PersonName::parse(&"\u{FDFA}".repeat(5)).unwrap().is_some());
    }
}
