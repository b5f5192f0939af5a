//! The CPU-bound part of the pipeline: decode an upload within limits, orient it, and re-encode the three sizes.
//!
//! Everything here is synchronous and runs on the picture threads (see [`crate::pipeline`]). Nothing of the
//! uploaded file survives but its pixels: the output is encoded afresh, so metadata and appended payloads are
//! dropped by construction rather than by stripping.

use std::io::Cursor;

use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{ColorType, DynamicImage, ImageDecoder, ImageReader, Limits};
use users_domain::ports::{
    EncodedImage, ImageError, MAX_DIMENSION, MAX_PIXELS, MEDIUM_EDGE, MIN_DIMENSION, ORIGINAL_EDGE, ProcessedImage,
    THUMB_EDGE,
};

use crate::format::{OutputFormat, SourceFormat};
use crate::jpeg;

/// JPEG quality of every stored size: visually clean for photos at a fraction of the upload's size.
const JPEG_QUALITY: u8 = 85;

/// What a decoder may allocate: the pixel budget at four bytes per pixel, plus headroom for the decoders' own
/// buffers. The headroom also admits 16-bit RGB at the full pixel budget; only 16-bit RGBA, at eight bytes per
/// pixel, is capped below it (at about 12.5 million pixels).
const MAX_ALLOC: u64 = MAX_PIXELS * 4 + 32 * 1024 * 1024;

/// Decodes `bytes` (already detected as `format`) and re-encodes every size.
pub(crate) fn process(format: SourceFormat, bytes: &[u8]) -> Result<ProcessedImage, ImageError> {
    let (decoded, orientation, source) = decode(format, bytes)?;
    let output = format.output();
    let decoded = normalise(decoded, output);

    // The bounding boxes are square, so fitting before orienting gives the same size as the other way round, and
    // rotating the fitted image is far cheaper than rotating a full-size decode.
    let mut original = fit_source(decoded, source, ORIGINAL_EDGE);
    original.apply_orientation(orientation);
    // Each size is scaled from the previous one: at these ratios the difference from scaling the upload itself is
    // negligible, and the filter runs over at most 1024 px instead of up to 5000.
    let medium = fit(original.clone(), MEDIUM_EDGE);
    let thumb = fit(medium.clone(), THUMB_EDGE);

    Ok(ProcessedImage {
        original: encode(&original, output)?,
        medium: encode(&medium, output)?,
        thumb: encode(&thumb, output)?,
    })
}

/// Decodes with `format`'s decoder under [`limits`], refusing bad dimensions from the header before any pixel is
/// decoded, and returns the image with the orientation its metadata asks for and the upload's own dimensions (a large
/// JPEG is decoded at a reduced scale, see [`decode_jpeg_scaled`]).
fn decode(format: SourceFormat, bytes: &[u8]) -> Result<(DynamicImage, Orientation, (u32, u32)), ImageError> {
    // The JPEG decoder is lenient about missing data, so completeness is checked on the structure first.
    if format == SourceFormat::Jpeg && !jpeg::reaches_end_of_image(bytes) {
        return Err(format.undecodable());
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.image_format());
    reader.limits(limits());
    // Building the decoder reads only the header, and it already enforces the per-edge maximum of the limits.
    let mut decoder = reader.into_decoder().map_err(|err| refusal(format, &err))?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height)?;
    // `from_decoder` allocates this buffer without consulting the limits, so the budget is checked here.
    if decoder.total_bytes() > MAX_ALLOC {
        return Err(ImageError::Invalid(format!("{width}x{height} px at this colour depth is over the memory budget")));
    }
    // Unreadable orientation metadata is not worth refusing an otherwise good picture for.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    // Every check above has passed on the header, so the scaled decode only ever sees files the full one would take.
    if format == SourceFormat::Jpeg
        && let Some(image) = decode_jpeg_scaled(bytes, width, height)
    {
        return Ok((image, orientation, (width, height)));
    }
    let image = DynamicImage::from_decoder(decoder).map_err(|err| refusal(format, &err))?;
    Ok((image, orientation, (width, height)))
}

/// The DCT scale denominator (1, 2, 4 or 8) for a JPEG of `width` x `height`: the largest that still leaves the
/// longer edge at least [`ORIGINAL_EDGE`], so the stored original loses nothing to the reduced decode.
fn jpeg_scale(width: u32, height: u32) -> u32 {
    let longer = width.max(height);
    // The decoder rounds a scaled edge up, as `div_ceil` does.
    [8, 4, 2].into_iter().find(|&denominator| longer.div_ceil(denominator) >= ORIGINAL_EDGE).unwrap_or(1)
}

/// Decodes a JPEG of (already checked) `width` x `height` at [`jpeg_scale`], which skips most of the inverse DCT and
/// colour conversion of a large photo. `None` when no reduction applies or anything is unusual (CMYK or 16-bit
/// pixels, a decoder error, an unexpected size): the caller then decodes at full size as before, so this path never
/// refuses a file the full decode would take, and the full decode keeps the last word on refusals.
fn decode_jpeg_scaled(bytes: &[u8], width: u32, height: u32) -> Option<DynamicImage> {
    let denominator = jpeg_scale(width, height);
    if denominator == 1 {
        return None;
    }
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.set_max_decoding_buffer_size(usize::try_from(MAX_ALLOC).ok()?);
    decoder
        .read_info()
        .inspect_err(|err| tracing::debug!(error = %err, "scaled JPEG decode unavailable, decoding at full size"))
        .ok()?;
    // Another header reading than the `image` crate's would be a reason to trust neither with a shortcut.
    let header = decoder.info()?;
    if (u32::from(header.width), u32::from(header.height)) != (width, height) {
        return None;
    }
    let requested = (width.div_ceil(denominator), height.div_ceil(denominator));
    let scaled = decoder.scale(u16::try_from(requested.0).ok()?, u16::try_from(requested.1).ok()?).ok()?;
    let scaled = (u32::from(scaled.0), u32::from(scaled.1));
    if scaled != requested {
        return None;
    }
    let pixels = decoder
        .decode()
        .inspect_err(|err| tracing::debug!(error = %err, "scaled JPEG decode failed, decoding at full size"))
        .ok()?;
    match header.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => {
            image::RgbImage::from_raw(scaled.0, scaled.1, pixels).map(DynamicImage::ImageRgb8)
        }
        jpeg_decoder::PixelFormat::L8 => {
            image::GrayImage::from_raw(scaled.0, scaled.1, pixels).map(DynamicImage::ImageLuma8)
        }
        // CMYK needs the Adobe inversion rules the full decoder already applies; 16-bit is lossless JPEG, rare in
        // photos. Neither is worth a second conversion path.
        jpeg_decoder::PixelFormat::CMYK32 | jpeg_decoder::PixelFormat::L16 => None,
    }
}

/// The decoding limits: no edge over [`MAX_DIMENSION`], no allocation over [`MAX_ALLOC`].
fn limits() -> Limits {
    // `Limits` is non-exhaustive, so it is built from the default rather than with a struct literal.
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_ALLOC);
    limits
}

/// Refuses dimensions outside the accepted edge range or over the pixel budget.
fn check_dimensions(width: u32, height: u32) -> Result<(), ImageError> {
    let edge = MIN_DIMENSION..=MAX_DIMENSION;
    if !edge.contains(&width) || !edge.contains(&height) {
        return Err(ImageError::Invalid(format!(
            "{width}x{height} px is outside {MIN_DIMENSION}..={MAX_DIMENSION} px per edge"
        )));
    }
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(ImageError::Invalid(format!("{width}x{height} px is over the budget of {MAX_PIXELS} pixels")));
    }
    Ok(())
}

/// Translates a decoder failure into a refusal the uploader may read.
fn refusal(format: SourceFormat, err: &image::ImageError) -> ImageError {
    // The decoder's own words help whoever investigates a refused upload, but they are not the uploader's business.
    tracing::debug!(format = format.name(), error = %err, "upload refused by the decoder");
    match err {
        image::ImageError::Limits(_) => ImageError::Invalid(format!(
            "the image is over {MAX_DIMENSION} px per edge or needs more memory than allowed"
        )),
        _ => format.undecodable(),
    }
}

/// Converts to the 8-bit pixel layout the output encoder takes, so 16-bit and grey-alpha sources are handled once.
fn normalise(image: DynamicImage, output: OutputFormat) -> DynamicImage {
    match output {
        OutputFormat::Jpeg => DynamicImage::ImageRgb8(image.into_rgb8()),
        OutputFormat::Png => match image.color() {
            ColorType::L8 | ColorType::L16 => DynamicImage::ImageLuma8(image.into_luma8()),
            ColorType::La8 | ColorType::La16 => DynamicImage::ImageLumaA8(image.into_luma_alpha8()),
            color if color.has_alpha() => DynamicImage::ImageRgba8(image.into_rgba8()),
            _ => DynamicImage::ImageRgb8(image.into_rgb8()),
        },
    }
}

/// Fits `image`, decoded from an upload of `source` dimensions, within `edge` x `edge`. A reduced-scale decode has
/// rounded its edges up, so it is resized to exactly the size the full-size upload would have been fitted to: the
/// output does not depend on which decoding path was taken.
fn fit_source(image: DynamicImage, source: (u32, u32), edge: u32) -> DynamicImage {
    if (image.width(), image.height()) == source {
        return fit(image, edge);
    }
    let (width, height) = fitted_size(source, edge);
    resized(&image, width, height)
}

/// The size `image`'s `resize` gives `source` within `edge` x `edge`: the aspect ratio kept, each edge rounded to
/// the nearest pixel and at least one.
fn fitted_size((width, height): (u32, u32), edge: u32) -> (u32, u32) {
    let ratio = (f64::from(edge) / f64::from(width)).min(f64::from(edge) / f64::from(height));
    let scale = |side: u32| {
        // At most `edge` (a u32) after rounding, so the cast cannot truncate.
        let scaled = (f64::from(side) * ratio).round() as u32;
        scaled.max(1)
    };
    (scale(width), scale(height))
}

/// Scales `image` down to fit within `edge` x `edge`, keeping the aspect ratio; an image that fits is kept as is,
/// never enlarged.
fn fit(image: DynamicImage, edge: u32) -> DynamicImage {
    if image.width().max(image.height()) <= edge {
        image
    } else {
        let (width, height) = fitted_size((image.width(), image.height()), edge);
        resized(&image, width, height)
    }
}

/// `image` scaled to exactly `width` x `height` with a Catmull-Rom filter (downscaled photos stay sharp at about half
/// the cost of Lanczos3), by `fast_image_resize`, whose SIMD convolution (AVX2 or SSE4.1, chosen at run time) is many
/// times faster than `image`'s; alpha is premultiplied while filtering, so transparent edges do not darken. A pixel
/// layout it does not take falls back to `image`'s own resize.
fn resized(image: &DynamicImage, width: u32, height: u32) -> DynamicImage {
    use fast_image_resize::{FilterType as Filter, ResizeAlg, ResizeOptions, Resizer};
    let mut scaled = DynamicImage::new(width, height, image.color());
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(Filter::CatmullRom));
    match Resizer::new().resize(image, &mut scaled, &options) {
        Ok(()) => scaled,
        Err(_) => image.resize_exact(width, height, FilterType::CatmullRom),
    }
}

/// Encodes one size with a fresh encoder, which writes pixels only: no EXIF, XMP or ICC payload is ever set.
fn encode(image: &DynamicImage, output: OutputFormat) -> Result<EncodedImage, ImageError> {
    let mut bytes = Vec::new();
    let written = match output {
        OutputFormat::Jpeg => encode_jpeg(image, &mut bytes),
        OutputFormat::Png => image
            .write_with_encoder(PngEncoder::new_with_quality(&mut bytes, CompressionType::Default, PngFilter::Adaptive))
            .map_err(|err| err.to_string()),
    };
    // Encoding pixels we decoded ourselves into memory has no expected failure; should one happen, the upload is
    // refused rather than stored half-written, and the cause is logged for us.
    written.map_err(|err| {
        tracing::error!(error = %err, "re-encoding a decoded picture failed");
        ImageError::Invalid("the image could not be re-encoded".to_owned())
    })?;
    Ok(EncodedImage { bytes, content_type: output.content_type(), width: image.width(), height: image.height() })
}

/// Encodes `image` (RGB, as [`normalise`] makes every JPEG output) as a baseline JPEG of [`JPEG_QUALITY`] with
/// `jpeg-encoder`: the standard quantisation tables scaled by the quality and, below quality 90, chroma at half
/// resolution each way (4:2:0), as libjpeg does by default for photos.
fn encode_jpeg(image: &DynamicImage, bytes: &mut Vec<u8>) -> Result<(), String> {
    let rgb = match image {
        DynamicImage::ImageRgb8(rgb) => std::borrow::Cow::Borrowed(rgb),
        other => std::borrow::Cow::Owned(other.to_rgb8()),
    };
    let width = u16::try_from(rgb.width()).map_err(|_| format!("{} px is too wide for JPEG", rgb.width()))?;
    let height = u16::try_from(rgb.height()).map_err(|_| format!("{} px is too high for JPEG", rgb.height()))?;
    jpeg_encoder::Encoder::new(bytes, JPEG_QUALITY)
        .encode(rgb.as_raw(), width, height, jpeg_encoder::ColorType::Rgb)
        .map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use image::{ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

    use super::*;
    use crate::test_images::{
        appended, exif_app1, gradient, jpeg_with_app1, png_chunk_types, png_header_only, to_bytes,
    };

    fn run(bytes: &[u8]) -> Result<ProcessedImage, ImageError> {
        process(SourceFormat::detect(bytes)?, bytes)
    }

    fn is_invalid(result: Result<ProcessedImage, ImageError>) -> bool {
        matches!(result, Err(ImageError::Invalid(_)))
    }

    /// Decodes an output with the format its bytes say it is, checking the declared size on the way.
    fn reopen(encoded: &EncodedImage) -> DynamicImage {
        let format = SourceFormat::detect(&encoded.bytes).unwrap();
        assert_eq!(format.output().content_type(), encoded.content_type);
        let image = image::load_from_memory_with_format(&encoded.bytes, format.image_format()).unwrap();
        assert_eq!((image.width(), image.height()), (encoded.width, encoded.height));
        image
    }

    fn sizes(processed: &ProcessedImage) -> [(u32, u32); 3] {
        [&processed.original, &processed.medium, &processed.thumb].map(|size| (size.width, size.height))
    }

    /// A 1200x800 upload in `format` comes out as three sizes of the right edges, all of `content_type`.
    fn assert_three_sizes(format: ImageFormat, content_type: &str) {
        let processed = run(&to_bytes(&DynamicImage::ImageRgb8(gradient(1200, 800)), format)).unwrap();
        assert_eq!(sizes(&processed), [(1024, 683), (256, 171), (64, 43)]);
        for size in [&processed.original, &processed.medium, &processed.thumb] {
            assert_eq!(size.content_type, content_type);
            reopen(size);
        }
    }

    #[test]
    fn a_jpeg_size_decodes_to_the_same_dimensions_and_close_colours() {
        // A smooth gradient (as in a photo), not the test helper's third channel, which wraps every 256 px.
        let smooth = RgbImage::from_fn(300, 200, |x, y| Rgb([(x * 255 / 300) as u8, (y * 255 / 200) as u8, 128]));
        let source = DynamicImage::ImageRgb8(smooth);
        let encoded = encode(&source, OutputFormat::Jpeg).unwrap();
        assert_eq!((encoded.content_type, encoded.width, encoded.height), ("image/jpeg", 300, 200));
        let decoded = image::load_from_memory_with_format(&encoded.bytes, ImageFormat::Jpeg).unwrap().into_rgb8();
        assert_eq!(decoded.dimensions(), (300, 200));
        let original = source.to_rgb8();
        let mean_error =
            decoded.as_raw().iter().zip(original.as_raw()).map(|(a, b)| u64::from(a.abs_diff(*b))).sum::<u64>()
                / original.as_raw().len() as u64;
        assert!(mean_error <= 3, "mean error {mean_error} per channel at quality {JPEG_QUALITY}");
        // A grey picture (from a PNG, say) is encoded through RGB all the same.
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(40, 30, image::Luma([90])));
        let encoded = encode(&grey, OutputFormat::Jpeg).unwrap();
        let decoded = image::load_from_memory_with_format(&encoded.bytes, ImageFormat::Jpeg).unwrap().into_rgb8();
        assert!(decoded.pixels().all(|pixel| pixel.0.iter().all(|channel| channel.abs_diff(90) <= 2)));
    }

    #[test]
    fn a_jpeg_becomes_three_jpeg_sizes() {
        assert_three_sizes(ImageFormat::Jpeg, "image/jpeg");
    }

    #[test]
    fn a_png_becomes_three_png_sizes() {
        assert_three_sizes(ImageFormat::Png, "image/png");
    }

    #[test]
    fn a_gif_becomes_three_png_sizes() {
        assert_three_sizes(ImageFormat::Gif, "image/png");
    }

    #[test]
    fn a_webp_becomes_three_png_sizes() {
        assert_three_sizes(ImageFormat::WebP, "image/png");
    }

    #[test]
    fn portrait_images_fit_by_their_height() {
        let processed = run(&to_bytes(&DynamicImage::ImageRgb8(gradient(300, 1500)), ImageFormat::Png)).unwrap();
        assert_eq!(sizes(&processed), [(205, 1024), (51, 256), (13, 64)]);
    }

    #[test]
    fn a_small_image_is_never_upscaled() {
        let processed = run(&to_bytes(&DynamicImage::ImageRgb8(gradient(40, 30)), ImageFormat::Jpeg)).unwrap();
        assert_eq!(sizes(&processed), [(40, 30); 3]);
    }

    #[test]
    fn the_smallest_accepted_image_is_processed() {
        let processed = run(&to_bytes(&DynamicImage::ImageRgb8(gradient(10, 10)), ImageFormat::Png)).unwrap();
        assert_eq!(sizes(&processed), [(10, 10); 3]);
    }

    #[test]
    fn jpeg_output_is_rgb_with_nothing_after_the_end_marker() {
        let processed = run(&to_bytes(&DynamicImage::ImageRgb8(gradient(300, 200)), ImageFormat::Jpeg)).unwrap();
        for size in [&processed.original, &processed.medium, &processed.thumb] {
            assert!(size.bytes.starts_with(&[0xFF, 0xD8]));
            assert!(size.bytes.ends_with(&[0xFF, 0xD9]));
            assert_eq!(reopen(size).color(), ColorType::Rgb8);
            for marker in [&b"Exif"[..], b"ICC_PROFILE", b"http://ns.adobe.com/xap"] {
                assert!(!size.bytes.windows(marker.len()).any(|window| window == marker));
            }
        }
    }

    #[test]
    fn png_output_has_pixel_chunks_only() {
        let processed = run(&to_bytes(&DynamicImage::ImageRgb8(gradient(300, 200)), ImageFormat::WebP)).unwrap();
        for size in [&processed.original, &processed.medium, &processed.thumb] {
            let chunks = png_chunk_types(&size.bytes);
            assert!(chunks.iter().all(|chunk| ["IHDR", "IDAT", "IEND"].contains(&chunk.as_str())), "{chunks:?}");
            assert_eq!(chunks.last().map(String::as_str), Some("IEND"));
        }
    }

    #[test]
    fn exif_with_gps_is_gone_after_processing() {
        let upload = jpeg_with_app1(&to_bytes(&DynamicImage::ImageRgb8(gradient(200, 100)), ImageFormat::Jpeg), 1);
        assert!(upload.windows(4).any(|window| window == b"Exif"));

        let processed = run(&upload).unwrap();
        assert_eq!(sizes(&processed)[0], (200, 100));
        for size in [&processed.original, &processed.medium, &processed.thumb] {
            assert!(!size.bytes.windows(4).any(|window| window == b"Exif"));
        }
    }

    #[test]
    fn a_payload_appended_after_the_end_marker_is_gone() {
        let jpeg = to_bytes(&DynamicImage::ImageRgb8(gradient(200, 100)), ImageFormat::Jpeg);
        let processed = run(&appended(&jpeg, b"<script>alert(1)</script>")).unwrap();
        for size in [&processed.original, &processed.medium, &processed.thumb] {
            assert!(!size.bytes.windows(7).any(|window| window == b"<script"));
            assert!(size.bytes.ends_with(&[0xFF, 0xD9]));
        }
    }

    #[test]
    fn exif_orientation_six_rotates_clockwise_and_swaps_the_edges() {
        // Left half red, right half blue: turned a quarter clockwise, red is on top.
        let picture = RgbImage::from_fn(60, 40, |x, _| if x < 30 { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) });
        let upload = jpeg_with_app1(&to_bytes(&DynamicImage::ImageRgb8(picture), ImageFormat::Jpeg), 6);

        let processed = run(&upload).unwrap();
        assert_eq!(sizes(&processed), [(40, 60); 3]);
        let oriented = reopen(&processed.original).into_rgb8();
        let [top_red, _, top_blue] = oriented.get_pixel(20, 10).0;
        let [bottom_red, _, bottom_blue] = oriented.get_pixel(20, 50).0;
        assert!(top_red > 200 && top_blue < 60, "top is {:?}", oriented.get_pixel(20, 10));
        assert!(bottom_blue > 200 && bottom_red < 60, "bottom is {:?}", oriented.get_pixel(20, 50));
    }

    #[test]
    fn an_orientation_with_a_large_image_is_applied_after_fitting() {
        let upload = jpeg_with_app1(&to_bytes(&DynamicImage::ImageRgb8(gradient(1200, 600)), ImageFormat::Jpeg), 6);
        let processed = run(&upload).unwrap();
        assert_eq!(sizes(&processed), [(512, 1024), (128, 256), (32, 64)]);
    }

    #[test]
    fn content_that_is_not_an_accepted_image_is_an_unsupported_type() {
        let gif_named_svg = b"<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" \
            height=\"10\"><script>alert(1)</script></svg>";
        let html_named_jpg = b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>";
        for bytes in [&gif_named_svg[..], html_named_jpg, b"just some text\n", b"", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"] {
            assert_eq!(run(bytes), Err(ImageError::UnsupportedType), "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn a_truncated_file_of_every_format_is_invalid() {
        let picture = DynamicImage::ImageRgb8(gradient(300, 200));
        for (format, name) in [
            (ImageFormat::Jpeg, "JPEG"),
            (ImageFormat::Png, "PNG"),
            (ImageFormat::Gif, "GIF"),
            (ImageFormat::WebP, "WebP"),
        ] {
            let bytes = to_bytes(&picture, format);
            let message = format!("the file does not decode as {name}");
            assert_eq!(run(&bytes[..bytes.len() / 2]), Err(ImageError::Invalid(message)), "{format:?}");
        }
    }

    #[test]
    fn a_corrupt_png_is_invalid() {
        let mut png = to_bytes(&DynamicImage::ImageRgb8(gradient(300, 200)), ImageFormat::Png);
        let middle = png.len() / 2;
        png[middle..middle + 16].fill(0xA5);
        assert_eq!(run(&png), Err(ImageError::Invalid("the file does not decode as PNG".to_owned())));
    }

    #[test]
    fn a_pixel_flood_png_is_refused_from_its_header() {
        // A few dozen bytes claiming 30000x30000 RGBA: decoding it would need 3.6 GB.
        let flood = png_header_only(30_000, 30_000);
        assert!(flood.len() < 100);
        assert!(is_invalid(run(&flood)));
    }

    #[test]
    fn a_header_over_the_pixel_budget_is_refused_before_decoding() {
        // Both edges are allowed, their product is not; the IDAT is far too short, so only the header check can
        // produce this message.
        assert_eq!(
            run(&png_header_only(4200, 4200)),
            Err(ImageError::Invalid("4200x4200 px is over the budget of 16777216 pixels".to_owned()))
        );
    }

    #[test]
    fn an_image_under_the_minimum_edge_is_invalid() {
        let result = run(&to_bytes(&DynamicImage::ImageRgb8(gradient(5, 5)), ImageFormat::Png));
        assert_eq!(result, Err(ImageError::Invalid("5x5 px is outside 10..=5000 px per edge".to_owned())));
        assert!(is_invalid(run(&to_bytes(&DynamicImage::ImageRgb8(gradient(200, 9)), ImageFormat::Jpeg))));
    }

    #[test]
    fn an_image_over_the_maximum_edge_is_invalid() {
        assert!(is_invalid(run(&to_bytes(&DynamicImage::ImageRgb8(gradient(6000, 10)), ImageFormat::Png))));
    }

    #[test]
    fn only_the_first_frame_of_an_animated_gif_is_kept() {
        let red = RgbaImage::from_pixel(20, 20, Rgba([255, 0, 0, 255]));
        let blue = RgbaImage::from_pixel(20, 20, Rgba([0, 0, 255, 255]));
        let mut gif = Vec::new();
        image::codecs::gif::GifEncoder::new(&mut gif)
            .encode_frames([image::Frame::new(red), image::Frame::new(blue)])
            .unwrap();

        let processed = run(&gif).unwrap();
        assert_eq!(processed.original.content_type, "image/png");
        assert_eq!(reopen(&processed.original).into_rgba8().get_pixel(10, 10), &Rgba([255, 0, 0, 255]));
    }

    #[test]
    fn transparency_and_sixteen_bit_depth_come_out_as_eight_bit_rgba_png() {
        let picture = image::ImageBuffer::from_fn(30, 20, |x, _| {
            image::Rgba([u16::MAX, 0, 0, if x < 15 { 0 } else { u16::MAX }])
        });
        let processed = run(&to_bytes(&DynamicImage::ImageRgba16(picture), ImageFormat::Png)).unwrap();
        let reopened = reopen(&processed.original);
        assert_eq!(reopened.color(), ColorType::Rgba8);
        assert_eq!(reopened.into_rgba8().get_pixel(20, 10), &Rgba([255, 0, 0, 255]));
    }

    #[test]
    fn a_grayscale_png_stays_grayscale() {
        let picture = image::GrayImage::from_fn(30, 20, |x, y| image::Luma([(x * 8 + y) as u8]));
        let processed = run(&to_bytes(&DynamicImage::ImageLuma8(picture), ImageFormat::Png)).unwrap();
        assert_eq!(reopen(&processed.thumb).color(), ColorType::L8);
    }

    #[test]
    fn the_decoding_limits_follow_the_domain_constants() {
        let limits = limits();
        assert_eq!(limits.max_image_width, Some(MAX_DIMENSION));
        assert_eq!(limits.max_image_height, Some(MAX_DIMENSION));
        assert!(limits.max_alloc >= Some(MAX_PIXELS * 4));
    }

    #[test]
    fn the_jpeg_scale_is_the_smallest_decode_that_keeps_the_original_edge() {
        assert_eq!(jpeg_scale(4000, 3000), 2, "1/4 would give 1000 px");
        assert_eq!(jpeg_scale(3000, 4096), 4);
        assert_eq!(jpeg_scale(8192, 100), 8);
        assert_eq!(jpeg_scale(3000, 2000), 2);
        assert_eq!(jpeg_scale(2047, 2000), 2, "the decoder rounds 1023.5 up to 1024");
        assert_eq!(jpeg_scale(2046, 1000), 1, "1/2 would give 1023 px");
        assert_eq!(jpeg_scale(1024, 1024), 1);
        assert_eq!(jpeg_scale(40, 30), 1);
    }

    #[test]
    fn a_large_jpeg_takes_the_scaled_decode() {
        let bytes = to_bytes(&DynamicImage::ImageRgb8(gradient(3000, 2000)), ImageFormat::Jpeg);
        let scaled = decode_jpeg_scaled(&bytes, 3000, 2000).unwrap();
        assert_eq!((scaled.width(), scaled.height()), (1500, 1000));
        assert_eq!(scaled.color(), ColorType::Rgb8);
        // An image already within the original edge has nothing to gain.
        let small = to_bytes(&DynamicImage::ImageRgb8(gradient(1000, 600)), ImageFormat::Jpeg);
        assert!(decode_jpeg_scaled(&small, 1000, 600).is_none());
    }

    #[test]
    fn a_large_jpeg_comes_out_at_the_sizes_of_a_full_decode() {
        // Odd edges, so the scaled decode rounds up and the exact resize has to put the sizes right.
        for (width, height) in [(3000, 2000), (4999, 3001), (2049, 2047)] {
            let picture = DynamicImage::ImageRgb8(gradient(width, height));
            let expected = fit(picture.clone(), ORIGINAL_EDGE);
            let processed = run(&to_bytes(&picture, ImageFormat::Jpeg)).unwrap();
            let original = (expected.width(), expected.height());
            assert_eq!(sizes(&processed)[0], original, "{width}x{height}");
            assert_eq!(fitted_size((width, height), ORIGINAL_EDGE), original, "{width}x{height}");
        }
        let processed = run(&to_bytes(&DynamicImage::ImageRgb8(gradient(3000, 2000)), ImageFormat::Jpeg)).unwrap();
        assert_eq!(sizes(&processed), [(1024, 683), (256, 171), (64, 43)]);
        for size in [&processed.original, &processed.medium, &processed.thumb] {
            reopen(size);
        }
    }

    #[test]
    fn a_large_jpeg_with_exif_orientation_comes_out_oriented() {
        // Left half red, right half blue: turned a quarter clockwise, red is on top.
        let picture = RgbImage::from_fn(3000, 2000, |x, _| if x < 1500 { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) });
        let upload = jpeg_with_app1(&to_bytes(&DynamicImage::ImageRgb8(picture), ImageFormat::Jpeg), 6);
        assert!(decode_jpeg_scaled(&upload, 3000, 2000).is_some());

        let processed = run(&upload).unwrap();
        assert_eq!(sizes(&processed), [(683, 1024), (171, 256), (43, 64)]);
        let oriented = reopen(&processed.original).into_rgb8();
        let [top_red, _, top_blue] = oriented.get_pixel(340, 100).0;
        let [bottom_red, _, bottom_blue] = oriented.get_pixel(340, 900).0;
        assert!(top_red > 200 && top_blue < 60, "top is {:?}", oriented.get_pixel(340, 100));
        assert!(bottom_blue > 200 && bottom_red < 60, "bottom is {:?}", oriented.get_pixel(340, 900));
    }

    #[test]
    fn a_large_grey_jpeg_is_decoded_scaled_and_stored_as_rgb() {
        let picture = image::GrayImage::from_fn(2400, 1800, |x, y| image::Luma([((x + y) % 256) as u8]));
        let bytes = to_bytes(&DynamicImage::ImageLuma8(picture), ImageFormat::Jpeg);
        assert_eq!(decode_jpeg_scaled(&bytes, 2400, 1800).map(|image| image.color()), Some(ColorType::L8));

        let processed = run(&bytes).unwrap();
        assert_eq!(sizes(&processed), [(1024, 768), (256, 192), (64, 48)]);
        assert_eq!(reopen(&processed.original).color(), ColorType::Rgb8);
    }

    #[test]
    fn a_jpeg_the_scaled_decoder_cannot_read_falls_back_to_the_full_decode() {
        let picture = DynamicImage::ImageRgb8(gradient(3000, 2000));
        let bytes = to_bytes(&picture, ImageFormat::Jpeg);
        // Dimensions other than the header's make the scaled path stand aside rather than guess.
        assert!(decode_jpeg_scaled(&bytes, 3000, 2001).is_none());
        assert!(decode_jpeg_scaled(b"\xFF\xD8 not a jpeg", 3000, 2000).is_none());
    }

    #[test]
    fn exif_app1_builder_makes_a_parsable_orientation() {
        // Guards the test helper itself: without a readable orientation the rotation test would prove nothing.
        assert_eq!(Orientation::from_exif_chunk(&exif_app1(6)[6..]), Some(Orientation::Rotate90));
    }
}
