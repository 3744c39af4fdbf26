use anyhow::Context;
use clap::Args;
use data::phantoms::{self, Balance, Format, Options};
use protocol::classes::SCOLIOSIS_CLASSES;
use std::path::PathBuf;

use crate::failure::Failure;
use crate::output;

#[derive(Debug, Args)]
pub struct PhantomArgs {
    /// Output folder (a folder per class plus manifest.csv with patient ids).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Square image size in pixels.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "png", value_parser = ["png", "dicom"])]
    pub format: String,
    /// uniform: same count per class; paper: the source study's imbalance.
    #[arg(long, default_value = "uniform", value_parser = ["paper", "uniform"])]
    pub balance: String,
    /// Also write a PNG contact sheet with one image of every class (classes numbered in
    /// docs/contract.md order, AP on top, lateral below).
    #[arg(long)]
    pub contact_sheet: Option<PathBuf>,
}

pub fn run(args: &PhantomArgs, json: bool) -> Result<(), Failure> {
    if !(32..=4096).contains(&args.size) {
        return Err(Failure::input(format!("--size {} is outside 32..=4096", args.size)));
    }
    if args.count == 0 {
        return Err(Failure::input("--count must be at least 1"));
    }
    let options = Options {
        count: args.count,
        size: args.size,
        seed: args.seed,
        format: if args.format == "dicom" { Format::Dicom } else { Format::Png },
        balance: if args.balance == "paper" { Balance::Paper } else { Balance::Uniform },
    };
    if let Some(sheet) = &args.contact_sheet {
        phantoms::contact_sheet(sheet, args.seed, args.size).with_context(|| format!("while writing {}", sheet.display()))?;
        eprintln!("contact sheet written to {}", sheet.display());
    }
    let start = std::time::Instant::now();
    let written = phantoms::generate(&args.out, &options).with_context(|| format!("while writing phantoms to {}", args.out.display()))?;
    let seconds = start.elapsed().as_secs_f64();
    if json {
        output::json(&serde_json::json!({
            "images": written.images, "patients": written.patients, "seconds": seconds,
            "manifest": written.manifest, "per_class": SCOLIOSIS_CLASSES.iter().zip(written.per_class).map(|(c, n)| (c.to_string(), n)).collect::<std::collections::BTreeMap<_, _>>(),
        }));
        return Ok(());
    }
    println!(
        "wrote {} phantoms of {} patients to {} in {:.1} s ({:.0} images/s)",
        written.images,
        written.patients,
        args.out.display(),
        seconds,
        written.images as f64 / seconds.max(1e-9)
    );
    let rows: Vec<Vec<String>> =
        SCOLIOSIS_CLASSES.iter().zip(written.per_class).map(|(c, n)| vec![(*c).to_owned(), n.to_string()]).collect();
    output::table(&["CLASS", "IMAGES"], &rows);
    println!("register them with: cobb dataset register NAME {}", args.out.display());
    Ok(())
}
