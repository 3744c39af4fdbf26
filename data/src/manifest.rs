//! Building a manifest: every file with its sha256, size, label and hashed patient id,
//! from a folder per class or from a CSV (path,label[,patient_id][,view][,acquired_at]).
//!
//! Files that cannot be taken (unknown label, missing, unreadable, not an image, corrupt
//! or unsupported pixel data, too small, duplicate content) become lines of the ingestion
//! report; they never stop the scan. With `decode` on, every file is decoded once (in
//! parallel) and DICOM PatientIDs fill in missing patient ids, pseudonymised with the site's key
//! (`pseudonym`).

use protocol::api::IngestionIssue;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::DataError;

pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "dcm", "dicom", "dic"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedItem {
    /// Relative to the root, with `/` separators.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    pub label: String,
    /// The patient id's pseudonym (keyed HMAC, `pseudonym`).
    pub patient: Option<String>,
    pub view: Option<String>,
    pub acquired_at: Option<String>,
}

/// How to scan.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    pub classes: Vec<String>,
    /// The site's key patient ids are pseudonymised with.
    pub key: crate::pseudonym::PseudonymKey,
    /// Decode every image (reporting the ones that fail) and read DICOM patient ids.
    pub decode: bool,
}

#[derive(Debug, Default)]
pub struct Scanned {
    pub items: Vec<ScannedItem>,
    pub report: Vec<IngestionIssue>,
}

/// sha256 and size of a file.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex::encode(h.finalize()), bytes))
}

fn is_image(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io { path: dir.display().to_string(), source })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// A file that passed the cheap checks, waiting to be hashed (and decoded).
struct Candidate {
    path: PathBuf,
    rel: String,
    label: String,
    patient: Option<String>,
    view: Option<String>,
    acquired_at: Option<String>,
}

/// What reading one file gave: (sha256, bytes, hashed DICOM patient id) or why not.
type Inspected = Result<(String, u64, Option<String>), String>;

fn inspect(path: &Path, options: &ScanOptions) -> Inspected {
    let (sha256, bytes) = hash_file(path).map_err(|e| format!("unreadable: {e}"))?;
    if bytes == 0 {
        return Err("empty file".to_owned());
    }
    let mut patient = None;
    if options.decode {
        let (_, ids) = super::decode::decode_file(path).map_err(|e| e.to_string())?;
        patient = ids.patient_id.map(|p| options.key.pseudonym(&p));
    }
    Ok((sha256, bytes, patient))
}

/// Runs `f` over `items` on all cores, keeping the order.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(items.len().max(1));
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items.chunks(chunk).map(|part| scope.spawn(|| part.iter().map(&f).collect::<Vec<R>>())).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

/// Hashes (and decodes) the candidates in parallel, then takes them in order: the first
/// file with a given content is kept, later copies are reported.
fn take_all(candidates: Vec<Candidate>, options: &ScanOptions, out: &mut Scanned) {
    let inspected = par_map(&candidates, |c| inspect(&c.path, options));
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (c, result) in candidates.into_iter().zip(inspected) {
        match result {
            Err(reason) => out.report.push(IngestionIssue { path: c.rel, reason }),
            Ok((sha256, bytes, dicom_patient)) => {
                if let Some(first) = seen.get(&sha256) {
                    out.report.push(IngestionIssue { path: c.rel, reason: format!("duplicate of {first} (same sha256); kept once") });
                    continue;
                }
                seen.insert(sha256.clone(), c.rel.clone());
                out.items.push(ScannedItem {
                    path: c.rel,
                    sha256,
                    bytes,
                    label: c.label,
                    patient: c.patient.or(dicom_patient),
                    view: c.view,
                    acquired_at: c.acquired_at,
                });
            }
        }
    }
}

/// `root/<class>/.../<image>`: the class is the first folder under the root.
pub fn scan_folder(root: &Path, options: &ScanOptions) -> Result<Scanned, DataError> {
    let mut files = Vec::new();
    walk(root, &mut files)?;
    let known: BTreeSet<&str> = options.classes.iter().map(String::as_str).collect();
    let mut out = Scanned::default();
    let mut candidates = Vec::new();
    for path in files {
        let rel = relative(root, &path);
        let Some(folder) = rel.split_once('/').map(|(f, _)| f.to_owned()) else {
            out.report.push(IngestionIssue {
                path: rel,
                reason: "file at the top level: put images in a folder named after their class".to_owned(),
            });
            continue;
        };
        if !known.contains(folder.as_str()) {
            out.report.push(IngestionIssue { path: rel, reason: format!("folder `{folder}` is not one of the classes") });
            continue;
        }
        if !is_image(&path) {
            out.report.push(IngestionIssue { path: rel, reason: "not an image (expected .png, .jpg, .jpeg or .dcm)".to_owned() });
            continue;
        }
        candidates.push(Candidate { path, rel, label: folder, patient: None, view: None, acquired_at: None });
    }
    take_all(candidates, options, &mut out);
    if out.items.is_empty() && out.report.is_empty() {
        return Err(DataError::Empty { path: root.display().to_string() });
    }
    Ok(out)
}

/// A CSV with a header naming at least `path` and `label`; `patient_id`, `view` and
/// `acquired_at` are optional. Paths are relative to `root`.
pub fn read_manifest(root: &Path, csv_path: &Path, options: &ScanOptions) -> Result<Scanned, DataError> {
    let display = csv_path.display().to_string();
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_path(csv_path).map_err(|e| DataError::Manifest {
        path: display.clone(),
        line: 1,
        message: e.to_string(),
    })?;
    let headers = reader.headers().map_err(|e| DataError::Manifest { path: display.clone(), line: 1, message: e.to_string() })?.clone();
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(path_col), Some(label_col)) = (column("path"), column("label")) else {
        return Err(DataError::Manifest {
            path: display,
            line: 1,
            message: "the header must name `path` and `label` (optional: patient_id, view, acquired_at)".to_owned(),
        });
    };
    let (patient_col, view_col, time_col) = (column("patient_id"), column("view"), column("acquired_at"));
    let known: BTreeSet<&str> = options.classes.iter().map(String::as_str).collect();
    let mut out = Scanned::default();
    let mut candidates = Vec::new();
    let mut listed = BTreeSet::new();
    for (i, record) in reader.records().enumerate() {
        let line = i as u64 + 2;
        let record = record.map_err(|e| DataError::Manifest { path: display.clone(), line, message: e.to_string() })?;
        let field = |c: Option<usize>| c.and_then(|c| record.get(c)).filter(|s| !s.is_empty()).map(str::to_owned);
        let rel = field(Some(path_col)).unwrap_or_default();
        let label = field(Some(label_col)).unwrap_or_default();
        if rel.is_empty() {
            out.report.push(IngestionIssue { path: format!("{display}:{line}"), reason: "empty path".to_owned() });
            continue;
        }
        let escapes = Path::new(&rel).components().any(|c| !matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
        if escapes {
            out.report.push(IngestionIssue { path: rel, reason: "refused: the path leaves the dataset root".to_owned() });
            continue;
        }
        if !listed.insert(rel.clone()) {
            out.report.push(IngestionIssue { path: rel, reason: format!("listed twice (line {line}); kept once") });
            continue;
        }
        if !known.contains(label.as_str()) {
            out.report.push(IngestionIssue { path: rel, reason: format!("label `{label}` is not one of the classes") });
            continue;
        }
        let path = root.join(&rel);
        if !path.is_file() {
            out.report.push(IngestionIssue { path: rel, reason: "missing: no such file under the dataset root".to_owned() });
            continue;
        }
        if !is_image(&path) {
            out.report.push(IngestionIssue { path: rel, reason: "not an image (expected .png, .jpg, .jpeg or .dcm)".to_owned() });
            continue;
        }
        let patient = field(patient_col).map(|p| options.key.pseudonym(&p));
        candidates.push(Candidate { path, rel, label, patient, view: field(view_col), acquired_at: field(time_col) });
    }
    take_all(candidates, options, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        vec!["ap_preop".to_owned(), "lat_preop".to_owned()]
    }

    fn options(key: u8, decode: bool) -> ScanOptions {
        ScanOptions { classes: classes(), key: crate::pseudonym::PseudonymKey::from_bytes([key; 32]), decode }
    }

    fn write(root: &Path, rel: &str, bytes: &[u8]) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write");
    }

    #[test]
    fn folder_scan_takes_images_and_reports_the_rest() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "ap_preop/a.png", b"one");
        write(dir.path(), "ap_preop/sub/b.dcm", b"two");
        write(dir.path(), "lat_preop/c.jpg", b"three");
        write(dir.path(), "lat_preop/copy.jpg", b"three");
        write(dir.path(), "lat_preop/notes.txt", b"text");
        write(dir.path(), "other/d.png", b"four");
        write(dir.path(), "stray.png", b"five");
        write(dir.path(), "ap_preop/empty.png", b"");
        let scanned = scan_folder(dir.path(), &options(1, false)).expect("scan");
        let paths: Vec<&str> = scanned.items.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["ap_preop/a.png", "ap_preop/sub/b.dcm", "lat_preop/c.jpg"]);
        assert_eq!(scanned.items[0].sha256, hex::encode(Sha256::digest(b"one")));
        assert_eq!(scanned.items[2].bytes, 5);
        let reasons: Vec<String> = scanned.report.iter().map(|r| format!("{}: {}", r.path, r.reason)).collect();
        assert_eq!(reasons.len(), 5, "{reasons:?}");
        assert!(reasons.iter().any(|r| r.starts_with("lat_preop/copy.jpg: duplicate of lat_preop/c.jpg")));
        assert!(reasons.iter().any(|r| r.starts_with("other/d.png: folder `other`")));
        assert!(reasons.iter().any(|r| r.starts_with("ap_preop/empty.png: empty")));
    }

    #[test]
    fn manifest_rows_are_checked_and_patient_ids_hashed() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "x/1.png", b"a");
        write(dir.path(), "x/2.png", b"b");
        let csv = dir.path().join("m.csv");
        std::fs::write(
            &csv,
            "path,label,patient_id,view\nx/1.png,ap_preop,PAT-001,ap\nx/2.png,cat,PAT-002,ap\nx/3.png,lat_preop,PAT-003,lat\nx/1.png,ap_preop,PAT-001,ap\n../m.csv,ap_preop,P,ap\n/etc/passwd,ap_preop,P,ap\n",
        )
        .expect("csv");
        let scanned = read_manifest(dir.path(), &csv, &options(1, false)).expect("read");
        assert_eq!(scanned.items.len(), 1);
        let item = &scanned.items[0];
        assert_eq!(item.patient.as_deref(), Some(options(1, false).key.pseudonym("PAT-001").as_str()));
        assert!(!item.patient.as_deref().unwrap_or_default().contains("PAT"), "never the raw id");
        assert_eq!(item.view.as_deref(), Some("ap"));
        assert_eq!(scanned.report.len(), 5);
        assert!(scanned.report.iter().any(|r| r.path == "../m.csv" && r.reason.contains("leaves the dataset root")));
        assert!(scanned.report.iter().any(|r| r.path == "/etc/passwd" && r.reason.contains("leaves the dataset root")));
        assert_ne!(options(1, false).key.pseudonym("PAT-001"), options(2, false).key.pseudonym("PAT-001"));
    }

    #[test]
    fn decoding_reports_files_that_are_not_images() {
        let dir = tempfile::tempdir().expect("tmp");
        let good = image::GrayImage::from_fn(32, 32, |x, y| image::Luma([(x * 8 + y) as u8]));
        std::fs::create_dir_all(dir.path().join("ap_preop")).expect("mkdir");
        good.save(dir.path().join("ap_preop/good.png")).expect("png");
        image::GrayImage::new(1, 1).save(dir.path().join("ap_preop/dot.png")).expect("png");
        write(dir.path(), "ap_preop/text.png", b"this is not a png");
        write(dir.path(), "ap_preop/trunc.png", &std::fs::read(dir.path().join("ap_preop/good.png")).expect("read")[..40]);
        let scanned = scan_folder(dir.path(), &options(1, true)).expect("scan");
        assert_eq!(scanned.items.len(), 1);
        let reasons: BTreeMap<String, String> = scanned.report.into_iter().map(|r| (r.path, r.reason)).collect();
        assert!(reasons["ap_preop/dot.png"].contains("at least 16x16"), "{reasons:?}");
        assert!(reasons["ap_preop/text.png"].contains("not an image"), "{reasons:?}");
        assert!(reasons["ap_preop/trunc.png"].contains("corrupt or truncated PNG"), "{reasons:?}");
    }

    #[test]
    fn manifest_without_path_or_label_columns_is_an_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let csv = dir.path().join("m.csv");
        std::fs::write(&csv, "file,class\na.png,ap_preop\n").expect("csv");
        let err = read_manifest(dir.path(), &csv, &options(1, false)).expect_err("bad header");
        assert!(err.to_string().contains("`path` and `label`"), "{err}");
    }
}
