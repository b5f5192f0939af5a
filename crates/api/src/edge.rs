//! What the edge learns from in front of it: the client's address behind trusted proxies, and CORS for browser apps
//! on other origins.
//!
//! **Client address.** Forwarding headers are believed only from `TRUSTED_PROXIES`: when the TCP peer is inside
//! one of those networks, the client is the right-most `X-Forwarded-For` entry that is not (each proxy appends the
//! address it received from, so entries left of the first untrusted one were written by the client and prove
//! nothing). An entry that does not parse as an address stops the walk: the last trusted hop is used instead, so a
//! forged header can never pick an address. From any other peer, forwarding headers are ignored.
//!
//! **CORS.** Written here rather than taken from `actix-cors`: the policy is a few lines (exact origins, no
//! credentials, the two request headers the API reads, the response headers a script may read), and this way the
//! exposed headers go to listed origins only and a refused preflight needs no error path of its own. A request from
//! an origin not on the list is served as if CORS did not exist: it gets no CORS headers, so a browser keeps the
//! answer from the page (same-origin requests from `/docs` are unaffected), and a preflight from it falls through to
//! the route (405, no CORS headers).

use std::net::IpAddr;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};
use ipnet::IpNet;

/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";
/// The methods the API answers.
const ALLOWED_METHODS: &str = "GET, POST, PATCH, PUT, DELETE";
/// The request headers a browser app needs beyond the simple ones.
const ALLOWED_HEADERS: &str = "authorization, content-type";
/// The response headers a browser app may read beyond the simple ones.
const EXPOSED_HEADERS: &str = "retry-after, x-request-id, etag, www-authenticate";

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the right-most forwarded address that
/// is not one (see the module docs). `forwarded` yields the `X-Forwarded-For` header values in order.
pub fn client_address<'a>(peer: IpAddr, forwarded: impl Iterator<Item = &'a str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |address: IpAddr| trusted.iter().any(|net| net.contains(&canonical(address)));
    if !is_trusted(peer) {
        return peer;
    }
    let entries: Vec<&str> = forwarded.flat_map(|value| value.split(',')).map(str::trim).collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(address) = parse_entry(entry) else { break };
        client = address;
        if !is_trusted(address) {
            break;
        }
    }
    client
}

/// An IPv4 address mapped into IPv6 (`::ffff:10.0.0.1`, as a dual-stack listener reports IPv4 peers) compares as
/// the IPv4 address it is.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    }
}

/// One `X-Forwarded-For` entry: an address, possibly bracketed (`[::1]`) or with a port (`1.2.3.4:5678`,
/// `[::1]:80`), as some proxies write them.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(address) = entry.parse::<IpAddr>() {
        return Some(canonical(address));
    }
    if let Ok(socket) = entry.parse::<std::net::SocketAddr>() {
        return Some(canonical(socket.ip()));
    }
    entry.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).and_then(|inner| inner.parse().ok()).map(canonical)
}

/// The edge's view of who sent a request, from the trusted proxies it was configured with.
#[derive(Debug, Clone, Default)]
pub struct ClientAddresses {
    trusted: Vec<IpNet>,
}

impl ClientAddresses {
    /// Believes forwarding headers from these networks only.
    #[must_use]
    pub const fn new(trusted: Vec<IpNet>) -> Self {
        Self { trusted }
    }

    /// The client's address for a request, `None` when the connection has no peer address (tests).
    #[must_use]
    pub fn of(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = canonical(req.peer_addr()?.ip());
        let forwarded = req.headers().get_all("x-forwarded-for").filter_map(|value| value.to_str().ok());
        Some(client_address(peer, forwarded, &self.trusted))
    }
}

/// The origins a browser app may call the API from.
#[derive(Debug, Clone, Default)]
pub struct CorsPolicy {
    origins: Vec<String>,
}

impl CorsPolicy {
    /// Allows exactly these origins (as browsers send them); none, no CORS at all.
    #[must_use]
    pub const fn new(origins: Vec<String>) -> Self {
        Self { origins }
    }

    fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|allowed| allowed == origin)
    }
}

/// The CORS middleware: answers preflights of allowed origins and marks the answers to them (see the module docs).
///
/// # Errors
/// Whatever the inner service fails with.
pub async fn cors<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let allowed_origin = req
        .app_data::<web::Data<CorsPolicy>>()
        .zip(req.headers().get(header::ORIGIN))
        .filter(|(policy, origin)| origin.to_str().is_ok_and(|origin| policy.allows(origin)))
        .map(|(_, origin)| origin.clone());
    let Some(origin) = allowed_origin else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let preflight =
        req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let response = HttpResponse::build(StatusCode::NO_CONTENT)
            .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin))
            .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, ALLOWED_METHODS))
            .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOWED_HEADERS))
            .insert_header((header::ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE))
            .insert_header((header::VARY, "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"))
            .finish();
        return Ok(req.into_response(response).map_into_boxed_body());
    }
    // Handlers' and extractors' errors arrive rendered (problems), so they get the headers too. (The request cannot
    // be kept aside to render an `Err` here: routing needs it unshared.)
    let mut response = next.call(req).await?.map_into_boxed_body();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED_HEADERS));
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|_| unreachable!("{text}"))
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|net| net.parse().unwrap_or_else(|_| unreachable!("{net}"))).collect()
    }

    #[test]
    fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
        let trusted = nets(&["10.0.0.0/8"]);
        let client = client_address(ip("203.0.113.9"), ["198.51.100.1"].into_iter(), &trusted);
        assert_eq!(client, ip("203.0.113.9"));
        assert_eq!(client_address(ip("10.0.0.2"), ["198.51.100.1"].into_iter(), &[]), ip("10.0.0.2"));
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_entry_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "fd00::/8"]);
        // The client forged the first entry; the proxy appended what it saw.
        let forwarded = ["1.1.1.1, 198.51.100.7", "10.0.0.5"];
        assert_eq!(client_address(ip("10.0.0.1"), forwarded.into_iter(), &trusted), ip("198.51.100.7"));
        // Ports and brackets, as some proxies write them.
        assert_eq!(client_address(ip("10.0.0.1"), ["198.51.100.7:5555"].into_iter(), &trusted), ip("198.51.100.7"));
        assert_eq!(client_address(ip("fd00::1"), ["[2001:db8::1]:80"].into_iter(), &trusted), ip("2001:db8::1"));
        // An IPv4 peer on a dual-stack socket.
        assert_eq!(client_address(ip("::ffff:10.0.0.1"), ["192.0.2.4"].into_iter(), &trusted), ip("192.0.2.4"));
    }

    #[test]
    fn garbage_or_missing_entries_never_pick_an_address() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(client_address(ip("10.0.0.1"), std::iter::empty(), &trusted), ip("10.0.0.1"));
        assert_eq!(client_address(ip("10.0.0.1"), ["not-an-ip"].into_iter(), &trusted), ip("10.0.0.1"));
        // Garbage left of a real entry is never reached; garbage right of it stops the walk at the last trusted hop.
        assert_eq!(client_address(ip("10.0.0.1"), ["junk, 192.0.2.4"].into_iter(), &trusted), ip("192.0.2.4"));
        assert_eq!(client_address(ip("10.0.0.1"), ["192.0.2.4, junk"].into_iter(), &trusted), ip("10.0.0.1"));
        // Every hop trusted: the left-most one is as far as anyone can tell.
        assert_eq!(client_address(ip("10.0.0.1"), ["10.1.1.1, 10.2.2.2"].into_iter(), &trusted), ip("10.1.1.1"));
    }
}
