//! `cobb-bench classify`: end-to-end images/s of `cobb classify`'s pipeline (list, read,
//! sha256, decode, window, resize, quantize, forward, softmax, decide) over phantom exports
//! as PNG and as 16-bit DICOM, for each model (randomly initialised: the weights do not change
//! the time). Compare with torch_train_bench.py's evaluation images/s for the same model and
//! size (forward only, on ready tensors), in the same sitting.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub(crate) struct ClassifyBenchArgs {
    /// arch@size, comma-separated.
    #[arg(long, default_value = "simple_cnn@128,resnet18@224,efficientnet_b0@224", value_delimiter = ',')]
    configs: Vec<String>,
    /// Images per export.
    #[arg(long, default_value_t = 160)]
    images: usize,
    /// The phantoms' side in pixels (exports are large radiographs: decoding is part of the cost).
    #[arg(long, default_value_t = 512)]
    source_size: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Where the exports and checkpoints go (kept between runs).
    #[arg(long, default_value = "target/bench-classify")]
    dir: PathBuf,
}

fn export(dir: &Path, format: data::phantoms::Format, count: usize, size: usize) -> Result<PathBuf> {
    let name = if format == data::phantoms::Format::Png { "png" } else { "dicom" };
    let out = dir.join(format!("{name}-{count}-{size}"));
    let done = dir.join(format!("{name}-{count}-{size}.done"));
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&out);
        let options = data::phantoms::Options { count, size, seed: 3, format, balance: data::phantoms::Balance::Uniform };
        data::phantoms::generate(&out, &options).context("while generating phantoms")?;
        std::fs::remove_file(out.join("manifest.csv")).ok();
        std::fs::write(&done, "").ok();
    }
    Ok(out)
}

pub(crate) fn classify_bench(args: &ClassifyBenchArgs) -> Result<()> {
    let choice: worker::device::DeviceChoice = args.device.parse().map_err(anyhow::Error::msg)?;
    let device = worker::device::burn_device(choice).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(&args.dir)?;
    let exports = [
        ("PNG 8-bit", export(&args.dir, data::phantoms::Format::Png, args.images, args.source_size)?),
        ("DICOM 16-bit", export(&args.dir, data::phantoms::Format::Dicom, args.images, args.source_size)?),
    ];
    let classes: Vec<String> = protocol::classes::SCOLIOSIS_CLASSES.iter().map(|c| (*c).to_owned()).collect();
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    println!(
        "classification, end to end (read, sha256, decode, prepare, forward, decide): {} phantoms of {} px per export, batch {}, \
         {threads} thread(s), Burn 0.22 on {}; images/s once the first batch is back (the pipeline running), then over the \
         whole call including the model's load and the first batch",
        args.images, args.source_size, args.batch, args.device
    );
    for config in &args.configs {
        let (arch, size) = config.split_once('@').context("configs look like arch@size")?;
        let yaml = format!(
            "name: bench\ndataset: {{name: x}}\nmodel: {{arch: {arch}, image_size: {size}}}\ntrain: {{epochs: 1, batch_size: {}, seed: 1, \
             optimizer: {{name: adamw, lr: 0.001}}}}\n",
            args.batch
        );
        let plan = protocol::plan::parse(&yaml, "bench.yaml").map_err(|e| anyhow::anyhow!("{e}"))?;
        let spec = plan.runs.first().context("one run")?.config.clone();
        let store = worker::train::checkpoint::Store::new(&args.dir.join(format!("model-{arch}")));
        let built = worker::models::build(spec.model.arch, 1, classes.len(), None, &device).model;
        store.save_best(&built).map_err(|e| anyhow::anyhow!("{e}"))?;
        for (label, folder) in &exports {
            let mut rates = Vec::new();
            for _ in 0..args.repeats {
                let files = worker::classify::list_files(folder).map_err(anyhow::Error::msg)?;
                let n = files.len();
                let started = Instant::now();
                let mut done = 0usize;
                // When the first batch came back: the model built and loaded, the first batch
                // decoded with nothing to overlap it, the first forward pass.
                let mut first: Option<(Instant, usize)> = None;
                worker::classify::classify_files(choice, &spec, &classes, &store.best_model(), files, args.batch, &mut |r| {
                    done += r.iter().filter(|f| f.outcome.is_ok()).count();
                    first.get_or_insert((Instant::now(), done));
                    true
                })
                .map_err(|e| anyhow::anyhow!("{e}"))?;
                anyhow::ensure!(done == n, "{} of {n} images classified", done);
                let total = started.elapsed().as_secs_f64();
                let (at, before) = first.context("at least one batch")?;
                let steady = (n - before) as f64 / at.elapsed().as_secs_f64().max(1e-9);
                rates.push(Rate { steady, overall: n as f64 / total, start: at.duration_since(started).as_secs_f64() });
            }
            let list: Vec<String> =
                rates.iter().map(|r| format!("{:.1} ({:.1} overall, first batch after {:.2} s)", r.steady, r.overall, r.start)).collect();
            let best = rates.iter().map(|r| r.steady).fold(0.0, f64::max);
            println!("{arch:<16} @{size:<4} {label:<13} images/s: best {best:>7.1}  (repeats: {})", list.join("; "));
        }
    }
    Ok(())
}

/// One pass over an export: images/s after the first batch came back (the pipeline running:
/// read, decode, prepare, forward, decide), images/s over the whole call, and the seconds to
/// the first batch (model build and load, the first batch's decoding and forward pass).
struct Rate {
    steady: f64,
    overall: f64,
    start: f64,
}
