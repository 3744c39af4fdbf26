//! The `cobb` command line.

pub mod allocator;
pub mod client;
pub mod commands;
pub mod failure;
pub mod output;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::client::Client;
use crate::failure::Failure;

#[derive(Debug, Parser)]
#[command(name = "cobb", version, about = "Experiment tracking and sweeps for radiograph classifiers")]
pub struct Cli {
    /// The cobb server.
    #[arg(long, global = true, env = "COBB_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// API token (else DATA_DIR/admin.token, written by the server's first start).
    #[arg(long, global = true, env = "COBB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where a local server keeps its data (and admin.token) [default: `data_dir` of
    /// cobb.toml, else cobb-data].
    #[arg(long, global = true, env = "COBB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole product on a laptop: phantoms, a dataset, the demo sweep trained by
    /// local CPU workers, the leaderboard.
    Demo(commands::worker::DemoArgs),
    /// A local server (SQLite under --data-dir) and N workers in one command.
    Up(commands::worker::UpArgs),
    /// Pull queued runs from the server and train them.
    Worker(commands::worker::WorkerArgs),
    /// Run the server (SQLite under --data-dir unless --database-url is given).
    Server(commands::server::ServerArgs),
    /// Validate an experiment and queue its runs.
    Submit(commands::submit::SubmitArgs),
    /// List runs.
    Runs(commands::runs::RunsArgs),
    /// Show one run.
    Show {
        /// Run id.
        run: i64,
    },
    /// Per-class precision and recall of 2-20 runs side by side, with view and phase roll-ups.
    Compare {
        #[arg(required = true, num_args = 2..=20)]
        runs: Vec<i64>,
    },
    /// Cancel a run (`12`) or a whole sweep (`s3`).
    Cancel {
        /// A run id, or `s<ID>` for a sweep.
        target: String,
    },
    /// List experiments.
    Experiments,
    /// List workers with when they were last seen and what they run.
    Workers,
    /// Promote a succeeded run (reviewer role): it supersedes the experiment's promoted
    /// model and is evaluated once on the sealed test split; waits for and prints the result.
    Promote {
        run: i64,
        /// Why this model (required; kept in the audit log).
        #[arg(long)]
        reason: String,
        /// How long to wait for the test evaluation before returning (it carries on).
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
        /// Evaluate in this process (CPU) instead of waiting for a worker: for a lone
        /// `cobb server` with no worker running (needs a worker or admin token).
        #[arg(long)]
        evaluate_here: bool,
    },
    /// Sign a promotion whose experiment asks for several reviewers (`promotion.approvals`):
    /// the last signature needed releases its test evaluation.
    Approve {
        promotion: i64,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// The test-split report of a promotion (the source study's table); --csv for a file.
    Report {
        promotion: i64,
        #[arg(long)]
        csv: bool,
        /// `md` or `html`: the study report (data flow, search and budget, results with
        /// intervals, calibration, acceptance criteria, misclassified test images, provenance;
        /// mapped to CLAIM 2024 / TRIPOD+AI), for a paper's supplement.
        #[arg(long, value_parser = ["table", "md", "html"], default_value = "table")]
        format: String,
    },
    /// Sort a folder of new images with an experiment's promoted model: a CSV (class, confidence,
    /// probabilities, accept or review and why), a local review sheet, and a batch on the server.
    Classify(commands::classify::ClassifyArgs),
    /// A classification batch's images to review; label them (reviewer role) or export the
    /// next dataset version's manifest.
    Review(commands::classify::ReviewArgs),
    /// The promotion history (newest first), with each test evaluation's state.
    Promotions {
        #[arg(long)]
        experiment: Option<String>,
    },
    /// The audit log; --verify recomputes the hash chain and fails on the first broken link.
    Audit {
        #[arg(long)]
        experiment: Option<String>,
        #[arg(long)]
        verify: bool,
        /// A head hash printed by an earlier `--verify` (kept with a backup): fails unless
        /// the verified chain still holds that event, i.e. nothing up to it was rewritten
        /// and re-chained since. Implies --verify.
        #[arg(long, value_name = "HASH")]
        anchor: Option<String>,
    },
    /// Back up a running server's SQLite database (admin): a consistent copy, its audit
    /// chain verified and its head hash printed (PostgreSQL: pg_dump).
    Backup {
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Restore a backup into a new data dir (offline; then `cobb server --data-dir DIR`).
    Restore {
        file: std::path::PathBuf,
        #[arg(long)]
        data_dir: std::path::PathBuf,
    },
    /// Register and inspect frozen dataset versions.
    #[command(subcommand)]
    Dataset(commands::dataset::DatasetCommand),
    /// Generate spine radiograph phantoms for the 10 categories.
    Phantoms(commands::phantoms::PhantomArgs),
    /// Train one experiment locally on a folder of images, without a server.
    Train(commands::train::TrainArgs),
    /// List the architectures with parameter counts and native resolutions.
    Models(commands::models::ModelsArgs),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(commands::token::TokenCommand),
}

pub fn main() -> ExitCode {
    restore_sigpipe();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let level = match cli.command {
        Command::Server(_) | Command::Worker(_) | Command::Up(_) => server::telemetry::SERVICE_LEVEL,
        _ => server::telemetry::COMMAND_LEVEL,
    };
    server::telemetry::init(level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`cobb runs | head -1`) is an error
/// that `println!` turns into a panic. A command-line tool should end quietly instead, as
/// `ls | head -1` does: restore the default action.
#[allow(unsafe_code)]
fn restore_sigpipe() {
    #[cfg(unix)]
    {
        unsafe extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        const SIGPIPE: i32 = 13;
        const SIG_DFL: usize = 0;
        // SAFETY: setting a signal's disposition to the default before any thread starts.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}

/// The data dir: `--data-dir` (or COBB_DATA_DIR), else `data_dir` of cobb.toml (or the
/// file COBB_CONFIG names), else `cobb-data`.
pub fn data_dir(flag: Option<&std::path::Path>) -> Result<PathBuf, Failure> {
    match flag {
        Some(dir) => Ok(dir.to_path_buf()),
        None => Ok(server::ServerConfig::load(serde_json::json!({}))
            .map_err(|e| Failure::Input(anyhow::anyhow!("invalid configuration: {e}")))?
            .data_dir),
    }
}

pub async fn run(cli: Cli) -> Result<(), Failure> {
    let flag = cli.data_dir.as_deref();
    let client = || match &cli.token {
        Some(_) => Client::new(&cli.server, cli.token.clone(), std::path::Path::new("")),
        None => Client::new(&cli.server, None, &data_dir(flag)?),
    };
    match &cli.command {
        Command::Demo(args) => commands::worker::demo(args, flag).await,
        Command::Up(args) => commands::worker::up(args, flag).await,
        Command::Worker(args) => commands::worker::worker(args, &cli.server, cli.token.clone(), &data_dir(flag)?).await,
        Command::Server(args) => commands::server::run(args, flag).await,
        Command::Submit(args) => commands::submit::run(args, &client()?, cli.json).await,
        Command::Runs(args) => commands::runs::list(args, &client()?, cli.json).await,
        Command::Show { run } => commands::runs::show(*run, &client()?, cli.json).await,
        Command::Compare { runs } => commands::compare::compare(runs, &client()?, cli.json).await,
        Command::Cancel { target } => commands::runs::cancel(target, &client()?, cli.json).await,
        Command::Experiments => commands::listings::experiments(&client()?, cli.json).await,
        Command::Workers => commands::listings::workers(&client()?, cli.json).await,
        Command::Promote { run, reason, wait_secs, evaluate_here } => {
            let here = if *evaluate_here { Some(data_dir(flag)?) } else { None };
            commands::promote::promote(&client()?, *run, reason, *wait_secs, here.as_deref(), cli.json).await
        }
        Command::Report { promotion, csv, format } => {
            if format == "md" || format == "html" {
                commands::promote::study(&client()?, *promotion, format == "html", cli.json).await
            } else {
                commands::promote::report(&client()?, *promotion, *csv, cli.json).await
            }
        }
        Command::Approve { promotion, note } => commands::promote::approve(&client()?, *promotion, note, cli.json).await,
        Command::Classify(args) => commands::classify::classify(args, &client()?, &data_dir(flag)?, cli.json).await,
        Command::Review(args) => commands::classify::review(args, &client()?, cli.json).await,
        Command::Promotions { experiment } => commands::promote::promotions(&client()?, experiment.as_deref(), cli.json).await,
        Command::Audit { experiment, verify, anchor } => {
            commands::audit::audit(&client()?, experiment.as_deref(), *verify || anchor.is_some(), anchor.as_deref(), cli.json).await
        }
        Command::Dataset(cmd) => commands::dataset::run(cmd, &client()?, cli.json).await,
        Command::Backup { out } => commands::backup::backup(&client()?, out, cli.json).await,
        Command::Restore { file, data_dir } => commands::backup::restore(file, data_dir, cli.json).await,
        Command::Phantoms(args) => commands::phantoms::run(args, cli.json),
        Command::Train(args) => commands::train::run(args, cli.json),
        Command::Models(args) => commands::models::run(args, cli.json),
        Command::Token(cmd) => commands::token::run(cmd, &client()?, cli.json).await,
    }
}
