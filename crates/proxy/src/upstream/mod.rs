//! Upstream pools: keep-alive HTTP/1.1 connections, target selection by weighted round
//! robin, and the timeouts that turn a dead or slow upstream into a 502 or 504.
//!
//! The HTTP/1.1 client is our own and runs on the request's task: no connection task, channel
//! or extra wake-up per request. httparse does the parsing.

#[cfg(test)]
mod client_tests;
mod exchange;
mod pool;
mod response;

pub use response::{RawFields, UpstreamBody, UpstreamBodyError};

use crate::body::{RequestBody, RequestBodyError};
use crate::forward::Forwarded;
use exchange::{Failure, Outgoing};
use http::uri::Authority;
use http::{HeaderValue, Request, Response};
use pool::{Conn, Idle};
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep_until};
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

/// One target with its own pool of idle keep-alive connections. A connection is checked back
/// in only once its response body has been read to the end, so a pooled connection is always
/// free for the next request.
///
/// A request holds one of the target's `slots` from before it takes a connection until its
/// response body is done with that connection, so connections in use never outnumber the
/// slots. Without that bound an HTTP/2 client, with a stream per request, could make the
/// gateway open connections until the process runs out of file descriptors.
pub struct Target {
    pub authority: Authority,
    /// `host:port` for the access log and for connecting.
    pub label: Arc<str>,
    /// `label` as the access log writes it.
    pub(crate) label_json: crate::access_log::JsonStr,
    /// The `Host` header the upstream receives.
    host: HeaderValue,
    idle: Idle,
    slots: Semaphore,
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

impl Target {
    fn checkin(&self, conn: Box<Conn>) {
        self.idle.checkin(conn);
    }

    /// Gives back a slot whose permit was forgotten when its response body took it over.
    fn release_slot(&self) {
        self.slots.add_permits(1);
    }

    async fn connect(&self, upstream: &str) -> Result<Box<Conn>, GatewayError> {
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
        match tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(&*self.label),
        )
        .await
        {
            Ok(Ok(s)) => Ok(Conn::new(s)),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable(format!(
                "connect timed out after {:?}",
                self.connect_timeout
            ))),
        }
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
                label_json: crate::access_log::JsonStr::new(&label),
                label: Arc::from(label),
                authority: auth,
                idle: Idle::new(
                    settings.pool_max_idle_per_target,
                    settings.pool_idle_timeout.get(),
                ),
                slots: Semaphore::new(settings.max_requests_per_target),
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

    /// Closes this upstream's stale idle connections (see [`Idle::reap`]).
    pub fn reap_idle(&self) {
        for t in self.targets.iter() {
            t.idle.reap();
        }
    }

    #[cfg(test)]
    fn idle_connections(&self) -> usize {
        self.targets.iter().map(|t| t.idle.len()).sum()
    }

    /// Request slots taken across the targets.
    #[cfg(test)]
    fn slots_taken(&self) -> usize {
        let max = self.settings.max_requests_per_target;
        self.targets
            .iter()
            .map(|t| max - t.slots.available_permits())
            .sum()
    }

    /// Next target by weighted round robin: one atomic increment, no lock.
    pub fn pick(&self) -> &Arc<Target> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let idx = self.schedule[n % self.schedule.len()] as usize;
        &self.targets[idx]
    }

    /// Sends the request to `target` and waits for the response head within the response
    /// timeout, counted from `now`. The request keeps its path and query (origin form); `Host`
    /// becomes the target's, and `forwarded` replaces the request's fields of its names.
    /// `client_body_timeout`: how long the client may leave its request body waiting before it
    /// gets a 408 (the response timeout only starts once the body is with the upstream).
    pub async fn send(
        &self,
        target: &Arc<Target>,
        req: Request<RequestBody>,
        forwarded: Option<Forwarded<'_>>,
        now: std::time::Instant,
        client_body_timeout: Duration,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        // One deadline for the whole send: a fresh connection and a retry fit inside it.
        let deadline = Instant::from_std(now) + self.response_timeout;
        // A request waits for a slot no longer than for its response: the client gets an
        // answer within the same time either way.
        let slot = match target.slots.try_acquire() {
            Ok(slot) => slot,
            Err(_) => match tokio::time::timeout_at(deadline, target.slots.acquire()).await {
                Ok(Ok(slot)) => slot,
                // The semaphore is never closed; both arms mean no slot came free in time.
                Ok(Err(_)) | Err(_) => return Err(self.busy(target)),
            },
        };
        let mut out = Outgoing::new(req, forwarded);
        let mut pooled = target.idle.checkout(now);
        loop {
            let reused = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(c) => c,
                None => match tokio::time::timeout_at(deadline, target.connect(&self.name)).await {
                    Ok(c) => c?,
                    Err(_) => return Err(self.timed_out(target)),
                },
            };
            // The connection's own timer: a new timeout per request would register and cancel
            // a timer-wheel entry each time. It is moved only when it has fired (for an earlier
            // request) or would fire after this deadline; one set for an earlier request that
            // fires during this one is moved then (below). Most responses come long before.
            let mut timer = conn
                .timer
                .take()
                .unwrap_or_else(|| Box::pin(sleep_until(deadline)));
            if timer.is_elapsed() || timer.deadline() > deadline {
                timer.as_mut().reset(deadline);
            }
            conn.used = now;
            let mut seen = false;
            let progress = exchange::ProgressCell::new(Instant::from_std(now));
            let result = {
                let mut exchange = pin!(exchange::exchange(
                    &mut conn,
                    &mut out,
                    &target.host,
                    reused,
                    &mut seen,
                    &progress,
                ));
                poll_fn(|cx| {
                    if let Poll::Ready(r) = exchange.as_mut().poll(cx) {
                        return Poll::Ready(Some(r));
                    }
                    // Waiting for the client's body: its own time, usually shorter than the
                    // response timeout the timer is set for, runs from now. Bring the timer
                    // forward to it; when the body moves on, the early firing below sets it to
                    // whatever runs then.
                    if let exchange::Progress::Client(since) = progress.get() {
                        let limit = since + client_body_timeout;
                        if timer.deadline() > limit {
                            timer.as_mut().reset(limit);
                        }
                    }
                    while timer.as_mut().poll(cx).is_ready() {
                        // Whose time is running depends on where the body is.
                        let limit = match progress.get() {
                            exchange::Progress::Head => deadline,
                            exchange::Progress::Client(since) => since + client_body_timeout,
                            exchange::Progress::Upstream(at) => at + self.response_timeout,
                        };
                        if Instant::now() >= limit {
                            return Poll::Ready(match progress.get() {
                                exchange::Progress::Client(_) => Some(Err(Failure::BodyStalled)),
                                _ => None,
                            });
                        }
                        timer.as_mut().reset(limit);
                    }
                    Poll::Pending
                })
                .await
            };
            conn.timer = Some(timer);
            match result {
                None => return Err(self.timed_out(target)),
                Some(Ok(answer)) => {
                    let reuse = answer.request_complete && answer.head.keep_alive;
                    let (parts, ()) = answer.head.response.into_parts();
                    // The body gives the slot back when it is done with the connection.
                    slot.forget();
                    let body = UpstreamBody::new(
                        conn,
                        target.clone(),
                        answer.head.framing,
                        reuse,
                        answer.head.raw,
                    );
                    return Ok(Response::from_parts(parts, body));
                }
                // The upstream may have closed a pooled connection just as we took it; the
                // request never reached it, so one fresh connection gets to try.
                Some(Err(f)) if reused && !seen && f.is_connection() && out.replayable() => {
                    tracing::debug!(error = %f, "pooled upstream connection failed; retrying");
                }
                Some(Err(f)) => return Err(classify(&self.name, target, f)),
            }
        }
    }

    fn busy(&self, target: &Target) -> GatewayError {
        GatewayError::new(
            Kind::UpstreamBusy,
            "the upstream is answering as many requests as it is allowed; try again later",
        )
        .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
        .with_cause(format!(
            "upstream {} target {}: all {} request slots stayed taken for {} ms",
            self.name,
            target.label,
            self.settings.max_requests_per_target,
            self.response_timeout.as_millis()
        ))
    }

    fn timed_out(&self, target: &Target) -> GatewayError {
        GatewayError::new(
            Kind::UpstreamTimeout,
            format!(
                "the upstream did not answer within {} ms",
                self.response_timeout.as_millis()
            ),
        )
        .with_cause(format!(
            "upstream {} target {}: response timeout",
            self.name, target.label
        ))
    }
}

/// Maps a failed exchange to the party at fault: our body limit → 413, a client that broke off
/// its body → 400, anything else → 502 bad response.
fn classify(name: &str, target: &Target, f: Failure) -> GatewayError {
    match f {
        Failure::Body(RequestBodyError::TooLarge(t)) => GatewayError::new(
            Kind::PayloadTooLarge,
            format!("the request body exceeds the limit of {} bytes", t.0),
        ),
        Failure::Body(RequestBodyError::Client(c)) if c.client_gone() => GatewayError::new(
            Kind::ClientClosedRequest,
            "the client left before its request body was complete",
        )
        .with_cause(c.to_string()),
        Failure::Body(RequestBodyError::Client(c)) => {
            GatewayError::new(Kind::BadRequest, "the request body could not be read")
                .with_cause(c.to_string())
        }
        Failure::ShortBody(_) => {
            GatewayError::new(Kind::BadRequest, "the request body could not be read")
                .with_cause(f.to_string())
        }
        Failure::BodyStalled => GatewayError::new(
            Kind::RequestTimeout,
            "the request body stopped arriving before it was complete",
        ),
        _ => GatewayError::new(
            Kind::UpstreamBadResponse,
            "the upstream closed the connection or sent an invalid response",
        )
        .with_cause(format!("upstream {name} target {}: {f}", target.label)),
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
