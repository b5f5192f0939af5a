//! A structural check of JPEG files: does the marker stream reach its end-of-image marker?
//!
//! The JPEG decoder of the `image` crate (zune-jpeg in lenient mode) fills a truncated scan with grey and reports
//! success, which would store half a picture. Walking the marker segments and the entropy-coded data tells a
//! complete file from a truncated one without decoding a pixel; bytes after the end-of-image marker are allowed
//! here, since re-encoding drops them anyway.

/// Start of image.
const SOI: u8 = 0xD8;
/// End of image.
const EOI: u8 = 0xD9;
/// Start of scan: its segment is followed by entropy-coded data.
const SOS: u8 = 0xDA;

/// Whether `bytes` is a JPEG whose segments and scans run up to an end-of-image marker.
pub(crate) fn reaches_end_of_image(bytes: &[u8]) -> bool {
    if bytes.get(..2) != Some(&[0xFF, SOI]) {
        return false;
    }
    let mut at = 2;
    loop {
        // A marker is 0xFF and a code; any number of 0xFF fill bytes may come first.
        if bytes.get(at) != Some(&0xFF) {
            return false;
        }
        while bytes.get(at) == Some(&0xFF) {
            at += 1;
        }
        let Some(&code) = bytes.get(at) else { return false };
        at += 1;
        match code {
            EOI => return true,
            // Restart markers and TEM stand alone; 0x00 after 0xFF is a stuffed byte, never a marker here.
            0xD0..=0xD7 | 0x01 => {}
            0x00 | SOI => return false,
            _ => {
                let Some(&[high, low]) = bytes.get(at..at + 2) else { return false };
                // The length counts its own two bytes, so anything below 2 cannot be a segment.
                let length = usize::from(u16::from_be_bytes([high, low]));
                if length < 2 {
                    return false;
                }
                at += length;
                if code == SOS {
                    let Some(end) = end_of_entropy_coded_data(bytes, at) else { return false };
                    at = end;
                }
            }
        }
    }
}

/// Where the entropy-coded data starting at `start` ends: the offset of the next marker that is neither a stuffed
/// zero nor a restart marker, or `None` when the data runs off the end of the file.
fn end_of_entropy_coded_data(bytes: &[u8], start: usize) -> Option<usize> {
    let data = bytes.get(start..)?;
    data.windows(2)
        .position(|pair| pair[0] == 0xFF && !matches!(pair[1], 0x00 | 0xD0..=0xD7 | 0xFF))
        .map(|offset| start + offset)
}

#[cfg(test)]
mod tests {
    use image::{DynamicImage, ImageFormat};

    use super::*;
    use crate::test_images::{appended, gradient, jpeg_with_app1, to_bytes};

    fn jpeg() -> Vec<u8> {
        to_bytes(&DynamicImage::ImageRgb8(gradient(64, 48)), ImageFormat::Jpeg)
    }

    #[test]
    fn a_complete_jpeg_reaches_its_end() {
        assert!(reaches_end_of_image(&jpeg()));
        assert!(reaches_end_of_image(&jpeg_with_app1(&jpeg(), 6)));
        assert!(reaches_end_of_image(&appended(&jpeg(), b"<script>alert(1)</script>")));
    }

    #[test]
    fn a_jpeg_cut_anywhere_does_not_reach_its_end() {
        let jpeg = jpeg();
        for length in 0..jpeg.len() {
            assert!(!reaches_end_of_image(&jpeg[..length]), "cut at {length} of {}", jpeg.len());
        }
    }

    #[test]
    fn an_end_marker_inside_a_segment_does_not_count() {
        // An APP segment that carries FF D9 in its payload, as an embedded EXIF thumbnail does, then nothing.
        let fake = [0xFF, SOI, 0xFF, 0xE1, 0x00, 0x06, 0xFF, EOI, 0x00, 0x00];
        assert!(!reaches_end_of_image(&fake));
    }

    #[test]
    fn restart_markers_and_stuffed_bytes_stay_inside_the_scan() {
        let scan = [0xFF, SOS, 0x00, 0x02, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xFF, 0xD9];
        assert!(reaches_end_of_image(&[&[0xFF, SOI][..], &scan].concat()));
        assert!(!reaches_end_of_image(&[&[0xFF, SOI][..], &scan[..scan.len() - 2]].concat()));
    }
}
