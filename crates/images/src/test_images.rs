//! Test inputs built in code: generated pictures, JPEGs with hand-made EXIF segments, and PNG headers that lie
//! about their size. No fixture files, so every byte a test feeds the pipeline is visible in the source.

use std::io::Cursor;

use image::codecs::gif::GifEncoder;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

/// A colourful picture, so encoders have real content to work on.
pub(crate) fn gradient(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        Rgb([(x * 255 / width.max(1)) as u8, (y * 255 / height.max(1)) as u8, ((x + y) % 256) as u8])
    })
}

/// `picture` encoded as `format` by the `image` crate.
pub(crate) fn to_bytes(picture: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    if format == ImageFormat::Gif {
        // The default GIF speed runs the colour quantiser at its most thorough, which takes seconds unoptimised;
        // the fastest setting is plenty for a test picture.
        picture.write_with_encoder(GifEncoder::new_with_speed(&mut bytes, 30)).unwrap();
    } else {
        picture.write_to(&mut bytes, format).unwrap();
    }
    bytes.into_inner()
}

/// `file` with `payload` glued on after its end.
pub(crate) fn appended(file: &[u8], payload: &[u8]) -> Vec<u8> {
    [file, payload].concat()
}

/// A JPEG APP1 payload (`Exif\0\0` and a big-endian TIFF structure) with the given orientation in IFD0 and a GPS
/// IFD holding a latitude and longitude reference, the part of a phone photo that gives away where it was taken.
pub(crate) fn exif_app1(orientation: u16) -> Vec<u8> {
    const SHORT: u16 = 3;
    const LONG: u16 = 4;
    const ASCII: u16 = 2;
    fn entry(tag: u16, kind: u16, count: u32, value: [u8; 4]) -> Vec<u8> {
        [&tag.to_be_bytes()[..], &kind.to_be_bytes(), &count.to_be_bytes(), &value].concat()
    }
    // TIFF header (8 bytes), then IFD0 at offset 8: a count, two 12-byte entries and the next-IFD offset.
    let gps_ifd_offset: u32 = 8 + 2 + 2 * 12 + 4;
    let [o1, o2] = orientation.to_be_bytes();
    let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08".to_vec();
    exif.extend(2u16.to_be_bytes());
    exif.extend(entry(0x0112, SHORT, 1, [o1, o2, 0, 0]));
    exif.extend(entry(0x8825, LONG, 1, gps_ifd_offset.to_be_bytes()));
    exif.extend(0u32.to_be_bytes());
    exif.extend(2u16.to_be_bytes());
    exif.extend(entry(0x0001, ASCII, 2, *b"N\0\0\0"));
    exif.extend(entry(0x0003, ASCII, 2, *b"E\0\0\0"));
    exif.extend(0u32.to_be_bytes());
    exif
}

/// `jpeg` with an APP1 EXIF segment (see [`exif_app1`]) spliced in right after the SOI marker.
pub(crate) fn jpeg_with_app1(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    assert_eq!(jpeg[..2], [0xFF, 0xD8]);
    let payload = exif_app1(orientation);
    let length = u16::try_from(payload.len() + 2).unwrap();
    [&jpeg[..2], &[0xFF, 0xE1], &length.to_be_bytes(), &payload, &jpeg[2..]].concat()
}

/// The PNG signature, an IHDR claiming `width` x `height` 8-bit RGBA, a one-row IDAT and IEND: tiny on disk,
/// enormous once decoded.
pub(crate) fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = [&width.to_be_bytes()[..], &height.to_be_bytes()].concat();
    ihdr.extend([8, 6, 0, 0, 0]);
    // A zlib stream of a few zero bytes: valid, and nowhere near enough pixels.
    let idat = [0x78, 0x9C, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01];
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(b"IHDR", &ihdr[..]), (b"IDAT", &idat[..]), (b"IEND", &[][..])] {
        png.extend(u32::try_from(data.len()).unwrap().to_be_bytes());
        let typed = [&kind[..], data].concat();
        png.extend(&typed);
        png.extend(crc32(&typed).to_be_bytes());
    }
    png
}

/// The chunk types of a PNG in file order.
pub(crate) fn png_chunk_types(png: &[u8]) -> Vec<String> {
    assert_eq!(png[..8], *b"\x89PNG\r\n\x1a\n");
    let mut types = Vec::new();
    let mut at = 8;
    while at < png.len() {
        let length = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        types.push(String::from_utf8_lossy(&png[at + 4..at + 8]).into_owned());
        at += 12 + length;
    }
    assert_eq!(at, png.len(), "chunks must end exactly at the end of the file");
    types
}

/// CRC-32 (ISO-HDLC) as PNG chunks use it; bitwise, because a handful of chunks need no table.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn crc32_matches_the_reference_check_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}
