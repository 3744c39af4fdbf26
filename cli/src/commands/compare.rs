//! `cobb compare RUN RUN...`: the per-class comparison of `GET /api/v1/compare`, the
//! numbers of the compare page.

use protocol::compare::{Cell, Comparison, Row};
use protocol::sweep;

use crate::client::Client;
use crate::failure::Failure;
use crate::output;

/// The comparison's tables: per-class precision and recall of each run (validation, best
/// epoch), the best value per row marked with `*`, the difference from the baseline run in
/// brackets, and the roll-ups by view and phase -- the numbers of the compare page.
pub fn print_comparison(c: &Comparison) {
    if c.classes.is_empty() {
        println!("(no per-class results yet)");
        return;
    }
    let mark = |cell: &Cell| match cell.value {
        Some(v) => {
            let delta = match cell.delta {
                Some(d) if d != 0.0 => format!(" ({d:+.2})"),
                _ => String::new(),
            };
            format!("{v:.2}{}{delta}", if cell.best { "*" } else { "" })
        }
        None => "-".to_owned(),
    };
    let print = |title: &str, rows: &[Row], with_train: bool| {
        println!("\n{title}");
        let mut header = vec!["CLASS".to_owned()];
        if with_train {
            header.push("TRAIN".to_owned());
        }
        header.extend(c.runs.iter().map(|r| format!("run {} P / R", r.id)));
        let body: Vec<Vec<String>> = rows
            .iter()
            .map(|row| {
                let few = if row.few_images { " !" } else { "" };
                let mut out = vec![format!("{}{few}", row.class)];
                if with_train {
                    out.push(row.train_images.map_or("-".to_owned(), |n| n.to_string()));
                }
                out.extend(row.precision.iter().zip(&row.recall).map(|(p, r)| format!("{} / {}", mark(p), mark(r))));
                out
            })
            .collect();
        let refs: Vec<&str> = header.iter().map(String::as_str).collect();
        output::table(&refs, &body);
    };
    print(
        &format!(
            "per-class precision / recall (validation, best epoch; * = best of these runs; (+/-) against run {}; ! = fewer than {} training images)",
            c.baseline, c.few_images_threshold
        ),
        &c.classes,
        true,
    );
    print("roll-up by view", &c.by_view, false);
    print("roll-up by phase", &c.by_phase, false);
}

/// `GET /compare` for `ids` (2-20 runs).
pub async fn comparison(client: &Client, ids: &[i64], baseline: Option<i64>) -> Result<Comparison, Failure> {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    let mut path = format!("/compare?runs={}", list.join(","));
    if let Some(b) = baseline {
        path.push_str(&format!("&baseline={b}"));
    }
    client.get(&path).await
}

pub async fn compare(ids: &[i64], client: &Client, json: bool) -> Result<(), Failure> {
    if ids.len() < 2 || ids.len() > protocol::compare::MAX_RUNS {
        return Err(Failure::input(format!("compare takes 2 to {} run ids", protocol::compare::MAX_RUNS)));
    }
    let c = comparison(client, ids, None).await?;
    if json {
        output::json(&c);
        return Ok(());
    }
    // Each run's macro-F1 with its patient-level interval, where it stored predictions.
    let mut intervals = std::collections::HashMap::new();
    for r in &c.runs {
        if let Some(e) = client.get_optional::<protocol::api::RunEvidence>(&format!("/runs/{}/evidence", r.id)).await? {
            intervals.insert(r.id, e.intervals.macro_f1);
        }
    }
    let rows: Vec<Vec<String>> = c
        .runs
        .iter()
        .map(|r| {
            let value = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
            let macro_f1 = match intervals.get(&r.id) {
                Some(i) => format!("{} [{:.3}-{:.3}]", value(r.val_macro_f1), i.low, i.high),
                None => value(r.val_macro_f1),
            };
            vec![
                r.id.to_string(),
                r.status.to_string(),
                r.best_epoch.map_or("-".to_owned(), |e| e.to_string()),
                value(r.val_accuracy),
                macro_f1,
                if r.params.is_empty() { "-".to_owned() } else { sweep::describe(&r.params) },
            ]
        })
        .collect();
    output::table(&["RUN", "STATUS", "BEST EPOCH", "VAL ACC", "VAL MACRO-F1 [95%]", "PARAMS"], &rows);
    print_comparison(&c);
    // Each run against the first, on the same validation patients (when both stored their
    // predictions): is the difference more than noise?
    let first = ids[0];
    for &other in &ids[1..] {
        let Some(v) = client.get_optional::<protocol::api::RunComparison>(&format!("/runs/{first}/versus/{other}")).await? else {
            continue;
        };
        print_versus(&v);
    }
    Ok(())
}

fn verdict(d: &protocol::evidence::Difference) -> &'static str {
    if d.distinguishable { "distinguishable from noise" } else { "within noise" }
}

/// Run A against run B: paired bootstrap of the differences and McNemar's exact test.
pub(crate) fn print_versus(v: &protocol::api::RunComparison) {
    let c = &v.comparison;
    println!(
        "\nrun {} - run {} on the same {} validation images of {} patients (paired bootstrap, {} replicates)",
        v.a, v.b, c.images, c.patients, c.replicates
    );
    println!(
        "macro-F1 difference  {:+.3} [{:+.3} to {:+.3}]  {}",
        c.macro_f1.difference.estimate,
        c.macro_f1.difference.low,
        c.macro_f1.difference.high,
        verdict(&c.macro_f1)
    );
    println!(
        "McNemar (exact)      {} images only run {} got right, {} only run {}: p = {:.4}",
        c.mcnemar.only_a_right, v.a, c.mcnemar.only_b_right, v.b, c.mcnemar.p_value
    );
    let rows: Vec<Vec<String>> = c
        .recall
        .iter()
        .map(|d| {
            vec![
                d.metric.trim_start_matches("recall/").to_owned(),
                format!("{:+.3} [{:+.3} to {:+.3}]", d.difference.estimate, d.difference.low, d.difference.high),
                verdict(d).to_owned(),
            ]
        })
        .collect();
    output::table(&["CLASS", "RECALL DIFFERENCE", ""], &rows);
}
