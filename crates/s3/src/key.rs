//! Object keys, content types and listing prefixes, checked before either store touches anything.
//!
//! The domain generates every key (`profile_pictures/{user_id}/...`), but a key still turns into a file path in
//! [`crate::FsPictureStore`] and into a URL path in [`crate::S3PictureStore`], where `..`, a leading `/` or a
//! backslash would escape the store's root or the bucket. So both stores accept only keys made of plain, relative
//! segments of `[A-Za-z0-9_.-]`, and refuse everything else before any I/O. The rules are stricter than S3's on
//! purpose: a segment may not start with `.` (which also rules out `.` and `..`), so the file store's hidden
//! temporary and metadata files can never collide with an object, and empty segments are refused, so `a//b` and
//! `a/b` cannot name one file but two S3 objects. Both stores thus agree on which keys exist.

use std::fmt;

/// The longest key accepted, in bytes: S3's own limit.
const MAX_KEY_LEN: usize = 1024;

/// The longest segment accepted, in bytes. File names are limited to 255 bytes, and the file store adds up to
/// about 60 bytes around a segment for its temporary and metadata files.
const MAX_SEGMENT_LEN: usize = 128;

/// The longest content type accepted, in bytes (RFC 6838 allows 127 for each of type and subtype).
const MAX_CONTENT_TYPE_LEN: usize = 255;

/// Why a key, prefix or content type was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub(crate) struct Invalid {
    /// What was checked: "object key", "key prefix" or "content type".
    what: &'static str,
    /// The refused value, escaped by `Debug` so control characters cannot forge log lines.
    value: String,
    /// The rule it broke.
    reason: &'static str,
}

impl Invalid {
    fn key(value: &str, reason: &'static str) -> Self {
        Self { what: "object key", value: truncated(value), reason }
    }

    fn prefix(value: &str, reason: &'static str) -> Self {
        Self { what: "key prefix", value: truncated(value), reason }
    }

    fn content_type(value: &str, reason: &'static str) -> Self {
        Self { what: "content type", value: truncated(value), reason }
    }
}

/// Keeps error messages short when the refused value is huge.
fn truncated(value: &str) -> String {
    value.chars().take(100).collect()
}

/// A key that is safe to use as a relative file path under the store's root and as an S3 object name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectKey(String);

impl ObjectKey {
    /// Checks an untrusted key.
    pub(crate) fn parse(key: &str) -> Result<Self, Invalid> {
        if key.is_empty() {
            return Err(Invalid::key(key, "it is empty"));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(Invalid::key(key, "it is longer than 1024 bytes"));
        }
        for segment in key.split('/') {
            check_segment(segment).map_err(|reason| Invalid::key(key, reason))?;
        }
        Ok(Self(key.to_owned()))
    }

    /// The key as given.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The directory part (all segments but the last), empty for a key of one segment.
    pub(crate) fn parent(&self) -> &str {
        self.0.rsplit_once('/').map_or("", |(parent, _)| parent)
    }

    /// The last segment.
    pub(crate) fn name(&self) -> &str {
        self.0.rsplit_once('/').map_or(self.0.as_str(), |(_, name)| name)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The rules for one complete segment; the error is the reason.
fn check_segment(segment: &str) -> Result<(), &'static str> {
    if segment.is_empty() {
        return Err("it is absolute, or has an empty segment or a trailing slash");
    }
    if segment.len() > MAX_SEGMENT_LEN {
        return Err("a segment is longer than 128 bytes");
    }
    check_chars(segment)?;
    if segment.starts_with('.') {
        return Err("a segment starts with '.' (this includes '.' and '..')");
    }
    Ok(())
}

/// Only `[A-Za-z0-9/_.-]`, which rules out backslashes, control characters, spaces and anything non-ASCII.
fn check_chars(value: &str) -> Result<(), &'static str> {
    if value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'.' | b'-')) {
        Ok(())
    } else {
        Err("it contains a character outside [A-Za-z0-9/_.-]")
    }
}

/// A prefix to list keys by: the start of a key, so its last segment may be partial or empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyPrefix(String);

impl KeyPrefix {
    /// Checks an untrusted prefix. The empty prefix (everything) is allowed.
    pub(crate) fn parse(prefix: &str) -> Result<Self, Invalid> {
        if prefix.len() > MAX_KEY_LEN {
            return Err(Invalid::prefix(prefix, "it is longer than 1024 bytes"));
        }
        let (complete, partial) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        if prefix.contains('/') {
            for segment in complete.split('/') {
                check_segment(segment).map_err(|reason| Invalid::prefix(prefix, reason))?;
            }
        }
        check_chars(partial).map_err(|reason| Invalid::prefix(prefix, reason))?;
        if partial.starts_with('.') {
            return Err(Invalid::prefix(prefix, "a segment starts with '.' (this includes '.' and '..')"));
        }
        Ok(Self(prefix.to_owned()))
    }

    /// The prefix as given.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The complete segments (everything up to the last `/`): the deepest directory every match lies under.
    pub(crate) fn directory(&self) -> &str {
        self.0.rsplit_once('/').map_or("", |(directory, _)| directory)
    }
}

/// Checks a content type before it becomes an HTTP header or a metadata file: visible ASCII and spaces only (no
/// CR or LF that could split a header), not empty, and of a sane length. Its syntax beyond that is the domain's.
pub(crate) fn check_content_type(content_type: &str) -> Result<(), Invalid> {
    if content_type.trim().is_empty() {
        return Err(Invalid::content_type(content_type, "it is empty"));
    }
    if content_type.len() > MAX_CONTENT_TYPE_LEN {
        return Err(Invalid::content_type(content_type, "it is longer than 255 bytes"));
    }
    if !content_type.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(Invalid::content_type(content_type, "it contains a control or non-ASCII character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_the_domain_generates_are_accepted() {
        for key in [
            "profile_pictures/0192f0c2-7b8e-7c3a-9d4e-1a2b3c4d5e6f/original.webp",
            "profile_pictures/0192f0c2-7b8e-7c3a-9d4e-1a2b3c4d5e6f/archive/v1-thumb.png",
            "a",
            "a.b/c_d-e.f",
        ] {
            let parsed = ObjectKey::parse(key).unwrap();
            assert_eq!(parsed.as_str(), key);
        }
    }

    #[test]
    fn hostile_keys_are_refused() {
        for key in [
            "",
            "../x",
            "/etc/passwd",
            "a\\b",
            "a/../../b",
            "a\nb",
            "a\0b",
            "a/./b",
            ".",
            "..",
            "a/..",
            "a//b",
            "a/",
            ".hidden",
            "a/.b.content-type",
            "a b",
            "caf\u{e9}",
            "a%2e%2e/b",
            "a:b",
            "a?b",
            "a#b",
        ] {
            assert!(ObjectKey::parse(key).is_err(), "{key:?} was accepted");
        }
    }

    #[test]
    fn overlong_keys_and_segments_are_refused() {
        assert!(ObjectKey::parse(&"a".repeat(MAX_SEGMENT_LEN)).is_ok());
        assert!(ObjectKey::parse(&"a".repeat(MAX_SEGMENT_LEN + 1)).is_err());
        let long = vec!["a".repeat(100); 11].join("/");
        assert!(long.len() > MAX_KEY_LEN);
        assert!(ObjectKey::parse(&long).is_err());
    }

    #[test]
    fn parent_and_name_split_at_the_last_slash() {
        let key = ObjectKey::parse("a/b/c.png").unwrap();
        assert_eq!((key.parent(), key.name()), ("a/b", "c.png"));
        let key = ObjectKey::parse("c.png").unwrap();
        assert_eq!((key.parent(), key.name()), ("", "c.png"));
    }

    #[test]
    fn prefixes_may_end_in_a_partial_or_empty_segment() {
        for (prefix, directory) in [("", ""), ("pro", ""), ("a/", "a"), ("a/b/c", "a/b"), ("a/b-", "a")] {
            assert_eq!(KeyPrefix::parse(prefix).unwrap().directory(), directory, "{prefix:?}");
        }
    }

    #[test]
    fn hostile_prefixes_are_refused() {
        for prefix in ["/", "/etc", "../", "a/../", "a//", "a\\", "a\n", ".", "a/.", "a/..", "./a"] {
            assert!(KeyPrefix::parse(prefix).is_err(), "{prefix:?} was accepted");
        }
    }

    #[test]
    fn content_types_that_could_split_a_header_are_refused() {
        assert!(check_content_type("image/webp").is_ok());
        assert!(check_content_type("text/plain; charset=utf-8").is_ok());
        for content_type in ["", " ", "image/png\r\nX-Evil: 1", "image/png\0", "image/p\u{e9}g"] {
            assert!(check_content_type(content_type).is_err(), "{content_type:?} was accepted");
        }
        assert!(check_content_type(&"a".repeat(MAX_CONTENT_TYPE_LEN + 1)).is_err());
    }

    #[test]
    fn the_error_message_escapes_the_refused_value() {
        let error = ObjectKey::parse("a\nb").unwrap_err();
        assert!(!error.to_string().contains('\n'), "{error}");
    }
}
