//! [`S3PictureStore`]: pictures in an S3-compatible bucket (MinIO, Garage, AWS) through rust-s3, path-style.
//!
//! The content type travels as the object's `Content-Type` and comes back from `GET`, so S3 keeps it with the
//! object atomically. Every call is bounded by one deadline ([`DEFAULT_TIMEOUT`] unless
//! [`S3PictureStore::with_timeout`] says otherwise) that covers rust-s3's own retry of reads, so a hung server
//! turns into [`PortError::Unavailable`] instead of a hung request. rust-s3's errors are translated here and never
//! leave the crate: unreachable, timed out, 5xx, 408 and 429 are `Unavailable` (retry later), a 404 of a missing
//! key is "no object", and anything else (403 for bad credentials, 404 for a missing bucket, a malformed
//! answer) is `Unknown`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use s3::creds::Credentials;
use s3::error::S3Error;
use s3::{Bucket, BucketConfiguration, Region};
use users_domain::ports::{PictureStore, PortError, StoredObject};

use crate::key::{KeyPrefix, ObjectKey, check_content_type};

/// How long one store call may take, retries included, before it fails as [`PortError::Unavailable`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What `get` reports when the server returns no `Content-Type` (S3 itself always does).
const FALLBACK_CONTENT_TYPE: &str = "application/octet-stream";

/// Where the bucket is and how to sign requests to it (`S3_ENDPOINT`, `S3_REGION`, `S3_BUCKET`, `S3_ACCESS_KEY`,
/// `S3_SECRET_KEY`).
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The server's base URL, `http://` or `https://`, without a path (`http://127.0.0.1:9000`).
    pub endpoint: String,
    /// The region the server signs for; it must equal the server's own (`us-east-1` for MinIO, `garage`...).
    pub region: String,
    /// The bucket name; it is created at start-up when missing.
    pub bucket: String,
    /// The access key id.
    pub access_key: String,
    /// The secret key.
    pub secret_key: String,
}

impl S3Config {
    /// The region when none is configured (MinIO's).
    pub const DEFAULT_REGION: &'static str = "us-east-1";

    /// The bucket when none is configured.
    pub const DEFAULT_BUCKET: &'static str = "user-profiles";
}

impl fmt::Debug for S3Config {
    // Written by hand so that logging the configuration never logs the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

/// Why the S3 store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum S3SetupError {
    /// A configuration value is malformed; `field` names it (`endpoint`, `region`, `bucket`, `access_key`,
    /// `secret_key`).
    #[error("invalid S3 configuration: {field}: {reason}")]
    InvalidConfig {
        /// The [`S3Config`] field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built (TLS initialisation failed).
    #[error("the S3 client could not be built")]
    Client(#[source] anyhow::Error),
    /// The server did not answer in time, or answered that it is unavailable.
    #[error("S3 storage is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// The server answered, but the bucket could neither be used nor created (wrong credentials or region, a
    /// bucket name taken by someone else, missing permissions).
    #[error("S3 bucket {bucket:?} could not be checked or created")]
    Bucket {
        /// The bucket name.
        bucket: String,
        /// The server's answer.
        #[source]
        source: anyhow::Error,
    },
}

/// Profile pictures in an S3-compatible bucket.
#[derive(Clone)]
pub struct S3PictureStore {
    /// rust-s3's handle: path-style, with the request timeout set; cheap to clone.
    bucket: Box<Bucket>,
    /// The validated configuration, kept for creating the bucket and for error messages.
    config: Arc<S3Config>,
    /// The deadline of each call.
    timeout: Duration,
}

impl fmt::Debug for S3PictureStore {
    // rust-s3's `Bucket` prints its credentials, so only the harmless parts are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3PictureStore")
            .field("endpoint", &self.config.endpoint)
            .field("region", &self.config.region)
            .field("bucket", &self.config.bucket)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl S3PictureStore {
    /// Checks the configuration and builds the client, without contacting the server. The service can then start
    /// while storage is down and report it through `ping` (readiness) and 503s; [`Self::connect`] is the usual
    /// entry point.
    ///
    /// # Errors
    /// [`S3SetupError::InvalidConfig`] for a malformed value, [`S3SetupError::Client`] when the HTTP client cannot
    /// be built.
    pub fn new(config: S3Config) -> Result<Self, S3SetupError> {
        let config = validate(config)?;
        let credentials = credentials(&config).map_err(|error| S3SetupError::Client(error.into()))?;
        let mut bucket = Bucket::new(&config.bucket, region(&config), credentials)
            .map_err(|error| S3SetupError::Client(error.into()))?
            .with_path_style();
        bucket.set_request_timeout(Some(DEFAULT_TIMEOUT));
        Ok(Self { bucket, config: Arc::new(config), timeout: DEFAULT_TIMEOUT })
    }

    /// Builds the store like [`Self::new`], then makes sure the bucket exists, creating it when missing.
    ///
    /// # Errors
    /// Those of [`Self::new`]; [`S3SetupError::Unavailable`] when the server cannot be reached;
    /// [`S3SetupError::Bucket`] when it refuses to let us use or create the bucket.
    pub async fn connect(config: S3Config) -> Result<Self, S3SetupError> {
        let store = Self::new(config)?;
        store.ensure_bucket().await?;
        Ok(store)
    }

    /// Sets the deadline of each call (and of each HTTP request within it), [`DEFAULT_TIMEOUT`] by default.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.bucket.set_request_timeout(Some(timeout));
        self.timeout = timeout;
        self
    }

    /// The bucket name.
    #[must_use]
    pub fn bucket(&self) -> &str {
        &self.config.bucket
    }

    /// Lists the keys of all objects whose key starts with `prefix`, sorted. Objects whose key this store would
    /// refuse (written by another client) are left out, so every listed key can be read and deleted. Each page
    /// of the listing gets its own deadline.
    ///
    /// # Errors
    /// [`PortError::Unknown`] for a prefix that could never start a valid key; otherwise as the port's calls.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, PortError> {
        let prefix = KeyPrefix::parse(prefix).map_err(|error| PortError::Unknown(error.into()))?;
        let mut keys = Vec::new();
        let mut continuation = None;
        loop {
            let page = self.bucket.list_page(prefix.as_str().to_owned(), None, continuation, None, None);
            let (page, _) = self.within(page).await.map_err(|failure| self.port_error(failure, "listing"))?;
            keys.extend(page.contents.into_iter().map(|object| object.key).filter(|key| ObjectKey::parse(key).is_ok()));
            continuation = page.next_continuation_token;
            if continuation.is_none() {
                break;
            }
        }
        keys.sort_unstable();
        Ok(keys)
    }

    /// Probes the bucket and creates it when the server says it does not exist. Probing first means a deployment
    /// whose key may use but not create the bucket works; a concurrent creation by another instance is fine.
    async fn ensure_bucket(&self) -> Result<(), S3SetupError> {
        match self.within(self.probe()).await {
            Ok(()) => return Ok(()),
            Err(Failure::S3(S3Error::HttpFailWithBody(404, _))) => {}
            Err(failure) => return Err(self.setup_error(failure, "checking")),
        }
        let credentials = credentials(&self.config).map_err(|error| S3SetupError::Client(error.into()))?;
        let create = Bucket::create_with_path_style(
            &self.config.bucket,
            region(&self.config),
            credentials,
            BucketConfiguration::private(),
        );
        match self.within(create).await {
            Ok(_) => Ok(()),
            Err(Failure::S3(S3Error::HttpFailWithBody(409, body)))
                if error_code(&body) == Some("BucketAlreadyOwnedByYou") =>
            {
                Ok(())
            }
            Err(failure) => Err(self.setup_error(failure, "creating")),
        }
    }

    /// rust-s3's handle, for tests that look at the bucket without going through the store's checks.
    #[cfg(test)]
    pub(crate) fn raw_bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// The cheapest request that proves the bucket answers for these credentials: a listing of at most one key.
    async fn probe(&self) -> Result<(), S3Error> {
        self.bucket.list_page(String::new(), None, None, None, Some(1)).await.map(|_| ())
    }

    /// Runs one rust-s3 call under the deadline.
    async fn within<T>(&self, call: impl Future<Output = Result<T, S3Error>>) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(Failure::S3(error)),
            Err(_elapsed) => Err(Failure::Deadline(self.timeout)),
        }
    }

    fn port_error(&self, failure: Failure, doing: &str) -> PortError {
        let unavailable = failure.is_unavailable();
        let error = failure.into_error().context(format!("{doing} in S3 bucket {}", self.config.bucket));
        if unavailable { PortError::Unavailable(error) } else { PortError::Unknown(error) }
    }

    fn setup_error(&self, failure: Failure, doing: &str) -> S3SetupError {
        if failure.is_unavailable() {
            let context = format!("{doing} bucket {:?} at {}", self.config.bucket, self.config.endpoint);
            S3SetupError::Unavailable(failure.into_error().context(context))
        } else {
            S3SetupError::Bucket {
                bucket: self.config.bucket.clone(),
                source: failure.into_error().context(format!("{doing} the bucket")),
            }
        }
    }
}

impl PictureStore for S3PictureStore {
    async fn put(&self, object: StoredObject) -> Result<(), PortError> {
        let key = ObjectKey::parse(&object.key).map_err(|error| PortError::Unknown(error.into()))?;
        check_content_type(&object.content_type).map_err(|error| PortError::Unknown(error.into()))?;
        let put = self.bucket.put_object_with_content_type(key.as_str(), &object.bytes, &object.content_type);
        self.within(put).await.map_err(|failure| self.port_error(failure, &format!("storing {key}")))?;
        Ok(())
    }

    async fn get(&self, key: String) -> Result<Option<StoredObject>, PortError> {
        let key = ObjectKey::parse(&key).map_err(|error| PortError::Unknown(error.into()))?;
        match self.within(self.bucket.get_object(key.as_str())).await {
            Ok(response) => {
                let content_type =
                    response.headers().remove("content-type").unwrap_or_else(|| FALLBACK_CONTENT_TYPE.to_owned());
                Ok(Some(StoredObject { key: key.as_str().to_owned(), content_type, bytes: response.to_vec() }))
            }
            // A missing bucket answers 404 too; that is a broken deployment, not a missing picture.
            Err(Failure::S3(S3Error::HttpFailWithBody(404, body))) if error_code(&body) != Some("NoSuchBucket") => {
                Ok(None)
            }
            Err(failure) => Err(self.port_error(failure, &format!("reading {key}"))),
        }
    }

    async fn copy(&self, from: String, to: String) -> Result<bool, PortError> {
        let from = ObjectKey::parse(&from).map_err(|error| PortError::Unknown(error.into()))?;
        let to = ObjectKey::parse(&to).map_err(|error| PortError::Unknown(error.into()))?;
        // CopyObject: the server copies the bytes (Garage only adds a reference to the same blocks) and keeps the
        // content type; nothing passes through this process.
        match self.within(self.bucket.copy_object_internal(from.as_str(), to.as_str())).await {
            Ok(_) => Ok(true),
            // Only S3's own word that the source is missing: a move re-points its row past a missing object, so any
            // other 404 (a missing bucket, a proxy's page) is a failure to retry, not an object gone.
            Err(Failure::S3(S3Error::HttpFailWithBody(404, body))) if error_code(&body) == Some("NoSuchKey") => {
                Ok(false)
            }
            Err(failure) => Err(self.port_error(failure, &format!("copying {from} to {to}"))),
        }
    }

    async fn delete(&self, key: String) -> Result<(), PortError> {
        let key = ObjectKey::parse(&key).map_err(|error| PortError::Unknown(error.into()))?;
        match self.within(self.bucket.delete_object(key.as_str())).await {
            // S3 answers 204 for a missing key; some servers answer 404, which means the same here.
            Ok(_) => Ok(()),
            Err(Failure::S3(S3Error::HttpFailWithBody(404, body))) if error_code(&body) != Some("NoSuchBucket") => {
                Ok(())
            }
            Err(failure) => Err(self.port_error(failure, &format!("deleting {key}"))),
        }
    }

    async fn list(&self, prefix: String) -> Result<Vec<String>, PortError> {
        Self::list(self, &prefix).await
    }

    async fn ping(&self) -> Result<(), PortError> {
        self.within(self.probe()).await.map_err(|failure| self.port_error(failure, "probing"))
    }
}

/// A failed call: rust-s3's error, or our deadline.
enum Failure {
    S3(S3Error),
    Deadline(Duration),
}

impl Failure {
    /// Whether retrying later may help: the server was not reached, did not answer in time, or said it is
    /// overloaded or broken.
    fn is_unavailable(&self) -> bool {
        match self {
            Self::Deadline(_) => true,
            Self::S3(S3Error::HttpFailWithBody(status, _)) => *status >= 500 || matches!(status, 408 | 429),
            // Connection refused, reset, DNS failure, TLS handshake failure, request timeout: all transport.
            // Building a request or decoding an answer is a bug, not an outage.
            Self::S3(S3Error::Reqwest(error)) => !(error.is_builder() || error.is_decode()),
            Self::S3(S3Error::Io(_)) => true,
            Self::S3(_) => false,
        }
    }

    fn into_error(self) -> anyhow::Error {
        match self {
            Self::Deadline(timeout) => anyhow::anyhow!("no answer within {timeout:?}"),
            // The body is the server's XML error document: its code and message are what an operator needs, and
            // the rest would only bloat the log.
            Self::S3(S3Error::HttpFailWithBody(status, body)) => {
                let code = error_code(&body).unwrap_or("no error code");
                let message = xml_element(&body, "Message").unwrap_or_default();
                anyhow::anyhow!("HTTP {status}: {code}: {}", message.chars().take(300).collect::<String>())
            }
            Self::S3(error) => error.into(),
        }
    }
}

/// The `<Code>` of an S3 XML error document.
fn error_code(body: &str) -> Option<&str> {
    xml_element(body, "Code")
}

/// The text of the first `<name>` element: enough for S3's flat error documents, without an XML parser.
fn xml_element<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    let start = body.find(&format!("<{name}>"))? + name.len() + 2;
    let length = body[start..].find("</")?;
    Some(&body[start..start + length])
}

/// Static credentials. The access key is always given, which keeps rust-s3 from looking for credentials in the
/// environment, in profiles or at cloud metadata endpoints.
fn credentials(config: &S3Config) -> Result<Credentials, s3::creds::error::CredentialsError> {
    Credentials::new(Some(&config.access_key), Some(&config.secret_key), None, None, None)
}

fn region(config: &S3Config) -> Region {
    Region::Custom { region: config.region.clone(), endpoint: config.endpoint.clone() }
}

/// Checks every field, so that a typo stops start-up with a message naming the field instead of surfacing later
/// as a signature mismatch, and normalises the endpoint to `scheme://host[:port]`.
fn validate(config: S3Config) -> Result<S3Config, S3SetupError> {
    let invalid = |field, reason: &str| S3SetupError::InvalidConfig { field, reason: reason.to_owned() };
    let endpoint = url::Url::parse(config.endpoint.trim())
        .map_err(|error| S3SetupError::InvalidConfig { field: "endpoint", reason: format!("not a URL: {error}") })?;
    if !matches!(endpoint.scheme(), "http" | "https") {
        return Err(invalid("endpoint", "the scheme must be http or https"));
    }
    if endpoint.host_str().is_none_or(str::is_empty) {
        return Err(invalid("endpoint", "it has no host"));
    }
    // Path-style addressing puts the bucket right after the host, so a path, credentials or a query in the
    // endpoint would end up in the wrong place (or in logs).
    if endpoint.path() != "/" || endpoint.query().is_some() || endpoint.fragment().is_some() {
        return Err(invalid("endpoint", "it must not have a path, query or fragment"));
    }
    if !endpoint.username().is_empty() || endpoint.password().is_some() {
        return Err(invalid("endpoint", "credentials belong in the access and secret keys, not in the URL"));
    }
    // The region is part of the signing scope (`date/region/s3/aws4_request`), where a `/` would break it.
    if config.region.is_empty() || !config.region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(invalid("region", "it must be non-empty and made of letters, digits, '-' and '_'"));
    }
    if !is_bucket_name(&config.bucket) {
        return Err(invalid(
            "bucket",
            "S3 bucket names are 3 to 63 lowercase letters, digits, '.' and '-', starting and ending alphanumeric",
        ));
    }
    if config.access_key.is_empty() || !config.access_key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("access_key", "it must be non-empty visible ASCII"));
    }
    if config.secret_key.is_empty() || !config.secret_key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("secret_key", "it must be non-empty visible ASCII"));
    }
    Ok(S3Config { endpoint: endpoint.origin().ascii_serialization(), ..config })
}

fn is_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && !name.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> S3Config {
        S3Config {
            endpoint: "http://127.0.0.1:9000".to_owned(),
            region: "us-east-1".to_owned(),
            bucket: "user-profiles".to_owned(),
            access_key: "access".to_owned(),
            secret_key: "very-secret-key".to_owned(),
        }
    }

    #[test]
    fn a_valid_configuration_is_accepted_and_the_endpoint_normalised() {
        let store =
            S3PictureStore::new(S3Config { endpoint: "http://127.0.0.1:9000/".to_owned(), ..config() }).unwrap();
        assert_eq!(store.config.endpoint, "http://127.0.0.1:9000");
        assert_eq!(store.bucket(), "user-profiles");
    }

    #[test]
    fn malformed_values_are_refused_naming_the_field() {
        let cases = [
            ("endpoint", S3Config { endpoint: "127.0.0.1:9000".to_owned(), ..config() }),
            ("endpoint", S3Config { endpoint: "ftp://host".to_owned(), ..config() }),
            ("endpoint", S3Config { endpoint: "http://host/prefix".to_owned(), ..config() }),
            ("endpoint", S3Config { endpoint: "http://user:pw@host".to_owned(), ..config() }),
            ("region", S3Config { region: String::new(), ..config() }),
            ("region", S3Config { region: "us/east".to_owned(), ..config() }),
            ("bucket", S3Config { bucket: "User-Profiles".to_owned(), ..config() }),
            ("bucket", S3Config { bucket: "ab".to_owned(), ..config() }),
            ("bucket", S3Config { bucket: "a/b-c".to_owned(), ..config() }),
            ("access_key", S3Config { access_key: String::new(), ..config() }),
            ("secret_key", S3Config { secret_key: "a b".to_owned(), ..config() }),
        ];
        for (expected, config) in cases {
            match S3PictureStore::new(config.clone()) {
                Err(S3SetupError::InvalidConfig { field, .. }) => assert_eq!(field, expected, "{config:?}"),
                other => panic!("{config:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn debug_output_never_shows_the_secret_key() {
        let config = config();
        assert!(!format!("{config:?}").contains(&config.secret_key));
        let store = S3PictureStore::new(config.clone()).unwrap();
        assert!(!format!("{store:?}").contains(&config.secret_key));
    }

    #[test]
    fn the_error_code_is_read_from_an_s3_error_document() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>Key not found</Message></Error>";
        assert_eq!(error_code(body), Some("NoSuchKey"));
        assert_eq!(xml_element(body, "Message"), Some("Key not found"));
        assert_eq!(error_code(""), None);
    }

    #[test]
    fn server_errors_and_transport_failures_are_unavailable_but_client_errors_are_not() {
        let http = |status| Failure::S3(S3Error::HttpFailWithBody(status, String::new()));
        for status in [500, 502, 503, 504, 408, 429] {
            assert!(http(status).is_unavailable(), "{status}");
        }
        for status in [400, 403, 404, 409] {
            assert!(!http(status).is_unavailable(), "{status}");
        }
        assert!(Failure::Deadline(DEFAULT_TIMEOUT).is_unavailable());
    }
}
