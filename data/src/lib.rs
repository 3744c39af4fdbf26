//! cobb's dataset library, with no Burn in it: manifests of labelled files (`manifest`),
//! decoding DICOM/PNG/JPEG to grayscale (`decode`), the frozen patient-grouped split
//! (`split`), the input pipeline's decoded-image cache, augmentations and prefetching loader
//! (`cache`, `transforms`, `loader`; the worker turns its batches into tensors), and the
//! spine radiograph phantom generator (`phantoms`). `cobb dataset register` and `cobb
//! phantoms` use it without going near the training code.

pub mod cache;
pub mod decode;
pub mod loader;
pub mod manifest;
pub mod phantoms;
pub mod pseudonym;
pub mod split;
pub mod transforms;

/// Everything that can go wrong while reading a dataset as a whole (single bad files
/// are reported as [`protocol::api::IngestionIssue`]s instead).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("manifest {path} line {line}: {message}")]
    Manifest { path: String, line: u64, message: String },
    #[error("{path} holds no class folders or images; expected PATH/<class>/<image> or --manifest CSV")]
    Empty { path: String },
}

/// The file of an item on this machine: `root/rel`, refused when `rel` leaves the root
/// (`protocol::api::check_item_path`) or when it resolves, through a symlink, outside the
/// root. The error names the item's relative path only, never where it points.
pub fn resolve_item(root: &std::path::Path, rel: &str) -> Result<std::path::PathBuf, String> {
    protocol::api::check_item_path(rel)?;
    let path = root.join(rel);
    if let (Ok(real), Ok(real_root)) = (path.canonicalize(), root.canonicalize())
        && !real.starts_with(&real_root)
    {
        return Err(format!("item `{rel}` resolves outside the dataset root (a link out of it); it is not read"));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::resolve_item;

    #[test]
    fn items_resolve_under_the_root_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("ap_preop")).expect("dirs");
        std::fs::write(root.join("ap_preop/a.png"), b"x").expect("file");
        std::fs::write(dir.path().join("secret.txt"), b"s").expect("file");
        assert_eq!(resolve_item(&root, "ap_preop/a.png"), Ok(root.join("ap_preop/a.png")));
        assert!(resolve_item(&root, "ap_preop/missing.png").is_ok(), "a missing file is the decoder's to report");
        for bad in ["../secret.txt", "/etc/passwd", "ap_preop/../../secret.txt"] {
            assert!(resolve_item(&root, bad).is_err(), "{bad}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("ap_preop/link.png")).expect("symlink");
            let e = resolve_item(&root, "ap_preop/link.png").expect_err("a link out of the root");
            assert!(e.contains("outside the dataset root") && !e.contains("secret"), "{e}");
        }
    }
}
