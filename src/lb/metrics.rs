//! The load balancer's Prometheus metrics (prometheus-client, as in `crate::metrics`), in a
//! registry of its own since `caravan lb` is its own process:
//!
//! - `caravan_lb_requests_total{route,service,code}`: answered requests;
//! - `caravan_lb_errors_total{route,kind}`: failures on the way (`connect`: an instance refused
//!   or could not be reached, retried when another was left; `upstream`: the exchange broke;
//!   `no_instance`, `no_route`, `no_table`);
//! - `caravan_lb_request_duration_seconds{route}`: time until the response headers;
//! - `caravan_lb_routes`: routes in the current table.
//!
//! A route's label is its host and prefix (`example.com/api`, `/`). Each compiled route keeps
//! handles on its own series ([`RouteMetrics`]), so the hot path records with atomics, without
//! building label sets.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::time::Duration;

/// Labels of `caravan_lb_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub service: String,
    pub code: u16,
}

/// Labels of `caravan_lb_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub route: String,
    pub kind: &'static str,
}

/// Labels of `caravan_lb_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs … ~13 s.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
}

/// Every metric of the load balancer and their registry.
#[derive(Debug)]
pub struct LbMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: HistogramFamily<RouteLabel>,
    routes: Gauge,
}

impl Default for LbMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl LbMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("caravan_lb");
        let requests = Family::<RequestLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration: HistogramFamily<RouteLabel> = Family::new_with_constructor(latency_histogram);
        let routes = Gauge::default();
        registry.register(
            "requests",
            "Requests answered, by route, service and status code",
            requests.clone(),
        );
        registry.register(
            "errors",
            "Failures while proxying, by route and kind",
            errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response headers, by route",
            duration.clone(),
        );
        registry.register("routes", "Routes in the current table", routes.clone());
        LbMetrics {
            registry,
            requests,
            errors,
            duration,
            routes,
        }
    }

    /// The registry in the Prometheus text format.
    pub fn prometheus_text(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Sets the number of routes in the current table.
    pub fn set_routes(&self, n: usize) {
        self.routes.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Handles on one route's series.
    pub fn route(&self, route: &str, service: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.to_owned(),
            service: service.to_owned(),
            requests: self.requests.clone(),
            errors: self.errors.clone(),
            duration: self.duration.clone(),
            cached_codes: Default::default(),
            histogram: OnceLock::new(),
        }
    }

    /// Counts a request answered without a route (no table yet, no matching route).
    pub fn unrouted(&self, code: u16, kind: &'static str) {
        self.requests
            .get_or_create(&RequestLabels {
                route: String::new(),
                service: String::new(),
                code,
            })
            .inc();
        self.errors
            .get_or_create(&ErrorLabels {
                route: String::new(),
                kind,
            })
            .inc();
    }
}

/// Status codes whose counters a route keeps at hand.
const CACHED_CODES: [u16; 8] = [200, 204, 301, 302, 304, 404, 502, 503];

/// One route's series. The families live in the shared registry, so a route that survives a
/// table change keeps counting where it was.
#[derive(Debug)]
pub struct RouteMetrics {
    route: String,
    service: String,
    requests: Family<RequestLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: HistogramFamily<RouteLabel>,
    cached_codes: [OnceLock<Counter>; CACHED_CODES.len()],
    histogram: OnceLock<Histogram>,
}

impl RouteMetrics {
    /// Records one answered request.
    pub fn answered(&self, code: u16, elapsed: Duration) {
        let counter = |code| {
            self.requests
                .get_or_create(&RequestLabels {
                    route: self.route.clone(),
                    service: self.service.clone(),
                    code,
                })
                .clone()
        };
        match CACHED_CODES.iter().position(|c| *c == code) {
            Some(i) => self.cached_codes[i].get_or_init(|| counter(code)).inc(),
            None => counter(code).inc(),
        };
        self.histogram
            .get_or_init(|| {
                self.duration
                    .get_or_create(&RouteLabel {
                        route: self.route.clone(),
                    })
                    .clone()
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records one failure.
    pub fn error(&self, kind: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                route: self.route.clone(),
                kind,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_count_under_their_labels() {
        let m = LbMetrics::new();
        let r = m.route("/api", "web");
        r.answered(200, Duration::from_millis(2));
        r.answered(200, Duration::from_millis(2));
        r.answered(418, Duration::from_millis(2));
        r.error("connect");
        // A second handle on the same route (after a table change) adds to the same series.
        m.route("/api", "web")
            .answered(200, Duration::from_millis(1));
        m.unrouted(404, "no_route");
        m.set_routes(3);
        let text = m.prometheus_text().unwrap();
        assert!(
            text.contains(r#"caravan_lb_requests_total{route="/api",service="web",code="200"} 3"#),
            "{text}"
        );
        assert!(text.contains(r#"code="418"} 1"#), "{text}");
        assert!(text.contains(r#"caravan_lb_errors_total{route="/api",kind="connect"} 1"#));
        assert!(text.contains(r#"caravan_lb_errors_total{route="",kind="no_route"} 1"#));
        assert!(text.contains(r#"caravan_lb_request_duration_seconds_count{route="/api"} 4"#));
        assert!(text.contains("caravan_lb_routes 3"));
    }
}
