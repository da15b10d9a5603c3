//! Prometheus metrics in the text exposition format: requests and latencies by route and
//! status, audited reads, denials and ledger unavailability. Labels are route templates
//! (`/fhir/Patient/{id}`), never a request's values.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (route, status) → requests.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// route → latency histogram.
    latency: Mutex<BTreeMap<String, Histogram>>,
    /// Reads whose audit event committed and whose records were returned.
    pub audited_reads: AtomicU64,
    /// Reads or calls the ledger's contracts refused.
    pub denials: AtomicU64,
    /// Reads refused because the ledger could not commit.
    pub ledger_unavailable: AtomicU64,
    /// Requests refused for their credential.
    pub unauthenticated: AtomicU64,
    /// Risk assessments returned.
    pub risk_assessments: AtomicU64,
    /// Models that passed their anchor check and were put in service.
    pub models_loaded: AtomicU64,
    /// Models refused for failing their anchor check (the one in service stays).
    pub models_rejected: AtomicU64,
}

impl Metrics {
    /// Counts one request.
    pub fn observe(&self, route: &str, status: u16, took: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((route.to_string(), status))
            .or_default() += 1;
        let mut latency = self
            .latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let h = latency.entry(route.to_string()).or_default();
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP emrflow_http_requests_total Requests served, by route and status.\n\
             # TYPE emrflow_http_requests_total counter"
        );
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "emrflow_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        let _ = writeln!(
            out,
            "# HELP emrflow_http_request_duration_seconds Request latency, by route.\n\
             # TYPE emrflow_http_request_duration_seconds histogram"
        );
        for (route, h) in self
            .latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            let route = escape(route);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "emrflow_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "emrflow_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}\n\
                 emrflow_http_request_duration_seconds_sum{{route=\"{route}\"}} {}\n\
                 emrflow_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        for (name, help, value) in [
            (
                "emrflow_audited_reads_total",
                "Record reads whose audit event committed on the ledger.",
                &self.audited_reads,
            ),
            (
                "emrflow_denials_total",
                "Reads and calls the ledger's contracts refused.",
                &self.denials,
            ),
            (
                "emrflow_ledger_unavailable_total",
                "Reads refused because the ledger could not commit.",
                &self.ledger_unavailable,
            ),
            (
                "emrflow_unauthenticated_total",
                "Requests refused for their credential.",
                &self.unauthenticated,
            ),
            (
                "emrflow_risk_assessments_total",
                "Risk assessments returned.",
                &self.risk_assessments,
            ),
            (
                "emrflow_models_loaded_total",
                "Models that passed their anchor check and were put in service.",
                &self.models_loaded,
            ),
            (
                "emrflow_models_rejected_total",
                "Models refused for failing their anchor check.",
                &self.models_rejected,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.observe("/fhir/Patient/{id}", 200, Duration::from_millis(3));
        m.observe("/fhir/Patient/{id}", 403, Duration::from_millis(30));
        m.denials.fetch_add(1, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains(
            "emrflow_http_requests_total{route=\"/fhir/Patient/{id}\",status=\"200\"} 1"
        ));
        assert!(text.contains(
            "emrflow_http_request_duration_seconds_bucket{route=\"/fhir/Patient/{id}\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "emrflow_http_request_duration_seconds_bucket{route=\"/fhir/Patient/{id}\",le=\"0.05\"} 2"
        ));
        assert!(text.contains("emrflow_denials_total 1"));
    }
}
