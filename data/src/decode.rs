//! Reading radiographs as they come from a PACS export: DICOM (through dicom-rs: 8/12/16
//! bit, Rescale Slope/Intercept, VOI LUT or window centre/width when present, robust
//! percentile windowing otherwise, MONOCHROME1 inverted, RGB to luminance) and PNG/JPEG
//! (through `image`). Output is one grayscale plane in 0..1 where bright means dense
//! (bone, metal), whatever the source's photometric interpretation.
//!
//! Transfer syntaxes: implicit/explicit VR little endian, explicit VR big endian,
//! deflated, RLE lossless, JPEG baseline/extended/lossless, JPEG 2000 (lossless and
//! lossy), 1-bit masks. JPEG-LS is not supported (its decoder needs a C++ toolchain with CMake at build
//! time); such files are reported, never silently dropped.

use std::path::Path;

/// A decoded image: `width * height` values in 0..1, bright = dense.
#[derive(Debug, Clone, PartialEq)]
pub struct Gray {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<f32>,
}

/// Identifying attributes read from a DICOM header (raw; hash before storing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DicomIds {
    pub patient_id: Option<String>,
    pub study_uid: Option<String>,
    pub view: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unreadable: {0}")]
    Io(#[from] std::io::Error),
    #[error("empty file")]
    Empty,
    #[error("not an image: neither DICOM, PNG nor JPEG")]
    NotAnImage,
    #[error("image is {width}x{height}; at least {min}x{min} pixels are needed")]
    TooSmall { width: usize, height: usize, min: usize },
    #[error("corrupt or truncated DICOM: {0}")]
    Dicom(String),
    #[error("DICOM file has no pixel data")]
    NoPixelData,
    #[error("unsupported transfer syntax {uid} ({name}); convert the file to an uncompressed or JPEG/JPEG 2000 syntax")]
    UnsupportedTransferSyntax { uid: String, name: &'static str },
    #[error("cannot decode the pixel data: {0}")]
    Pixels(String),
    #[error("corrupt or truncated {format}: {message}")]
    Raster { format: &'static str, message: String },
}

pub const MIN_SIDE: usize = 16;

fn is_dicom(bytes: &[u8]) -> bool {
    bytes.len() >= 132 && &bytes[128..132] == b"DICM"
}

/// Decodes any supported file, choosing the reader by content, not by extension.
pub fn decode_file(path: &Path) -> Result<(Gray, DicomIds), DecodeError> {
    let bytes = std::fs::read(path)?;
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let (gray, ids) = if is_dicom(&bytes) {
        decode_dicom(path)?
    } else if bytes.starts_with(b"\x89PNG") || bytes.starts_with(&[0xFF, 0xD8]) {
        (decode_raster(&bytes)?, DicomIds::default())
    } else {
        return Err(DecodeError::NotAnImage);
    };
    if gray.width < MIN_SIDE || gray.height < MIN_SIDE {
        return Err(DecodeError::TooSmall { width: gray.width, height: gray.height, min: MIN_SIDE });
    }
    Ok((gray, ids))
}

fn decode_raster(bytes: &[u8]) -> Result<Gray, DecodeError> {
    let format = if bytes.starts_with(b"\x89PNG") { "PNG" } else { "JPEG" };
    let img = image::load_from_memory(bytes).map_err(|e| DecodeError::Raster { format, message: e.to_string() })?;
    let luma = img.to_luma16();
    let (w, h) = (luma.width() as usize, luma.height() as usize);
    Ok(Gray { width: w, height: h, pixels: luma.into_raw().into_iter().map(|v| f32::from(v) / 65535.0).collect() })
}

fn unsupported_name(uid: &str) -> Option<&'static str> {
    match uid.trim_end_matches('\0') {
        "1.2.840.10008.1.2.4.80" => Some("JPEG-LS lossless"),
        "1.2.840.10008.1.2.4.81" => Some("JPEG-LS near-lossless"),
        "1.2.840.10008.1.2.4.100" | "1.2.840.10008.1.2.4.101" | "1.2.840.10008.1.2.4.102" | "1.2.840.10008.1.2.4.103" => Some("MPEG video"),
        "1.2.840.10008.1.2.4.110" | "1.2.840.10008.1.2.4.111" | "1.2.840.10008.1.2.4.112" => Some("JPEG XL"),
        _ => None,
    }
}

fn text(obj: &dicom_object::DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    obj.element(tag).ok().and_then(|e| e.to_str().ok()).map(|s| s.trim().trim_end_matches('\0').to_owned()).filter(|s| !s.is_empty())
}

fn decode_dicom(path: &Path) -> Result<(Gray, DicomIds), DecodeError> {
    use dicom_dictionary_std::tags;
    use dicom_pixeldata::{ConvertOptions, PhotometricInterpretation, PixelDecoder, VoiLutOption};

    let obj = dicom_object::OpenFileOptions::new().open_file(path).map_err(|e| DecodeError::Dicom(e.to_string()))?;
    let ids = DicomIds {
        patient_id: text(&obj, tags::PATIENT_ID),
        study_uid: text(&obj, tags::STUDY_INSTANCE_UID),
        view: text(&obj, tags::VIEW_POSITION),
    };
    let uid = obj.meta().transfer_syntax().to_owned();
    if let Some(name) = unsupported_name(&uid) {
        return Err(DecodeError::UnsupportedTransferSyntax { uid: uid.trim_end_matches('\0').to_owned(), name });
    }
    if obj.element(tags::PIXEL_DATA).is_err() {
        return Err(DecodeError::NoPixelData);
    }
    let decoded = obj.decode_pixel_data().map_err(|e| DecodeError::Pixels(e.to_string()))?;
    let (w, h) = (decoded.columns() as usize, decoded.rows() as usize);
    if w == 0 || h == 0 {
        return Err(DecodeError::Pixels("the image has no rows or columns".to_owned()));
    }
    let pixel_error = |e: dicom_pixeldata::Error| DecodeError::Pixels(e.to_string());
    // Every frame must be there: a truncated encapsulated stream can decode to fewer bytes.
    let bytes_per_sample = usize::from(decoded.bits_allocated()).div_ceil(8);
    let expected = if decoded.bits_allocated() == 1 {
        (w * h * decoded.number_of_frames() as usize).div_ceil(8)
    } else {
        w * h * usize::from(decoded.samples_per_pixel()) * bytes_per_sample * decoded.number_of_frames() as usize
    };
    if decoded.data().len() < expected {
        return Err(DecodeError::Pixels(format!(
            "pixel data is truncated: {} of {expected} bytes for {} frame(s) of {w}x{h}",
            decoded.data().len(),
            decoded.number_of_frames()
        )));
    }
    if decoded.bits_allocated() == 1 {
        // 1-bit images (masks). dicom-rs hands native ones over one byte per pixel and
        // deflated ones still packed (least significant bit first): read either.
        let data = decoded.data();
        let unpacked = data.len() >= w * h * decoded.number_of_frames() as usize;
        let mut pixels: Vec<f32> =
            (0..w * h).map(|i| if unpacked { f32::from(data[i].min(1)) } else { f32::from((data[i / 8] >> (i % 8)) & 1) }).collect();
        if *decoded.photometric_interpretation() == PhotometricInterpretation::Monochrome1 {
            pixels.iter_mut().for_each(|v| *v = 1.0 - *v);
        }
        return Ok((Gray { width: w, height: h, pixels }, ids));
    }
    let as_unit = |img: image::DynamicImage| img.to_luma16().into_raw().into_iter().map(|v| f32::from(v) / 65535.0).collect::<Vec<f32>>();

    if decoded.samples_per_pixel() != 1 {
        let img = decoded.to_dynamic_image(0).map_err(pixel_error)?;
        return Ok((Gray { width: w, height: h, pixels: as_unit(img) }, ids));
    }
    let has_voi = decoded.window().ok().flatten().is_some() || decoded.voi_lut_sequence().ok().flatten().is_some();
    let pixels = if has_voi {
        // Modality LUT, then the file's own VOI LUT or window; MONOCHROME1 is inverted.
        let options = ConvertOptions::new().with_voi_lut(VoiLutOption::First).force_16bit();
        as_unit(decoded.to_dynamic_image_with_options(0, &options).map_err(pixel_error)?)
    } else {
        let values: Vec<f32> = decoded.to_vec_frame_with_options(0, &ConvertOptions::new()).map_err(pixel_error)?;
        let mut unit = percentile_window(&values, 0.005, 0.995);
        if *decoded.photometric_interpretation() == PhotometricInterpretation::Monochrome1 {
            for v in &mut unit {
                *v = 1.0 - *v;
            }
        }
        unit
    };
    if pixels.len() < w * h {
        return Err(DecodeError::Pixels(format!("{} values for a {w}x{h} image", pixels.len())));
    }
    Ok((Gray { width: w, height: h, pixels: pixels[..w * h].to_vec() }, ids))
}

/// Maps the [lo, hi] quantiles of `values` to [0, 1] (robust to hot pixels and
/// collimation borders).
pub fn percentile_window(values: &[f32], lo: f64, hi: f64) -> Vec<f32> {
    let step = (values.len() / 65_536).max(1);
    let mut sample: Vec<f32> = values.iter().step_by(step).copied().filter(|v| v.is_finite()).collect();
    if sample.is_empty() {
        return vec![0.0; values.len()];
    }
    sample.sort_by(f32::total_cmp);
    let at = |q: f64| sample[((sample.len() - 1) as f64 * q).round() as usize];
    let (a, b) = (at(lo), at(hi));
    let span = if b > a { b - a } else { 1.0 };
    values.iter().map(|v| ((v - a) / span).clamp(0.0, 1.0)).collect()
}

/// Fits an image into a `size` x `size` square keeping its aspect ratio, padding with 0
/// (air), averaging source pixels when shrinking.
pub fn fit_square(img: &Gray, size: usize) -> Vec<f32> {
    let scale = size as f32 / img.width.max(img.height) as f32;
    let (nw, nh) =
        (((img.width as f32 * scale).round() as usize).clamp(1, size), ((img.height as f32 * scale).round() as usize).clamp(1, size));
    let (ox, oy) = ((size - nw) / 2, (size - nh) / 2);
    let mut out = vec![0.0f32; size * size];
    let (sx, sy) = (img.width as f32 / nw as f32, img.height as f32 / nh as f32);
    for y in 0..nh {
        let (y0, y1) = ((y as f32 * sy) as usize, (((y + 1) as f32 * sy).ceil() as usize).clamp(1, img.height));
        let y0 = y0.min(y1 - 1);
        for x in 0..nw {
            let (x0, x1) = ((x as f32 * sx) as usize, (((x + 1) as f32 * sx).ceil() as usize).clamp(1, img.width));
            let x0 = x0.min(x1 - 1);
            let mut sum = 0.0;
            for yy in y0..y1 {
                let row = &img.pixels[yy * img.width..(yy + 1) * img.width];
                sum += row[x0..x1].iter().sum::<f32>();
            }
            out[(oy + y) * size + ox + x] = sum / ((y1 - y0) * (x1 - x0)) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_window_ignores_outliers() {
        let mut values: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        values[0] = -1e6;
        values[999] = 1e9;
        let unit = percentile_window(&values, 0.005, 0.995);
        assert_eq!(unit[0], 0.0);
        assert_eq!(unit[999], 1.0);
        assert!((unit[500] - 0.5).abs() < 0.02);
    }

    #[test]
    fn fit_square_keeps_aspect_and_pads() {
        let img = Gray { width: 40, height: 20, pixels: vec![1.0; 800] };
        let out = fit_square(&img, 20);
        assert_eq!(out.len(), 400);
        assert_eq!(out[0], 0.0, "top padding");
        assert_eq!(out[10 * 20 + 10], 1.0);
        assert_eq!(out.iter().filter(|v| **v > 0.5).count(), 200);
    }
}
