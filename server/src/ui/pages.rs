//! The dashboard pages: experiments, experiment, sweep leaderboard, run, compare, audit,
//! promotion result. Each handler reads through the services the REST API uses, so a page
//! shows exactly what the API returns.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use protocol::metrics::ConfusionMatrix;
use protocol::{JobStatus, keys};
use protocol::{Role, RunStatus};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{charts, check_csrf, error_page, render, viewer};
use crate::error::ApiError;
use crate::service;
use crate::state::AppState;
use crate::store;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(experiments)
        .service(experiment)
        .service(sweep)
        .service(run)
        .service(compare)
        .service(audit)
        .service(promotion)
        .service(promotion_csv)
        .service(promotion_json)
        .service(promotion_study)
        .service(promotion_study_page)
        .service(promote)
        .service(batch)
        .service(review);
}

/// Runs a page body with its viewer; errors become error pages.
macro_rules! page {
    ($req:expr, $state:expr, |$v:ident| $body:expr) => {{
        match viewer(&$req, &$state).await {
            Err(response) => response,
            Ok($v) => {
                let result: Result<HttpResponse, ApiError> = async { $body }.await;
                match result {
                    Ok(response) => response,
                    Err(e) => error_page(Some(&$v), &e),
                }
            }
        }
    }};
}

/// The experiments page: one row per experiment.
#[derive(Serialize)]
struct ExperimentsPage {
    rows: Vec<ExperimentRow>,
}

#[derive(Serialize)]
struct ExperimentRow {
    experiment: protocol::api::ExperimentSummary,
    /// The succeeded run with the best validation macro-F1.
    best: Option<protocol::api::RunInfo>,
    /// The experiment's promoted model.
    promoted: Option<protocol::api::PromotionInfo>,
}

#[get("/ui/experiments")]
async fn experiments(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    page!(req, state, |v| {
        let list = service::experiments::list(&state).await?;
        let promotions = service::promotions::list(&state, None).await?;
        let mut rows = Vec::new();
        for e in list {
            let filter = store::runs::Filter {
                experiment: Some(e.name.clone()),
                sweep: None,
                status: Some(RunStatus::Succeeded.as_str().to_owned()),
            };
            let sort = service::runs::parse_sort(Some("-val_macro_f1"), None)?;
            let best = service::runs::list(&state, filter, sort, 1, 0).await?.runs.into_iter().next();
            let promoted = promotions.iter().find(|p| p.experiment == e.name && p.superseded_by.is_none());
            rows.push(ExperimentRow { experiment: e, best, promoted: promoted.cloned() });
        }
        Ok(render("experiments.html", Some(&v), &ExperimentsPage { rows }))
    })
}

/// One experiment: its sweeps, its frozen dataset version and its promotions.
#[derive(Serialize)]
struct ExperimentPage {
    experiment: protocol::api::ExperimentDetail,
    dataset: protocol::api::DatasetVersionInfo,
    promotions: Vec<protocol::api::PromotionInfo>,
    batches: Vec<protocol::classify::BatchInfo>,
}

#[get("/ui/experiments/{name}")]
async fn experiment(req: HttpRequest, state: web::Data<AppState>, name: web::Path<String>) -> HttpResponse {
    page!(req, state, |v| {
        let detail = service::experiments::show(&state, &name).await?;
        let dataset = service::datasets::show(&state, &detail.summary.dataset, Some(&detail.summary.dataset_version)).await?;
        let promotions = service::promotions::list(&state, Some(&name)).await?;
        let batches = service::classify::list(&state, Some(&name), 100).await?;
        Ok(render("experiment.html", Some(&v), &ExperimentPage { experiment: detail, dataset, promotions, batches }))
    })
}

/// The sweep leaderboard: one row per run, sortable by any column.
#[derive(Serialize)]
struct SweepPage {
    sweep: protocol::api::SweepInfo,
    rows: Vec<SweepRow>,
    /// The hyperparameters that differ between the sweep's runs (one column each).
    varying: Vec<String>,
    sort: String,
    status: Option<String>,
    statuses: &'static [RunStatus],
    /// The sweep's early-stop rule in a sentence (none without one).
    early_stop: Option<String>,
    /// The experiment's validation budget: configurations scored, and the cap if any.
    budget: (u64, Option<u64>),
    /// Each parameter's share of importance (PED-ANOVA), with its chart.
    importance: Vec<(String, f64)>,
    importance_svg: String,
    /// Parallel coordinates of the finished runs, and the best value after each finished run.
    parallel_svg: String,
    best_svg: String,
}

#[derive(Serialize)]
struct SweepRow {
    id: i64,
    name: String,
    status: String,
    /// The values of the varying hyperparameters, in `varying` order.
    params: Vec<String>,
    val_accuracy: Option<f64>,
    val_macro_f1: Option<f64>,
    worst_recall: Option<f64>,
    worst_class: Option<String>,
    epochs: Option<i64>,
    duration_s: Option<f64>,
    error: Option<String>,
    /// The constraints it missed (it then ranks below every run that meets them all).
    missed: Vec<String>,
}

impl SweepRow {
    /// The row's value in a numeric column (what the page sorts by).
    fn number(&self, column: &str) -> Option<f64> {
        match column {
            "id" => Some(self.id as f64),
            "val_accuracy" => self.val_accuracy,
            "val_macro_f1" => self.val_macro_f1,
            "worst_recall" => self.worst_recall,
            "epochs" => self.epochs.map(|e| e as f64),
            "duration_s" => self.duration_s,
            _ => None,
        }
    }

    /// The row's value in a text column.
    fn text(&self, column: &str) -> &str {
        match column {
            "status" => &self.status,
            "name" => &self.name,
            _ => "",
        }
    }
}

#[derive(serde::Deserialize)]
struct SweepQuery {
    sort: Option<String>,
    status: Option<String>,
}

#[get("/ui/sweeps/{id}")]
async fn sweep(req: HttpRequest, state: web::Data<AppState>, id: web::Path<i64>, q: web::Query<SweepQuery>) -> HttpResponse {
    page!(req, state, |v| {
        let id = *id;
        let status = q.status.clone().filter(|s| !s.is_empty());
        if let Some(s) = &status {
            s.parse::<RunStatus>().map_err(ApiError::InvalidRequest)?;
        }
        let conn = &state.db.read;
        // Five independent reads, side by side on the read pool.
        let (info, runs, best, worst, epochs) = tokio::join!(
            service::experiments::sweep(&state, id),
            store::leaderboard::runs(conn, id, status.as_deref()),
            store::leaderboard::best_metrics(conn, id),
            store::leaderboard::worst_recalls(conn, id),
            store::leaderboard::epochs(conn, id),
        );
        let (info, runs) = (info?, runs?);
        let params: Vec<protocol::spec::Params> = runs.iter().map(|r| r.params()).collect::<Result<_, _>>()?;
        let mut missed: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for r in &runs {
            missed.insert(r.id, r.violations()?);
        }
        let metrics: BTreeMap<(i64, String), f64> = best?.into_iter().map(|m| ((m.run_id, m.key), m.value)).collect();
        let worst: BTreeMap<i64, (String, f64)> = worst?.into_iter().map(|r| (r.run_id, (r.class, r.recall))).collect();
        let epochs: BTreeMap<i64, i64> = epochs?.into_iter().map(|e| (e.run_id, e.epochs)).collect();
        // Hyperparameters that differ between the sweep's runs.
        let mut seen: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for p in &params {
            for (k, val) in p {
                seen.entry(k).or_default().insert(val.to_string());
            }
        }
        let varying: Vec<String> = seen.into_iter().filter(|(_, vals)| vals.len() > 1).map(|(k, _)| k.to_owned()).collect();
        let mut rows: Vec<SweepRow> = runs
            .iter()
            .zip(&params)
            .map(|(r, p)| {
                let w = worst.get(&r.id);
                SweepRow {
                    id: r.id,
                    name: r.name.clone(),
                    status: r.status.clone(),
                    params: varying.iter().map(|k| p.get(k).map(|x| x.to_string()).unwrap_or_default()).collect(),
                    val_accuracy: metrics.get(&(r.id, keys::VAL_ACCURACY.to_owned())).copied(),
                    val_macro_f1: metrics.get(&(r.id, keys::VAL_MACRO_F1.to_owned())).copied(),
                    worst_recall: w.map(|w| w.1),
                    worst_class: w.map(|w| w.0.clone()),
                    epochs: epochs.get(&r.id).copied(),
                    duration_s: r.finished_at.zip(r.started_at).map(|(f, s)| (f - s) as f64 / 1000.0),
                    error: r.error.clone(),
                    missed: missed.remove(&r.id).unwrap_or_default(),
                }
            })
            .collect();
        let sort = q.sort.clone().unwrap_or_else(|| "-val_macro_f1".to_owned());
        let (key, descending) = match sort.strip_prefix('-') {
            Some(k) => (k.to_owned(), true),
            None => (sort.clone(), false),
        };
        let metric_sort = !matches!(key.as_str(), "id" | "status");
        rows.sort_by(|a, b| {
            // A run that misses a constraint ranks below every run that meets them all.
            if metric_sort && a.missed.is_empty() != b.missed.is_empty() {
                return b.missed.is_empty().cmp(&a.missed.is_empty());
            }
            // Missing values last, whatever the direction.
            let ord = match (a.number(&key), b.number(&key)) {
                (Some(p), Some(q)) => {
                    if descending {
                        q.total_cmp(&p)
                    } else {
                        p.total_cmp(&q)
                    }
                }
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => a.text(&key).cmp(b.text(&key)),
            };
            ord.then(a.id.cmp(&b.id))
        });
        let early_stop = service::early_stop::describe(&state, id).await?;
        let budget = service::experiments::budget(&state, &info.experiment).await?;
        let (mut importance, mut importance_svg, mut parallel_svg, mut best_svg) =
            (Vec::new(), String::new(), String::new(), String::new());
        if let Some(a) = service::tpe::analysis(&state, id).await? {
            if !a.importance.is_empty() {
                let names: Vec<String> = a.importance.iter().map(|(p, _)| p.clone()).collect();
                let shares: Vec<f64> = a.importance.iter().map(|(_, v)| *v).collect();
                importance_svg =
                    charts::grouped_bars("Hyperparameter importance (PED-ANOVA)", "share", &names, &[("importance".to_owned(), shares)]);
            }
            if a.runs.len() >= 2 {
                let axes: Vec<charts::Axis> =
                    a.axes.iter().map(|(n, lo, hi)| charts::Axis { name: n.clone(), low: lo.clone(), high: hi.clone() }).collect();
                let title = format!("Finished runs by hyperparameter (darker: better {})", a.metric);
                parallel_svg = charts::parallel_coordinates(&title, &axes, &a.runs);
                best_svg =
                    charts::lines_over("Best so far", "finished runs", &a.metric, &[(format!("best {}", a.metric), a.best_so_far.clone())]);
            }
            importance = a.importance;
        }
        Ok(render(
            "sweep.html",
            Some(&v),
            &SweepPage {
                sweep: info,
                rows,
                varying,
                sort,
                status,
                statuses: RunStatus::ALL,
                early_stop,
                budget,
                importance,
                importance_svg,
                parallel_svg,
                best_svg,
            },
        ))
    })
}

/// `(name, [(epoch, value)])` of the given keys.
fn curves(series: &[protocol::api::MetricSeries], keys: &[&str]) -> Vec<(String, Vec<(f64, f64)>)> {
    keys.iter()
        .filter_map(|k| series.iter().find(|s| s.key == *k))
        .map(|s| (s.key.clone(), s.points.iter().map(|p| (p.step as f64, p.value)).collect()))
        .collect()
}

/// A confusion matrix as rows of cells with a 0-1 shade (row-normalised), for the heatmap.
#[derive(Serialize)]
struct Heatmap {
    classes: Vec<String>,
    rows: Vec<HeatmapRow>,
}

#[derive(Serialize)]
struct HeatmapRow {
    class: String,
    cells: Vec<HeatmapCell>,
    total: u64,
}

#[derive(Serialize)]
struct HeatmapCell {
    n: u64,
    shade: f64,
    /// On the diagonal (a correct prediction).
    diag: bool,
}

fn heatmap(m: &ConfusionMatrix) -> Heatmap {
    let rows = m
        .counts
        .iter()
        .enumerate()
        .map(|(t, row)| {
            let total: u64 = row.iter().sum();
            let cells = row
                .iter()
                .enumerate()
                .map(|(p, &n)| HeatmapCell { n, shade: if total > 0 { n as f64 / total as f64 } else { 0.0 }, diag: t == p })
                .collect();
            HeatmapRow { class: m.classes[t].clone(), cells, total }
        })
        .collect();
    Heatmap { classes: m.classes.clone(), rows }
}

/// One run: its charts, epochs, best-epoch results, artifacts, attempts and promotions.
#[derive(Serialize)]
struct RunPage {
    detail: protocol::api::RunDetail,
    charts: RunCharts,
    epochs: Vec<EpochRow>,
    confusion: Option<Heatmap>,
    checkpoint: Option<protocol::api::ArtifactInfo>,
    code_version: &'static str,
    promotions: Vec<PromotionBrief>,
    can_promote: bool,
    has_test: bool,
    /// Queued or running: the page refreshes itself.
    live: bool,
    /// The resolved config, pretty-printed.
    config: String,
    /// Intervals and calibration from the stored validation predictions (and test, once
    /// evaluated), with the reliability diagram.
    val_evidence: Option<std::sync::Arc<protocol::api::RunEvidence>>,
    test_evidence: Option<std::sync::Arc<protocol::api::RunEvidence>>,
    reliability: Option<String>,
}

/// Inline SVG charts.
#[derive(Serialize)]
struct RunCharts {
    loss: String,
    quality: String,
    lr: String,
}

#[derive(Serialize)]
struct EpochRow {
    epoch: i64,
    metrics: BTreeMap<&'static str, f64>,
}

#[derive(Serialize)]
struct PromotionBrief {
    id: i64,
    status: String,
    actor: String,
    superseded_by: Option<i64>,
}

#[get("/ui/runs/{id}")]
async fn run(req: HttpRequest, state: web::Data<AppState>, id: web::Path<i64>) -> HttpResponse {
    page!(req, state, |v| {
        let detail = service::runs::show(&state, *id, false).await?;
        let series = service::runs::metrics(&state, *id, None).await?;
        let loss = charts::lines("Loss", "cross-entropy", &curves(&series, &[keys::TRAIN_LOSS, keys::VAL_LOSS]));
        let quality = charts::lines("Validation", "score", &curves(&series, &[keys::VAL_MACRO_F1, keys::VAL_ACCURACY]));
        let lr = charts::lines("Learning rate", "lr", &curves(&series, &[keys::LR]));
        let epochs: Vec<EpochRow> = {
            let epoch_keys = [keys::TRAIN_LOSS, keys::VAL_LOSS, keys::VAL_ACCURACY, keys::VAL_MACRO_F1, keys::LR];
            let mut by_epoch: BTreeMap<i64, BTreeMap<&'static str, f64>> = BTreeMap::new();
            for s in series.iter().filter(|s| epoch_keys.contains(&s.key.as_str())) {
                for p in &s.points {
                    by_epoch.entry(p.step).or_default().insert(epoch_keys.iter().find(|k| **k == s.key).copied().unwrap_or(""), p.value);
                }
            }
            by_epoch.into_iter().map(|(epoch, metrics)| EpochRow { epoch, metrics }).collect()
        };
        let confusion = detail.class_results.as_ref().map(|c| heatmap(&c.confusion));
        let promotions = store::promotions::of_run(&state.db.read, *id).await?;
        let checkpoint = detail.artifacts.iter().rev().find(|a| a.kind == "best_checkpoint").cloned();
        let can_promote = detail.run.status == RunStatus::Succeeded && checkpoint.is_some() && v.principal.role.allows(Role::Reviewer);
        let has_test = detail.latest.keys().any(|k| keys::is_test_metric(k));
        let evidence_of = |split| service::evidence::run_evidence(&state, *id, split);
        let val_evidence = ApiError::found(evidence_of(protocol::Split::Val).await)?;
        let test_evidence = ApiError::found(evidence_of(protocol::Split::Test).await)?;
        let mut reliability_series = Vec::new();
        if let Some(e) = &val_evidence {
            reliability_series.push(("validation".to_owned(), e.calibration.bins.clone()));
        }
        if let Some(e) = &test_evidence {
            reliability_series.push(("test".to_owned(), e.calibration.bins.clone()));
        }
        let reliability = (!reliability_series.is_empty()).then(|| charts::reliability("Reliability", &reliability_series));
        let page = RunPage {
            val_evidence,
            test_evidence,
            reliability,
            charts: RunCharts { loss, quality, lr },
            epochs,
            confusion,
            checkpoint,
            code_version: service::promotions::CODE_VERSION,
            promotions: promotions
                .into_iter()
                .map(|p| PromotionBrief { id: p.id, status: p.status, actor: p.actor, superseded_by: p.superseded_by })
                .collect(),
            can_promote,
            has_test,
            live: matches!(detail.run.status, RunStatus::Running | RunStatus::Queued),
            config: serde_json::to_string_pretty(&detail.config).map_err(anyhow::Error::from)?,
            detail,
        };
        Ok(render("run.html", Some(&v), &page))
    })
}

/// What the compare page shows: the comparison every client gets from
/// `GET /api/v1/compare`, with the charts and the runs' colours.
#[derive(Serialize)]
struct ComparePage {
    cmp: protocol::compare::Comparison,
    /// `#rrggbb` per run, in the comparison's run order (the charts' colours).
    colors: Vec<String>,
    precision_chart: String,
    recall_chart: String,
    /// Each other run against the baseline (A = the run, B = the baseline) on the same
    /// validation patients, where both stored their predictions.
    versus: Vec<std::sync::Arc<protocol::api::RunComparison>>,
    /// run id -> class -> the 95% interval of its recall (precision) delta against the
    /// baseline (paired).
    recall_ci: HashMap<String, HashMap<String, String>>,
    precision_ci: HashMap<String, HashMap<String, String>>,
    /// run id -> the 95% interval of its validation macro-F1 (where it stored predictions).
    macro_ci: HashMap<String, String>,
}

#[get("/ui/compare")]
async fn compare(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    page!(req, state, |v| {
        let (ids, baseline) = service::compare::parse_query(req.query_string())?;
        let cmp = service::compare::compare(&state, &ids, baseline).await?;
        let classes: Vec<String> = cmp.classes.iter().map(|r| r.class.clone()).collect();
        let bars = |recall: bool| {
            let series: Vec<(String, Vec<f64>)> = cmp
                .runs
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let values = cmp.classes.iter().map(|row| if recall { &row.recall } else { &row.precision }[i].value.unwrap_or(0.0));
                    (format!("run {} {}", r.id, r.name), values.collect())
                })
                .collect();
            charts::grouped_bars(
                if recall { "Recall per class" } else { "Precision per class" },
                if recall { "recall" } else { "precision" },
                &classes,
                &series,
            )
        };
        let colors = (0..cmp.runs.len())
            .map(|i| {
                let c = charts::color(i);
                format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
            })
            .collect();
        let mut versus = Vec::new();
        for r in cmp.runs.iter().filter(|r| r.id != cmp.baseline) {
            match service::evidence::versus(&state, r.id, cmp.baseline).await {
                Ok(v) => versus.push(v),
                Err(ApiError::NotFound { .. } | ApiError::InvalidRequest(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let deltas = |of: fn(&protocol::evidence::Comparison) -> &Vec<protocol::evidence::Difference>, prefix: &str| {
            versus
                .iter()
                .map(|v| {
                    let by_class = of(&v.comparison)
                        .iter()
                        .map(|d| {
                            let class = d.metric.trim_start_matches(prefix).to_owned();
                            (class, format!("[{:+.3} to {:+.3}]", d.difference.low, d.difference.high))
                        })
                        .collect();
                    (v.a.to_string(), by_class)
                })
                .collect::<HashMap<String, HashMap<String, String>>>()
        };
        let recall_ci = deltas(|c| &c.recall, "recall/");
        let precision_ci = deltas(|c| &c.precision, "precision/");
        let mut macro_ci = HashMap::new();
        for r in &cmp.runs {
            if let Some(e) = ApiError::found(service::evidence::run_evidence(&state, r.id, protocol::Split::Val).await)? {
                macro_ci.insert(r.id.to_string(), format!("{:.3}-{:.3}", e.intervals.macro_f1.low, e.intervals.macro_f1.high));
            }
        }
        let page =
            ComparePage { precision_chart: bars(false), recall_chart: bars(true), colors, cmp, versus, recall_ci, precision_ci, macro_ci };
        Ok(render("compare.html", Some(&v), &page))
    })
}

/// The audit log, newest first, with the chain's verification.
#[derive(Serialize)]
struct AuditPage {
    chain: protocol::api::ChainCheck,
    events: Vec<AuditRow>,
    promotions: Vec<protocol::api::PromotionInfo>,
}

#[derive(Serialize)]
struct AuditRow {
    event: protocol::api::AuditEvent,
    /// The details as one line of JSON.
    details: String,
}

#[get("/ui/audit")]
async fn audit(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    page!(req, state, |v| {
        let log = service::audit::log(&state, None).await?;
        let promotions = service::promotions::list(&state, None).await?;
        let events = log.events.into_iter().rev().map(|event| AuditRow { details: event.details.to_string(), event }).collect();
        Ok(render("audit.html", Some(&v), &AuditPage { chain: log.chain, events, promotions }))
    })
}

/// A promotion and, once evaluated, its test report.
#[derive(Serialize)]
struct PromotionPage {
    promotion: protocol::api::PromotionInfo,
    report: Option<protocol::api::TestReport>,
    /// The evaluation is still to come: the page refreshes itself.
    live: bool,
    /// The test predictions' reliability diagram, before and after temperature scaling.
    reliability: Option<String>,
}

#[get("/ui/promotions/{id}")]
async fn promotion(req: HttpRequest, state: web::Data<AppState>, id: web::Path<i64>) -> HttpResponse {
    page!(req, state, |v| {
        let promotion = service::promotions::get(&state, *id).await?;
        let report = if promotion.status == JobStatus::Succeeded { Some(service::promotions::report(&state, *id).await?) } else { None };
        let live = matches!(promotion.status, JobStatus::Queued | JobStatus::Running);
        let reliability = report.as_ref().and_then(|r| r.evidence.as_ref()).map(|e| {
            let mut series = vec![("test".to_owned(), e.calibration.bins.clone())];
            if let Some(after) = &e.calibrated {
                series.push(("test, temperature-scaled".to_owned(), after.bins.clone()));
            }
            charts::reliability("Reliability on the test split", &series)
        });
        Ok(render("promotion.html", Some(&v), &PromotionPage { promotion, report, live, reliability }))
    })
}

#[get("/ui/promotions/{id}/report.csv")]
async fn promotion_csv(req: HttpRequest, state: web::Data<AppState>, id: web::Path<i64>) -> HttpResponse {
    page!(req, state, |_v| {
        let report = service::promotions::report(&state, *id).await?;
        Ok(HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header((header::CONTENT_DISPOSITION, format!("attachment; filename=\"promotion-{}-test-report.csv\"", *id)))
            .body(service::promotions::report_csv(&report)))
    })
}

#[get("/ui/promotions/{id}/report.json")]
async fn promotion_json(req: HttpRequest, state: web::Data<AppState>, id: web::Path<i64>) -> HttpResponse {
    page!(req, state, |_v| {
        let report = service::promotions::report(&state, *id).await?;
        Ok(HttpResponse::Ok()
            .insert_header((header::CONTENT_DISPOSITION, format!("attachment; filename=\"promotion-{}-test-report.json\"", *id)))
            .json(report))
    })
}

#[get("/ui/promotions/{id}/study.md")]
async fn promotion_study(req: HttpRequest, state: web::Data<AppState>, id: web::Path<i64>) -> HttpResponse {
    page!(req, state, |_v| {
        let report = service::promotions::study(&state, *id).await?;
        Ok(HttpResponse::Ok()
            .content_type("text/markdown; charset=utf-8")
            .insert_header((header::CONTENT_DISPOSITION, format!("attachment; filename=\"promotion-{}-study-report.md\"", *id)))
            .body(protocol::study::markdown(&report)))
    })
}

#[get("/ui/promotions/{id}/study")]
async fn promotion_study_page(req: HttpRequest, state: web::Data<AppState>, id: web::Path<i64>) -> HttpResponse {
    page!(req, state, |_v| {
        let report = service::promotions::study(&state, *id).await?;
        Ok(HttpResponse::Ok().content_type("text/html; charset=utf-8").body(protocol::study::html(&report)))
    })
}

#[derive(serde::Deserialize)]
struct PromoteForm {
    reason: String,
    csrf: String,
}

#[post("/ui/runs/{id}/promote")]
async fn promote(req: HttpRequest, state: web::Data<AppState>, id: web::Path<i64>, form: web::Form<PromoteForm>) -> HttpResponse {
    page!(req, state, |v| {
        check_csrf(&v, &form.csrf)?;
        v.principal.require(Role::Reviewer)?;
        let p = service::promotions::promote(&state, &v.principal, *id, &form.reason).await?;
        Ok(HttpResponse::SeeOther().insert_header((header::LOCATION, format!("/ui/promotions/{}", p.id))).finish())
    })
}

#[derive(Serialize)]
struct BatchPage {
    detail: protocol::classify::BatchDetail,
    /// The images sent to review (reviewed or not), then the skipped files.
    review: Vec<protocol::classify::BatchItem>,
    skipped: Vec<protocol::classify::BatchItem>,
    live: bool,
    can_review: bool,
    /// What the last form stored (`?reviewed=N&corrected=M`).
    reviewed: Option<String>,
}

#[derive(serde::Deserialize)]
struct BatchQuery {
    reviewed: Option<u64>,
    corrected: Option<u64>,
}

#[get("/ui/classifications/{id}")]
async fn batch(req: HttpRequest, state: web::Data<AppState>, id: web::Path<i64>, q: web::Query<BatchQuery>) -> HttpResponse {
    page!(req, state, |v| {
        let detail = service::classify::show(&state, *id).await?;
        let to_review = service::classify::items(&state, *id, Some(protocol::Decision::Review)).await?;
        let skipped = service::classify::items(&state, *id, Some(protocol::Decision::Skipped)).await?;
        let live = matches!(detail.batch.status, JobStatus::Queued | JobStatus::Running);
        let can_review = v.principal.role.allows(Role::Reviewer) && v.csrf.is_some();
        let reviewed = q.reviewed.map(|n| format!("{n} label(s) stored, {} of them corrections", q.corrected.unwrap_or(0)));
        Ok(render("batch.html", Some(&v), &BatchPage { detail, review: to_review, skipped, live, can_review, reviewed }))
    })
}

/// The review form: one select per image (`label:<path>` = class, empty = no decision).
#[post("/ui/classifications/{id}/review")]
async fn review(req: HttpRequest, state: web::Data<AppState>, id: web::Path<i64>, form: web::Form<Vec<(String, String)>>) -> HttpResponse {
    page!(req, state, |v| {
        let csrf = form.iter().find(|(k, _)| k == "csrf").map(|(_, v)| v.as_str()).unwrap_or("");
        check_csrf(&v, csrf)?;
        v.principal.require(Role::Reviewer)?;
        let labels: Vec<protocol::classify::ReviewLabel> = form
            .iter()
            .filter_map(|(k, value)| k.strip_prefix("label:").map(|path| (path, value)))
            .filter(|(_, value)| !value.is_empty())
            .map(|(path, value)| protocol::classify::ReviewLabel { path: path.to_owned(), label: value.clone() })
            .collect();
        if labels.is_empty() {
            return Ok(HttpResponse::SeeOther().insert_header((header::LOCATION, format!("/ui/classifications/{}", *id))).finish());
        }
        let result = service::classify::review(&state, &v.principal, *id, protocol::classify::ReviewRequest { labels }).await?;
        let to = format!("/ui/classifications/{}?reviewed={}&corrected={}", *id, result.reviewed, result.corrected);
        Ok(HttpResponse::SeeOther().insert_header((header::LOCATION, to)).finish())
    })
}
