//! `cobb worker`, `cobb up` and `cobb demo`: workers that pull runs from a server, a local
//! server with workers in one command, and the whole product on a laptop.

use anyhow::Context;
use clap::Args;
use protocol::api::{CreateToken, CreatedToken, RunList, SubmitExperiment, SubmitResult};
use protocol::api::{JobLease, Work};
use protocol::{Role, RunStatus};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use worker::device::{self, DeviceChoice};
use worker::jobs::{self, Progress, WorkerConfig};

use crate::client::Client;
use crate::failure::Failure;
use crate::output;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Runs trained at once by this process.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Worker name shown on the server (default: host name and process id).
    #[arg(long)]
    pub name: Option<String>,
    /// Exit when the queue is empty instead of waiting for work (batch jobs, Slurm arrays).
    #[arg(long)]
    pub exit_when_idle: bool,
    /// With --exit-when-idle: how long the queue must stay empty first (seconds).
    #[arg(long, default_value_t = 0, requires = "exit_when_idle")]
    pub idle_secs: u64,
    /// A folder whose images this worker may classify (`cobb classify --on-worker`); repeat
    /// for several. A worker with none takes no classification jobs.
    #[arg(long = "classify-root", value_name = "DIR")]
    pub classify_roots: Vec<PathBuf>,
}

/// What a job is, for one line of progress.
fn describe(job: &JobLease) -> String {
    match &job.work {
        Work::Train(_) => format!(
            "started (attempt {}): {} at {} px, {} epochs",
            job.attempt,
            job.config.model.arch,
            job.config.model.resolved_image_size(),
            job.config.train.epochs
        ),
        Work::Evaluate(e) => format!("evaluating promotion {} on the sealed test split (attempt {})", e.promotion_id, job.attempt),
        Work::Classify(c) => format!("classifying batch {} with promotion {} (attempt {})", c.batch_id, c.promotion_id, job.attempt),
    }
}

/// Prints one line per job event.
struct Lines;

impl Progress for Lines {
    fn started(&self, job: &JobLease) {
        eprintln!("[run {:>3} {}] {}", job.run_id, job.run_name, describe(job));
    }
    fn epoch(&self, job: &JobLease, r: &worker::train::EpochReport) {
        eprintln!(
            "[run {:>3} {}] epoch {}/{}  loss {:.3}  val macro-F1 {:.3}  {:.0} img/s{}",
            job.run_id,
            job.run_name,
            r.epoch + 1,
            job.config.train.epochs,
            r.train_loss,
            r.report.macro_f1,
            r.images_per_second,
            if r.best { "  best" } else { "" }
        );
    }
    fn finished(&self, job: &JobLease, status: &str, detail: &str) {
        let what = match job.work {
            Work::Evaluate(_) => "test evaluation ",
            Work::Classify(_) => "classification ",
            Work::Train(_) => "",
        };
        eprintln!("[run {:>3} {}] {what}{status} {detail}", job.run_id, job.run_name);
    }
}

/// One progress bar per run (epochs done, loss, validation macro-F1) on a terminal.
struct Bars {
    multi: indicatif::MultiProgress,
    bars: std::sync::Mutex<std::collections::HashMap<i64, indicatif::ProgressBar>>,
}

impl Bars {
    fn new() -> Self {
        Self { multi: indicatif::MultiProgress::new(), bars: std::sync::Mutex::new(Default::default()) }
    }

    fn bar(&self, run: i64) -> Option<indicatif::ProgressBar> {
        self.bars.lock().ok().and_then(|b| b.get(&run).cloned())
    }
}

impl Progress for Bars {
    fn started(&self, lease: &JobLease) {
        let Work::Train(work) = &lease.work else {
            let _ = self.multi.println(format!("[run {:>3} {}] {}", lease.run_id, lease.run_name, describe(lease)));
            return;
        };
        let bar = self.multi.add(indicatif::ProgressBar::new(u64::from(lease.config.train.epochs)));
        let style = indicatif::ProgressStyle::with_template("{prefix:<34} [{bar:24}] {pos}/{len} epochs {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        let params = protocol::sweep::describe(&work.params).replace("model.arch=", "").replace("train.optimizer.", "");
        bar.set_prefix(format!("run {} {}", lease.run_id, if params.is_empty() { lease.run_name.clone() } else { params }));
        bar.set_message(format!("attempt {}", lease.attempt));
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(lease.run_id, bar);
        }
    }
    fn epoch(&self, lease: &JobLease, r: &worker::train::EpochReport) {
        if let Some(bar) = self.bar(lease.run_id) {
            bar.set_position(r.epoch as u64 + 1);
            bar.set_message(format!("loss {:.3}  val macro-F1 {:.3}  {:.0} img/s", r.train_loss, r.report.macro_f1, r.images_per_second));
        }
    }
    fn finished(&self, lease: &JobLease, status: &str, detail: &str) {
        if !matches!(lease.work, Work::Train(_)) {
            let what = if matches!(lease.work, Work::Evaluate(_)) { "test evaluation" } else { "classification" };
            let _ = self.multi.println(format!("[run {:>3} {}] {what} {status} {detail}", lease.run_id, lease.run_name));
            return;
        }
        if let Some(bar) = self.bar(lease.run_id) {
            let message = bar.message();
            bar.finish_with_message(format!("{message}  {status} {detail}"));
        }
    }
}

/// Bars on a terminal, one line per event otherwise (logs, CI).
fn progress() -> Arc<dyn Progress> {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() { Arc::new(Bars::new()) } else { Arc::new(Lines) }
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Starts `count` worker loops; returns their join handles (each loop's error, if it stopped
/// on one). With `exit_when_idle`, a loop stops once the queue stayed empty `idle_exit_after`.
#[allow(clippy::too_many_arguments)]
fn spawn_workers(
    server: &str,
    token: &str,
    name: &str,
    count: usize,
    device: DeviceChoice,
    work_dir: &Path,
    exit_when_idle: bool,
    idle_exit_after: Duration,
    classify_roots: &[PathBuf],
    shutdown: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Result<(), String>>> {
    let progress = progress();
    (0..count)
        .map(|i| {
            let config = WorkerConfig {
                server: server.to_owned(),
                token: token.to_owned(),
                name: if count == 1 { name.to_owned() } else { format!("{name}-{i}") },
                device,
                work_dir: work_dir.to_path_buf(),
                idle_poll: Duration::from_secs(2),
                exit_when_idle,
                idle_exit_after,
                classify_roots: Some(classify_roots.to_vec()),
            };
            let shutdown = shutdown.clone();
            let progress = progress.clone();
            tokio::spawn(async move {
                jobs::run(config, progress, shutdown).await.map_err(|e| {
                    eprintln!("worker stopped: {e}");
                    e.to_string()
                })
            })
        })
        .collect()
}

/// Sets `shutdown` on ctrl-c / SIGTERM: workers finish their step, checkpoint and
/// release their runs.
fn on_signal(shutdown: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
            // SIGTERM: Kubernetes eviction, Slurm's time limit with --signal; SIGUSR1: Slurm
            // preemption scripts; ctrl-c at a terminal.
            let mut usr1 = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) {
                Ok(s) => s,
                Err(_) => return,
            };
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {}, _ = usr1.recv() => {} }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        eprintln!("stopping: finishing the current step and releasing runs (ctrl-c again to abort)");
        shutdown.store(true, Ordering::Relaxed);
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(130);
    });
}

pub async fn worker(args: &WorkerArgs, server: &str, token: Option<String>, data_dir: &Path) -> Result<(), Failure> {
    let choice: DeviceChoice = args.device.parse().map_err(Failure::input)?;
    device::probe(choice).map_err(|e| Failure::Runtime(e.into()))?;
    let token = token
        .or_else(|| std::fs::read_to_string(data_dir.join("admin.token")).ok().map(|t| t.trim().to_owned()))
        .ok_or_else(|| Failure::input("a worker needs a token: --token or COBB_TOKEN (create one with cobb token create --role worker)"))?;
    let shutdown = Arc::new(AtomicBool::new(false));
    on_signal(shutdown.clone());
    let name = args.name.clone().unwrap_or_else(default_name);
    let handles = spawn_workers(
        server,
        &token,
        &name,
        args.concurrency.max(1),
        choice,
        &data_dir.join("worker"),
        args.exit_when_idle,
        Duration::from_secs(args.idle_secs),
        &args.classify_roots,
        shutdown.clone(),
    );
    let mut unreachable = None;
    for h in handles {
        if let Ok(Err(e)) = h.await {
            unreachable = Some(e);
        }
    }
    // The exit code tells a cluster what to do next (docs/deploy.md): 0 done, 75 preempted
    // (start again), 69 the server was unreachable (retry later), 2 bad configuration.
    if shutdown.load(Ordering::Relaxed) {
        return Err(Failure::Preempted);
    }
    match unreachable {
        Some(e) => Err(Failure::Unavailable(anyhow::anyhow!(e))),
        None => Ok(()),
    }
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address to listen on [default: `bind` of cobb.toml, else 127.0.0.1:8080, else any
    /// free port].
    #[arg(long)]
    pub bind: Option<String>,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// A server in this process, configured like `cobb server` (cobb.toml, `COBB_*`, then the
/// flags given); returns its URL, admin token and data dir. When no address was asked for
/// and the default port is taken, any free port will do on a laptop.
async fn local_server(data_dir: Option<&Path>, bind: Option<&str>) -> Result<(String, String, PathBuf), Failure> {
    let args = super::server::ServerArgs { database_url: None, bind: bind.map(str::to_owned), artifacts: None };
    let mut config = super::server::config(&args, data_dir)?;
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir).with_context(|| format!("while creating {}", data_dir.display()))?;
    let app = match server::Application::build(config.clone()).await {
        Ok(app) => app,
        Err(_) if bind.is_none() && config.bind.ends_with(":8080") => {
            // The default port is taken: any free port will do on a laptop.
            config.bind = "127.0.0.1:0".to_owned();
            server::Application::build(config).await.context("while starting the server")?
        }
        Err(e) => return Err(Failure::Runtime(e.context("while starting the server"))),
    };
    let url = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let token = std::fs::read_to_string(data_dir.join("admin.token"))
        .with_context(|| format!("while reading {}", data_dir.join("admin.token").display()))?
        .trim()
        .to_owned();
    Ok((url, token, data_dir))
}

/// A worker token for local workers (created once, kept next to the admin token).
async fn worker_token(client: &Client, data_dir: &Path) -> Result<String, Failure> {
    let path = data_dir.join("worker.token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        return Ok(token.trim().to_owned());
    }
    let name = format!("local-workers-{}", std::process::id());
    let created: CreatedToken = client.post("/tokens", &CreateToken { name, role: Role::Worker, expires_in_secs: None }).await?;
    server::service::tokens::write_private(&path, &created.token).with_context(|| format!("while writing {}", path.display()))?;
    Ok(created.token)
}

pub async fn up(args: &UpArgs, data_dir: Option<&Path>) -> Result<(), Failure> {
    let choice: DeviceChoice = args.device.parse().map_err(Failure::input)?;
    device::probe(choice).map_err(|e| Failure::Runtime(e.into()))?;
    let (url, admin, data_dir) = local_server(data_dir, args.bind.as_deref()).await?;
    let data_dir = data_dir.as_path();
    let client = Client::new(&url, Some(admin), data_dir)?;
    let token = worker_token(&client, data_dir).await?;
    let shutdown = Arc::new(AtomicBool::new(false));
    on_signal(shutdown.clone());
    let handles =
        spawn_workers(&url, &token, &default_name(), args.workers, choice, &data_dir.join("worker"), false, Duration::ZERO, &[], shutdown);
    eprintln!("cobb is up: server {url} with {} worker(s); data in {}", args.workers, data_dir.display());
    eprintln!("  export COBB_SERVER={url}   # then: cobb submit experiments/demo.yaml, cobb runs");
    for h in handles {
        let _ = h.await;
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Exit when the sweep is done instead of serving until ctrl-c.
    #[arg(long)]
    pub exit_when_done: bool,
    /// Phantoms to generate (more: better models, longer demo).
    #[arg(long, default_value_t = 600)]
    pub images: usize,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Fresh phantoms (another seed) the promoted model classifies at the end.
    #[arg(long, default_value_t = 200)]
    pub new_images: usize,
}

const DEMO_SPEC: &str = include_str!("../../../experiments/demo.yaml");

pub async fn demo(args: &DemoArgs, data_dir: Option<&Path>) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let (url, admin, data_dir) = local_server(data_dir, None).await?;
    let data_dir = data_dir.as_path();
    let client = Client::new(&url, Some(admin.clone()), data_dir)?;

    // 1. Phantoms (once per data dir).
    let phantoms: PathBuf = data_dir.join("phantoms");
    if !phantoms.join("manifest.csv").exists() {
        eprintln!("1/4 generating {} spine radiograph phantoms (64 px, 10 classes) in {}", args.images, phantoms.display());
        let options = data::phantoms::Options {
            count: args.images,
            size: 64,
            seed: 42,
            format: data::phantoms::Format::Png,
            balance: data::phantoms::Balance::Uniform,
        };
        tokio::task::spawn_blocking(move || data::phantoms::generate(&phantoms, &options))
            .await
            .map_err(|e| Failure::Runtime(e.into()))?
            .context("while generating phantoms")?;
    } else {
        eprintln!("1/4 reusing the phantoms in {}", phantoms.display());
    }
    // 2. Register the frozen dataset version.
    eprintln!("2/4 registering dataset `phantoms` (hashing, decoding, patient-grouped 70/15/15 split)");
    // The demo's data dir is its site: its pseudonym key lives there, made on first use.
    let key = data::pseudonym::PseudonymKey::load_or_create(&data_dir.join("pseudonym.key")).map_err(|e| Failure::Input(e.into()))?;
    super::dataset::register(&client, "phantoms", &data_dir.join("phantoms"), None, "70/15/15", 0, "patient", None, &key, false).await?;
    // 3. Submit the demo sweep.
    let submitted: SubmitResult = client
        .post(
            "/experiments",
            &SubmitExperiment { yaml: DEMO_SPEC.to_owned(), file: Some("experiments/demo.yaml".to_owned()), dry_run: false },
        )
        .await?;
    let sweep = submitted.sweep_id.unwrap_or_default();
    eprintln!("3/4 submitted experiments/demo.yaml: {} runs (sweep s{sweep})", submitted.runs.len());
    // 4. Local workers train on the CPU.
    eprintln!("4/4 training on the CPU with {} local worker(s)", args.workers);
    let token = worker_token(&client, data_dir).await?;
    let shutdown = Arc::new(AtomicBool::new(false));
    on_signal(shutdown.clone());
    let workers = spawn_workers(
        &url,
        &token,
        "demo",
        args.workers,
        DeviceChoice::Cpu,
        &data_dir.join("worker"),
        false,
        Duration::ZERO,
        &[],
        shutdown.clone(),
    );
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let list: RunList = client.get(&format!("/runs?sweep={sweep}&limit=100")).await?;
        if list.runs.iter().all(|r| r.status.is_terminal()) {
            break;
        }
        if shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
    print_leaderboard(&client, sweep).await?;
    if !shutdown.load(Ordering::Relaxed) {
        promote_and_classify(&client, sweep, data_dir, args.new_images).await?;
    }
    eprintln!("demo finished in {:.0} s", started.elapsed().as_secs_f64());
    let token_file = data_dir.join("admin.token");
    println!("\ndashboard: {url}/ui (log in with the token in {})", token_file.display());
    println!("API: {url}/api/v1; try: COBB_SERVER={url} cobb runs --sort val_macro_f1");
    let stop = |workers: Vec<tokio::task::JoinHandle<Result<(), String>>>| {
        shutdown.store(true, Ordering::Relaxed);
        for w in workers {
            w.abort();
        }
    };
    if args.exit_when_done {
        stop(workers);
        return Ok(());
    }
    // The workers stay up, so a run promoted from the dashboard (or `cobb promote`) is
    // evaluated on the test split while the demo serves.
    eprintln!("serving the dashboards, with the workers ready for a promotion's test evaluation, until ctrl-c");
    while !shutdown.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop(workers);
    Ok(())
}

async fn print_leaderboard(client: &Client, sweep: i64) -> Result<(), Failure> {
    let list: RunList = client.get(&format!("/runs?sweep={sweep}&sort=val_macro_f1&limit=100")).await?;
    println!("\nleaderboard (sweep s{sweep}, by validation macro-F1 at each run's best epoch)");
    let rows: Vec<Vec<String>> = list
        .runs
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.status.to_string(),
                r.sort_value.map_or("-".to_owned(), |v| format!("{v:.3}")),
                r.best_epoch.map_or("-".to_owned(), |e| e.to_string()),
                protocol::sweep::describe(&r.params),
            ]
        })
        .collect();
    output::table(&["RUN", "STATUS", "VAL MACRO-F1", "BEST EPOCH", "PARAMS"], &rows);
    for r in list.runs.iter().filter(|r| r.status == RunStatus::Pruned) {
        println!("run {}: {}", r.id, r.error.as_deref().unwrap_or("pruned"));
    }
    // The best three that have per-class results: pruned runs keep theirs.
    let best: Vec<i64> =
        list.runs.iter().filter(|r| matches!(r.status, RunStatus::Succeeded | RunStatus::Pruned)).take(3).map(|r| r.id).collect();
    if best.len() < 2 {
        return Ok(());
    }
    super::compare::print_comparison(&super::compare::comparison(client, &best, None).await?);
    Ok(())
}

/// The end of the loop: promote the best succeeded run (its test evaluation runs on the demo's
/// workers; the report is printed), then classify a fresh export of phantoms made with another
/// seed, print the per-class summary and the accuracy against the phantoms' true labels.
async fn promote_and_classify(client: &Client, sweep: i64, data_dir: &Path, new_images: usize) -> Result<(), Failure> {
    let list: RunList = client.get(&format!("/runs?sweep={sweep}&sort=val_macro_f1&limit=100")).await?;
    let Some(best) = list.runs.iter().find(|r| r.status == RunStatus::Succeeded) else {
        eprintln!("no run succeeded, so nothing is promoted");
        return Ok(());
    };
    eprintln!("\npromoting run {} (best validation macro-F1) to the sealed test split", best.id);
    let current: Vec<protocol::api::PromotionInfo> = client.get("/promotions?experiment=demo").await?;
    if current.iter().any(|p| p.run_id == best.id && p.superseded_by.is_none()) {
        eprintln!("run {} is already the promoted model", best.id);
    } else {
        super::promote::promote(client, best.id, "demo: best validation macro-F1 of the sweep", 600, None, false).await?;
    }
    // A fresh export: phantoms of another seed, their true labels kept aside (not in the folder).
    let incoming = data_dir.join("incoming");
    let truth = data_dir.join("incoming-truth.csv");
    if !truth.exists() {
        let _ = std::fs::remove_dir_all(&incoming);
        let options = data::phantoms::Options {
            count: new_images,
            size: 64,
            seed: 4242,
            format: data::phantoms::Format::Png,
            balance: data::phantoms::Balance::Uniform,
        };
        let dir = incoming.clone();
        tokio::task::spawn_blocking(move || data::phantoms::generate(&dir, &options))
            .await
            .map_err(|e| Failure::Runtime(e.into()))?
            .context("while generating the new phantoms")?;
        std::fs::rename(incoming.join("manifest.csv"), &truth).context("while setting the true labels aside")?;
    }
    eprintln!("classifying {new_images} new phantoms (seed 4242) in {} with the promoted model", incoming.display());
    let args = super::classify::ClassifyArgs {
        path: incoming.clone(),
        experiment: Some("demo".to_owned()),
        promotion: None,
        out: Some(data_dir.join("incoming-classified.csv")),
        device: "cpu".to_owned(),
        batch: None,
        on_worker: false,
    };
    super::classify::classify(&args, client, data_dir, false).await?;
    // How the sorting did against the truth the phantoms carry.
    let labels: std::collections::HashMap<String, String> = csv::Reader::from_path(&truth)
        .context("while reading the true labels")?
        .records()
        .filter_map(Result::ok)
        .filter_map(|r| Some((r.get(0)?.to_owned(), r.get(1)?.to_owned())))
        .collect();
    let mut reader = csv::Reader::from_path(data_dir.join("incoming-classified.csv")).context("while reading the classification")?;
    let headers = reader.headers().context("while reading the classification")?.clone();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let (Some(path_col), Some(predicted_col), Some(decision_col)) = (column("path"), column("predicted"), column("decision")) else {
        return Err(Failure::Runtime(anyhow::anyhow!("the classification CSV lacks path, predicted or decision")));
    };
    let (mut right, mut all, mut accepted_right, mut accepted) = (0u64, 0u64, 0u64, 0u64);
    for record in reader.records().filter_map(Result::ok) {
        let (Some(path), Some(predicted)) = (record.get(path_col), record.get(predicted_col)) else { continue };
        let Some(truth) = labels.get(path) else { continue };
        let ok = truth == predicted;
        all += 1;
        right += u64::from(ok);
        if record.get(decision_col) == Some("accept") {
            accepted += 1;
            accepted_right += u64::from(ok);
        }
    }
    if all > 0 {
        println!(
            "against the phantoms' true labels: accuracy {:.3} over {all} images; {accepted} auto-accepted, of which {:.3} right",
            right as f64 / all as f64,
            if accepted > 0 { accepted_right as f64 / accepted as f64 } else { 0.0 }
        );
    }
    Ok(())
}
