//! Content negotiation for the routes a person may open in a browser: whether a request's `Accept` header
//! prefers `text/html` over `application/json`.
//!
//! A parser of our own rather than a crate: only two media types are ever weighed, and the rules fit in a page.
//! Each media type gets the quality of the most specific range that matches it (`text/html` over `text/*` over
//! `*/*`, as RFC 9110 section 12.5.1 says); a range with an unreadable quality is ignored. HTML wins only when its
//! quality is strictly higher, so no header, `*/*` and anything that ties keep the JSON API clients rely on.

use actix_web::HttpRequest;
use actix_web::http::header;

/// One media range of an `Accept` header with its quality, in thousandths.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Range<'a> {
    kind: &'a str,
    subtype: &'a str,
    quality: u16,
}

/// Whether the request's `Accept` headers prefer `text/html` to `application/json`.
pub fn prefers_html(req: &HttpRequest) -> bool {
    let values: Vec<&str> = req.headers().get_all(header::ACCEPT).filter_map(|value| value.to_str().ok()).collect();
    html_preferred(&values.join(","))
}

/// Whether an `Accept` value (all of a request's `Accept` headers joined with commas) prefers `text/html`.
fn html_preferred(accept: &str) -> bool {
    let ranges: Vec<Range<'_>> = accept.split(',').filter_map(parse_range).collect();
    quality_of(&ranges, "text", "html") > quality_of(&ranges, "application", "json")
}

/// One comma-separated element: `type/subtype` and its parameters, of which only `q` counts. `None` for an empty
/// element, one that is not a media range, or one whose quality does not parse.
fn parse_range(element: &str) -> Option<Range<'_>> {
    let mut parts = element.split(';');
    let (kind, subtype) = parts.next()?.trim().split_once('/')?;
    let (kind, subtype) = (kind.trim(), subtype.trim());
    if kind.is_empty() || subtype.is_empty() || (kind == "*" && subtype != "*") {
        return None;
    }
    let mut quality = 1000;
    for parameter in parts {
        let Some((name, value)) = parameter.split_once('=') else { continue };
        if name.trim().eq_ignore_ascii_case("q") {
            quality = parse_quality(value.trim())?;
        }
    }
    Some(Range { kind, subtype, quality })
}

/// A quality value, `0` to `1` with at most three decimals, in thousandths.
fn parse_quality(raw: &str) -> Option<u16> {
    let (whole, fraction) = raw.split_once('.').unwrap_or((raw, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let thousandths: u16 = format!("{fraction:0<3}").parse().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The quality of `kind/subtype`: that of the most specific matching range, zero when none matches.
fn quality_of(ranges: &[Range<'_>], kind: &str, subtype: &str) -> u16 {
    ranges
        .iter()
        .filter_map(|range| {
            let kind_matches = range.kind == "*" || range.kind.eq_ignore_ascii_case(kind);
            let subtype_matches = range.subtype == "*" || range.subtype.eq_ignore_ascii_case(subtype);
            let specificity = u8::from(range.kind != "*") + u8::from(range.subtype != "*");
            (kind_matches && subtype_matches).then_some((specificity, range.quality))
        })
        .max_by_key(|(specificity, _)| *specificity)
        .map_or(0, |(_, quality)| quality)
}

#[cfg(test)]
mod tests {
    use super::html_preferred;

    #[test]
    fn browsers_get_html() {
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        let chrome = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,\
                      image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";
        assert!(html_preferred(firefox));
        assert!(html_preferred(chrome));
        assert!(html_preferred("TEXT/HTML"));
        assert!(html_preferred("text/*"));
    }

    #[test]
    fn api_clients_and_ties_keep_json() {
        for accept in ["", "*/*", "application/json", "application/*", "text/html, application/json", "nonsense"] {
            assert!(!html_preferred(accept), "{accept:?}");
        }
    }

    #[test]
    fn qualities_decide() {
        assert!(html_preferred("application/json;q=0.5, text/html"));
        assert!(!html_preferred("application/json, text/html;q=0.9"));
        assert!(!html_preferred("text/html;q=0, */*"));
        assert!(html_preferred("text/html;q=0.001, application/json;q=0"));
        assert!(html_preferred("text/html ; Q=1.000 , application/json ; q=0.999"));
        // The most specific range decides, whatever its order.
        assert!(!html_preferred("text/html;q=0.1, */*;q=0.9"));
        assert!(html_preferred("*/*;q=0.1, text/*;q=0.5"));
    }

    #[test]
    fn unreadable_qualities_are_ignored() {
        for bad in ["2", "1.5", "0.1234", "-0.5", "abc", "", ".5"] {
            assert!(!html_preferred(&format!("text/html;q={bad}")), "q={bad}");
        }
    }
}
