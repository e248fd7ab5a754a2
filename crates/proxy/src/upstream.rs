//! Upstream pools: keep-alive HTTP/1.1 clients, target selection by weighted round robin, and
//! the timeouts that turn a dead or slow upstream into a 502 or 504.

use crate::body::{RequestBody, RequestBodyError};
use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::error::Error as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_config as config;
use tollgate_core::{GatewayError, Kind};

/// One upstream as compiled from config. Pools survive reloads that leave the upstream's
/// settings unchanged (see `compile`), so a reload does not cost a round of new connections.
pub struct Upstream {
    pub name: Arc<str>,
    pub settings: config::Upstream,
    targets: Box<[Arc<Target>]>,
    /// Target indices spread by weight, e.g. weights 2:1 → [0, 1, 0].
    schedule: Box<[u16]>,
    next: AtomicUsize,
    response_timeout: Duration,
}

/// One target with its own pool of idle keep-alive connections.
///
/// The pool is a plain mutex-guarded stack: checkout and checkin are a lock, a push or a pop,
/// never held across an await. Connections are HTTP/1.1 (hyper's client connection); one is
/// checked back in only once its response body has been read to the end, so a returned
/// connection is always free for the next request.
pub struct Target {
    pub authority: Authority,
    /// `host:port` for the access log and for connecting.
    pub label: Arc<str>,
    /// The `Host` header the upstream receives.
    host: HeaderValue,
    idle: Mutex<Vec<(SendRequest<RequestBody>, Instant)>>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
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
#[error("upstream `{name}`: {message}")]
pub struct BadTarget {
    name: String,
    message: String,
}

/// A connection lent to one request; goes back to its target's pool when the response ends.
pub struct Lease {
    tx: SendRequest<RequestBody>,
    target: Arc<Target>,
}

impl Lease {
    /// Returns the connection to the pool. Only call once the response was read to the end.
    pub fn release(self) {
        self.target.checkin(self.tx);
    }
}

impl Target {
    fn checkout(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((tx, since)) = idle.pop() {
            if !tx.is_closed() && since.elapsed() < self.idle_timeout {
                return Some(tx);
            }
        }
        None
    }

    fn checkin(&self, tx: SendRequest<RequestBody>) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push((tx, Instant::now()));
        }
    }

    async fn connect(&self, upstream: &str) -> Result<SendRequest<RequestBody>, GatewayError> {
        let unreachable = |cause: String| {
            GatewayError::new(
                Kind::UpstreamUnreachable,
                "the upstream could not be reached",
            )
            .with_cause(format!(
                "upstream {upstream} target {}: {cause}",
                self.label
            ))
        };
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(&*self.label),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => {
                return Err(unreachable(format!(
                    "connect timed out after {:?}",
                    self.connect_timeout
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }
}

impl Upstream {
    pub fn new(name: &str, settings: &config::Upstream) -> Result<Self, BadTarget> {
        if settings.targets.is_empty() {
            return Err(BadTarget {
                name: name.to_string(),
                message: "no targets".into(),
            });
        }
        let mut targets = Vec::with_capacity(settings.targets.len());
        for t in &settings.targets {
            let auth = t
                .url
                .strip_prefix("http://")
                .map(|s| s.trim_end_matches('/'))
                .and_then(|s| s.parse::<Authority>().ok())
                .ok_or_else(|| BadTarget {
                    name: name.to_string(),
                    message: format!("target `{}` is not a valid http URL", t.url),
                })?;
            let label = match auth.port_u16() {
                Some(_) => auth.as_str().to_string(),
                None => format!("{}:80", auth.as_str()),
            };
            targets.push(Arc::new(Target {
                host: HeaderValue::from_str(auth.as_str()).map_err(|_| BadTarget {
                    name: name.to_string(),
                    message: format!("target `{}` has an invalid host", t.url),
                })?,
                label: Arc::from(label),
                authority: auth,
                idle: Mutex::new(Vec::new()),
                max_idle: settings.pool_max_idle_per_target,
                idle_timeout: settings.pool_idle_timeout.get(),
                connect_timeout: settings.connect_timeout.get(),
            }));
        }
        let weights: Vec<u32> = settings.targets.iter().map(|t| t.weight).collect();
        Ok(Self {
            name: Arc::from(name),
            settings: settings.clone(),
            targets: targets.into(),
            schedule: smooth_schedule(&weights).into(),
            next: AtomicUsize::new(0),
            response_timeout: settings.response_timeout.get(),
        })
    }

    /// Next target by weighted round robin: one atomic increment, no lock.
    pub fn pick(&self) -> &Arc<Target> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let idx = self.schedule[n % self.schedule.len()] as usize;
        &self.targets[idx]
    }

    /// Sends the request to `target` and waits for the response head within the response
    /// timeout. The request keeps its path and query (origin form); `Host` becomes the target's.
    pub async fn send(
        &self,
        target: &Arc<Target>,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), GatewayError> {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = pq.into();
        *req.version_mut() = http::Version::HTTP_11;
        req.headers_mut().insert(HOST, target.host.clone());
        match tokio::time::timeout(self.response_timeout, self.exchange(target, req)).await {
            Ok(r) => r,
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

    async fn exchange(
        &self,
        target: &Arc<Target>,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), GatewayError> {
        let mut req = req;
        // A pooled connection may have been closed by the upstream while idle. If sending
        // fails before any of the request was written, hyper hands the request back and we
        // try the next idle connection, and finally a new one.
        loop {
            let (mut tx, reused) = match target.checkout() {
                Some(tx) => (tx, true),
                None => (target.connect(&self.name).await?, false),
            };
            if tx.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(GatewayError::new(
                    Kind::UpstreamUnreachable,
                    "the upstream could not be reached",
                )
                .with_cause(format!(
                    "upstream {} target {}: connection closed at once",
                    self.name, target.label
                )));
            }
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    return Ok((
                        resp,
                        Lease {
                            tx,
                            target: target.clone(),
                        },
                    ));
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => req = back,
                    _ => return Err(classify(&self.name, target, e.error())),
                },
            }
        }
    }
}

/// Maps a client error to the party at fault: our body limit → 413, a client that broke off
/// its body → 400, connect failures → 502 unreachable, anything else → 502 bad response.
fn classify(name: &str, target: &Target, e: &hyper::Error) -> GatewayError {
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
    GatewayError::new(
        Kind::UpstreamBadResponse,
        "the upstream closed the connection or sent an invalid response",
    )
    .with_cause(format!("upstream {name} target {}: {e}", target.label))
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
