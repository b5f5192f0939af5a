//! Which of the accepted formats an upload is, judged from its magic bytes with `infer`, never from a name or a
//! declared content type.

use image::ImageFormat;
use users_domain::ports::ImageError;

/// The accepted upload formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceFormat {
    Jpeg,
    Png,
    Gif,
    WebP,
}

/// How a processed picture is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutputFormat {
    Jpeg,
    Png,
}

impl SourceFormat {
    /// Detects the format from the content.
    ///
    /// Everything that `infer` does not recognise as one of the four accepted image types (SVG, HTML, PDF, text,
    /// empty input, other image types) is refused here, before any decoder sees it.
    pub(crate) fn detect(bytes: &[u8]) -> Result<Self, ImageError> {
        match infer::get(bytes).map(|kind| kind.mime_type()) {
            Some("image/jpeg") => Ok(Self::Jpeg),
            Some("image/png") => Ok(Self::Png),
            Some("image/gif") => Ok(Self::Gif),
            Some("image/webp") => Ok(Self::WebP),
            _ => Err(ImageError::UnsupportedType),
        }
    }

    /// The decoder to use: always the detected format, so the `image` crate never guesses on its own.
    pub(crate) const fn image_format(self) -> ImageFormat {
        match self {
            Self::Jpeg => ImageFormat::Jpeg,
            Self::Png => ImageFormat::Png,
            Self::Gif => ImageFormat::Gif,
            Self::WebP => ImageFormat::WebP,
        }
    }

    /// The name used in messages to the uploader.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "JPEG",
            Self::Png => "PNG",
            Self::Gif => "GIF",
            Self::WebP => "WebP",
        }
    }

    /// The refusal of a file of this type that does not decode: it names the type and nothing of the decoder's
    /// internals.
    pub(crate) fn undecodable(self) -> ImageError {
        ImageError::Invalid(format!("the file does not decode as {}", self.name()))
    }

    /// Photos stay JPEG; the other formats may carry transparency or sharp-edged art, which PNG keeps losslessly.
    pub(crate) const fn output(self) -> OutputFormat {
        match self {
            Self::Jpeg => OutputFormat::Jpeg,
            Self::Png | Self::Gif | Self::WebP => OutputFormat::Png,
        }
    }
}

impl OutputFormat {
    /// The stored content type.
    pub(crate) const fn content_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes_decide_the_format() {
        assert_eq!(SourceFormat::detect(&[0xFF, 0xD8, 0xFF, 0xE0]), Ok(SourceFormat::Jpeg));
        assert_eq!(SourceFormat::detect(b"\x89PNG\r\n\x1a\n"), Ok(SourceFormat::Png));
        assert_eq!(SourceFormat::detect(b"GIF89a"), Ok(SourceFormat::Gif));
        assert_eq!(SourceFormat::detect(b"RIFF\0\0\0\0WEBPVP8 "), Ok(SourceFormat::WebP));
    }

    #[test]
    fn other_content_is_an_unsupported_type() {
        for bytes in [
            &b""[..],
            b"hello, world",
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
            b"%PDF-1.7\n",
            b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0",
            b"II*\0\x08\0\0\0\0\0\0\0",
        ] {
            assert_eq!(SourceFormat::detect(bytes), Err(ImageError::UnsupportedType), "{bytes:?}");
        }
    }
}
