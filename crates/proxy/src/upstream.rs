//! Upstream pools: keep-alive HTTP/1.1 clients, target selection by weighted round robin, and
//! the timeouts that turn a dead or slow upstream into a 502 or 504.

use crate::body::{RequestBody, RequestBodyError};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tollgate_config as config;
use tollgate_core::{GatewayError, Kind};

pub type HttpClient = Client<HttpConnector, RequestBody>;

/// One upstream as compiled from config. Pools survive reloads that leave the upstream's
/// settings unchanged (see `compile`), so a reload does not cost a round of new connections.
pub struct Upstream {
    pub name: Arc<str>,
    pub settings: config::Upstream,
    client: HttpClient,
    targets: Box<[Arc<TargetAddr>]>,
    /// Target indices spread by weight, e.g. weights 2:1 → [0, 1, 0].
    schedule: Box<[u16]>,
    next: AtomicUsize,
    response_timeout: Duration,
}

/// A target's authority, pre-parsed so building the upstream URI is a cheap clone.
#[derive(Debug)]
pub struct TargetAddr {
    pub authority: Authority,
    /// `host:port` for the access log.
    pub label: Arc<str>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("upstream `{name}`: target `{url}` is not a valid http URL")]
pub struct BadTarget {
    name: String,
    url: String,
}

impl Upstream {
    pub fn new(name: &str, settings: &config::Upstream) -> Result<Self, BadTarget> {
        let mut targets = Vec::with_capacity(settings.targets.len());
        for t in &settings.targets {
            let auth = t
                .url
                .strip_prefix("http://")
                .map(|s| s.trim_end_matches('/'))
                .and_then(|s| s.parse::<Authority>().ok())
                .ok_or_else(|| BadTarget {
                    name: name.to_string(),
                    url: t.url.clone(),
                })?;
            targets.push(Arc::new(TargetAddr {
                label: Arc::from(auth.as_str()),
                authority: auth,
            }));
        }
        let weights: Vec<u32> = settings.targets.iter().map(|t| t.weight).collect();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.connect_timeout.get()));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(settings.pool_idle_timeout.get())
            .pool_max_idle_per_host(settings.pool_max_idle_per_target)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Self {
            name: Arc::from(name),
            settings: settings.clone(),
            client,
            targets: targets.into(),
            schedule: smooth_schedule(&weights).into(),
            next: AtomicUsize::new(0),
            response_timeout: settings.response_timeout.get(),
        })
    }

    /// Next target by weighted round robin: one atomic increment, no lock.
    pub fn pick(&self) -> &Arc<TargetAddr> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let idx = self.schedule[n % self.schedule.len()] as usize;
        &self.targets[idx]
    }

    /// Sends the request to `target` and waits for the response head within the response
    /// timeout. The path and query are kept; scheme and authority become the target's.
    pub async fn send(
        &self,
        target: &TargetAddr,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, GatewayError> {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(target.authority.clone());
        parts.path_and_query = Some(pq);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|e| {
            GatewayError::new(Kind::Internal, "could not build the upstream request")
                .with_cause(e.to_string())
        })?;
        // The upstream speaks HTTP/1.1 whatever the client spoke.
        *req.version_mut() = http::Version::HTTP_11;
        match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&self.name, target, &e)),
            Err(_) => Err(GatewayError::new(
                Kind::UpstreamTimeout,
                format!(
                    "the upstream did not answer within {} ms",
                    self.response_timeout.as_millis()
                ),
            )
            .with_cause(format!(
                "upstream {} target {}: response timeout",
                self.name, target.label
            ))),
        }
    }
}

/// Maps a client error to the party at fault: our body limit → 413, a client that broke off
/// its body → 400, connect failures → 502 unreachable, anything else → 502 bad response.
fn classify(
    name: &str,
    target: &TargetAddr,
    e: &hyper_util::client::legacy::Error,
) -> GatewayError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(s) = src {
        if let Some(b) = s.downcast_ref::<RequestBodyError>() {
            return match b {
                RequestBodyError::TooLarge(t) => GatewayError::new(
                    Kind::PayloadTooLarge,
                    format!("the request body exceeds the limit of {} bytes", t.0),
                ),
                RequestBodyError::Client(c) => {
                    GatewayError::new(Kind::BadRequest, "the request body could not be read")
                        .with_cause(c.to_string())
                }
            };
        }
        src = s.source();
    }
    let cause = format!("upstream {name} target {}: {e:?}", target.label);
    if e.is_connect() {
        GatewayError::new(
            Kind::UpstreamUnreachable,
            "the upstream could not be reached",
        )
        .with_cause(cause)
    } else {
        GatewayError::new(
            Kind::UpstreamBadResponse,
            "the upstream closed the connection or sent an invalid response",
        )
        .with_cause(cause)
    }
}

/// Interleaved weighted schedule (nginx's smooth weighted round robin, unrolled once): weights
/// 5:1:1 give [0, 0, 1, 0, 2, 0, 0] rather than five 0s in a row.
fn smooth_schedule(weights: &[u32]) -> Vec<u16> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total.max(1) as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += i64::from(*w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u16);
    }
    if out.is_empty() {
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_respects_weights_and_interleaves() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[1, 1]), vec![0, 1]);
        let s = smooth_schedule(&[3, 2]);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 3);
        assert_eq!(s.iter().filter(|&&i| i == 1).count(), 2);
        assert_eq!(smooth_schedule(&[]), vec![0]);
    }
}
