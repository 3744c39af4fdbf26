//! Running a promoted model over a folder of new images: every file under the folder is read,
//! hashed, decoded and prepared exactly as training prepared its images (data::cache::prepare),
//! then classified in batches. On a GPU, decoding of the next batch (on every core, with rayon)
//! overlaps the forward pass of the current one; on the CPU the two take turns on all cores
//! (both are CPU work, so overlap gains nothing there, and interleaving the decoder's tasks
//! with the model's on the same rayon threads was slower: docs/benchmarks.md). A file that
//! cannot be classified is reported with its reason and the pass goes on.

use burn::prelude::*;
use protocol::spec::ExperimentSpec;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use crate::models;
use crate::train::{TrainError, checkpoint};

/// One file of the folder, by its path relative to the folder (`/`-separated).
#[derive(Debug, Clone)]
pub struct FileRef {
    pub path: PathBuf,
    pub rel: String,
}

/// What became of one file.
#[derive(Debug, Clone)]
pub struct FileResult {
    pub rel: String,
    /// None when the file could not be read at all.
    pub sha256: Option<String>,
    pub outcome: Result<Predicted, String>,
}

#[derive(Debug, Clone)]
pub struct Predicted {
    pub class: usize,
    pub probabilities: Vec<f32>,
    /// The DICOM ViewPosition, when the file is a DICOM that has one.
    pub view: Option<String>,
    /// The model's input (size x size, 0..1): the review sheet's thumbnail.
    pub pixels: Vec<f32>,
}

/// Every regular file under `root`, sorted by relative path (symbolic links are followed only
/// to files; a folder that cannot be listed is an error, since files would go missing).
pub fn list_files(root: &Path) -> Result<Vec<FileRef>, String> {
    let meta = std::fs::metadata(root).map_err(|e| format!("cannot read {}: {e}", root.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a folder; give the folder of images to classify", root.display()));
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            if kind.is_symlink() && std::fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false) {
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push(FileRef { path, rel });
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// A prepared file, or why not.
type Prepared = (String, Option<String>, Result<(Vec<f32>, Option<String>), String>);

fn prepare_one(file: &FileRef, size: usize) -> Prepared {
    let bytes = match std::fs::read(&file.path) {
        Ok(b) => b,
        Err(e) => return (file.rel.clone(), None, Err(format!("unreadable: {e}"))),
    };
    let sha = hex::encode(Sha256::digest(&bytes));
    drop(bytes);
    match data::cache::prepare(&file.path, size) {
        Ok((pixels, ids)) => (file.rel.clone(), Some(sha), Ok((pixels, ids.view))),
        Err(e) => (file.rel.clone(), Some(sha), Err(e.to_string())),
    }
}

/// Classifies `files` with the model saved at `model_file`, `batch` images per forward pass;
/// `each` receives every batch's results in file order and returns false to stop early.
pub fn classify_files(
    choice: crate::device::DeviceChoice,
    spec: &ExperimentSpec,
    classes: &[String],
    model_file: &Path,
    files: Vec<FileRef>,
    batch: usize,
    each: &mut dyn FnMut(Vec<FileResult>) -> bool,
) -> Result<(), TrainError> {
    let device = crate::device::burn_device(choice)?;
    let size = spec.model.resolved_image_size() as usize;
    let model = models::build(spec.model.arch, 1, classes.len(), spec.model.dropout, &device).model;
    let model = checkpoint::load_model(model, model_file)?.valid();
    let batch = batch.max(1);
    let n = classes.len();
    let prepare = |chunk: &[FileRef]| -> Vec<Prepared> { chunk.par_iter().map(|f| prepare_one(f, size)).collect() };
    let mut classify = |prepared: Vec<Prepared>| -> bool {
        let mut pixels: Vec<f32> = Vec::with_capacity(prepared.len() * size * size);
        let mut good = Vec::new();
        for (i, (_, _, p)) in prepared.iter().enumerate() {
            if let Ok((px, _)) = p {
                pixels.extend_from_slice(px);
                good.push(i);
            }
        }
        let mut probs_of: Vec<Option<Vec<f32>>> = vec![None; prepared.len()];
        if !good.is_empty() {
            let logits = model.forward(crate::train::input_tensor(&pixels, good.len(), size, &device));
            let probabilities: Vec<f32> =
                burn::tensor::activation::softmax(logits, 1).into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
            for (k, &i) in good.iter().enumerate() {
                probs_of[i] = probabilities.get(k * n..(k + 1) * n).map(<[f32]>::to_vec);
            }
        }
        let mut results = Vec::with_capacity(prepared.len());
        for ((rel, sha256, p), probs) in prepared.into_iter().zip(probs_of) {
            let outcome = match (p, probs) {
                (Ok((px, view)), Some(probabilities)) => Ok(Predicted { class: argmax(&probabilities), probabilities, view, pixels: px }),
                (Ok(_), None) => Err("the model gave no output for this image".to_owned()),
                (Err(e), _) => Err(e),
            };
            results.push(FileResult { rel, sha256, outcome });
        }
        each(results)
    };
    if choice == crate::device::DeviceChoice::Cpu {
        for chunk in files.chunks(batch) {
            if !classify(prepare(chunk)) {
                break;
            }
        }
        return Ok(());
    }
    // Decoding runs one batch ahead on its own thread (rayon inside), the forward pass here.
    let (tx, rx) = sync_channel::<Vec<Prepared>>(1);
    std::thread::scope(|scope| {
        let files = &files;
        scope.spawn(move || {
            for chunk in files.chunks(batch) {
                if tx.send(prepare(chunk)).is_err() {
                    break;
                }
            }
        });
        for prepared in rx {
            if !classify(prepared) {
                break;
            }
        }
    });
    Ok(())
}

fn argmax(p: &[f32]) -> usize {
    p.iter().enumerate().fold(0, |best, (i, v)| if *v > p[best] { i } else { best })
}

/// The longest side of a review-sheet thumbnail.
pub const THUMBNAIL: u32 = 160;

/// A thumbnail of a model input as a PNG data URL (the review sheet; stays on this machine).
pub fn thumbnail_data_url(pixels: &[f32], size: usize) -> Option<String> {
    use base64::Engine;
    let bytes: Vec<u8> = pixels.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
    let mut img = image::GrayImage::from_raw(size as u32, size as u32, bytes)?;
    if size as u32 > THUMBNAIL {
        img = image::imageops::resize(&img, THUMBNAIL, THUMBNAIL, image::imageops::FilterType::Triangle);
    }
    let mut png = Vec::new();
    image::DynamicImage::ImageLuma8(img).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).ok()?;
    Some(format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png)))
}
