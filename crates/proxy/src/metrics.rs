//! Prometheus metrics. Label sets are bounded by the config (tenant, API, route id, status
//! class), never by raw paths or credentials. Each compiled route holds its own counter and
//! histogram handles, so recording a request is a few atomic operations and no label hashing.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub tenant: String,
    pub api: String,
    pub route: String,
    pub status_class: StatusClass,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        })
    }
}

const CLASSES: [StatusClass; 5] = [
    StatusClass::Informational,
    StatusClass::Success,
    StatusClass::Redirection,
    StatusClass::ClientError,
    StatusClass::ServerError,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub upstream: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// All of the gateway's metrics and the registry they are exported from. One per process (or
/// per test), never global, so parallel tests do not collide.
pub struct Metrics {
    pub registry: Registry,
    requests: Family<RouteLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    pub config_generation: Gauge,
    pub connections_open: Family<ListenerLabels, Gauge>,
    pub access_log_dropped: Counter,
    pub managed_left_out: Gauge,
    throttled: Family<TierLabels, Counter>,
    /// Each route's handles while a snapshot holds them: a route a reload (or a registration
    /// checked and refused) leaves behind has its series removed by [`Metrics::prune_routes`],
    /// so replacing routes cannot grow the exposition, or memory, without bound.
    routes: std::sync::Mutex<RouteTable>,
}

type RouteTable =
    std::collections::HashMap<(String, String, String), std::sync::Weak<RouteMetrics>>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    pub tier: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate");
        let requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route and status class",
            requests.clone(),
        );
        let durations = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        registry.register_with_unit(
            "request_duration",
            "Time from request head to the end of the response body",
            prometheus_client::registry::Unit::Seconds,
            durations.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed upstream exchanges by upstream and kind",
            upstream_errors.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reload attempts by result",
            reloads.clone(),
        );
        let config_generation = Gauge::default();
        registry.register(
            "config_generation",
            "Generation of the config in force; increases with each successful reload",
            config_generation.clone(),
        );
        let connections_open = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "connections_open",
            "Open client connections by listener",
            connections_open.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the log sink could not keep up",
            access_log_dropped.clone(),
        );
        let managed_left_out = Gauge::default();
        registry.register(
            "managed_entities_left_out",
            "Entities in the store (APIs, plans, consumers) left out of the running config because they no longer fit it",
            managed_left_out.clone(),
        );
        let throttled = Family::<TierLabels, Counter>::default();
        registry.register(
            "throttled",
            "Requests refused by a limit, by tier (gateway, api, route, plan, quota, route-quota, spike-arrest, concurrency, ip)",
            throttled.clone(),
        );
        Self {
            registry,
            requests,
            throttled,
            durations,
            upstream_errors,
            reloads,
            config_generation,
            connections_open,
            access_log_dropped,
            managed_left_out,
            routes: std::sync::Mutex::default(),
        }
    }

    /// Handles for one route; called at compile time, never per request. A route that
    /// another live snapshot already has shares its handles.
    pub fn route(&self, tenant: &str, api: &str, route: &str) -> Arc<RouteMetrics> {
        let key = (tenant.to_string(), api.to_string(), route.to_string());
        let mut table = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = table.get(&key).and_then(std::sync::Weak::upgrade) {
            return m;
        }
        let handles = CLASSES.map(|status_class| {
            let labels = RouteLabels {
                tenant: key.0.clone(),
                api: key.1.clone(),
                route: key.2.clone(),
                status_class,
            };
            (
                self.requests.get_or_create(&labels).clone(),
                self.durations.get_or_create(&labels).clone(),
            )
        });
        let m = Arc::new(RouteMetrics { handles });
        table.insert(key, Arc::downgrade(&m));
        m
    }

    /// Removes the series of routes no snapshot holds any more. After a swap (once the old
    /// snapshot is let go) and after a compile that was only a check. Requests still running
    /// on an old snapshot keep its routes until a later prune.
    pub fn prune_routes(&self) {
        let mut table = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        table.retain(|(tenant, api, route), m| {
            if m.strong_count() > 0 {
                return true;
            }
            for status_class in CLASSES {
                let labels = RouteLabels {
                    tenant: tenant.clone(),
                    api: api.clone(),
                    route: route.clone(),
                    status_class,
                };
                self.requests.remove(&labels);
                self.durations.remove(&labels);
            }
            false
        });
    }

    /// Counts a request refused by a limit; `tier` comes from a fixed set of names.
    pub fn throttled(&self, tier: &'static str) {
        self.throttled.get_or_create(&TierLabels { tier }).inc();
    }

    /// The OpenMetrics text of every series.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Every series in the format the scraper asked for.
    pub fn encode_as(&self, format: Exposition) -> String {
        match format {
            Exposition::OpenMetrics => self.encode(),
            Exposition::Prometheus => openmetrics_to_prometheus(&self.encode()),
        }
    }
}

/// The two text formats Prometheus scrapes. Prometheus itself asks for OpenMetrics first;
/// everything else (curl, older scrapers, the Prometheus text parsers in client libraries)
/// expects the classic format 0.0.4, as exporters serve it when OpenMetrics was not asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    OpenMetrics,
    Prometheus,
}

impl Exposition {
    /// OpenMetrics when `Accept` lists `application/openmetrics-text` with a non-zero q.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let asked = accept.is_some_and(|a| {
            a.split(',').any(|range| {
                let mut parts = range.split(';');
                let media = parts.next().unwrap_or("").trim();
                media.eq_ignore_ascii_case("application/openmetrics-text")
                    && !parts.any(|p| {
                        p.split_once('=').is_some_and(|(k, v)| {
                            k.trim().eq_ignore_ascii_case("q")
                                && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
                        })
                    })
            })
        });
        if asked {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Rewrites OpenMetrics text as the Prometheus text format 0.0.4. The samples are the same;
/// the metadata differs: a counter's family is named by its samples (`_total`), there are no
/// `# UNIT` lines, and no `# EOF`. Only counters, gauges and histograms are registered here,
/// and they need nothing else.
fn openmetrics_to_prometheus(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // prometheus-client writes HELP before TYPE, so a family's HELP waits for its type.
    let mut help: Option<(&str, &str)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, doc));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if kind == "counter" && !name.ends_with("_total") {
                "_total"
            } else {
                ""
            };
            if let Some((help_name, doc)) = help.take().filter(|(n, _)| *n == name) {
                out.push_str(&format!("# HELP {help_name}{suffix} {doc}\n"));
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Per-route, per-status-class handles.
#[derive(Debug)]
pub struct RouteMetrics {
    handles: [(Counter, Histogram); 5],
}

impl RouteMetrics {
    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        let (c, h) = &self.handles[class];
        c.inc();
        h.observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metrics {
        let m = Metrics::new();
        m.throttled("plan");
        m.config_generation.set(3);
        m.durations
            .get_or_create(&RouteLabels {
                tenant: "t".into(),
                api: "a".into(),
                route: "r".into(),
                status_class: StatusClass::Success,
            })
            .observe(0.002);
        m
    }

    #[test]
    fn prometheus_text_names_counter_families_by_their_samples() {
        let text = sample().encode_as(Exposition::Prometheus);
        assert!(
            text.contains("# TYPE tollgate_throttled_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# HELP tollgate_throttled_total Requests refused"));
        assert!(text.contains("tollgate_throttled_total{tier=\"plan\"} 1\n"));
        assert!(text.contains("# TYPE tollgate_config_generation gauge\n"));
        assert!(text.contains("tollgate_config_generation 3\n"));
        assert!(text.contains("# TYPE tollgate_request_duration_seconds histogram\n"));
        assert!(text.contains("tollgate_request_duration_seconds_bucket{"));
        assert!(!text.contains("# UNIT"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        // Every sample of the OpenMetrics text is there, unchanged.
        let om = sample().encode_as(Exposition::OpenMetrics);
        assert!(om.ends_with("# EOF\n"));
        for line in om.lines().filter(|l| !l.starts_with('#')) {
            assert!(text.lines().any(|t| t == line), "missing {line}");
        }
        // Each TYPE line names a family whose samples follow it.
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap_or("");
            assert!(
                text.lines()
                    .any(|l| !l.starts_with('#') && l.starts_with(name)),
                "{line}"
            );
        }
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            Exposition::negotiate(Some(prometheus)),
            Exposition::OpenMetrics
        );
        assert_eq!(
            Exposition::negotiate(Some("Application/OpenMetrics-Text")),
            Exposition::OpenMetrics
        );
        for other in [
            None,
            Some("*/*"),
            Some("text/plain;version=0.0.4"),
            Some("application/openmetrics-text;q=0, text/plain"),
            Some("application/openmetrics-textual"),
        ] {
            assert_eq!(
                Exposition::negotiate(other),
                Exposition::Prometheus,
                "{other:?}"
            );
        }
    }
}
