//! The decoded-and-resized image cache: one file per (dataset version, image size, file
//! sha256), so large DICOMs are decoded once, not every epoch. Filling the cache checks
//! the source file against the sha256 it was registered with and refuses a changed file.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::decode::{self, DecodeError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "{path} changed since the dataset version was registered (sha256 {actual}, registered {expected}); restore the file or register a new version"
    )]
    Changed { path: String, expected: String, actual: String },
    #[error("{path}: {source}")]
    Decode { path: String, source: DecodeError },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl LoadError {
    /// A single bad image is skipped and reported; a changed file or a failing cache
    /// stops the run.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, LoadError::Decode { .. })
    }
}

pub struct ImageCache {
    dir: PathBuf,
    size: usize,
}

impl ImageCache {
    /// `root/<version>/<size>/`.
    pub fn new(root: &Path, version: &str, size: usize) -> Self {
        Self { dir: root.join(version).join(size.to_string()), size }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    fn entry(&self, sha256: &str) -> PathBuf {
        self.dir.join(&sha256[..2.min(sha256.len())]).join(format!("{sha256}.u16"))
    }

    /// The fitted `size` x `size` image of `source` (values 0..1), from the cache or
    /// decoded now and cached. Errors name the item as `name` (its registered relative
    /// path), never a path of this machine: they reach the server, where viewers read them.
    pub fn load(&self, source: &Path, name: &str, sha256: &str) -> Result<Vec<f32>, LoadError> {
        let entry = self.entry(sha256);
        if let Ok(bytes) = std::fs::read(&entry)
            && bytes.len() == self.size * self.size * 2
        {
            return Ok(bytes.chunks_exact(2).map(|b| f32::from(u16::from_le_bytes([b[0], b[1]])) / 65535.0).collect());
        }
        let display = name.to_owned();
        let io = |source: std::io::Error| LoadError::Io { path: display.clone(), source };
        let raw = std::fs::read(source).map_err(io)?;
        let actual = hex::encode(Sha256::digest(&raw));
        if actual != sha256 {
            return Err(LoadError::Changed { path: display, expected: sha256.to_owned(), actual });
        }
        let (img, _) = decode::decode_file(source).map_err(|e| LoadError::Decode { path: display.clone(), source: e })?;
        let quantized = quantized_square(&img, self.size);
        let parent = entry.parent().unwrap_or(&self.dir).to_path_buf();
        let io_entry = |source: std::io::Error| LoadError::Io { path: format!("the image cache entry of {name}"), source };
        std::fs::create_dir_all(&parent).map_err(io_entry)?;
        // A name of its own per writer: several loaders may fill the same entry at once.
        static WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let writer = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = parent.join(format!(".{sha256}.{}.{writer}.tmp", std::process::id()));
        let mut file = std::fs::File::create(&tmp).map_err(io_entry)?;
        let bytes: Vec<u8> = quantized.iter().flat_map(|q| q.to_le_bytes()).collect();
        file.write_all(&bytes).map_err(io_entry)?;
        drop(file);
        if let Err(e) = std::fs::rename(&tmp, &entry) {
            let _ = std::fs::remove_file(&tmp);
            if !entry.exists() {
                return Err(io_entry(e));
            }
        }
        // What the cache will give next time, so a first epoch equals every later one.
        Ok(dequantize(&quantized))
    }
}

/// The model's input for a decoded image, as training saw it: fitted to `size` x `size` and
/// quantized to 16 bits (the cache's format).
pub fn quantized_square(img: &decode::Gray, size: usize) -> Vec<u16> {
    decode::fit_square(img, size).iter().map(|v| (v.clamp(0.0, 1.0) * 65535.0).round() as u16).collect()
}

pub fn dequantize(q: &[u16]) -> Vec<f32> {
    q.iter().map(|&q| f32::from(q) / 65535.0).collect()
}

/// A decoded file prepared exactly as training and evaluation prepare it (the same reader,
/// window, MONOCHROME1 handling, padding and resize, quantization), with its DICOM header ids.
pub fn prepare(source: &Path, size: usize) -> Result<(Vec<f32>, decode::DicomIds), DecodeError> {
    let (img, ids) = decode::decode_file(source)?;
    Ok((dequantize(&quantized_square(&img, size)), ids))
}
