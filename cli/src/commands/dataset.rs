use anyhow::Context;
use clap::Subcommand;
use data::manifest;
use data::pseudonym::{self, PseudonymKey};
use data::split;
use protocol::api::{DatasetVersionInfo, GroupBy, ItemList, RegisterDataset};
use protocol::classes::{SCOLIOSIS_CLASSES, SMALL_CLASS_THRESHOLD};
use std::path::PathBuf;

use crate::client::Client;
use crate::failure::Failure;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Hash every file, freeze a patient-grouped stratified split and register it as a
    /// dataset version (the same content always gives the same version).
    Register {
        name: String,
        /// Dataset root: PATH/<class>/<image>, or the base of the manifest's paths.
        path: PathBuf,
        /// CSV with path,label[,patient_id][,view][,acquired_at] (default: PATH/manifest.csv
        /// when it exists, else a folder per class).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// train/val/test percentages.
        #[arg(long, default_value = "70/15/15")]
        split: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// patient (no patient in two splits) or none (every image on its own).
        #[arg(long, default_value = "patient", value_parser = ["patient", "none"])]
        group_by: String,
        /// Comma-separated class names (default: the 10 scoliosis categories).
        #[arg(long, value_delimiter = ',')]
        classes: Option<Vec<String>>,
        /// The site's pseudonym key (default: $COBB_PSEUDONYM_KEY_FILE, else
        /// ~/.config/cobb/pseudonym.key); create it once with `cobb dataset key init`.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// The site's pseudonym key, which patient ids are pseudonymised with before they leave
    /// this machine (HMAC-SHA256; the server never sees the key).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Show a dataset version: NAME or NAME@VERSION (hash prefix or vN).
    Show {
        name: String,
        /// Also fetch every item (reviewer role) and check that no patient is in two
        /// splits; with --json the items are printed too.
        #[arg(long)]
        items: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create the site's key (once per site; refuses to replace one). Back it up with the
    /// site's other secrets: a new key gives every patient a new pseudonym.
    Init {
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Print where the key is and its id (the id a dataset version records; not the key).
    Show {
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

/// The site's key, from `--key-file`, $COBB_PSEUDONYM_KEY_FILE or the default path.
pub fn site_key(explicit: Option<&std::path::Path>) -> Result<PseudonymKey, Failure> {
    PseudonymKey::load(&pseudonym::key_path(explicit)).map_err(|e| Failure::Input(e.into()))
}

fn key_command(cmd: &KeyCommand, json: bool) -> Result<(), Failure> {
    let (key, path, created) = match cmd {
        KeyCommand::Init { key_file } => {
            let path = pseudonym::key_path(key_file.as_deref());
            (PseudonymKey::create(&path).map_err(|e| Failure::Input(e.into()))?, path, true)
        }
        KeyCommand::Show { key_file } => {
            let path = pseudonym::key_path(key_file.as_deref());
            (site_key(Some(&path))?, path, false)
        }
    };
    if json {
        output::json(&serde_json::json!({"path": path.display().to_string(), "id": key.id(), "created": created}));
    } else if created {
        println!("created the pseudonym key {} (id {}); keep it with the site's secrets and back it up", path.display(), key.id());
    } else {
        println!("pseudonym key {} (id {})", path.display(), key.id());
    }
    Ok(())
}

pub async fn run(cmd: &DatasetCommand, client: &Client, json: bool) -> Result<(), Failure> {
    match cmd {
        DatasetCommand::Register { name, path, manifest: csv, split: ratios, seed, group_by, classes, key_file } => {
            let key = site_key(key_file.as_deref())?;
            register(client, name, path, csv.clone(), ratios, *seed, group_by, classes.clone(), &key, json).await.map(|_| ())
        }
        DatasetCommand::Key { command } => key_command(command, json),
        DatasetCommand::Show { name, items } => {
            let (name, version) = match name.split_once('@') {
                Some((n, v)) => (n, Some(v)),
                None => (name.as_str(), None),
            };
            let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
            let info: DatasetVersionInfo = client.get(&format!("/datasets/{name}{query}")).await?;
            if !items {
                print_version(&info, json);
                return Ok(());
            }
            let list: ItemList = client.get(&format!("/datasets/{name}/items{query}")).await?;
            let crossing = patients_in_several_splits(&list);
            if json {
                output::json(&serde_json::json!({"version": info, "items": list.items, "patients_in_several_splits": crossing}));
                return Ok(());
            }
            print_version(&info, false);
            let patients: std::collections::BTreeSet<&str> = list.items.iter().filter_map(|i| i.patient.as_deref()).collect();
            println!("{} items of {} patients; patients in more than one split: {}", list.items.len(), patients.len(), crossing.len());
            if !crossing.is_empty() {
                return Err(Failure::Runtime(anyhow::anyhow!("the split leaks patients across splits: {}", crossing.join(", "))));
            }
            Ok(())
        }
    }
}

/// Scans, hashes and decodes a dataset, freezes its split and registers it; prints the
/// version's counts.
#[allow(clippy::too_many_arguments)]
pub async fn register(
    client: &Client,
    name: &str,
    path: &std::path::Path,
    csv: Option<PathBuf>,
    ratios: &str,
    seed: u64,
    group_by: &str,
    classes: Option<Vec<String>>,
    key: &PseudonymKey,
    json: bool,
) -> Result<DatasetVersionInfo, Failure> {
    let classes: Vec<String> = classes.unwrap_or_else(|| SCOLIOSIS_CLASSES.iter().map(|c| (*c).to_owned()).collect());
    let parsed_ratios = protocol::api::parse_split_ratios(ratios).map_err(Failure::input)?;
    if !path.is_dir() {
        return Err(Failure::input(format!("{} is not a directory", path.display())));
    }
    let group_by = if group_by == "none" { GroupBy::None } else { GroupBy::Patient };
    let options = manifest::ScanOptions { classes: classes.clone(), key: key.clone(), decode: true };
    // A manifest.csv at the root (as `cobb phantoms` writes) is used when none is named.
    let found = path.join("manifest.csv");
    let csv = csv.clone().or_else(|| found.is_file().then_some(found));
    if let Some(csv) = &csv {
        eprintln!("reading {} (hashing and decoding every image)", csv.display());
    }
    let scanned = match &csv {
        Some(csv) => manifest::read_manifest(path, csv, &options),
        None => manifest::scan_folder(path, &options),
    }
    .map_err(|e| Failure::Input(e.into()))?;
    if scanned.items.is_empty() {
        for issue in &scanned.report {
            eprintln!("skipped {}: {}", issue.path, issue.reason);
        }
        return Err(Failure::input("no usable images were found; see the skipped files above"));
    }
    if group_by == GroupBy::Patient && scanned.items.iter().all(|i| i.patient.is_none()) {
        eprintln!("warning: no patient ids found; every image is its own group (give --manifest with patient_id)");
    }
    let items = split::freeze(scanned.items, parsed_ratios, seed, group_by == GroupBy::Patient);
    let root = std::fs::canonicalize(path).with_context(|| format!("while resolving {}", path.display()))?;
    let request = RegisterDataset {
        name: name.to_owned(),
        root: root.display().to_string(),
        split: ratios.to_owned(),
        seed,
        group_by,
        classes,
        items,
        report: scanned.report,
        pseudonym_key: Some(key.id()),
    };
    let info: DatasetVersionInfo = client.post("/datasets", &request).await?;
    print_version(&info, json);
    Ok(info)
}

/// Hashed patient ids that appear in more than one split (must be none).
fn patients_in_several_splits(list: &ItemList) -> Vec<String> {
    let mut splits: std::collections::BTreeMap<&str, std::collections::BTreeSet<protocol::Split>> = Default::default();
    for item in &list.items {
        if let Some(p) = &item.patient {
            splits.entry(p).or_default().insert(item.split);
        }
    }
    splits.into_iter().filter(|(_, s)| s.len() > 1).map(|(p, _)| p.to_owned()).collect()
}

fn print_version(info: &DatasetVersionInfo, json: bool) {
    if json {
        output::json(info);
        return;
    }
    println!(
        "{} {}@v{} ({}): {} images, split {} seed {} grouped by {}",
        if info.created { "registered" } else { "already registered:" },
        info.dataset,
        info.number,
        output::short(&info.version),
        info.items,
        info.split,
        info.seed,
        match info.group_by {
            GroupBy::Patient => "patient",
            GroupBy::None => "none",
        }
    );
    let rows: Vec<Vec<String>> = info
        .counts
        .iter()
        .map(|c| {
            let total = c.train + c.val + c.test;
            vec![
                c.label.clone(),
                c.train.to_string(),
                c.val.to_string(),
                c.test.to_string(),
                total.to_string(),
                if total < SMALL_CLASS_THRESHOLD { format!("under {SMALL_CLASS_THRESHOLD} images") } else { String::new() },
            ]
        })
        .collect();
    output::table(&["CLASS", "TRAIN", "VAL", "TEST", "TOTAL", ""], &rows);
    let small = info.counts.iter().filter(|c| c.train + c.val + c.test < SMALL_CLASS_THRESHOLD).count();
    if small > 0 {
        eprintln!("warning: {small} class(es) have fewer than {SMALL_CLASS_THRESHOLD} images; expect weaker, noisier results there");
    }
    if !info.report.is_empty() {
        eprintln!("{} file(s) were skipped:", info.report.len());
        for issue in info.report.iter().take(20) {
            eprintln!("  {}: {}", issue.path, issue.reason);
        }
        if info.report.len() > 20 {
            eprintln!("  ... and {} more (cobb dataset show {} --json lists all)", info.report.len() - 20, info.dataset);
        }
    }
}
