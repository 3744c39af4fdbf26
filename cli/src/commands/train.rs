//! `cobb train`: train one experiment locally on a folder or manifest, without a server.

use anyhow::Context;
use clap::Args;
use data::manifest::{self, ScanOptions};
use data::split;
use protocol::classes::SCOLIOSIS_CLASSES;
use protocol::{plan, spec};
use std::path::PathBuf;
use worker::device::{self, DeviceChoice};
use worker::train::{self, EpochReport, Finish, Reporter, TrainData, checkpoint};

use crate::failure::Failure;

/// Local training's pseudonym key: its pseudonyms only group images by patient for the split
/// and never leave the process, so a fixed key keeps that split reproducible.
const LOCAL_KEY: &[u8; 32] = b"cobb-train-local: split grouping";
use crate::output;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The experiment spec; its sweep, if any, is ignored (the base config is trained).
    pub file: PathBuf,
    /// Dataset root: PATH/<class>/<image>, or with a manifest.csv.
    #[arg(long)]
    pub data: PathBuf,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Override train.epochs.
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Where checkpoints and the decoded-image cache go.
    #[arg(long, default_value = "cobb-train")]
    pub out: PathBuf,
    /// Continue from the last checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
}

struct Progress {
    json: bool,
}

impl Reporter for Progress {
    fn epoch(&mut self, r: &EpochReport) {
        if !self.json {
            eprintln!(
                "epoch {:>3}  train loss {:.4}  val loss {:.4}  val acc {:.3}  val macro-F1 {:.3}  lr {}  {:.1} img/s{}",
                r.epoch,
                r.train_loss,
                r.val_loss,
                r.report.accuracy,
                r.report.macro_f1,
                output::number(r.lr),
                r.images_per_second,
                if r.best { "  (best)" } else { "" }
            );
            for (path, reason) in &r.skipped {
                eprintln!("  skipped {path}: {reason}");
            }
        }
    }
}

pub fn run(args: &TrainArgs, json: bool) -> Result<(), Failure> {
    let name = args.file.display().to_string();
    let yaml = std::fs::read_to_string(&args.file).with_context(|| format!("while reading {name}")).map_err(Failure::Input)?;
    let plan = plan::parse(&yaml, &name).map_err(Failure::input)?;
    let mut config = spec::resolved(&plan.spec);
    if let Some(epochs) = args.epochs {
        if epochs == 0 {
            return Err(Failure::input("--epochs must be at least 1"));
        }
        config.train.epochs = epochs;
        if config.train.schedule.warmup_epochs.is_some_and(|w| w >= epochs) {
            config.train.schedule.warmup_epochs = Some(epochs - 1);
        }
    }
    let choice: DeviceChoice = args.device.parse().map_err(Failure::input)?;
    device::probe(choice).map_err(|e| Failure::Runtime(e.into()))?;

    // The same scan and split as `cobb dataset register` with its defaults.
    let classes: Vec<String> = SCOLIOSIS_CLASSES.iter().map(|c| (*c).to_owned()).collect();
    let options = ScanOptions { classes: classes.clone(), key: data::pseudonym::PseudonymKey::from_bytes(*LOCAL_KEY), decode: true };
    let csv = args.data.join("manifest.csv");
    let scanned =
        if csv.is_file() { manifest::read_manifest(&args.data, &csv, &options) } else { manifest::scan_folder(&args.data, &options) }
            .map_err(|e| Failure::Input(e.into()))?;
    for issue in &scanned.report {
        eprintln!("skipped {}: {}", issue.path, issue.reason);
    }
    let items = split::freeze(scanned.items, [70, 15, 15], 0, true);
    let data = TrainData::from_items(&args.data, classes, &items, args.out.join("cache"), "local").map_err(Failure::input)?;
    eprintln!(
        "training {} at {} px on {} train / {} val images ({} epochs, {})",
        config.model.arch,
        config.model.resolved_image_size(),
        data.train.len(),
        data.val.len(),
        config.train.epochs,
        args.device
    );
    let store = checkpoint::Store::new(&args.out.join("checkpoints").join(&config.name));
    let mut progress = Progress { json };
    let outcome = worker::device::on_compute_pool(|| train::train_on(choice, &config, &data, &store, args.resume, &mut progress))
        .map_err(|e| Failure::Runtime(e.into()))?;

    if json {
        output::json(&serde_json::json!({
            "finish": format!("{:?}", outcome.finish),
            "best_epoch": outcome.best_epoch,
            "best_value": outcome.best_value,
            "select_metric": config.select.metric,
            "history": outcome.history,
        }));
        return Ok(());
    }
    if let Finish::Completed { early_stopped: true, epochs } = outcome.finish {
        eprintln!("early stopping after {epochs} epochs");
    }
    let Some(best) = outcome.best_epoch.and_then(|b| outcome.history.iter().find(|r| r.epoch == b)) else {
        return Ok(());
    };
    println!(
        "best epoch {} by {}: val accuracy {:.3}, macro-F1 {:.3}, weighted F1 {:.3}",
        best.epoch, config.select.metric, best.report.accuracy, best.report.macro_f1, best.report.weighted_f1
    );
    let rows: Vec<Vec<String>> = best
        .report
        .per_class
        .iter()
        .map(|c| {
            vec![c.class.clone(), format!("{:.3}", c.precision), format!("{:.3}", c.recall), format!("{:.3}", c.f1), c.support.to_string()]
        })
        .collect();
    output::table(&["CLASS", "PRECISION", "RECALL", "F1", "SUPPORT"], &rows);
    println!("checkpoints in {}", store.last_dir().parent().map_or_else(String::new, |p| p.display().to_string()));
    Ok(())
}
