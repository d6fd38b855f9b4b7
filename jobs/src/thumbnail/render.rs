//! The pure part of the thumbnail job: decode (JPEG, PNG, WebP, GIF's first frame) within
//! limits, centre-crop to a square, resize, apply the EXIF orientation, encode JPEG and
//! WebP. Synchronous and CPU-bound: the handler runs it on the blocking pool.
//!
//! Resizing uses `fast_image_resize` (SIMD convolution, Lanczos3): on a 12-megapixel photo
//! it is an order of magnitude faster than `image::imageops::resize` with the same filter
//! (the figures are in `jobs/benches/thumbnail.rs`). Sizes are made largest first, each
//! from the previous one when that one is still larger than it (a cascade), which costs one
//! pass over the full photo instead of one per size.

use std::io::{self, Cursor, Read};

use fast_image_resize::images::Image as FirImage;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::codecs::jpeg::JpegEncoder;
use image::error::{LimitErrorKind, UnsupportedErrorKind};
use image::metadata::Orientation;
use image::{
    DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage, RgbaImage,
};

/// The formats a source may be in.
pub const ACCEPTED: [ImageFormat; 4] = [
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::WebP,
    ImageFormat::Gif,
];

/// What a source may cost to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Widest and tallest accepted image, in pixels (`THUMBNAIL_MAX_DIMENSION`).
    pub max_dimension: u32,
    /// Most pixels accepted (`THUMBNAIL_MAX_PIXELS`).
    pub max_pixels: u64,
}

impl DecodeLimits {
    /// Bytes the decoder may allocate: the largest accepted image at 8 bytes a pixel (16-bit
    /// RGBA, the widest layout of the accepted formats).
    pub fn max_alloc(&self) -> u64 {
        self.max_pixels.saturating_mul(8)
    }

    fn image_limits(&self) -> image::Limits {
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(self.max_dimension);
        limits.max_image_height = Some(self.max_dimension);
        limits.max_alloc = Some(self.max_alloc());
        limits
    }
}

/// What to make of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderSpec {
    /// Square sizes in pixels, each made once.
    pub sizes: Vec<u32>,
    /// JPEG and WebP quality, 1–100.
    pub quality: u8,
    /// Decoding limits.
    pub limits: DecodeLimits,
}

/// Why a source could not be made into thumbnails. Every variant but [`Self::Io`] and
/// [`Self::Internal`] is the file's fault: retrying cannot help, and the message tells a
/// person what to do.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Not one of the image formats we know at all.
    #[error(
        "not an image: the file is not JPEG, PNG, WebP or GIF; upload an image in one of those formats"
    )]
    NotAnImage,
    /// An image, but in a format we do not accept (BMP, TIFF, AVIF, …).
    #[error(
        "unsupported image format {0}: only JPEG, PNG, WebP and GIF are accepted; convert it and upload it again"
    )]
    Unsupported(String),
    /// An accepted format, in a variant of it the decoder does not handle.
    #[error(
        "unsupported {format} variant ({detail}); re-export it as a standard {format} and upload it again"
    )]
    UnsupportedVariant {
        /// The format.
        format: String,
        /// The decoder's words.
        detail: String,
    },
    /// The data ends before the image does.
    #[error(
        "truncated {format} image: the file ends before the image data does ({detail}); upload the complete file again"
    )]
    Truncated {
        /// The format.
        format: String,
        /// The decoder's words.
        detail: String,
    },
    /// The data is not a valid image of its format.
    #[error("corrupt {format} image ({detail}); re-export it and upload it again")]
    Corrupt {
        /// The format.
        format: String,
        /// The decoder's words.
        detail: String,
    },
    /// Over the decompression limits: refused before the pixels are allocated.
    #[error("image too large: {detail}; scale it down and upload it again")]
    TooLarge {
        /// Which limit, and by how much.
        detail: String,
    },
    /// Reading the file failed (not its content's fault): worth retrying.
    #[error("reading the image failed: {0}")]
    Io(io::Error),
    /// Our own processing failed (resizing, encoding): worth retrying.
    #[error("thumbnail processing failed: {0}")]
    Internal(String),
}

impl RenderError {
    /// True when retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::NotAnImage
            | Self::Unsupported(_)
            | Self::UnsupportedVariant { .. }
            | Self::Truncated { .. }
            | Self::Corrupt { .. }
            | Self::TooLarge { .. } => true,
            Self::Io(_) | Self::Internal(_) => false,
        }
    }
}

/// A decoded source: its pixels as stored, and how to turn them upright.
pub struct Decoded {
    /// Its format.
    pub format: ImageFormat,
    /// The pixels, as stored (not yet oriented).
    pub image: DynamicImage,
    /// The EXIF orientation (`NoTransforms` without EXIF).
    pub orientation: Orientation,
}

/// One thumbnail, encoded.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// Its side, in pixels.
    pub size: u32,
    /// JPEG bytes.
    pub jpeg: Vec<u8>,
    /// WebP (lossy, alpha kept) bytes.
    pub webp: Vec<u8>,
}

/// Reads a source file whole, refusing one of more than `max_bytes`
/// (`THUMBNAIL_MAX_SOURCE_BYTES`) after reading at most one byte more: a file that grew
/// after its size was checked is not read whole either.
pub fn read_source(file: impl Read, max_bytes: u64) -> Result<Vec<u8>, RenderError> {
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(RenderError::Io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(source_too_big(None, max_bytes));
    }
    Ok(bytes)
}

/// The error of a source file over `max_bytes` (of `size` bytes when known).
pub fn source_too_big(size: Option<u64>, max_bytes: u64) -> RenderError {
    let size = size.map_or_else(|| "more".to_owned(), |s| format!("{s} bytes"));
    RenderError::TooLarge {
        detail: format!("the file is {size}, over THUMBNAIL_MAX_SOURCE_BYTES ({max_bytes} bytes)"),
    }
}

/// Decodes `bytes` within `limits`: the format is told by the content, not by a name;
/// the dimensions are checked against the limits from the header, before any pixel buffer
/// is allocated, so a decompression bomb costs nothing. A JPEG or WebP file that ends
/// early is caught by its structure, since their decoders fill in missing data silently.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Decoded, RenderError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(RenderError::Io)?;
    let format = match reader.format() {
        None => return Err(RenderError::NotAnImage),
        Some(f) if !ACCEPTED.contains(&f) => return Err(RenderError::Unsupported(name_of(f))),
        Some(f) => f,
    };
    if let Some(detail) = ends_early(format, bytes) {
        return Err(RenderError::Truncated {
            format: name_of(format),
            detail,
        });
    }
    reader.limits(limits.image_limits());
    // Reads the header, and checks the width and height against the limits.
    let mut decoder = reader.into_decoder().map_err(|e| classify(format, e))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(RenderError::TooLarge {
            detail: format!(
                "{width}x{height} is {:.1} megapixels, over the limit of {:.1} (THUMBNAIL_MAX_PIXELS)",
                pixels as f64 / 1e6,
                limits.max_pixels as f64 / 1e6
            ),
        });
    }
    let mut budget = limits.image_limits();
    budget
        .reserve(decoder.total_bytes())
        .map_err(|e| classify(format, e))?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder).map_err(|e| classify(format, e))?;
    Ok(Decoded {
        format,
        image,
        orientation,
    })
}

/// Decodes `bytes` and makes every size of `spec`; the result is sorted by size, ascending.
pub fn render(bytes: &[u8], spec: &RenderSpec) -> Result<Vec<Rendered>, RenderError> {
    let decoded = decode(bytes, &spec.limits)?;
    let thumbs = square_thumbnails(&decoded.image, decoded.orientation, &spec.sizes)?;
    let mut out = thumbs
        .into_iter()
        .map(|(size, img)| {
            Ok(Rendered {
                size,
                jpeg: encode_jpeg(&img, spec.quality)?,
                webp: encode_webp(&img, spec.quality)?,
            })
        })
        .collect::<Result<Vec<_>, RenderError>>()?;
    out.sort_by_key(|r| r.size);
    Ok(out)
}

/// Square thumbnails of `image` at each of `sizes`: the largest centred square is cut out,
/// resized (Lanczos3) and turned upright by `orientation`. Returned largest first.
///
/// The crop and resize run on the stored pixels and the orientation is applied to the
/// small result: a centred square maps onto itself under every EXIF rotation and flip, and
/// this avoids rotating the full-size photo.
pub fn square_thumbnails(
    image: &DynamicImage,
    orientation: Orientation,
    sizes: &[u32],
) -> Result<Vec<(u32, DynamicImage)>, RenderError> {
    // The resizer and the encoders take RGB8, or RGBA8 when there is an alpha channel:
    // other layouts (grey, 16-bit) are converted; the usual 8-bit RGB JPEG is used as is.
    let owned;
    let source = match image {
        DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => image,
        other => {
            owned = if other.color().has_alpha() {
                DynamicImage::ImageRgba8(other.to_rgba8())
            } else {
                DynamicImage::ImageRgb8(other.to_rgb8())
            };
            &owned
        }
    };
    let (width, height) = (source.width(), source.height());
    if width == 0 || height == 0 {
        return Err(RenderError::Corrupt {
            format: "image".into(),
            detail: format!("it is {width}x{height} pixels"),
        });
    }
    let side = width.min(height);
    let crop = (
        f64::from((width - side) / 2),
        f64::from((height - side) / 2),
        f64::from(side),
        f64::from(side),
    );
    let pixel_type = if source.color().has_alpha() {
        PixelType::U8x4
    } else {
        PixelType::U8x3
    };
    let mut ordered: Vec<u32> = sizes.to_vec();
    ordered.sort_unstable_by(|a, b| b.cmp(a));
    ordered.dedup();
    let mut resizer = Resizer::new();
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    // The previous (larger) thumbnail, unoriented, to resize the next one from.
    let mut previous: Option<(u32, FirImage<'static>)> = None;
    let mut out = Vec::with_capacity(ordered.len());
    for size in ordered {
        let mut dst = FirImage::new(size, size, pixel_type);
        match &previous {
            // A downscaled thumbnail at least as large: resample it, not the full image.
            Some((prev, prev_img)) if *prev < side && *prev >= size => {
                resizer.resize(prev_img, &mut dst, &options)
            }
            _ => resizer.resize(
                source,
                &mut dst,
                &options.crop(crop.0, crop.1, crop.2, crop.3),
            ),
        }
        .map_err(|e| RenderError::Internal(format!("resizing to {size}px: {e}")))?;
        let mut thumb = to_dynamic(&dst, size)?;
        thumb.apply_orientation(orientation);
        out.push((size, thumb));
        previous = Some((size, dst));
    }
    Ok(out)
}

fn to_dynamic(img: &FirImage<'_>, size: u32) -> Result<DynamicImage, RenderError> {
    let buf = img.buffer().to_vec();
    let bad = || RenderError::Internal(format!("resized buffer of {size}px has the wrong length"));
    match img.pixel_type() {
        PixelType::U8x4 => Ok(DynamicImage::ImageRgba8(
            RgbaImage::from_raw(size, size, buf).ok_or_else(bad)?,
        )),
        _ => Ok(DynamicImage::ImageRgb8(
            RgbImage::from_raw(size, size, buf).ok_or_else(bad)?,
        )),
    }
}

/// JPEG at `quality`; transparent pixels are laid over white (JPEG has no alpha).
pub fn encode_jpeg(image: &DynamicImage, quality: u8) -> Result<Vec<u8>, RenderError> {
    let rgb = match image {
        DynamicImage::ImageRgba8(rgba) => flatten_on_white(rgba),
        other => other.to_rgb8(),
    };
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
        .encode_image(&rgb)
        .map_err(|e| RenderError::Internal(format!("encoding JPEG: {e}")))?;
    Ok(out)
}

/// Lossy WebP at `quality` (libwebp), keeping the alpha channel if there is one (alpha
/// is compressed losslessly). The image crate only writes lossless WebP, about ten times
/// the JPEG's size for a photo; lossy WebP at the same quality is smaller than the JPEG.
pub fn encode_webp(image: &DynamicImage, quality: u8) -> Result<Vec<u8>, RenderError> {
    let quality = f32::from(quality.clamp(1, 100));
    let encoded = match image {
        DynamicImage::ImageRgba8(rgba) => {
            webp::Encoder::from_rgba(rgba.as_raw(), rgba.width(), rgba.height()).encode(quality)
        }
        other => {
            let rgb = other.to_rgb8();
            webp::Encoder::from_rgb(rgb.as_raw(), rgb.width(), rgb.height()).encode(quality)
        }
    };
    if encoded.is_empty() {
        return Err(RenderError::Internal(
            "encoding WebP: libwebp wrote nothing".into(),
        ));
    }
    Ok(encoded.to_vec())
}

fn flatten_on_white(rgba: &RgbaImage) -> RgbImage {
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over = |c: u8| -> u8 {
            let (c, a) = (u32::from(c), u32::from(a));
            ((c * a + 255 * (255 - a) + 127) / 255) as u8
        };
        image::Rgb([over(r), over(g), over(b)])
    })
}

/// Why `bytes` of `format` end before the image does, if they visibly do.
fn ends_early(format: ImageFormat, bytes: &[u8]) -> Option<String> {
    match format {
        ImageFormat::Jpeg => match jpeg_end(bytes) {
            JpegEnd::Complete => None,
            JpegEnd::Truncated => Some("no end-of-image marker".into()),
        },
        ImageFormat::WebP => {
            // RIFF header: "RIFF", the size of what follows (little-endian), "WEBP".
            let declared = bytes
                .get(4..8)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            match declared {
                Some(n) if (bytes.len() as u64) < u64::from(n) + 8 => {
                    Some(format!("{} of {} bytes", bytes.len(), u64::from(n) + 8))
                }
                None => Some(format!("{} bytes", bytes.len())),
                Some(_) => None,
            }
        }
        // The PNG and GIF decoders report a short file themselves.
        _ => None,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum JpegEnd {
    Complete,
    Truncated,
}

/// Walks a JPEG's segments (skipping each by its length, and the entropy-coded data after
/// each start-of-scan up to its next marker) to its end-of-image marker. Whatever follows
/// that marker (camera trailers) is ignored.
fn jpeg_end(bytes: &[u8]) -> JpegEnd {
    let mut i = 2; // after SOI, which the format guess has seen
    loop {
        // The next marker: 0xFF (any fill bytes), then its code.
        let Some(ff) = bytes
            .get(i..)
            .and_then(|rest| rest.iter().position(|&b| b == 0xFF))
        else {
            return JpegEnd::Truncated;
        };
        i += ff;
        while bytes.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return JpegEnd::Truncated;
        };
        i += 1;
        match marker {
            0xD9 => return JpegEnd::Complete,
            // Markers without a length: TEM, RSTn (and a stray stuffed zero).
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = bytes
            .get(i..i + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            return JpegEnd::Truncated;
        };
        i += len;
        if i > bytes.len() {
            return JpegEnd::Truncated;
        }
        if marker == 0xDA {
            // Entropy-coded data: runs to the next 0xFF that is neither a stuffed 0xFF00
            // nor a restart marker.
            loop {
                let Some(ff) = bytes
                    .get(i..)
                    .and_then(|rest| rest.iter().position(|&b| b == 0xFF))
                else {
                    return JpegEnd::Truncated;
                };
                i += ff;
                match bytes.get(i + 1) {
                    None => return JpegEnd::Truncated,
                    Some(0x00 | 0xD0..=0xD7) => i += 2,
                    Some(_) => break,
                }
            }
        }
    }
}

fn name_of(format: ImageFormat) -> String {
    format!("{format:?}").to_uppercase()
}

/// Sorts the image crate's error into ours.
fn classify(format: ImageFormat, e: ImageError) -> RenderError {
    let format_name = name_of(format);
    match e {
        ImageError::Limits(limit) => match limit.kind() {
            LimitErrorKind::DimensionError => RenderError::TooLarge {
                detail: format!(
                    "its width or height is over the limit of the decoder ({limit}; THUMBNAIL_MAX_DIMENSION)"
                ),
            },
            _ => RenderError::TooLarge {
                detail: format!(
                    "decoding it needs more memory than allowed ({limit}; THUMBNAIL_MAX_PIXELS)"
                ),
            },
        },
        ImageError::IoError(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            RenderError::Truncated {
                format: format_name,
                detail: io.to_string(),
            }
        }
        ImageError::IoError(io) => RenderError::Io(io),
        ImageError::Decoding(d) => {
            let detail = error_text(&d);
            if looks_truncated(&detail) {
                RenderError::Truncated {
                    format: format_name,
                    detail,
                }
            } else {
                RenderError::Corrupt {
                    format: format_name,
                    detail,
                }
            }
        }
        ImageError::Unsupported(u) => match u.kind() {
            UnsupportedErrorKind::Format(hint) => RenderError::Unsupported(hint.to_string()),
            _ => RenderError::UnsupportedVariant {
                format: format_name,
                detail: u.to_string(),
            },
        },
        ImageError::Parameter(p) => RenderError::Corrupt {
            format: format_name,
            detail: p.to_string(),
        },
        ImageError::Encoding(e) => RenderError::Internal(e.to_string()),
    }
}

fn error_text(e: &dyn std::error::Error) -> String {
    engine::job::error_chain(e)
}

/// Decoders say "the data ended" in their own words; these are theirs.
fn looks_truncated(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    [
        "eof",
        "end of file",
        "unexpected end",
        "ended early",
        "truncated",
        "not enough data",
        "no more bytes",
        "exhausted",
        "incomplete",
    ]
    .iter()
    .any(|needle| d.contains(needle))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use image::codecs::gif::GifEncoder;
    use image::codecs::png::PngEncoder;
    use image::{Delay, ExtendedColorType, Frame, ImageEncoder, Rgb, Rgba};

    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_dimension: 16_384,
        max_pixels: 50_000_000,
    };

    const RED: [u8; 3] = [220, 30, 30];
    const GREEN: [u8; 3] = [30, 200, 30];
    const BLUE: [u8; 3] = [30, 30, 220];
    const WHITE: [u8; 3] = [250, 250, 250];

    /// Quadrants red | green over blue | white.
    fn quadrants(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb(match (x < w / 2, y < h / 2) {
                (true, true) => RED,
                (false, true) => GREEN,
                (true, false) => BLUE,
                (false, false) => WHITE,
            })
        })
    }

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = JpegEncoder::new_with_quality(&mut out, 90);
        enc.set_exif_metadata(exif_orientation(orientation))
            .unwrap();
        enc.write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            ExtendedColorType::Rgb8,
        )
        .unwrap();
        out
    }

    /// A minimal big-endian TIFF/EXIF block with one Orientation entry.
    fn exif_orientation(value: u16) -> Vec<u8> {
        let mut e = b"MM\0\x2a\0\0\0\x08".to_vec();
        e.extend_from_slice(&1u16.to_be_bytes()); // one entry
        e.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
        e.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        e.extend_from_slice(&1u32.to_be_bytes()); // count
        e.extend_from_slice(&value.to_be_bytes());
        e.extend_from_slice(&[0, 0]);
        e.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        e
    }

    fn close(a: [u8; 3], b: [u8; 3]) -> bool {
        a.iter().zip(b).all(|(x, y)| x.abs_diff(y) < 40)
    }

    fn at(img: &DynamicImage, x: u32, y: u32) -> [u8; 3] {
        let p = img.to_rgb8().get_pixel(x, y).0;
        [p[0], p[1], p[2]]
    }

    fn spec(sizes: &[u32]) -> RenderSpec {
        RenderSpec {
            sizes: sizes.to_vec(),
            quality: 85,
            limits: LIMITS,
        }
    }

    fn err_of(bytes: Vec<u8>) -> RenderError {
        match decode(&bytes, &LIMITS) {
            Ok(d) => panic!(
                "decoded a {:?} {}x{}",
                d.format,
                d.image.width(),
                d.image.height()
            ),
            Err(e) => e,
        }
    }

    #[test]
    fn each_accepted_format_decodes_by_its_content() {
        let img = DynamicImage::ImageRgb8(quadrants(120, 80));
        for format in ACCEPTED {
            let bytes = encode(&img, format);
            let d = decode(&bytes, &LIMITS).unwrap();
            assert_eq!(d.format, format);
            assert_eq!((d.image.width(), d.image.height()), (120, 80), "{format:?}");
            assert!(close(at(&d.image, 10, 10), RED), "{format:?}");
            assert!(close(at(&d.image, 110, 70), WHITE), "{format:?}");
            assert_eq!(d.orientation, Orientation::NoTransforms);
        }
    }

    #[test]
    fn an_animated_gif_gives_its_first_frame() {
        let mut bytes = Vec::new();
        {
            let mut enc = GifEncoder::new(&mut bytes);
            let frame = |c: [u8; 3]| {
                Frame::from_parts(
                    RgbaImage::from_pixel(40, 30, Rgba([c[0], c[1], c[2], 255])),
                    0,
                    0,
                    Delay::from_numer_denom_ms(100, 1),
                )
            };
            enc.encode_frames([frame(RED), frame(BLUE)]).unwrap();
        }
        let d = decode(&bytes, &LIMITS).unwrap();
        assert_eq!(d.format, ImageFormat::Gif);
        assert!(close(at(&d.image, 20, 15), RED));
    }

    #[test]
    fn thumbnails_are_square_centre_crops_at_every_size() {
        // Three vertical bands: only the middle one survives a centred square crop.
        let wide = RgbImage::from_fn(300, 100, |x, _| {
            Rgb(match x {
                0..100 => RED,
                100..200 => GREEN,
                _ => BLUE,
            })
        });
        let thumbs = square_thumbnails(
            &DynamicImage::ImageRgb8(wide),
            Orientation::NoTransforms,
            &[64, 16, 32],
        )
        .unwrap();
        let sizes: Vec<u32> = thumbs.iter().map(|(s, _)| *s).collect();
        assert_eq!(sizes, [64, 32, 16], "largest first");
        for (size, t) in &thumbs {
            assert_eq!((t.width(), t.height()), (*size, *size));
            for (x, y) in [(0, 0), (size - 1, 0), (size / 2, size / 2), (0, size - 1)] {
                assert!(
                    close(at(t, x, y), GREEN),
                    "{size}px at {x},{y}: {:?}",
                    at(t, x, y)
                );
            }
        }
        // Tall: the middle band of rows.
        let tall = RgbImage::from_fn(50, 150, |_, y| {
            Rgb(if (50..100).contains(&y) { WHITE } else { BLUE })
        });
        let t = &square_thumbnails(
            &DynamicImage::ImageRgb8(tall),
            Orientation::NoTransforms,
            &[20],
        )
        .unwrap()[0]
            .1;
        assert!(close(at(t, 0, 0), WHITE) && close(at(t, 19, 19), WHITE));
    }

    #[test]
    fn small_sources_are_scaled_up_to_the_requested_size() {
        let tiny = DynamicImage::ImageRgb8(quadrants(20, 10));
        let thumbs = square_thumbnails(&tiny, Orientation::NoTransforms, &[64, 8]).unwrap();
        assert_eq!(thumbs[0].1.width(), 64);
        assert_eq!(thumbs[1].1.width(), 8);
    }

    #[test]
    fn exif_rotated_jpegs_come_out_upright() {
        // Upright: quadrants, 160x100. Stored rotated 90° counter-clockwise (100x160) with
        // Orientation 6 ("rotate 90° clockwise to display").
        let upright = DynamicImage::ImageRgb8(quadrants(160, 100));
        let stored = upright.rotate270().to_rgb8();
        assert_eq!(stored.dimensions(), (100, 160));
        let bytes = jpeg_with_orientation(&stored, 6);
        let d = decode(&bytes, &LIMITS).unwrap();
        assert_eq!(d.orientation, Orientation::Rotate90);
        let t = &square_thumbnails(&d.image, d.orientation, &[40]).unwrap()[0].1;
        // The centred 100x100 square of the upright image still has its four quadrants.
        assert!(close(at(t, 5, 5), RED), "top left {:?}", at(t, 5, 5));
        assert!(close(at(t, 34, 5), GREEN), "top right {:?}", at(t, 34, 5));
        assert!(close(at(t, 5, 34), BLUE), "bottom left {:?}", at(t, 5, 34));
        assert!(
            close(at(t, 34, 34), WHITE),
            "bottom right {:?}",
            at(t, 34, 34)
        );
        // And the encoded files decode to the same picture.
        let out = render(&bytes, &spec(&[40])).unwrap();
        let jpg = image::load_from_memory(&out[0].jpeg).unwrap();
        assert!(close(at(&jpg, 34, 5), GREEN));
        let webp = image::load_from_memory(&out[0].webp).unwrap();
        assert!(close(at(&webp, 5, 34), BLUE), "{:?}", at(&webp, 5, 34));
    }

    #[test]
    fn all_eight_exif_orientations_come_out_upright() {
        let upright = DynamicImage::ImageRgb8(quadrants(160, 100));
        let transforms: [fn(&DynamicImage) -> DynamicImage; 8] = [
            |i| i.clone(),
            |i| i.fliph(),
            |i| i.rotate180(),
            |i| i.flipv(),
            |i| i.rotate90().fliph(),
            |i| i.rotate90(),
            |i| i.rotate270().fliph(),
            |i| i.rotate270(),
        ];
        for tag in 1..=8u16 {
            let orientation = Orientation::from_exif(tag as u8).unwrap();
            // The stored picture is whichever transform of the upright one the tag undoes.
            let stored = transforms
                .iter()
                .map(|t| t(&upright))
                .find(|candidate| {
                    let mut c = candidate.clone();
                    c.apply_orientation(orientation);
                    c == upright
                })
                .unwrap();
            let bytes = jpeg_with_orientation(&stored.to_rgb8(), tag);
            let d = decode(&bytes, &LIMITS).unwrap();
            assert_eq!(d.orientation, orientation, "tag {tag}");
            let t = &square_thumbnails(&d.image, d.orientation, &[40]).unwrap()[0].1;
            for (x, y, want) in [(5, 5, RED), (34, 5, GREEN), (5, 34, BLUE), (34, 34, WHITE)] {
                assert!(
                    close(at(t, x, y), want),
                    "tag {tag} at {x},{y}: {:?}",
                    at(t, x, y)
                );
            }
        }
    }

    #[test]
    fn every_size_is_encoded_as_jpeg_and_webp() {
        let bytes = encode(
            &DynamicImage::ImageRgb8(quadrants(400, 300)),
            ImageFormat::Png,
        );
        let out = render(&bytes, &spec(&[256, 64, 128])).unwrap();
        assert_eq!(
            out.iter().map(|r| r.size).collect::<Vec<_>>(),
            [64, 128, 256]
        );
        for r in &out {
            let j = image::load_from_memory_with_format(&r.jpeg, ImageFormat::Jpeg).unwrap();
            let w = image::load_from_memory_with_format(&r.webp, ImageFormat::WebP).unwrap();
            assert_eq!((j.width(), j.height()), (r.size, r.size));
            assert_eq!((w.width(), w.height()), (r.size, r.size));
        }
    }

    /// A photo-like picture: smooth gradients with fine, deterministic grain.
    fn photo(w: u32, h: u32) -> RgbImage {
        let mut seed = 0x9e37_79b9_u32;
        RgbImage::from_fn(w, h, |x, y| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let grain = (seed % 24) as i32 - 12;
            let c = |base: u32| (base as i32 + grain).clamp(0, 255) as u8;
            Rgb([
                c(x * 255 / w),
                c(y * 255 / h),
                c((x + y) * 127 / (w + h) + 64),
            ])
        })
    }

    #[test]
    fn webp_is_lossy_and_no_bigger_than_the_jpeg_of_a_photo() {
        let bytes = encode(
            &DynamicImage::ImageRgb8(photo(1024, 1024)),
            ImageFormat::Png,
        );
        let out = render(&bytes, &spec(&[512])).unwrap();
        let r = &out[0];
        // The image crate's lossless WebP, which this replaced, is far bigger than the JPEG.
        let thumb = image::load_from_memory(&r.jpeg).unwrap().to_rgb8();
        let mut lossless = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut lossless)
            .encode(thumb.as_raw(), 512, 512, ExtendedColorType::Rgb8)
            .unwrap();
        assert!(
            lossless.len() > 2 * r.jpeg.len(),
            "lossless {} B, JPEG {} B",
            lossless.len(),
            r.jpeg.len()
        );
        assert!(
            r.webp.len() <= r.jpeg.len(),
            "WebP {} B, JPEG {} B",
            r.webp.len(),
            r.jpeg.len()
        );
        let w = image::load_from_memory_with_format(&r.webp, ImageFormat::WebP).unwrap();
        assert_eq!((w.width(), w.height()), (512, 512));
    }

    #[test]
    fn transparency_is_kept_in_webp_and_laid_over_white_in_jpeg() {
        let img = RgbaImage::from_fn(64, 64, |x, _| {
            if x < 32 {
                Rgba([0, 0, 0, 0])
            } else {
                Rgba([0, 0, 200, 255])
            }
        });
        let bytes = encode(&DynamicImage::ImageRgba8(img), ImageFormat::Png);
        let out = render(&bytes, &spec(&[32])).unwrap();
        let jpg = image::load_from_memory(&out[0].jpeg).unwrap();
        assert!(
            close(at(&jpg, 2, 16), [255, 255, 255]),
            "{:?}",
            at(&jpg, 2, 16)
        );
        let webp = image::load_from_memory(&out[0].webp).unwrap().to_rgba8();
        assert_eq!(webp.get_pixel(2, 16).0[3], 0);
        assert_eq!(webp.get_pixel(30, 16).0[3], 255);
    }

    #[test]
    fn sixteen_bit_and_grey_sources_are_converted() {
        let grey16 = DynamicImage::ImageLuma16(image::ImageBuffer::from_pixel(
            30,
            20,
            image::Luma([40_000u16]),
        ));
        let out = render(&encode(&grey16, ImageFormat::Png), &spec(&[16])).unwrap();
        let j = image::load_from_memory(&out[0].jpeg).unwrap();
        let [r, g, b] = at(&j, 8, 8);
        assert!(r.abs_diff(156) < 6 && r == g && g == b, "{r} {g} {b}");
    }

    /// A PNG whose header claims `w`x`h`, with a small real IDAT: how a bomb starts.
    fn png_claiming(w: u32, h: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        PngEncoder::new(&mut bytes)
            .write_image(&[0u8; 64 * 64], 64, 64, ExtendedColorType::L8)
            .unwrap();
        // IHDR data starts at 16: width, height; its CRC covers type + data (12..29).
        bytes[16..20].copy_from_slice(&w.to_be_bytes());
        bytes[20..24].copy_from_slice(&h.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn a_png_bomb_is_refused_from_its_header() {
        let e = err_of(png_claiming(50_000, 50_000));
        assert!(matches!(e, RenderError::TooLarge { .. }), "{e}");
        assert!(e.is_permanent());
        let text = e.to_string();
        assert!(text.contains("THUMBNAIL_MAX_DIMENSION"), "{text}");
        // Within the side limit, over the pixel count.
        let e = err_of(png_claiming(10_000, 8_000));
        assert!(
            e.to_string()
                .contains("80.0 megapixels, over the limit of 50.0"),
            "{e}"
        );
    }

    #[test]
    fn truncated_files_of_every_format_are_reported_as_such() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(200, 150, |x, y| {
            Rgb([
                (x * 7 % 256) as u8,
                (y * 13 % 256) as u8,
                ((x ^ y) % 256) as u8,
            ])
        }));
        for format in ACCEPTED {
            let bytes = encode(&img, format);
            for keep in [0.1, 0.5, 0.9, 0.99] {
                let cut = bytes[..(bytes.len() as f64 * keep) as usize].to_vec();
                let e = err_of(cut);
                assert!(
                    matches!(e, RenderError::Truncated { .. }),
                    "{format:?} cut at {keep}: {e:?}"
                );
                assert!(e.is_permanent());
                assert!(
                    e.to_string().contains("upload the complete file again"),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn a_jpeg_with_a_trailer_after_its_end_is_complete() {
        let mut bytes = encode(
            &DynamicImage::ImageRgb8(quadrants(64, 48)),
            ImageFormat::Jpeg,
        );
        assert_eq!(jpeg_end(&bytes), JpegEnd::Complete);
        bytes.extend_from_slice(b"SEFT camera trailer \xff\x00 and more");
        assert!(decode(&bytes, &LIMITS).is_ok());
        // With EXIF (an APP1 segment) too.
        let exif = jpeg_with_orientation(&quadrants(64, 48), 1);
        assert_eq!(jpeg_end(&exif), JpegEnd::Complete);
        assert_eq!(jpeg_end(&exif[..exif.len() - 2]), JpegEnd::Truncated);
    }

    #[test]
    fn files_over_the_byte_cap_are_not_read_whole() {
        // An endless reader: only the cap stops it.
        let e = read_source(std::io::repeat(0), 800).unwrap_err();
        assert!(matches!(e, RenderError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("THUMBNAIL_MAX_SOURCE_BYTES"), "{e}");
        assert_eq!(read_source(&[1u8; 800][..], 800).unwrap().len(), 800);
    }

    #[test]
    fn other_files_are_not_images_or_unsupported() {
        let e = err_of(b"ID3\x04\0\0\0\0\0\0 an mp3 where a cover should be".to_vec());
        assert!(matches!(e, RenderError::NotAnImage), "{e:?}");
        assert!(e.to_string().starts_with("not an image"));
        let e = err_of(Vec::new());
        assert!(matches!(e, RenderError::NotAnImage), "{e:?}");
        let mut bmp = b"BM".to_vec();
        bmp.extend_from_slice(&[0; 60]);
        let e = err_of(bmp);
        assert_eq!(
            e.to_string(),
            "unsupported image format BMP: only JPEG, PNG, WebP and GIF are accepted; convert it and upload it again"
        );
        assert!(e.is_permanent());
        let mut junk = b"\x89PNG\r\n\x1a\n".to_vec();
        junk.extend_from_slice(b"this is not a png chunk stream at all.....");
        let e = err_of(junk);
        assert!(e.is_permanent(), "{e:?}");
    }
}
