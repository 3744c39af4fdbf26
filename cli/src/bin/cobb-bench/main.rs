//! cobb-bench: the MLflow peer's workload (bench/peers/mlflow_ingest.py) replayed
//! against cobb's own endpoints, on SQLite and PostgreSQL, with the server as a separate
//! `cobb server` process so its memory is measured alone.
//!
//!   ingest: R runs x E epochs x K metric keys, one request per epoch of one run,
//!           at each concurrency C (lease -> E metric batches -> complete per run)
//!   search: S runs with a few epochs each, then GET /runs sorted by a metric (1,000 rows)
//!   memory: the server's RSS after each phase and its peak (VmHWM)
//!
//!   cargo build --release -p cobb && target/release/cobb-bench server [--postgres-url URL]
//!
//! `cobb-bench data` measures the data side: phantom generation, decode + resize of large
//! 16-bit DICOM and PNG radiographs, and the training loader (cold and warm cache).

mod classify;
mod evidence;
mod harness;
mod ingest;
mod pages;
mod pipeline;
mod queue;
mod sweeps;
mod training;

/// mimalloc instead of glibc's allocator: training and classification allocate feature maps
/// of tens of megabytes per layer, which glibc maps and unmaps from the kernel each time; the
/// page faults and zeroing were a quarter of a CPU classification (perf, docs/benchmarks.md).
/// `cobb::allocator::keep_freed_memory` keeps mimalloc from handing them back between steps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;

use classify::{ClassifyBenchArgs, classify_bench};
use evidence::{EvidenceArgs, evidence_bench};
use ingest::{Args, server_bench};
use pages::{PagesArgs, pages_bench};
use pipeline::{DataArgs, data_bench};
use queue::{QueueArgs, queue_bench};
use sweeps::{SweepsArgs, sweeps_bench};
use training::{TrainBenchArgs, train_bench};

#[derive(Debug, Parser)]
#[command(about = "cobb's benchmarks (not tests): the server and the data pipeline")]
enum Bench {
    /// Metric ingestion and run listing against a `cobb server` process.
    Server(Args),
    /// Phantoms, decoding and the loader.
    Data(DataArgs),
    /// Training and evaluation images/s on synthetic batches (each model in its own
    /// process, so peak memory is per model).
    Train(TrainBenchArgs),
    /// Time of the layer operations cobb runs its own way on flex (BatchNorm, SiLU, depthwise,
    /// dense and 1x1 convolutions), against Burn's: forward + backward, and forward only as
    /// evaluation runs them.
    Ops {
        #[arg(long, default_value_t = 7)]
        repeats: usize,
    },
    /// The queue: lease/heartbeat/complete throughput with many simulated workers, and the
    /// time from a run being queued to a worker holding it.
    Queue(QueueArgs),
    /// Sampler regret (random, cobb's TPE) and ASHA's savings on a training-curve simulator
    /// (scripts/optuna_peer.py runs the same simulator with Optuna).
    Sweeps(SweepsArgs),
    /// Dashboard page times: the sweep page at 1,000 runs and the compare page at 20 runs x
    /// 10 classes x 50 epochs, on SQLite (and PostgreSQL with --postgres-url).
    Pages(PagesArgs),
    /// The patient-level bootstrap, paired comparison and calibration on a realistic test
    /// split (1,166 images, ~600 patients); `--out` writes the case for
    /// scripts/evidence_crosscheck.py.
    Evidence(EvidenceArgs),
    /// `cobb classify`'s pipeline end to end (read, decode, prepare, forward) on PNG and 16-bit
    /// DICOM exports, images/s per model.
    Classify(ClassifyBenchArgs),
    #[command(hide = true)]
    TrainOne {
        arch: String,
        size: usize,
        batch: usize,
        warmup: usize,
        steps: usize,
        eval_steps: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value_t = f64::INFINITY)]
        max_seconds: f64,
    },
    /// The torchvision parity check (worker/tests/fixtures/parity) on a device: prints the
    /// largest |cobb - torchvision| logit difference.
    Parity {
        #[arg(long, default_value = "worker/tests/fixtures/parity")]
        fixture: std::path::PathBuf,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    cobb::allocator::keep_freed_memory();
    match Bench::parse() {
        Bench::Server(args) => server_bench(args).await,
        Bench::Data(args) => data_bench(&args),
        Bench::Train(args) => train_bench(&args),
        Bench::Ops { repeats } => {
            println!(
                "layer operations on flex, median of {repeats} (ms): training rows forward + backward less the identity's \
                 time, evaluation rows forward only without autodiff"
            );
            for t in worker::train::bench::ops(repeats) {
                println!(
                    "{:<42} {:>18}  Burn {:>7.1}  cobb {:>7.1}  ({:.1}x)",
                    t.op,
                    format!("{:?}", t.shape),
                    t.burn_ms,
                    t.cobb_ms,
                    t.burn_ms / t.cobb_ms.max(1e-3)
                );
            }
            Ok(())
        }
        Bench::Pages(args) => pages_bench(&args).await,
        Bench::Evidence(args) => evidence_bench(&args),
        Bench::Classify(args) => classify_bench(&args),
        Bench::Queue(args) => queue_bench(&args).await,
        Bench::Sweeps(args) => sweeps_bench(&args),
        Bench::Parity { fixture, device } => {
            let choice: worker::device::DeviceChoice = device.parse().map_err(anyhow::Error::msg)?;
            let diff = worker::train::bench::parity(choice, &fixture).map_err(anyhow::Error::msg)?;
            println!(
                "parity on {device}: max |cobb - torchvision| logit difference {diff:.2e} ({})",
                if diff < 1e-4 { "ok, < 1e-4" } else { "FAILED, >= 1e-4" }
            );
            if diff >= 1e-4 {
                bail!("parity check failed");
            }
            Ok(())
        }
        Bench::TrainOne { arch, size, batch, warmup, steps, eval_steps, device, max_seconds } => {
            let arch: protocol::spec::Arch = serde_json::from_value(json!(arch)).context("unknown architecture")?;
            let choice = device.parse().map_err(anyhow::Error::msg)?;
            let work = worker::train::bench::Workload { arch, size, batch, warmup, train_steps: steps, eval_steps, max_seconds };
            let t = worker::train::bench::measure(choice, work)?;
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let peak_kib: u64 = status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut value = serde_json::to_value(&t)?;
            value["peak_rss_kib"] = json!(peak_kib);
            println!("{value}");
            Ok(())
        }
    }
}
