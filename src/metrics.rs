//! Caravan's metrics: one Prometheus registry (the Prometheus project's `prometheus-client`),
//! with typed label sets, registered per component.
//!
//! [`Metrics`] owns the registry and one field per component (`api` today). A component that
//! wants metrics adds a struct of families here, registers it in [`Metrics::new`] and records
//! through it; only metrics that are actually recorded are registered.
//!
//! The same registry is served three ways: the Prometheus text format (`GET /metrics`,
//! `GET /v1/metrics?format=prometheus`) and Nomad's JSON summary (`GET /v1/metrics`), which is
//! derived from the text encoding so that both always agree.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The content type of [`Metrics::prometheus_text`] (Prometheus text format 0.0.4).
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Why metrics could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("encoding metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// Every metric Caravan records, and the registry they are registered in.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The HTTP API.
    pub api: ApiMetrics,
    /// Controllers: reconciles and placements.
    pub controllers: ControllerMetrics,
    /// What the cache holds: allocations and nodes by status.
    pub cluster: ClusterMetrics,
    /// Store operations.
    pub store: StoreMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every component's metrics registered under the `caravan_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("caravan");
        let api = ApiMetrics::register(registry.sub_registry_with_prefix("http"));
        let controllers =
            ControllerMetrics::register(registry.sub_registry_with_prefix("controller"));
        let cluster = ClusterMetrics::register(&mut registry);
        let store = StoreMetrics::register(registry.sub_registry_with_prefix("store"));
        Metrics {
            registry,
            api,
            controllers,
            cluster,
            store,
        }
    }

    /// The registry in the Prometheus text format (0.0.4), as `/metrics` serves it.
    pub fn prometheus_text(&self) -> Result<String, MetricsError> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The registry as Nomad's `GET /v1/metrics` summary (`{Timestamp, Gauges, Counters,
    /// Samples, Points}`), built from the same encoding as [`Metrics::prometheus_text`].
    pub fn nomad_summary(&self, now_unix_nanos: i64) -> Result<MetricsSummary, MetricsError> {
        let text = self.prometheus_text()?;
        Ok(summarize(&text, now_unix_nanos))
    }
}

/// A request's labels: method, route template (`/v1/job/:id`, never a raw id) and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
}

/// A route's labels, for latencies.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms … ~16 s; blocking queries that wait longer land in +Inf.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The HTTP API's metrics.
#[derive(Debug)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily<RouteLabels>,
}

impl ApiMetrics {
    fn register(registry: &mut Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily<RouteLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "requests",
            "HTTP API requests by method, route template and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "HTTP API request latency by method and route template",
            latency.clone(),
        );
        ApiMetrics { requests, latency }
    }

    /// Records one answered request.
    pub fn observe(
        &self,
        method: &'static str,
        route: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { method, route })
            .observe(elapsed.as_secs_f64());
    }
}

/// A controller's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

/// A reconcile's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// A placement's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlacementLabels {
    /// `placed` or `failed`.
    pub result: &'static str,
}

/// The controllers' metrics.
#[derive(Debug)]
pub struct ControllerMetrics {
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_duration: HistogramFamily<ControllerLabels>,
    placements: Family<PlacementLabels, Counter>,
    placement_duration: Histogram,
}

impl ControllerMetrics {
    fn register(registry: &mut Registry) -> Self {
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let reconcile_duration: HistogramFamily<ControllerLabels> =
            Family::new_with_constructor(latency_histogram);
        let placements = Family::<PlacementLabels, Counter>::default();
        let placement_duration = Histogram::new(exponential_buckets(0.000_001, 4.0, 12));
        registry.register(
            "reconciles",
            "Reconciles by controller and result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile latency by controller",
            reconcile_duration.clone(),
        );
        registry.register(
            "placements",
            "Allocation placements by result",
            placements.clone(),
        );
        registry.register(
            "placement_duration_seconds",
            "Time the scheduler takes to place one allocation",
            placement_duration.clone(),
        );
        ControllerMetrics {
            reconciles,
            reconcile_duration,
            placements,
            placement_duration,
        }
    }

    /// Records one reconcile.
    pub fn reconciled(&self, controller: &'static str, ok: bool, elapsed: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ReconcileLabels { controller, result })
            .inc();
        self.reconcile_duration
            .get_or_create(&ControllerLabels { controller })
            .observe(elapsed.as_secs_f64());
    }

    /// Records one placement attempt.
    pub fn placed(&self, ok: bool, elapsed: Duration) {
        let result = if ok { "placed" } else { "failed" };
        self.placements
            .get_or_create(&PlacementLabels { result })
            .inc();
        self.placement_duration.observe(elapsed.as_secs_f64());
    }
}

/// A status label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

/// Gauges of what the cluster holds, refreshed from the cache.
#[derive(Debug)]
pub struct ClusterMetrics {
    allocations: Family<StatusLabels, prometheus_client::metrics::gauge::Gauge>,
    nodes: Family<StatusLabels, prometheus_client::metrics::gauge::Gauge>,
}

impl ClusterMetrics {
    fn register(registry: &mut Registry) -> Self {
        let allocations =
            Family::<StatusLabels, prometheus_client::metrics::gauge::Gauge>::default();
        let nodes = Family::<StatusLabels, prometheus_client::metrics::gauge::Gauge>::default();
        registry.register(
            "allocations",
            "Allocations by client status",
            allocations.clone(),
        );
        registry.register("nodes", "Nodes by status", nodes.clone());
        ClusterMetrics { allocations, nodes }
    }

    /// Sets the allocation counts; statuses not given are set to zero.
    pub fn set_allocations(&self, counts: &std::collections::BTreeMap<String, i64>) {
        set_all(
            &self.allocations,
            &[
                "pending", "running", "complete", "failed", "lost", "unknown",
            ],
            counts,
        );
    }

    /// Sets the node counts; statuses not given are set to zero.
    pub fn set_nodes(&self, counts: &std::collections::BTreeMap<String, i64>) {
        set_all(
            &self.nodes,
            &["initializing", "ready", "down", "disconnected"],
            counts,
        );
    }
}

fn set_all(
    family: &Family<StatusLabels, prometheus_client::metrics::gauge::Gauge>,
    known: &[&str],
    counts: &std::collections::BTreeMap<String, i64>,
) {
    for status in known {
        let n = counts.get(*status).copied().unwrap_or(0);
        family
            .get_or_create(&StatusLabels {
                status: (*status).to_owned(),
            })
            .set(n);
    }
}

/// An operation's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

/// Store operation latency.
#[derive(Debug)]
pub struct StoreMetrics {
    duration: HistogramFamily<OpLabels>,
}

impl StoreMetrics {
    fn register(registry: &mut Registry) -> Self {
        let duration: HistogramFamily<OpLabels> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_05, 2.0, 16)));
        registry.register(
            "operation_duration_seconds",
            "Store operation latency by operation",
            duration.clone(),
        );
        StoreMetrics { duration }
    }

    /// Records one store operation.
    pub fn observe(&self, op: &'static str, elapsed: Duration) {
        self.duration
            .get_or_create(&OpLabels { op })
            .observe(elapsed.as_secs_f64());
    }
}

/// Nomad's metrics summary (go-metrics' `MetricsSummary`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetricsSummary {
    /// `2006-01-02 15:04:05 +0000 UTC`, as Go prints a time.
    pub timestamp: String,
    pub gauges: Vec<GaugeValue>,
    pub points: Vec<serde_json::Value>,
    pub counters: Vec<SampledValue>,
    pub samples: Vec<SampledValue>,
}

/// A gauge's current value.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GaugeValue {
    pub name: String,
    pub value: f64,
    pub labels: BTreeMap<String, String>,
}

/// A counter or a histogram, in go-metrics' aggregate form. Prometheus metrics are cumulative,
/// so `Count` and `Sum` are totals since the start, `Mean` is `Sum / Count`, and the interval
/// statistics go-metrics keeps (`Rate`, `Min`, `Max`, `Stddev`) are 0.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SampledValue {
    pub name: String,
    pub count: u64,
    pub rate: f64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub stddev: f64,
    pub labels: BTreeMap<String, String>,
}

impl SampledValue {
    fn new(name: &str, labels: BTreeMap<String, String>) -> Self {
        SampledValue {
            name: name.to_owned(),
            labels,
            ..SampledValue::default()
        }
    }
}

/// Builds the summary from the text format: counters become `Counters` (without `_total`),
/// gauges `Gauges`, histograms `Samples` (from `_sum` and `_count`).
fn summarize(text: &str, now_unix_nanos: i64) -> MetricsSummary {
    let mut summary = MetricsSummary {
        timestamp: go_time(now_unix_nanos),
        ..MetricsSummary::default()
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    // Histogram series by (family, labels without `le`).
    let mut histograms: BTreeMap<(String, Vec<(String, String)>), SampledValue> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name.to_owned(), kind.trim().to_owned());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((name, labels, value)) = parse_sample(line) else {
            continue;
        };
        match types.get(&name).map(String::as_str) {
            Some("counter") => {
                let mut c = SampledValue::new(name.strip_suffix("_total").unwrap_or(&name), labels);
                c.count = value.max(0.0) as u64;
                c.sum = value;
                c.mean = if c.count > 0 {
                    value / c.count as f64
                } else {
                    0.0
                };
                summary.counters.push(c);
            }
            Some("gauge") => summary.gauges.push(GaugeValue {
                name,
                value,
                labels,
            }),
            _ => {
                for (suffix, is_sum) in [("_sum", true), ("_count", false)] {
                    let Some(family) = name.strip_suffix(suffix) else {
                        continue;
                    };
                    if types.get(family).map(String::as_str) != Some("histogram") {
                        continue;
                    }
                    let key = (family.to_owned(), labels.clone().into_iter().collect());
                    let entry = histograms
                        .entry(key)
                        .or_insert_with(|| SampledValue::new(family, labels.clone()));
                    if is_sum {
                        entry.sum = value;
                    } else {
                        entry.count = value.max(0.0) as u64;
                    }
                }
            }
        }
    }
    summary.samples = histograms
        .into_values()
        .map(|mut s| {
            s.mean = if s.count > 0 {
                s.sum / s.count as f64
            } else {
                0.0
            };
            s
        })
        .collect();
    summary
}

/// One sample line: `name{a="x",b="y"} value`.
fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    // A quoted value with `\\`, `\"` and `\n` escapes.
                    if chars.next().map(|(_, q)| q) != Some('"') {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
        rest = &body[end?..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// A Unix time as Go's `time.Time.String()` prints it in UTC, to the second.
fn go_time(unix_nanos: i64) -> String {
    let rfc = caravan_schemas::time::Timestamp::from_unix_nanos(
        unix_nanos - unix_nanos.rem_euclid(1_000_000_000),
    )
    .to_rfc3339();
    // `2024-05-01T12:00:00Z` → `2024-05-01 12:00:00 +0000 UTC`
    format!(
        "{} +0000 UTC",
        rfc.trim_end_matches('Z').replacen('T', " ", 1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_and_timed() {
        let m = Metrics::new();
        m.api
            .observe("GET", "/v1/job/:id", 200, Duration::from_millis(3));
        m.api
            .observe("GET", "/v1/job/:id", 200, Duration::from_millis(5));
        m.api
            .observe("POST", "/v1/jobs", 400, Duration::from_millis(1));
        let text = m.prometheus_text().unwrap();
        assert!(
            text.contains(
                r#"caravan_http_requests_total{method="GET",route="/v1/job/:id",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"caravan_http_request_duration_seconds_count{method="GET",route="/v1/job/:id"} 2"#
        ));

        let summary = m.nomad_summary(1_714_564_800_123_456_789).unwrap();
        assert_eq!(summary.timestamp, "2024-05-01 12:00:00 +0000 UTC");
        let get = summary
            .counters
            .iter()
            .find(|c| c.name == "caravan_http_requests" && c.labels["method"] == "GET")
            .unwrap();
        assert_eq!(get.count, 2);
        assert_eq!(get.labels["route"], "/v1/job/:id");
        assert_eq!(get.labels["status"], "200");
        let sample = summary
            .samples
            .iter()
            .find(|s| {
                s.name == "caravan_http_request_duration_seconds" && s.labels["method"] == "GET"
            })
            .unwrap();
        assert_eq!(sample.count, 2);
        assert!((sample.sum - 0.008).abs() < 1e-9, "{}", sample.sum);
        assert!(!sample.labels.contains_key("le"));
        let json = serde_json::to_value(&summary).unwrap();
        for key in ["Timestamp", "Gauges", "Counters", "Samples", "Points"] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn sample_lines_parse_with_escapes() {
        let (name, labels, value) = parse_sample(r#"x_total{a="q\"uo\\te",b="n\nl"} 3.5"#).unwrap();
        assert_eq!(name, "x_total");
        assert_eq!(labels["a"], "q\"uo\\te");
        assert_eq!(labels["b"], "n\nl");
        assert_eq!(value, 3.5);
        let (name, labels, value) = parse_sample("up 1").unwrap();
        assert_eq!((name.as_str(), labels.len(), value), ("up", 0, 1.0));
        assert_eq!(
            parse_sample(r#"x{le="+Inf"} +Inf"#).unwrap().2,
            f64::INFINITY
        );
        assert!(parse_sample("garbage").is_none());
    }
}
