//! Prometheus metrics at `/metrics` (text exposition format 0.0.4): what a cluster scales and
//! alerts on. Counters and request histograms live in this process (each server of a pair
//! exposes its own, as Prometheus expects); the queue's gauges are read from the database at
//! scrape time, so every server reports the same queue.
//!
//! Written here rather than with the `prometheus` crate: the format is a few lines of text, the
//! crate is not in the offline build's registry, and cobb needs only counters, gauges and one
//! histogram family.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Request-latency buckets (seconds).
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// This process's counters.
#[derive(Default)]
pub struct Counters {
    /// (method, route pattern) -> request latencies.
    requests: Mutex<BTreeMap<(String, String), Histogram>>,
    /// Leases handed out, by job kind (each is an attempt).
    pub leases_train: AtomicU64,
    pub leases_evaluate: AtomicU64,
    pub leases_classify: AtomicU64,
    /// Leases the reaper found expired, and what became of their jobs.
    pub lease_expiries: AtomicU64,
    pub reaped_requeued: AtomicU64,
    pub reaped_failed: AtomicU64,
    /// Metric points accepted from workers.
    pub metric_points: AtomicU64,
}

impl Counters {
    pub fn observe_request(&self, method: &str, route: &str, seconds: f64) {
        let Ok(mut requests) = self.requests.lock() else { return };
        let h = requests.entry((method.to_owned(), route.to_owned())).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A label value escaped as the format asks (backslash, quote, newline).
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One gauge sample of the queue: (experiment, job kind, status) -> jobs.
pub type QueueCounts = Vec<(String, String, String, i64)>;

/// One pool's connections: (pool, open, idle).
pub type PoolCounts = Vec<(&'static str, u32, usize)>;

pub fn render(counters: &Counters, queue: &QueueCounts, pools: &PoolCounts) -> String {
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    counter(
        &mut out,
        "cobb_leases_total",
        "Leases handed to workers (each one an attempt), by job kind.",
        &[
            ("{kind=\"train\"}".to_owned(), get(&counters.leases_train)),
            ("{kind=\"evaluate\"}".to_owned(), get(&counters.leases_evaluate)),
            ("{kind=\"classify\"}".to_owned(), get(&counters.leases_classify)),
        ],
    );
    counter(
        &mut out,
        "cobb_lease_expiries_total",
        "Leases that expired without a heartbeat (found by the reaper).",
        &[(String::new(), get(&counters.lease_expiries))],
    );
    counter(
        &mut out,
        "cobb_reaped_jobs_total",
        "Jobs whose lease expired, by what the reaper did with them.",
        &[
            ("{outcome=\"requeued\"}".to_owned(), get(&counters.reaped_requeued)),
            ("{outcome=\"failed\"}".to_owned(), get(&counters.reaped_failed)),
        ],
    );
    counter(&mut out, "cobb_metric_points_total", "Metric points accepted from workers.", &[(String::new(), get(&counters.metric_points))]);

    let _ = writeln!(
        out,
        "# HELP cobb_jobs Jobs waiting or running, by experiment, kind and status (scale workers on status=\"queued\").\n# TYPE cobb_jobs gauge"
    );
    for (experiment, kind, status, n) in queue {
        let _ =
            writeln!(out, "cobb_jobs{{experiment=\"{}\",kind=\"{}\",status=\"{}\"}} {n}", label(experiment), label(kind), label(status));
    }
    let _ = writeln!(
        out,
        "# HELP cobb_db_pool_connections Database pool connections, by pool and state.\n# TYPE cobb_db_pool_connections gauge"
    );
    for (pool, open, idle) in pools {
        let busy = (*open as usize).saturating_sub(*idle);
        let _ = writeln!(out, "cobb_db_pool_connections{{pool=\"{pool}\",state=\"idle\"}} {idle}");
        let _ = writeln!(out, "cobb_db_pool_connections{{pool=\"{pool}\",state=\"busy\"}} {busy}");
    }

    let _ = writeln!(
        out,
        "# HELP cobb_http_request_duration_seconds HTTP request latency, by method and route.\n# TYPE cobb_http_request_duration_seconds histogram"
    );
    if let Ok(requests) = counters.requests.lock() {
        for ((method, route), h) in requests.iter() {
            let labels = format!("method=\"{}\",route=\"{}\"", label(method), label(route));
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(out, "cobb_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}");
            }
            let _ = writeln!(out, "cobb_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "cobb_http_request_duration_seconds_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "cobb_http_request_duration_seconds_count{{{labels}}} {}", h.count);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let c = Counters::default();
        c.observe_request("GET", "/api/v1/runs/{id}", 0.003);
        c.observe_request("GET", "/api/v1/runs/{id}", 0.3);
        Counters::add(&c.metric_points, 25);
        let text = render(&c, &vec![("a\"b".to_owned(), "train".to_owned(), "queued".to_owned(), 4)], &vec![("write", 1, 1)]);
        assert!(text.contains("route=\"/api/v1/runs/{id}\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("route=\"/api/v1/runs/{id}\",le=\"0.5\"} 2"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 2"), "{text}");
        assert!(text.contains("cobb_jobs{experiment=\"a\\\"b\",kind=\"train\",status=\"queued\"} 4"), "{text}");
        assert!(text.contains("cobb_metric_points_total 25"));
        assert!(text.contains("cobb_db_pool_connections{pool=\"write\",state=\"busy\"} 0"));
    }
}
