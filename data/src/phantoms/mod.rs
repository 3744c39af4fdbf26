//! `cobb phantoms`: procedural full-spine radiograph phantoms for the 10 categories, with
//! several images per synthetic patient (pre and post, AP and lateral) so that grouping by
//! patient matters. Deterministic for a seed whatever the number of threads.

pub mod canvas;
pub mod render;

use protocol::classes::SCOLIOSIS_CLASSES;
use protocol::rng::SplitMix64;
use std::path::{Path, PathBuf};

use render::{Patient, Phase, Shot, View};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Dicom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// About the same number of images in every class.
    Uniform,
    /// The source study's imbalance: two tether classes under 100 per 5,000 images.
    Paper,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub count: usize,
    pub size: usize,
    pub seed: u64,
    pub format: Format,
    pub balance: Balance,
}

/// One image to make.
#[derive(Debug, Clone)]
pub struct Planned {
    pub class: usize,
    pub patient: usize,
    pub view: View,
    pub phase: Phase,
    /// Days after the patient's first visit.
    pub day: u32,
}

fn class_parts(class: usize) -> (View, Phase) {
    let view = if class < 5 { View::Ap } else { View::Lat };
    let phase = match class % 5 {
        0 => Phase::Preop,
        1 => Phase::PreopBrace,
        2 => Phase::Fusion,
        3 => Phase::GrowingRods,
        _ => Phase::Tether,
    };
    (view, phase)
}

/// Share of each class (in SCOLIOSIS_CLASSES order).
fn weights(balance: Balance) -> [f64; 10] {
    match balance {
        Balance::Uniform => [1.0; 10],
        Balance::Paper => [0.16, 0.08, 0.16, 0.06, 0.015, 0.14, 0.07, 0.14, 0.05, 0.012],
    }
}

/// Per-class counts summing to `count` (largest remainders).
fn quotas(count: usize, balance: Balance) -> [usize; 10] {
    let w = weights(balance);
    let total: f64 = w.iter().sum();
    let exact: Vec<f64> = w.iter().map(|x| x / total * count as f64).collect();
    let mut q = [0usize; 10];
    for i in 0..10 {
        q[i] = exact[i].floor() as usize;
    }
    let mut rest: Vec<usize> = (0..10).collect();
    rest.sort_by(|a, b| (exact[*b] - exact[*b].floor()).total_cmp(&(exact[*a] - exact[*a].floor())).then(a.cmp(b)));
    let mut missing = count - q.iter().sum::<usize>();
    for i in rest {
        if missing == 0 {
            break;
        }
        q[i] += 1;
        missing -= 1;
    }
    q
}

/// Groups the class quotas into patients: each patient has a pre-operative visit (with or
/// without a brace) and usually a post-operative one, each imaged AP and lateral while
/// the quotas last.
pub fn plan(options: &Options) -> Vec<Planned> {
    let mut left = quotas(options.count, options.balance);
    let mut rng = SplitMix64::new(options.seed ^ 0x5EED_C0BB);
    let mut out = Vec::with_capacity(options.count);
    let mut patient = 0usize;
    while left.iter().sum::<usize>() > 0 {
        let pick = |rng: &mut SplitMix64, left: &[usize; 10], options: &[usize]| -> Option<usize> {
            let total: usize = options.iter().map(|&p| left[p] + left[p + 5]).sum();
            if total == 0 {
                return None;
            }
            let mut r = rng.below(total);
            for &p in options {
                let n = left[p] + left[p + 5];
                if r < n {
                    return Some(p);
                }
                r -= n;
            }
            None
        };
        let before = out.len();
        let pre = pick(&mut rng, &left, &[0, 1]);
        let post = pick(&mut rng, &left, &[2, 3, 4]);
        for (phase, day) in [(pre, 0u32), (post, 200 + rng.below(500) as u32)] {
            let Some(p) = phase else { continue };
            for class in [p, p + 5] {
                if left[class] > 0 {
                    left[class] -= 1;
                    let (view, phase) = class_parts(class);
                    out.push(Planned { class, patient, view, phase, day });
                }
            }
        }
        if out.len() == before {
            // Only single-view quotas remain: give this patient one of them.
            if let Some(class) = (0..10).find(|&c| left[c] > 0) {
                left[class] -= 1;
                let (view, phase) = class_parts(class);
                out.push(Planned { class, patient, view, phase, day: 0 });
            }
        }
        patient += 1;
    }
    out
}

/// What was written.
#[derive(Debug)]
pub struct Written {
    pub images: usize,
    pub patients: usize,
    pub per_class: [usize; 10],
    pub manifest: PathBuf,
}

fn patient_id(seed: u64, patient: usize) -> String {
    format!("PH{:04}-{patient:05}", seed % 10_000)
}

/// Renders every planned image into `out/<class>/<file>` plus `out/manifest.csv`
/// (path,label,patient_id,view,acquired_at), on all cores.
pub fn generate(out: &Path, options: &Options) -> std::io::Result<Written> {
    let planned = plan(options);
    for class in SCOLIOSIS_CLASSES {
        std::fs::create_dir_all(out.join(class))?;
    }
    let base = SplitMix64::new(options.seed);
    let patients: Vec<Patient> = {
        let n = planned.iter().map(|p| p.patient).max().map_or(0, |m| m + 1);
        (0..n).map(|p| Patient::random(&mut base.fork(0x1000_0000 + p as u64))).collect()
    };
    let ext = match options.format {
        Format::Png => "png",
        Format::Dicom => "dcm",
    };
    let names: Vec<String> = planned
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}/{}_{:05}.{ext}", SCOLIOSIS_CLASSES[p.class], patient_id(options.seed, p.patient), i))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failure: std::sync::Mutex<Option<std::io::Error>> = std::sync::Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= planned.len() {
                        break;
                    }
                    let p = &planned[i];
                    let shot = Shot { view: p.view, phase: p.phase, seed: base.fork(i as u64).next_u64() };
                    let pixels = render::render(&patients[p.patient], &shot, options.size);
                    let mut style = SplitMix64::new(shot.seed ^ 0xF11E);
                    let result = match options.format {
                        Format::Png => write_png(&out.join(&names[i]), &pixels, options.size, style.chance(0.5)),
                        Format::Dicom => write_dicom(
                            &out.join(&names[i]),
                            &pixels,
                            options.size,
                            &patient_id(options.seed, p.patient),
                            p,
                            style.chance(0.3),
                            i,
                        ),
                    };
                    if let Err(e) = result
                        && let Ok(mut slot) = failure.lock()
                    {
                        slot.get_or_insert(e);
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    let mut csv = String::from("path,label,patient_id,view,acquired_at\n");
    let mut per_class = [0usize; 10];
    for (p, name) in planned.iter().zip(&names) {
        per_class[p.class] += 1;
        let view = if p.view == View::Ap { "ap" } else { "lat" };
        let date = 20_240_101 + p.day; // a sortable stand-in: yyyymmdd-like day counter
        csv.push_str(&format!("{name},{},{},{view},{date}\n", SCOLIOSIS_CLASSES[p.class], patient_id(options.seed, p.patient)));
    }
    let manifest = out.join("manifest.csv");
    std::fs::write(&manifest, csv)?;
    Ok(Written { images: planned.len(), patients: planned.iter().map(|p| p.patient).max().map_or(0, |m| m + 1), per_class, manifest })
}

/// A 5 x 2 grid with one phantom of every class (AP on top, lateral below), each `tile`
/// pixels square, labelled with its class index in the corner.
pub fn contact_sheet(path: &Path, seed: u64, tile: usize) -> std::io::Result<()> {
    let base = SplitMix64::new(seed);
    let (cols, rows) = (5usize, 2usize);
    let (w, h) = (cols * tile, rows * tile);
    let mut sheet = vec![0.0f32; w * h];
    for class in 0..10 {
        let (view, phase) = class_parts(class);
        let patient = Patient::random(&mut base.fork(class as u64 / 5 + 77));
        let shot = Shot { view, phase, seed: base.fork(1000 + class as u64).next_u64() };
        let mut pixels = render::render(&patient, &shot, tile);
        let mut label = canvas::Canvas::new(tile, tile);
        label.rect(tile as f32 * 0.12, tile as f32 * 0.93, tile as f32 * 0.1, tile as f32 * 0.05, 0.0, 0.0, 1.0);
        label.text(tile as f32 * 0.04, tile as f32 * 0.895, (tile as f32 / 70.0).max(1.0), &format!("{class}"), -2.0);
        for (p, l) in pixels.iter_mut().zip(&label.pixels) {
            *p = (*p + l).clamp(0.0, 1.0);
        }
        let (cx, cy) = ((class % 5) * tile, (class / 5) * tile);
        for y in 0..tile {
            sheet[(cy + y) * w + cx..(cy + y) * w + cx + tile].copy_from_slice(&pixels[y * tile..(y + 1) * tile]);
        }
    }
    let data: Vec<u8> = sheet.iter().map(|v| (v * 255.0).round() as u8).collect();
    image::GrayImage::from_raw(w as u32, h as u32, data)
        .ok_or_else(|| std::io::Error::other("sheet size"))?
        .save(path)
        .map_err(std::io::Error::other)
}

/// 8- or 16-bit grayscale PNG.
fn write_png(path: &Path, pixels: &[f32], size: usize, sixteen: bool) -> std::io::Result<()> {
    let side = size as u32;
    let result = if sixteen {
        let data: Vec<u16> = pixels.iter().map(|v| (v * 65535.0).round() as u16).collect();
        image::ImageBuffer::<image::Luma<u16>, _>::from_raw(side, side, data).map(|img| img.save(path))
    } else {
        let data: Vec<u8> = pixels.iter().map(|v| (v * 255.0).round() as u8).collect();
        image::ImageBuffer::<image::Luma<u8>, _>::from_raw(side, side, data).map(|img| img.save(path))
    };
    match result {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(std::io::Error::other(e)),
        None => Err(std::io::Error::other("pixel buffer does not match the image size")),
    }
}

/// A 16-bit (12 stored) uncompressed DICOM, MONOCHROME2 or (inverted) MONOCHROME1.
fn write_dicom(
    path: &Path,
    pixels: &[f32],
    size: usize,
    patient: &str,
    planned: &Planned,
    monochrome1: bool,
    index: usize,
) -> std::io::Result<()> {
    use dicom_core::{DataElement, PrimitiveValue, VR, dicom_value};
    use dicom_dictionary_std::{tags, uids};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    let values: Vec<u16> = pixels
        .iter()
        .map(|v| {
            let v = if monochrome1 { 1.0 - v } else { *v };
            (v * 4095.0).round() as u16
        })
        .collect();
    let sop_instance = format!("2.25.{}{:06}", 1000 + (planned.patient as u64 % 1000), index);
    let view = if planned.view == View::Ap { "AP" } else { "LL" };
    let obj = InMemDicomObject::from_element_iter([
        DataElement::new(tags::SOP_CLASS_UID, VR::UI, PrimitiveValue::from(uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION)),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(sop_instance.as_str())),
        DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from("DX")),
        DataElement::new(tags::PATIENT_NAME, VR::PN, PrimitiveValue::from(format!("PHANTOM^{patient}").as_str())),
        DataElement::new(tags::PATIENT_ID, VR::LO, PrimitiveValue::from(patient)),
        DataElement::new(tags::VIEW_POSITION, VR::CS, PrimitiveValue::from(view)),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, dicom_value!(U16, [1])),
        DataElement::new(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from(if monochrome1 { "MONOCHROME1" } else { "MONOCHROME2" }),
        ),
        DataElement::new(tags::ROWS, VR::US, dicom_value!(U16, [size as u16])),
        DataElement::new(tags::COLUMNS, VR::US, dicom_value!(U16, [size as u16])),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, dicom_value!(U16, [16])),
        DataElement::new(tags::BITS_STORED, VR::US, dicom_value!(U16, [12])),
        DataElement::new(tags::HIGH_BIT, VR::US, dicom_value!(U16, [11])),
        DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, dicom_value!(U16, [0])),
        DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(values.into())),
    ]);
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION)
        .media_storage_sop_instance_uid(sop_instance.as_str());
    let file = obj.with_meta(meta).map_err(std::io::Error::other)?;
    file.write_to_file(path).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_sum_to_the_count_and_paper_has_two_small_classes() {
        let q = quotas(5000, Balance::Paper);
        assert_eq!(q.iter().sum::<usize>(), 5000);
        assert_eq!(q.iter().filter(|&&n| n < 100).count(), 2, "{q:?}");
        let u = quotas(1003, Balance::Uniform);
        assert_eq!(u.iter().sum::<usize>(), 1003);
        assert!(u.iter().all(|&n| n == 100 || n == 101));
    }

    #[test]
    fn patients_have_several_images_and_the_plan_is_deterministic() {
        let options = Options { count: 400, size: 64, seed: 5, format: Format::Png, balance: Balance::Uniform };
        let a = plan(&options);
        assert_eq!(a.len(), 400);
        let patients = a.iter().map(|p| p.patient).max().unwrap_or(0) + 1;
        assert!(patients < 200, "{patients} patients for 400 images: grouping must matter");
        let b = plan(&options);
        assert!(a.iter().zip(&b).all(|(x, y)| x.class == y.class && x.patient == y.patient));
        let mut counts = [0usize; 10];
        for p in &a {
            counts[p.class] += 1;
        }
        assert_eq!(counts, quotas(400, Balance::Uniform));
    }

    #[test]
    fn rendering_is_deterministic_and_hardware_is_bright() {
        let patient = Patient::random(&mut SplitMix64::new(3));
        let pre = Shot { view: View::Ap, phase: Phase::Preop, seed: 11 };
        let a = render::render(&patient, &pre, 96);
        assert_eq!(a, render::render(&patient, &pre, 96));
        let fused = Shot { view: View::Ap, phase: Phase::Fusion, seed: 11 };
        let b = render::render(&patient, &fused, 96);
        let bright = |img: &[f32]| img.iter().filter(|v| **v > 0.9).count();
        assert!(bright(&b) > bright(&a) + 20, "rods and screws add dense pixels");
    }
}
