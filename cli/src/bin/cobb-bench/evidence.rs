//! `cobb-bench evidence`: the patient-level bootstrap and calibration on a realistic test
//! split (1,166 images of ~600 patients, 10 classes, the source study's test size), timed; with
//! `--out FILE`, the synthetic predictions and cobb's results as JSON for
//! scripts/evidence_crosscheck.py (numpy/scipy reference implementations).

use anyhow::Result;
use protocol::evidence::{self, Paired, Scored};
use protocol::rng::SplitMix64;
use serde_json::json;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub(crate) struct EvidenceArgs {
    #[arg(long, default_value_t = 1166)]
    images: usize,
    #[arg(long, default_value_t = 10)]
    classes: usize,
    #[arg(long, default_value_t = 2000)]
    replicates: u32,
    #[arg(long, default_value_t = 7)]
    repeats: usize,
    /// Replicates of the run written for the cross-check (more: less Monte Carlo error).
    #[arg(long, default_value_t = 20000)]
    check_replicates: u32,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// A synthetic study: each patient has 1-3 images (about 580 patients for 1,166 images) of one class; run A is right 90% of
/// the time (less on the rarer classes), run B 85%; probabilities over-confident.
fn study(args: &EvidenceArgs) -> Study {
    let mut rng = SplitMix64::new(42);
    let (mut patient, mut truth, mut pred_a, mut pred_b, mut probs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let n = args.classes;
    while truth.len() < args.images {
        let p = patient.last().map_or(0, |last| last + 1);
        // Rarer classes at the end: class c drawn with weight 1 / (1 + c / 2).
        let weights: Vec<f64> = (0..n).map(|c| 1.0 / (1.0 + c as f64 / 2.0)).collect();
        let mut u = rng.next_f64() * weights.iter().sum::<f64>();
        let class = weights.iter().position(|w| {
            u -= w;
            u <= 0.0
        });
        let class = class.unwrap_or(n - 1);
        for _ in 0..(1 + rng.below(3)).min(args.images - truth.len()) {
            let right_a = rng.chance(0.93 - 0.02 * class as f64);
            let right_b = rng.chance(0.88 - 0.02 * class as f64);
            let a = if right_a { class } else { (class + 1 + rng.below(n - 1)) % n };
            let b = if right_b { class } else { (class + 1 + rng.below(n - 1)) % n };
            let confidence = rng.range(0.55, 0.99);
            let mut row = vec![(1.0 - confidence) / (n - 1) as f64; n];
            row[a] = confidence;
            patient.push(p);
            truth.push(class);
            pred_a.push(a);
            pred_b.push(b);
            probs.push(row);
        }
    }
    Study { classes: (0..n).map(|c| format!("class{c}")).collect(), patient, truth, pred_a, pred_b, probs }
}

struct Study {
    classes: Vec<String>,
    patient: Vec<usize>,
    truth: Vec<usize>,
    pred_a: Vec<usize>,
    pred_b: Vec<usize>,
    probs: Vec<Vec<f64>>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(crate) fn evidence_bench(args: &EvidenceArgs) -> Result<()> {
    let s = study(args);
    let names: Vec<String> = s.patient.iter().map(|p| format!("p{p}")).collect();
    let scored: Vec<Scored> =
        (0..s.truth.len()).map(|i| Scored { patient: Some(&names[i]), truth: s.truth[i], predicted: s.pred_a[i] }).collect();
    let paired: Vec<Paired> = (0..s.truth.len())
        .map(|i| Paired { patient: Some(&names[i]), truth: s.truth[i], predicted_a: s.pred_a[i], predicted_b: s.pred_b[i] })
        .collect();
    let patients = names.iter().collect::<std::collections::BTreeSet<_>>().len();
    println!(
        "evidence: {} images of {patients} patients, {} classes, {} replicates, median of {}",
        s.truth.len(),
        s.classes.len(),
        args.replicates,
        args.repeats
    );
    let time = |f: &dyn Fn()| {
        median(
            (0..args.repeats)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64() * 1000.0
                })
                .collect(),
        )
    };
    let boot = time(&|| {
        std::hint::black_box(evidence::bootstrap(&s.classes, &scored, args.replicates, 1));
    });
    let paired_ms = time(&|| {
        std::hint::black_box(evidence::compare(&s.classes, &paired, args.replicates, 1));
    });
    let calib = time(&|| {
        std::hint::black_box(evidence::calibration(&s.probs, &s.truth));
    });
    let temp = time(&|| {
        std::hint::black_box(evidence::fit_temperature(&s.probs, &s.truth));
    });
    println!("bootstrap (accuracy, macro-F1, per-class P/R/F1)  {boot:>8.1} ms");
    println!("paired bootstrap + McNemar                        {paired_ms:>8.1} ms");
    println!("calibration (ECE, class-wise ECE, Brier, NLL)     {calib:>8.2} ms");
    println!("temperature fit (golden section, 60 steps)        {temp:>8.1} ms");
    if let Some(out) = &args.out {
        let intervals = evidence::bootstrap(&s.classes, &scored, args.check_replicates, 1);
        let comparison = evidence::compare(&s.classes, &paired, args.check_replicates, 1);
        let calibration = evidence::calibration(&s.probs, &s.truth);
        let temperature = evidence::fit_temperature(&s.probs, &s.truth);
        let doc = json!({
            "classes": s.classes, "patient": s.patient, "truth": s.truth, "pred_a": s.pred_a, "pred_b": s.pred_b,
            "probs": s.probs, "replicates": args.check_replicates,
            "cobb": {"intervals": intervals, "comparison": comparison, "calibration": calibration, "temperature": temperature},
        });
        std::fs::write(out, serde_json::to_vec(&doc)?)?;
        println!("wrote {} for scripts/evidence_crosscheck.py", out.display());
    }
    Ok(())
}
