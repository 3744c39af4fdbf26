//! Real DICOMs nobody here made (tests/fixtures/dicom, MIT, see its README) and a corpus of
//! broken files:
//! each either decodes to a sensible grayscale image or gives a clear error, never a panic.

use data::decode::{DecodeError, Gray, decode_file};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom")
}

/// A fixture of the repository: missing is a failure (the tests must run in any clone).
fn fixture(name: &str) -> Option<PathBuf> {
    let path = fixtures().join(name);
    assert!(path.exists(), "{} is missing from the repository's test fixtures", path.display());
    Some(path)
}

fn mean(img: &Gray, x0: f32, x1: f32, y0: f32, y1: f32) -> f32 {
    let (xa, xb) = ((img.width as f32 * x0) as usize, (img.width as f32 * x1) as usize);
    let (ya, yb) = ((img.height as f32 * y0) as usize, (img.height as f32 * y1) as usize);
    let mut sum = 0.0;
    for y in ya..yb {
        for x in xa..xb {
            sum += img.pixels[y * img.width + x];
        }
    }
    sum / ((xb - xa) * (yb - ya)) as f32
}

fn sensible(img: &Gray) {
    assert_eq!(img.pixels.len(), img.width * img.height);
    assert!(img.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
    let (lo, hi) = img.pixels.iter().fold((1.0f32, 0.0f32), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    assert!(hi - lo > 0.2, "the image has contrast ({lo}..{hi})");
}

#[test]
fn readable_fixtures_decode_to_sensible_grayscale() {
    for name in [
        "RG1_J2KI.dcm",
        "RG3_J2KI.dcm",
        "JPEG-LL.dcm",
        "JPGLosslessP14SV1_1s_1f_8b.dcm",
        "MR2_J2KI.dcm",
        "US1_J2KI.dcm",
        "emri_small_RLE.dcm",
        "OBXXXX1A_rle.dcm",
        "emri_small_big_endian.dcm",
        "liver.dcm",
        "liver_deflate.dcm",
        "vlut_04.dcm",
        "SC_rgb.dcm",
    ] {
        let Some(path) = fixture(name) else { return };
        let (img, _) = decode_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        sensible(&img);
    }
}

#[test]
fn monochrome1_radiographs_are_inverted_so_bone_is_bright() {
    // RG1 is a chest radiograph stored as MONOCHROME1: after inversion the spine and
    // mediastinum are brighter than the air-filled lungs beside them.
    if let Some(path) = fixture("RG1_J2KI.dcm") {
        let (img, _) = decode_file(&path).expect("decodes");
        let spine = mean(&img, 0.47, 0.53, 0.2, 0.6);
        let lungs = (mean(&img, 0.2, 0.32, 0.25, 0.5) + mean(&img, 0.68, 0.8, 0.25, 0.5)) / 2.0;
        assert!(spine > lungs + 0.05, "RG1: spine {spine} vs lungs {lungs}");
    }
    // RG3 is a leg radiograph: the tibia in the middle is bright, the exposed air beside
    // the leg dark (the collimated margins further out are white, as on film).
    if let Some(path) = fixture("RG3_J2KI.dcm") {
        let (img, _) = decode_file(&path).expect("decodes");
        let tibia = mean(&img, 0.47, 0.53, 0.45, 0.55);
        let air = (mean(&img, 0.31, 0.37, 0.45, 0.55) + mean(&img, 0.63, 0.69, 0.45, 0.55)) / 2.0;
        assert!(tibia > air + 0.3, "RG3: tibia {tibia} vs air {air}");
    }
}

#[test]
fn one_bit_masks_decode_alike_native_and_deflated() {
    let (Some(a), Some(b)) = (fixture("liver.dcm"), fixture("liver_deflate.dcm")) else { return };
    let (a, _) = decode_file(&a).expect("liver");
    let (b, _) = decode_file(&b).expect("deflate");
    assert_eq!((a.width, a.height), (b.width, b.height));
    let diff: f32 = a.pixels.iter().zip(&b.pixels).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.pixels.len() as f32;
    assert!(diff < 1e-6, "mean difference {diff}");
    assert!(a.pixels.iter().all(|v| *v == 0.0 || *v == 1.0), "a mask holds 0 and 1 only");
}

#[test]
fn unsupported_and_broken_fixtures_give_clear_errors() {
    if let Some(path) = fixture("JLSL_16_15_1_1F.dcm") {
        let err = decode_file(&path).expect_err("JPEG-LS is not supported");
        assert!(matches!(err, DecodeError::UnsupportedTransferSyntax { .. }), "{err}");
        assert!(err.to_string().contains("JPEG-LS"), "{err}");
    }
    // pydicom rejects this file because the encapsulated pixel data ends without its
    // sequence delimiter. dicom-rs reads every fragment, and the decoded pixels equal the
    // RLE and big-endian copies of the same series exactly, so cobb accepts it.
    if let (Some(short), Some(rle)) = (fixture("emri_small_jpeg_2k_lossless_too_short.dcm"), fixture("emri_small_RLE.dcm")) {
        let (a, _) = decode_file(&short).expect("tolerant read");
        let (b, _) = decode_file(&rle).expect("RLE");
        assert_eq!(a, b);
    }
    if let Some(path) = fixture("bad_sequence.dcm") {
        // A tolerant read or a clear error are both fine; a panic is not.
        if let Err(e) = decode_file(&path) {
            assert!(!e.to_string().is_empty());
        }
    }
}

#[test]
fn broken_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().expect("tmp");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    };
    assert!(matches!(decode_file(&write("zero.png", b"")), Err(DecodeError::Empty)));
    assert!(matches!(decode_file(&write("text.png", b"hello, not an image")), Err(DecodeError::NotAnImage)));
    let tiny = dir.path().join("tiny.png");
    image::GrayImage::new(1, 1).save(&tiny).expect("png");
    assert!(matches!(decode_file(&tiny), Err(DecodeError::TooSmall { .. })));
    if let Some(liver) = fixture("liver.dcm") {
        let bytes = std::fs::read(&liver).expect("read");
        let truncated = write("truncated.dcm", &bytes[..bytes.len() / 3]);
        let err = decode_file(&truncated).expect_err("truncated DICOM");
        assert!(!err.to_string().is_empty());
        // The header alone: no pixel data.
        let obj = dicom_object::open_file(&liver).expect("open");
        let mut obj = obj;
        obj.remove_element(dicom_dictionary_std::tags::PIXEL_DATA);
        let headless = dir.path().join("nopixels.dcm");
        obj.write_to_file(&headless).expect("write");
        assert!(matches!(decode_file(&headless), Err(DecodeError::NoPixelData)));
    }
}

#[test]
fn phantom_dicoms_round_trip_with_monochrome1_inverted() {
    let dir = tempfile::tempdir().expect("tmp");
    let options = data::phantoms::Options {
        count: 30,
        size: 64,
        seed: 9,
        format: data::phantoms::Format::Dicom,
        balance: data::phantoms::Balance::Uniform,
    };
    let written = data::phantoms::generate(dir.path(), &options).expect("phantoms");
    assert_eq!(written.images, 30);
    let manifest = std::fs::read_to_string(&written.manifest).expect("manifest");
    let mut monochrome1 = 0;
    for line in manifest.lines().skip(1) {
        let rel = line.split(',').next().expect("path");
        let path = dir.path().join(rel);
        let (img, ids) = decode_file(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!((img.width, img.height), (64, 64));
        assert!(ids.patient_id.is_some_and(|p| line.contains(&p)), "PatientID matches the manifest");
        let obj = dicom_object::open_file(&path).expect("open");
        let pi = obj.element(dicom_dictionary_std::tags::PHOTOMETRIC_INTERPRETATION).expect("PI").to_str().expect("str").trim().to_owned();
        if pi == "MONOCHROME1" {
            monochrome1 += 1;
        }
        // Air around the body is dark after decoding, whatever was stored.
        let corner = mean(&img, 0.0, 0.1, 0.4, 0.6);
        let spine = mean(&img, 0.4, 0.6, 0.3, 0.7);
        assert!(spine > corner, "{rel} ({pi}): spine {spine} vs corner {corner}");
    }
    assert!(monochrome1 > 0, "some phantoms are MONOCHROME1");
}
