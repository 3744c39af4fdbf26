//! `cobb-bench train`: training and evaluation images/s on synthetic batches, each model in
//! its own process.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::process::Command;

#[derive(Debug, clap::Args)]
pub(crate) struct TrainBenchArgs {
    /// arch@size, comma-separated.
    #[arg(long, default_value = "simple_cnn@128,resnet18@128,efficientnet_b0@128", value_delimiter = ',')]
    configs: Vec<String>,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 6)]
    steps: usize,
    #[arg(long, default_value_t = 6)]
    eval_steps: usize,
    /// cpu or cuda:N (a `--features cuda` build).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Stop the timed training steps of a model after this many seconds.
    #[arg(long, default_value_t = f64::INFINITY)]
    max_seconds: f64,
}

pub(crate) fn train_bench(args: &TrainBenchArgs) -> Result<()> {
    let backend = if args.device == "cpu" { "flex on the CPU".to_owned() } else { format!("CUDA ({})", args.device) };
    println!("training benchmark: batch {}, 1-channel random images, 10 classes, AdamW; Burn 0.22 {backend}", args.batch);
    for config in &args.configs {
        let (arch, size) = config.split_once('@').context("configs look like arch@size")?;
        let output = Command::new(std::env::current_exe()?)
            .args([
                "train-one",
                arch,
                size,
                &args.batch.to_string(),
                &args.warmup.to_string(),
                &args.steps.to_string(),
                &args.eval_steps.to_string(),
            ])
            .args(["--device", &args.device, "--max-seconds", &args.max_seconds.to_string()])
            .output()?;
        if !output.status.success() {
            bail!("{config}: {}", String::from_utf8_lossy(&output.stderr));
        }
        let t: Value = serde_json::from_slice(&output.stdout)?;
        let peak_mb = t["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0;
        println!(
            "{config:<22} train {:>7.1} img/s ({:>7.0} ms/step)  eval {:>7.1} img/s  peak RSS {:>6.0} MB",
            t["train_images_per_second"].as_f64().unwrap_or(0.0),
            t["train_step_ms"].as_f64().unwrap_or(0.0),
            t["eval_images_per_second"].as_f64().unwrap_or(0.0),
            peak_mb
        );
    }
    Ok(())
}
