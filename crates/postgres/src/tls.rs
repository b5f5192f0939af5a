//! TLS to Postgres: the connection string's `sslmode` and `sslrootcert`, read the way libpq reads them, applied
//! with a rustls connector (the `ring` provider) on every connection the pool or the migrations open.
//!
//! tokio-postgres understands only `disable`, `prefer` and `require` and refuses `sslrootcert`, so both settings
//! are taken out of the connection string here and the rest goes to the driver untouched. The modes mean what
//! they mean for libpq:
//!
//! | `sslmode` | TLS | certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (default) | when the server offers it | no |
//! | `require` | always; a server without TLS is an error | no (the chain, as `verify-ca`, when `sslrootcert` is given) |
//! | `verify-ca` | always | the chain, against `sslrootcert` |
//! | `verify-full` | always | the chain and the host name |
//!
//! Without `sslrootcert` (or with `sslrootcert=system`) `verify-full` trusts the Mozilla root set compiled into
//! the binary (webpki-roots), which is what a server with a publicly trusted certificate needs; `verify-ca` (and
//! `require` with `sslrootcert=system`) is refused then, since a chain check without the host name against public
//! roots would accept any publicly trusted certificate. A private CA is named with `sslrootcert=/path/to/ca.pem`. Handshake signatures are always checked, even when the
//! certificate is not. Channel binding is not offered (SCRAM still authenticates without it).

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use diesel::QueryableByName;
use diesel::result::{ConnectionError, ConnectionResult, QueryResult};
use diesel::sql_types::Text;
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::setup::PgSetupError;

/// A boxed error, the form tokio-postgres wants from a TLS connector.
type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// How a connection uses TLS: the `sslmode` of the connection string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, without checking its certificate (the default, as for libpq).
    #[default]
    Prefer,
    /// Always use TLS, without checking the certificate unless `sslrootcert` is given.
    Require,
    /// Always use TLS and check that the server's certificate chains to a trusted root.
    VerifyCa,
    /// Always use TLS, check the chain and that the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    /// Reads an `sslmode` value.
    fn parse(raw: &str) -> Result<Self, PgSetupError> {
        match raw {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            other => Err(PgSetupError::InvalidTls(format!(
                "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            ))),
        }
    }
}

/// Where the trusted roots of the verifying modes come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum RootSource {
    /// The Mozilla root set compiled into the binary (no `sslrootcert`, or `sslrootcert=system`).
    Builtin,
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
}

/// The TLS settings taken out of a connection string, and the rest of it for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SplitUrl {
    /// The connection string without `sslmode` and `sslrootcert`.
    rest: String,
    /// `sslmode`, `prefer` when absent.
    mode: SslMode,
    /// `sslrootcert`, when given.
    root: Option<RootSource>,
    /// The names of the parameters left in `rest`, to tell a setting given from the driver's default.
    kept_keys: Vec<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a `postgres://` URL or a `key=value` connection string.
fn split_tls_settings(url: &str) -> Result<SplitUrl, PgSetupError> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let (rest, pairs, kept_keys) = if is_url { split_url(url)? } else { split_key_values(url)? };
    let mut mode = None;
    let mut root = None;
    for (key, value) in pairs {
        match key.as_str() {
            "sslmode" => mode = Some(SslMode::parse(&value)?),
            // The only other key taken out is `sslrootcert`.
            _ => {
                root = match value.as_str() {
                    "" => None,
                    "system" => Some(RootSource::Builtin),
                    _ => Some(RootSource::File(PathBuf::from(value))),
                }
            }
        }
    }
    Ok(SplitUrl { rest, mode: mode.unwrap_or_default(), root, kept_keys })
}

/// Whether a parameter is one this module handles.
fn is_tls_key(key: &str) -> bool {
    key == "sslmode" || key == "sslrootcert"
}

/// A connection string without its TLS parameters, those parameters, and the names of the parameters kept.
type Split = (String, Vec<(String, String)>, Vec<String>);

/// The URL form: query parameters, percent-decoded; the others are kept byte for byte, so the driver decodes
/// them exactly as it would have.
fn split_url(url: &str) -> Result<Split, PgSetupError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Vec::new(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut kept_keys = Vec::new();
    let mut taken = Vec::new();
    for piece in query.split('&').filter(|piece| !piece.is_empty()) {
        let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
        if is_tls_key(key) {
            let decoded = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| PgSetupError::InvalidTls(format!("{key} is not valid UTF-8 once decoded")))?;
            taken.push((key.to_owned(), decoded.into_owned()));
        } else {
            kept.push(piece);
            kept_keys.push(key.to_owned());
        }
    }
    let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok((rest, taken, kept_keys))
}

/// The `key=value` form, tokenised as libpq does: spaces around `=` allowed, values bare or single-quoted with
/// backslash escapes. The pairs kept are written back quoted, which the driver reads the same way.
fn split_key_values(raw: &str) -> Result<Split, PgSetupError> {
    let malformed = || PgSetupError::InvalidUrl("neither a postgres:// URL nor a well-formed key=value string".into());
    let mut chars = raw.chars().peekable();
    let mut kept = Vec::new();
    let mut kept_keys = Vec::new();
    let mut taken = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') || key.is_empty() {
            return Err(malformed());
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().ok_or_else(malformed)?),
                    Some(c) => value.push(c),
                    None => return Err(malformed()),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or_else(malformed)?);
                } else {
                    value.push(c);
                }
            }
        }
        if is_tls_key(&key) {
            taken.push((key, value));
        } else {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
            kept_keys.push(key);
        }
    }
    Ok((kept.join(" "), taken, kept_keys))
}

/// Everything needed to open a connection: the driver's settings and the TLS connector. Built once from the
/// connection string (reading `sslrootcert` then), shared by every connection opened afterwards.
#[derive(Clone)]
pub(crate) struct Connector {
    config: tokio_postgres::Config,
    mode: SslMode,
    tls: RustlsConnect,
    /// The session settings (name, value) a new connection must report before it is used (see
    /// [`with_setting`](Self::with_setting)).
    required: Vec<(&'static str, &'static str)>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The driver's settings hold the password, so only the mode is shown.
        f.debug_struct("Connector").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl Connector {
    /// Reads a connection string: the driver's settings, `sslmode` and the roots of `sslrootcert`.
    ///
    /// # Errors
    /// [`PgSetupError::InvalidTls`] for an unknown `sslmode` or an unreadable `sslrootcert`,
    /// [`PgSetupError::InvalidUrl`] when the rest does not parse.
    pub(crate) fn from_url(url: &str) -> Result<Self, PgSetupError> {
        let split = split_tls_settings(url)?;
        let mut config: tokio_postgres::Config =
            split.rest.parse().map_err(|error| PgSetupError::InvalidUrl(Box::new(error)))?;
        config.ssl_mode(match split.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        apply_network_defaults(&mut config, &split.kept_keys);
        let tls = RustlsConnect { config: Arc::new(client_config(split.mode, split.root.as_ref())?) };
        Ok(Self { config, mode: split.mode, tls, required: Vec::new() })
    }

    /// This connector with the session setting `name` = `value` added to the start-up options of every connection,
    /// after any the connection string's `options` gives (a later setting of the same name wins). A new connection
    /// whose session does not then report that value is refused: a pooler in front of Postgres may drop start-up
    /// options.
    pub(crate) fn with_setting(&self, name: &'static str, value: &'static str) -> Self {
        let mut connector = self.clone();
        let setting = format!("-c {name}={value}");
        let options = match self.config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {setting}"),
            _ => setting,
        };
        connector.config.options(&options);
        connector.required.push((name, value));
        connector
    }

    /// This connector requiring the session setting `name` = `value` without asking for it in the start-up options:
    /// what a connection through a pooler that drops them amounts to.
    #[cfg(test)]
    pub(crate) fn requiring_without_asking(&self, name: &'static str, value: &'static str) -> Self {
        let mut connector = self.clone();
        connector.required.push((name, value));
        connector
    }

    /// Opens a connection, keeping the driver's whole error chain: diesel-async's own `establish` keeps only the
    /// outermost message ("error connecting to server"), which hides whether the server refused the connection,
    /// timed out, offered no TLS or presented a certificate that failed the check.
    pub(crate) async fn connect(&self) -> ConnectionResult<AsyncPgConnection> {
        let (client, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|error| ConnectionError::BadConnection(error_chain(&error)))?;
        let mut connection = AsyncPgConnection::try_from_client_and_connection(client, connection).await?;
        for &(name, value) in &self.required {
            check_setting(&mut connection, name, value).await?;
        }
        Ok(connection)
    }
}

/// A setting's value, as `current_setting` reports it.
#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    value: String,
}

/// The value `connection`'s session reports for the setting `name`.
pub(crate) async fn session_setting(connection: &mut AsyncPgConnection, name: &str) -> QueryResult<String> {
    let shown = diesel::sql_query("SELECT current_setting($1) AS value")
        .bind::<Text, _>(name)
        .get_result::<Setting>(connection)
        .await?;
    Ok(shown.value)
}

/// Refuses `connection` unless its session reports `value` for the setting `name`.
async fn check_setting(connection: &mut AsyncPgConnection, name: &str, value: &str) -> ConnectionResult<()> {
    let shown = session_setting(connection, name)
        .await
        .map_err(|error| ConnectionError::BadConnection(format!("could not read the session's {name}: {error}")))?;
    if shown == value {
        Ok(())
    } else {
        Err(ConnectionError::BadConnection(format!(
            "the session's {name} is {shown}, not the {value} its start-up options set (does a pooler drop them?)"
        )))
    }
}

/// The network bounds of a connection, where the connection string does not set them (the driver's own defaults
/// are no connect timeout and a first keepalive probe after two hours). Without them a database host that stops
/// answering (a failover, a dropped route) holds connects and queries for minutes.
const NETWORK_DEFAULTS: NetworkDefaults = NetworkDefaults {
    connect_timeout: Duration::from_secs(5),
    keepalives_idle: Duration::from_secs(30),
    keepalives_interval: Duration::from_secs(10),
    keepalives_retries: 3,
    tcp_user_timeout: Duration::from_secs(30),
};

/// See [`NETWORK_DEFAULTS`].
struct NetworkDefaults {
    /// The whole connect (TCP, TLS, start-up) gives up after this.
    connect_timeout: Duration,
    /// An idle connection is probed after this...
    keepalives_idle: Duration,
    /// ...then every this long...
    keepalives_interval: Duration,
    /// ...and is closed after this many unanswered probes.
    keepalives_retries: u32,
    /// A connection whose sent data stays unacknowledged this long is closed, so a query on a host that went
    /// silent fails instead of waiting for the kernel's retransmissions (about 15 minutes). A slow query is not
    /// cut: the server acknowledges the request at once.
    tcp_user_timeout: Duration,
}

/// Sets the [`NETWORK_DEFAULTS`] the connection string (whose parameter names are `given`) leaves out.
fn apply_network_defaults(config: &mut tokio_postgres::Config, given: &[String]) {
    let unset = |key: &str| !given.iter().any(|given| given == key);
    let defaults = &NETWORK_DEFAULTS;
    if unset("connect_timeout") {
        config.connect_timeout(defaults.connect_timeout);
    }
    if unset("keepalives_idle") {
        config.keepalives_idle(defaults.keepalives_idle);
    }
    if unset("keepalives_interval") {
        config.keepalives_interval(defaults.keepalives_interval);
    }
    if unset("keepalives_retries") {
        config.keepalives_retries(defaults.keepalives_retries);
    }
    if unset("tcp_user_timeout") {
        config.tcp_user_timeout(defaults.tcp_user_timeout);
    }
}

/// An error and its sources on one line, outermost first.
fn error_chain(error: &dyn StdError) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The rustls client configuration of a mode.
fn client_config(mode: SslMode, root: Option<&RootSource>) -> Result<ClientConfig, PgSetupError> {
    // rustls 0.23.48 marks the ring provider deprecated because ring has no post-quantum key exchange; the other
    // provider (aws-lc-rs) would add a C and CMake build to every build of the service. Postgres connections keep
    // the classical key exchanges of ring (X25519, P-256, P-384), as the S3 and webhook clients do through their own
    // rustls set-up.
    #[expect(deprecated, reason = "ring is kept on purpose; see the comment above")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| PgSetupError::InvalidTls(format!("TLS setup: {error}")))?;
    // libpq: `require` with a root certificate given behaves as `verify-ca`.
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, root) {
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => {
            Arc::new(UncheckedCertificate { algorithms })
        }
        // A chain check without the host name against the public roots would accept any publicly trusted
        // certificate, for any domain: whoever holds one could stand in for the database. libpq refuses it too.
        (SslMode::Require | SslMode::VerifyCa, None | Some(RootSource::Builtin)) => {
            return Err(PgSetupError::InvalidTls(
                "sslmode=verify-ca needs sslrootcert naming the CA's certificate file; with the public roots use \
                 sslmode=verify-full, which also checks the host name"
                    .to_owned(),
            ));
        }
        (SslMode::Require | SslMode::VerifyCa, _) => Arc::new(ChainOnly { inner: webpki_verifier(root, &provider)? }),
        (SslMode::VerifyFull, _) => webpki_verifier(root, &provider)?,
    };
    Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
}

/// rustls' standard verifier (chain, validity, host name) over the roots of `sslrootcert`.
fn webpki_verifier(
    root: Option<&RootSource>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, PgSetupError> {
    let mut roots = RootCertStore::empty();
    match root {
        None | Some(RootSource::Builtin) => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(RootSource::File(path)) => {
            let unreadable =
                |error: &dyn fmt::Display| PgSetupError::InvalidTls(format!("sslrootcert {}: {error}", path.display()));
            let certificates = CertificateDer::pem_file_iter(path)
                .map_err(|error| unreadable(&error))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| unreadable(&error))?;
            if certificates.is_empty() {
                return Err(unreadable(&"holds no PEM certificate"));
            }
            for certificate in certificates {
                roots.add(certificate).map_err(|error| unreadable(&error))?;
            }
        }
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|error| PgSetupError::InvalidTls(format!("TLS setup: {error}")))
}

/// `prefer` and `require`: any certificate is accepted (the connection is encrypted, not authenticated), but the
/// handshake signatures are still checked, so the peer holds the key of the certificate it sent.
#[derive(Debug)]
struct UncheckedCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for UncheckedCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full check, except that a certificate naming another host is accepted. rustls checks the
/// chain before the name, so a name error means the chain was good.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The tokio-postgres side of the connector: one rustls configuration, used for every host of the string.
#[derive(Clone)]
struct RustlsConnect {
    config: Arc<ClientConfig>,
}

impl MakeTlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type TlsConnect = RustlsHandshake;
    type Error = BoxError;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsHandshake, BoxError> {
        // An IP address is a valid server name too (it is then checked against the certificate's IP entries). A
        // Unix socket has no host name (the driver passes ""), and no TLS either: the error only matters if a
        // handshake is actually attempted.
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|_| format!("{host:?} is not a host name TLS can check a certificate against"));
        Ok(RustlsHandshake { connector: tokio_rustls::TlsConnector::from(Arc::clone(&self.config)), server_name })
    }
}

/// One handshake, to one host.
struct RustlsHandshake {
    connector: tokio_rustls::TlsConnector,
    server_name: Result<ServerName<'static>, String>,
}

impl TlsConnect<Socket> for RustlsHandshake {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let server_name = self.server_name.map_err(io::Error::other)?;
            let stream = self.connector.connect(server_name, stream).await?;
            Ok(RustlsStream(Box::new(stream)))
        })
    }
}

/// An established TLS stream to Postgres (boxed: the rustls state is large and moves with the connection).
struct RustlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl tokio_postgres::tls::TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // `tls-server-end-point` needs the hash of the certificate's signature algorithm; a wrong one would fail
        // SCRAM, so none is offered.
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self.0.as_mut()).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> SplitUrl {
        split_tls_settings(url).unwrap()
    }

    #[test]
    fn the_default_mode_is_prefer_as_for_libpq() {
        let split = split("postgres://postgres@127.0.0.1:5432/db");
        assert_eq!(split.mode, SslMode::Prefer);
        assert_eq!(split.root, None);
        assert_eq!(split.rest, "postgres://postgres@127.0.0.1:5432/db");
    }

    #[test]
    fn every_libpq_mode_is_read_from_a_url() {
        for (raw, mode) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            assert_eq!(split(&format!("postgres://h/db?sslmode={raw}")).mode, mode, "{raw}");
        }
    }

    #[test]
    fn an_unknown_mode_is_refused_by_name() {
        for bad in ["allow-ish", "REQUIRE", "", "verify_full"] {
            let error = split_tls_settings(&format!("postgres://h/db?sslmode={bad}")).unwrap_err();
            assert!(matches!(error, PgSetupError::InvalidTls(ref message) if message.contains("sslmode")), "{bad}");
        }
    }

    #[test]
    fn the_tls_parameters_leave_the_url_and_the_others_stay_byte_for_byte() {
        let split = split(
            "postgresql://u:p%40ss@db.internal:6432/users?application_name=a%20b&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca%20dir%2Froot.pem&connect_timeout=5",
        );
        assert_eq!(split.mode, SslMode::VerifyFull);
        assert_eq!(split.root, Some(RootSource::File(PathBuf::from("/etc/ca dir/root.pem"))));
        assert_eq!(split.rest, "postgresql://u:p%40ss@db.internal:6432/users?application_name=a%20b&connect_timeout=5");
        let only_tls = self::split("postgres://h/db?sslmode=require");
        assert_eq!(only_tls.rest, "postgres://h/db");
    }

    #[test]
    fn network_bounds_apply_where_the_connection_string_sets_none_and_yield_to_those_it_sets() {
        let defaulted = Connector::from_url("postgres://u@h/db").unwrap().config;
        assert_eq!(defaulted.get_connect_timeout(), Some(&Duration::from_secs(5)));
        assert_eq!(defaulted.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(defaulted.get_keepalives_interval(), Some(Duration::from_secs(10)));
        assert_eq!(defaulted.get_keepalives_retries(), Some(3));
        assert_eq!(defaulted.get_tcp_user_timeout(), Some(&Duration::from_secs(30)));
        let given = "postgres://u@h/db?connect_timeout=2&keepalives_idle=600&keepalives_interval=5\
                     &keepalives_retries=9&tcp_user_timeout=90&sslmode=disable";
        let given = Connector::from_url(given).unwrap().config;
        assert_eq!(given.get_connect_timeout(), Some(&Duration::from_secs(2)));
        assert_eq!(given.get_keepalives_idle(), Duration::from_secs(600));
        assert_eq!(given.get_keepalives_interval(), Some(Duration::from_secs(5)));
        assert_eq!(given.get_keepalives_retries(), Some(9));
        assert_eq!(given.get_tcp_user_timeout(), Some(&Duration::from_secs(90)));
        let key_values = Connector::from_url("host=h connect_timeout=7").unwrap().config;
        assert_eq!(key_values.get_connect_timeout(), Some(&Duration::from_secs(7)));
        assert_eq!(key_values.get_tcp_user_timeout(), Some(&Duration::from_secs(30)));
    }

    #[test]
    fn a_session_setting_comes_after_the_options_the_connection_string_gives() {
        let plain =
            Connector::from_url("postgres://u@db/app").unwrap().with_setting("plan_cache_mode", "force_custom_plan");
        assert_eq!(plain.config.get_options(), Some("-c plan_cache_mode=force_custom_plan"));
        let given = Connector::from_url("postgres://u@db/app?options=-c%20search_path%3Dx").unwrap();
        let added = given.with_setting("plan_cache_mode", "force_custom_plan");
        assert_eq!(added.config.get_options(), Some("-c search_path=x -c plan_cache_mode=force_custom_plan"));
        assert_eq!(given.config.get_options(), Some("-c search_path=x"), "the original is left as it was");
    }

    #[tokio::test]
    async fn a_connection_whose_session_lacks_a_required_setting_is_refused() {
        let database = users_testkit::TestDatabase::create().await;
        let connector = Connector::from_url(&database.url()).unwrap();
        connector.with_setting("plan_cache_mode", "force_custom_plan").connect().await.unwrap();
        // What a pooler that drops the start-up options leaves: the requirement without the option.
        let dropped = connector.requiring_without_asking("plan_cache_mode", "force_custom_plan");
        match dropped.connect().await {
            Err(ConnectionError::BadConnection(message)) => {
                assert!(message.contains("plan_cache_mode is auto, not the force_custom_plan"), "{message}");
            }
            Err(error) => panic!("refused for another reason: {error}"),
            Ok(_) => panic!("a session without the setting was accepted"),
        }
    }

    #[test]
    fn sslrootcert_system_means_the_builtin_roots() {
        assert_eq!(split("postgres://h/db?sslmode=verify-full&sslrootcert=system").root, Some(RootSource::Builtin));
    }

    #[test]
    fn key_value_strings_are_read_with_quotes_and_escapes() {
        let split =
            split(r"host=db  port = 5433 password='it\'s a secret' sslmode=verify-ca sslrootcert='/a b/ca.pem'");
        assert_eq!(split.mode, SslMode::VerifyCa);
        assert_eq!(split.root, Some(RootSource::File(PathBuf::from("/a b/ca.pem"))));
        assert_eq!(split.rest, r"host='db' port='5433' password='it\'s a secret'");
        let config: tokio_postgres::Config = split.rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"it's a secret"[..]));
        assert_eq!(config.get_ports(), &[5433]);
        assert!(split_tls_settings("host=db password='unterminated").is_err());
        assert!(split_tls_settings("host").is_err());
    }

    #[test]
    fn the_driver_sees_require_for_every_mode_that_insists_on_tls() {
        for (url, expected) in [
            ("postgres://h/db?sslmode=disable", tokio_postgres::config::SslMode::Disable),
            ("postgres://h/db", tokio_postgres::config::SslMode::Prefer),
            ("postgres://h/db?sslmode=require", tokio_postgres::config::SslMode::Require),
            ("postgres://h/db?sslmode=verify-full", tokio_postgres::config::SslMode::Require),
        ] {
            let connector = Connector::from_url(url).unwrap();
            assert_eq!(connector.config.get_ssl_mode(), expected, "{url}");
        }
    }

    #[test]
    fn a_chain_check_against_the_public_roots_is_refused() {
        // Without the host name, any publicly trusted certificate for any domain would pass.
        for url in ["postgres://h/db?sslmode=verify-ca", "postgres://h/db?sslmode=require&sslrootcert=system"] {
            let refused = Connector::from_url(url).err().map(|error| error.to_string()).unwrap_or_default();
            assert!(refused.contains("sslrootcert"), "{url}: {refused}");
        }
    }

    #[test]
    fn an_unreadable_root_certificate_file_is_a_setup_error_naming_it() {
        let error =
            Connector::from_url("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").unwrap_err();
        assert!(
            matches!(error, PgSetupError::InvalidTls(ref message) if message.contains("/nonexistent/ca.pem")),
            "{error:?}"
        );
    }

    #[test]
    fn a_root_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("um-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = Connector::from_url(&format!("postgres://h/db?sslmode=verify-ca&sslrootcert={}", path.display()))
            .unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(error, PgSetupError::InvalidTls(ref message) if message.contains("no PEM")), "{error:?}");
    }
}
