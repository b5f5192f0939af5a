//! The OpenAPI document, generated from the handlers and DTOs (never written by hand).
//!
//! The document is meant to be exact, so that a schema-driven fuzzer (`cargo xtask schemathesis`) finds no request
//! it allows that the server refuses and no answer it does not list. Two kinds of building blocks live here:
//! response sets ([`BodyErrors`], [`BearerErrors`], [`Unavailable`], ...) that the `#[utoipa::path]` blocks of the
//! routes name instead of repeating the same statuses, and schema functions ([`person_name`], [`email`], ...) that
//! the DTOs use through `schema_with`, stating each field's rule (lengths after trimming, allowed characters) as
//! JSON Schema keywords. Where the HTTP contract is ambiguous, the reading taken is stated in the document's
//! description so that it shows in `/docs`.

use std::collections::BTreeMap;

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, SchemaType, Type};
use utoipa::openapi::security::{Flow, HttpAuthScheme, HttpBuilder, OAuth2, Password, Scopes, SecurityScheme};
use utoipa::openapi::{Object, RefOr};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use crate::dto::{
    AdminCreateRequest, AdminUpdateRequest, ChangePasswordRequest, DeleteMeRequest, EmailRequest, EventPageResponse,
    EventResponse, LoginForm, LoginJson, MessageResponse, MfaCodeRequest, MfaLoginRequest, PageLinks,
    RecoveryCodesResponse, RefreshRequest, RegisterRequest, ResetPasswordRequest, SessionResponse, SessionsResponse,
    StatusResponse, TokenResponse, TotpConfirmRequest, TotpSetupRequest, TotpSetupResponse, UpdateMeRequest,
    UserPageResponse, UserResponse,
};
use crate::error::{FieldError, Problem};
use crate::routes::{accounts, audit, auth, me, mfa, ops, pictures, users};

/// The service's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "user-management",
        description = "Registration with email verification, JWT login with rotating refresh tokens, roles, \
profiles and profile pictures.\n\n\
Conventions: errors are RFC 9457 `application/problem+json` with a stable `code`; request bodies reject unknown \
fields (400 `malformed_body`); rule violations are 422 `validation_failed`. Authorization is decided on the current \
database row on every request.\n\n\
Readings of the contract (where it could be read several ways, the safest reading):\n\n\
- Nicknames are ASCII letters, digits, `_` and `-` only: no look-alike or invisible characters.\n\
- The client address recorded on sessions and used for per-IP limits is the TCP peer, never `X-Forwarded-For`.\n\
- \"The last ADMIN\" means the last *unlocked* ADMIN: a locked admin cannot administer anything. Demoting, locking \
or deleting it answers 409 `last_admin`, also through `DELETE /me`.\n\
- Nobody changes their own role, lock, verification or professional status, or deletes themself, through \
`/users/{id}` (403; 409 `last_admin` when the caller is the last unlocked ADMIN); `DELETE /me` with the current \
password is the way to leave. A MANAGER may read and edit their \
own profile there; other MANAGER and ADMIN users answer 404.\n\
- A password reset confirms the address (the link proves control of the mailbox). Registering an address whose \
account was never confirmed mails its owner a link to choose the password instead of \"already registered\", so an \
account someone else created first is taken back by the mailbox owner (account pre-hijacking).\n\
- `POST /password/reset` also accepts the form of the reset page (`application/x-www-form-urlencoded`) and then \
answers a short HTML page instead of 204, since a browser form cannot send JSON.\n\
- `GET /verify-email/{user_id}/{token}` answers its 200 and 400 as a short HTML page when the `Accept` header \
prefers `text/html` to `application/json` (a person clicking the link in a browser); without `Accept`, with `*/*` or \
with `application/json` it answers JSON.\n\
- Archived pictures are not public: their `url` in the history points to an authenticated route.\n\
- An unknown or malformed email at `/login` costs a full (dummy) password check and counts toward the per-email \
backoff like a known one."
    ),
    paths(
        auth::login,
        accounts::register,
        accounts::verify_email,
        accounts::resend_verification,
        accounts::refresh,
        accounts::logout,
        accounts::logout_all,
        accounts::list_sessions,
        accounts::revoke_session,
        audit::activity,
        audit::audit,
        accounts::forgot_password,
        accounts::reset_page,
        accounts::reset_password,
        accounts::change_password,
        me::get_me,
        accounts::update_me,
        accounts::delete_me,
        users::list_users,
        users::create_user,
        users::get_user,
        users::update_user,
        users::delete_user,
        pictures::upload,
        pictures::serve,
        pictures::delete,
        pictures::history,
        pictures::serve_version,
        pictures::restore,
        mfa::setup,
        mfa::confirm,
        mfa::recovery_codes,
        mfa::disable,
        mfa::login_mfa,
        mfa::reset,
        ops::healthz,
        ops::readyz,
        ops::jwks
    ),
    components(schemas(
        LoginJson,
        LoginForm,
        TokenResponse,
        UserResponse,
        StatusResponse,
        Problem,
        FieldError,
        RegisterRequest,
        EmailRequest,
        RefreshRequest,
        ResetPasswordRequest,
        ChangePasswordRequest,
        UpdateMeRequest,
        DeleteMeRequest,
        MessageResponse,
        SessionResponse,
        SessionsResponse,
        AdminCreateRequest,
        AdminUpdateRequest,
        UserPageResponse,
        PageLinks,
        EventResponse,
        EventPageResponse,
        pictures::PictureVersion,
        pictures::PictureHistory,
        TotpSetupRequest,
        TotpSetupResponse,
        TotpConfirmRequest,
        MfaCodeRequest,
        MfaLoginRequest,
        RecoveryCodesResponse
    )),
    modifiers(&SecuritySchemes, &PutSynonym),
    tags(
        (name = "accounts", description = "Registration, login and sessions"),
        (name = "profile", description = "The caller's own profile"),
        (name = "users", description = "User administration for MANAGER and ADMIN"),
        (name = "audit", description = "The audit trail, for ADMIN"),
        (name = "pictures", description = "Profile pictures"),
        (name = "second factor", description = "TOTP (RFC 6238) with recovery codes"),
        (name = "operations", description = "Health, readiness, metrics and keys"),
    )
)]
pub struct ApiDoc;

/// The OpenAPI document as served at `/openapi.json`: generated and serialised once, on first use, and shared by
/// every worker. The generated form is several megabytes of small allocations (the JSON is about 110 KB), so no
/// worker keeps one.
///
/// # Errors
/// When the document cannot be serialised (a bug: it is a tree of maps and strings).
pub fn document_json() -> Result<actix_web::web::Bytes, String> {
    static DOCUMENT: std::sync::OnceLock<Result<actix_web::web::Bytes, String>> = std::sync::OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            serde_json::to_vec(&ApiDoc::openapi())
                .map(Into::into)
                .map_err(|error| format!("serialising the OpenAPI document: {error}"))
        })
        .clone()
}

/// Adds the two ways of presenting a token: the OAuth2 password flow (Swagger's Authorize button) and a plain
/// bearer token.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "oauth2",
            SecurityScheme::OAuth2(OAuth2::new([Flow::Password(Password::new("/login", Scopes::new()))])),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// Documents `PUT /users/{id}`, which the server accepts as a synonym of `PATCH`: the same operation, under its
/// own operation id.
struct PutSynonym;

impl Modify for PutSynonym {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(item) = openapi.paths.paths.get_mut("/users/{id}")
            && let Some(patch) = item.patch.clone()
        {
            let mut put = patch;
            put.operation_id = put.operation_id.map(|id| format!("{id}_put"));
            put.summary =
                Some("Change a user (`PUT`, the same as `PATCH`: only the fields present change).".to_owned());
            item.put = Some(put);
        }
    }
}

/// The multipart body of a picture upload: the field `file`, plus any other fields a browser adds, which are read
/// past and ignored.
pub struct PictureUpload;

impl utoipa::PartialSchema for PictureUpload {
    fn schema() -> RefOr<utoipa::openapi::Schema> {
        ObjectBuilder::new()
            .property(
                "file",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
                    .description(Some(
                        "The image: JPEG, PNG, GIF or WebP, judged from its bytes (never its name or declared type)",
                    )),
            )
            .required("file")
            // Field names travel in a quoted `Content-Disposition` parameter: printable ASCII without `"` or `\`.
            .property_names(Some(ObjectBuilder::new().schema_type(Type::String).pattern(Some(r"^[ !#-\[\]-~]+$"))))
            .build()
            .into()
    }
}

impl ToSchema for PictureUpload {}

/// The bytes of a stored image.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct ImageBytes(pub Vec<u8>);

/// A problem response (`application/problem+json`, the `Problem` schema) with a description.
fn problem(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/problem+json",
        ContentBuilder::new().schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Problem")))).build(),
    )
}

/// A header whose value is a whole number of seconds.
fn seconds_header(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)))
        .description(Some(description))
        .build()
}

/// Declares a set of error responses shared by several routes, so each route names the set instead of repeating
/// its statuses. Every response is a problem document; `retry_after` adds the `Retry-After` header and `bearer`
/// the `WWW-Authenticate` challenge.
macro_rules! response_set {
    ($(#[$doc:meta])* $name:ident { $($status:literal $(+ $extra:ident)? => $description:literal),+ $(,)? }) => {
        $(#[$doc])*
        pub struct $name;

        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                BTreeMap::from([$((
                    $status.to_string(),
                    RefOr::T(response_set!(@extra problem($description) $(, $extra)?).build()),
                )),+])
            }
        }
    };
    (@extra $builder:expr) => { $builder };
    (@extra $builder:expr, retry_after) => {
        $builder.header("Retry-After", seconds_header("Seconds to wait before trying again"))
    };
    (@extra $builder:expr, bearer) => {
        $builder.header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .description(Some("`Bearer error=\"invalid_token\"`"))
                .build(),
        )
    };
}

response_set! {
    /// What any route that reads a JSON (or form) body can answer before the body reaches the handler's logic.
    BodyErrors {
        400 => "`malformed_body`: the body does not have the request's shape (bad syntax, a wrong type, an unknown, \
                duplicate or missing field, nesting too deep)",
        408 => "`request_timeout`: the body was not received within 10 seconds",
        413 => "`payload_too_large`: the body is over 16 KiB",
        415 => "`unsupported_media_type`: the body's `Content-Type` is not one the route reads (`application/json`, \
                and for `/login` also `application/x-www-form-urlencoded`)",
    }
}

response_set! {
    /// What every route behind `Authorization: Bearer` can answer when the token does not hold.
    BearerErrors {
        401 + bearer => "`invalid_token`: the bearer token is missing, malformed, expired, or its session was revoked",
    }
}

response_set! {
    /// The answer of every route that needs the database or the picture storage while it is unreachable.
    Unavailable {
        503 + retry_after => "`service_unavailable`: the database or the picture storage is unreachable; retry later",
    }
}

response_set! {
    /// The answer of the routes with a per-client-address or per-account limit.
    RateLimited {
        429 + retry_after => "`rate_limited`: too many requests from this client address, or too many failed \
                              password checks for this account; `Retry-After` says when to try again",
    }
}

response_set! {
    /// The answer for a target that does not exist or that the caller may not see (the two look the same).
    NotFound {
        404 => "`not_found`: no such resource, or one the caller may not see",
    }
}

response_set! {
    /// The answer for values that parse but break a rule.
    ValidationFailed {
        422 => "`validation_failed`: a field breaks a rule; `errors` lists every field at fault",
    }
}

/// The characters Rust's `str::trim` removes (Unicode `White_Space`), as a regular-expression class.
const WHITESPACE: &str = r"[\x09-\x0D \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]";

/// A character allowed inside a name: anything but control (`Cc`) and invisible formatting characters.
const NAME_CHAR: &str = r"[^\x00-\x1F\x7F-\x9F\u200B-\u200F\u202A-\u202E\u2060-\u2064\u2066-\u2069\uFEFF]";

/// A character allowed inside a biography: as in a name, plus tab and line breaks.
const BIO_CHAR: &str =
    r"[^\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\u200B-\u200F\u202A-\u202E\u2060-\u2064\u2066-\u2069\uFEFF]";

/// A character allowed at either end of a trimmed text: a name character that is not white space.
const EDGE_CHAR: &str = r"[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200F\u2028-\u202F\u205F-\u2064\u2066-\u2069\u3000\uFEFF]";

/// A pattern for free text that is trimmed, then holds at most `max` characters of `inner`: leading and trailing
/// white space is allowed (it is removed), and an empty or blank value means "none".
fn trimmed_text_pattern(inner: &str, max: usize) -> String {
    let middle = max.saturating_sub(2);
    format!("^{WHITESPACE}*(?:{EDGE_CHAR}(?:{inner}{{0,{middle}}}{EDGE_CHAR})?)?{WHITESPACE}*$")
}

/// A string schema, nullable when `nullable`.
fn string(nullable: bool) -> ObjectBuilder {
    let schema_type = if nullable { SchemaType::from_iter([Type::String, Type::Null]) } else { Type::String.into() };
    ObjectBuilder::new().schema_type(schema_type)
}

/// A first or last name (`null` or empty clears it).
pub fn person_name() -> Object {
    string(true)
        .pattern(Some(trimmed_text_pattern(NAME_CHAR, 100)))
        .description(Some(
            "At most 100 characters after trimming surrounding white space (and NFKC normalisation); no control or \
             invisible formatting characters. Empty or `null` means no name.",
        ))
        .build()
}

/// A biography (`null` or empty clears it).
pub fn bio() -> Object {
    string(true)
        .pattern(Some(trimmed_text_pattern(BIO_CHAR, 500)))
        .description(Some(
            "At most 500 characters after trimming surrounding white space (and NFKC normalisation); line breaks \
             and tabs allowed, no other control or invisible formatting characters. Empty or `null` means none.",
        ))
        .build()
}

/// The pattern of a nickname.
const NICKNAME_PATTERN: &str = "^[A-Za-z0-9_-]{3,32}$";

/// A nickname that may be left out (generated as `adjective_animal_NNN`).
pub fn optional_nickname() -> Object {
    string(true)
        .pattern(Some(NICKNAME_PATTERN))
        .min_length(Some(3))
        .max_length(Some(32))
        .description(Some(
            "3 to 32 ASCII letters, digits, `_` or `-`, unique ignoring case; generated as `adjective_animal_NNN` \
             when absent or `null`.",
        ))
        .build()
}

/// A new nickname in a partial update: it can be changed but not cleared, so `null` is refused.
pub fn new_nickname() -> Object {
    string(false)
        .pattern(Some(NICKNAME_PATTERN))
        .min_length(Some(3))
        .max_length(Some(32))
        .description(Some("3 to 32 ASCII letters, digits, `_` or `-`, unique ignoring case; cannot be cleared."))
        .build()
}

/// An email address being set (registration, creation, a change).
pub fn email() -> Object {
    string(false)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
        .max_length(Some(254))
        .description(Some(
            "A plain ASCII address `local@domain.tld` (no quoted local parts, comments or IP literals), at most 254 \
             characters; surrounding white space is removed and the domain lower-cased.",
        ))
        .examples(["ada@example.com"])
        .build()
}

/// A new password, checked against the password policy.
pub fn new_password() -> Object {
    string(false)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Password)))
        .min_length(Some(15))
        .max_length(Some(128))
        .description(Some(
            "15 (`PASSWORD_MIN_LENGTH`) to 128 characters, counted in code points after NFKC, never truncated; \
             refused with 422 when it is common, guessable or built from the account's email, nickname or names.",
        ))
        .build()
}

/// A profile URL on `site` (a registrable domain such as `linkedin.com`), nullable.
fn profile_url(site_pattern: &str, site: &str) -> Object {
    let label = "[A-Za-z0-9-]{1,63}";
    string(true)
        .pattern(Some(format!(
            r"^(?:[Hh][Tt][Tt][Pp][Ss]://(?:{label}\.){{0,3}}{site_pattern}(?::[0-9]{{1,4}})?(?:[/?#][!-~]{{0,500}})?)?$"
        )))
        .description(Some(format!(
            "An absolute `https://` URL on {site} or one of its subdomains, without credentials, at most 2048 \
             characters as stored (after URL normalisation). Empty or `null` clears it."
        )))
        .build()
}

/// A LinkedIn profile URL.
pub fn linkedin_url() -> Object {
    profile_url("[Ll][Ii][Nn][Kk][Ee][Dd][Ii][Nn]\\.[Cc][Oo][Mm]", "linkedin.com")
}

/// A GitHub profile URL.
pub fn github_url() -> Object {
    profile_url("[Gg][Ii][Tt][Hh][Uu][Bb]\\.[Cc][Oo][Mm]", "github.com")
}

/// The four role names.
const ROLES: [&str; 4] = ["ANONYMOUS", "AUTHENTICATED", "MANAGER", "ADMIN"];

/// A role being given, optional.
pub fn role() -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(ROLES.into_iter().map(Some).chain([None])))
        .description(Some("`ANONYMOUS`, `AUTHENTICATED`, `MANAGER` or `ADMIN`, within the caller's rights."))
        .build()
}

#[cfg(test)]
mod tests {
    use utoipa::openapi::path::Operation;

    use super::*;

    /// Every operation of the document with its method and path.
    fn operations() -> Vec<(String, Operation)> {
        let doc = ApiDoc::openapi();
        let mut all = Vec::new();
        for (path, item) in doc.paths.paths {
            for (method, operation) in [
                ("GET", item.get),
                ("POST", item.post),
                ("PUT", item.put),
                ("PATCH", item.patch),
                ("DELETE", item.delete),
            ] {
                if let Some(operation) = operation {
                    all.push((format!("{method} {path}"), operation));
                }
            }
        }
        all
    }

    #[test]
    fn every_route_with_a_body_documents_the_answers_to_a_bad_body() {
        for (name, operation) in operations() {
            if operation.request_body.is_some() {
                for status in ["400", "408", "413", "415"] {
                    assert!(operation.responses.responses.contains_key(status), "{name} does not document {status}");
                }
            }
        }
    }

    #[test]
    fn every_route_behind_a_bearer_token_documents_401_and_403() {
        for (name, operation) in operations() {
            if operation.security.as_ref().is_some_and(|security| !security.is_empty()) {
                for status in ["401", "403", "503"] {
                    assert!(operation.responses.responses.contains_key(status), "{name} does not document {status}");
                }
            }
        }
    }

    #[test]
    fn put_is_documented_as_a_synonym_of_patch_with_its_own_operation_id() {
        let doc = ApiDoc::openapi();
        let item = doc.paths.paths.get("/users/{id}");
        let patch = item.and_then(|item| item.patch.as_ref()).and_then(|op| op.operation_id.clone());
        let put = item.and_then(|item| item.put.as_ref()).and_then(|op| op.operation_id.clone());
        assert_eq!(patch.as_deref(), Some("update_user"));
        assert_eq!(put.as_deref(), Some("update_user_put"));
    }

    #[test]
    fn operation_ids_are_unique() {
        let mut ids: Vec<String> = operations().into_iter().filter_map(|(_, op)| op.operation_id).collect();
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count);
    }

    /// The `pattern` of a schema function's result, compiled.
    fn pattern_of(object: &Object) -> regex::Regex {
        let pattern = object.pattern.as_deref().unwrap_or_default();
        regex::Regex::new(pattern).unwrap_or_else(|error| panic!("{pattern}: {error}"))
    }

    /// Inputs at the edges of the text rules: lengths around the limits with and without surrounding white space,
    /// and control, invisible and white-space characters inside and at the ends.
    fn tricky_texts(max: usize) -> Vec<String> {
        let mut texts: Vec<String> =
            ["", " ", "\t\n", "a", " a ", "\ta\r\n", "a b", "a\tb", "a\nb", "a\u{0}b", "\u{1}a"]
                .into_iter()
                .map(str::to_owned)
                .collect();
        for c in [
            '\u{85}', '\u{A0}', '\u{2003}', '\u{2028}', '\u{200B}', '\u{202E}', '\u{2066}', '\u{FEFF}', '\u{7F}',
            '\u{9F}', 'é', '😀',
        ] {
            texts.extend([format!("a{c}b"), format!("{c}ab"), format!("ab{c}")]);
        }
        for len in [max - 1, max, max + 1] {
            let body = "x".repeat(len);
            texts.extend([
                body.clone(),
                format!("  {body}\t"),
                format!("\u{3000}{body}"),
                format!("{}😀", "x".repeat(len - 1)),
            ]);
        }
        texts
    }

    #[test]
    fn the_name_and_bio_patterns_accept_exactly_what_the_parsers_accept() {
        use users_domain::{Bio, PersonName};
        let name = pattern_of(&person_name());
        for text in tricky_texts(100) {
            assert_eq!(name.is_match(&text), PersonName::parse(&text).is_ok(), "name {text:?}");
        }
        let bio_pattern = pattern_of(&bio());
        for text in tricky_texts(500) {
            assert_eq!(bio_pattern.is_match(&text), Bio::parse(&text).is_ok(), "bio {text:?}");
        }
    }

    #[test]
    fn the_nickname_pattern_accepts_exactly_what_the_parser_accepts() {
        let pattern = pattern_of(&new_nickname());
        for text in ["ab", "abc", "a-b_C9", " abc", "abc ", "ab\u{e9}", &"x".repeat(32), &"x".repeat(33), "a.b.c"] {
            assert_eq!(pattern.is_match(text), users_domain::Nickname::parse(text).is_ok(), "{text:?}");
        }
    }

    #[test]
    fn what_the_profile_url_patterns_allow_the_parser_accepts() {
        use users_domain::{ProfileUrl, ProfileUrlKind};
        let linkedin = pattern_of(&linkedin_url());
        let github = pattern_of(&github_url());
        let long_path = format!("https://github.com/{}", "~".repeat(500));
        let urls = [
            "https://linkedin.com",
            "https://www.LinkedIn.com/in/ada",
            "HTTPS://a.b.c.linkedin.com:8443/x?y#z",
            "https://github.com/ada",
            long_path.as_str(),
            "http://github.com/ada",
            "https://github.com.evil.example/ada",
            "https://user@github.com/",
            "",
        ];
        for url in urls {
            if linkedin.is_match(url) {
                assert!(ProfileUrl::parse(url, ProfileUrlKind::LinkedIn).is_ok(), "{url}");
            }
            if github.is_match(url) {
                assert!(ProfileUrl::parse(url, ProfileUrlKind::GitHub).is_ok(), "{url}");
            }
        }
        assert!(linkedin.is_match("https://www.LinkedIn.com/in/ada") && github.is_match(&long_path));
        assert!(!github.is_match("https://github.com.evil.example/ada") && !github.is_match("http://github.com/ada"));
    }
}
