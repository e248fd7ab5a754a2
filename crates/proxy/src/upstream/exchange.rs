//! One HTTP/1.1 request/response exchange on a connection, run on the request's own task: the
//! request head and body go out while the read side is watched for an early response, then the
//! response head is read.

use super::pool::{Conn, READ_BUF};
use super::response::{self, Head, InvalidHead};
use crate::body::{RequestBody, RequestBodyError};
use crate::forward::Forwarded;
use crate::framing::chunk_size_line;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::Poll;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    #[error("error writing the request: {0}")]
    Write(io::Error),
    #[error("error reading the response: {0}")]
    Read(io::Error),
    #[error("connection closed before message completed")]
    Closed,
    #[error(transparent)]
    Invalid(#[from] InvalidHead),
    #[error(transparent)]
    Body(RequestBodyError),
    #[error("the request body ended {0} bytes short of its content-length")]
    ShortBody(u64),
    #[error("the client stopped sending its request body")]
    BodyStalled,
}

impl Failure {
    /// The connection failed rather than the request: another connection may do.
    pub(super) fn is_connection(&self) -> bool {
        matches!(self, Failure::Write(_) | Failure::Read(_) | Failure::Closed)
    }
}

/// Where a request with a body stands, so that a timeout blames the right party: the
/// response timeout runs from the body's last write, and a client that stops sending its body
/// runs out of its own time, not the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    /// Head (and any body that came with it) being sent: the send's own deadline applies.
    Head,
    /// Waiting for the client's next body bytes since then.
    Client(tokio::time::Instant),
    /// Body bytes last handed to the upstream then; the response (or the write) is the
    /// upstream's to finish.
    Upstream(tokio::time::Instant),
}

/// [`Progress`], shared between the exchange and the timer that watches it. Both run on the
/// request's task; an atomic (relaxed: a plain load and store) only because the future must be
/// `Send`. Instants are kept as nanoseconds since `base`, the state in the top two bits.
pub(super) struct ProgressCell {
    base: tokio::time::Instant,
    bits: std::sync::atomic::AtomicU64,
}

impl ProgressCell {
    const CLIENT: u64 = 1 << 62;
    const UPSTREAM: u64 = 2 << 62;
    const TIME: u64 = (1 << 62) - 1;

    pub(super) fn new(base: tokio::time::Instant) -> Self {
        Self {
            base,
            bits: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn set(&self, tag: u64) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(Self::TIME);
        self.bits.store(
            tag | nanos.min(Self::TIME),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub(super) fn get(&self) -> Progress {
        let bits = self.bits.load(std::sync::atomic::Ordering::Relaxed);
        let at = self.base + std::time::Duration::from_nanos(bits & Self::TIME);
        match bits & !Self::TIME {
            Self::CLIENT => Progress::Client(at),
            Self::UPSTREAM => Progress::Upstream(at),
            _ => Progress::Head,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

/// A request on its way upstream, kept whole enough to be sent again on another connection
/// as long as no body byte beyond `first` was taken from the client.
pub(super) struct Outgoing<'a> {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    forwarded: Option<Forwarded<'a>>,
    body: RequestBody,
    framing: Framing,
    prefetched: bool,
    /// The first body frame, read before the head is written so that both go out in one
    /// write, and kept for a retry.
    first: Option<Bytes>,
    /// The body ended right after `first`.
    ended: bool,
    /// Body bytes beyond `first` were taken from the client: the request cannot be repeated.
    taken: bool,
}

impl<'a> Outgoing<'a> {
    pub(super) fn new(req: Request<RequestBody>, forwarded: Option<Forwarded<'a>>) -> Self {
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        let framing = if body.is_end_stream() {
            Framing::Empty
        } else {
            let length = headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse::<u64>().ok());
            match length {
                Some(n) => Framing::Length(n),
                None => {
                    // hyper's server validated it, so this only guards against sending both.
                    headers.remove(CONTENT_LENGTH);
                    Framing::Chunked
                }
            }
        };
        Self {
            method: parts.method,
            uri: parts.uri,
            headers,
            forwarded,
            body,
            framing,
            prefetched: false,
            first: None,
            ended: false,
            taken: false,
        }
    }

    /// Whether a failed attempt may be repeated on another connection. Only idempotent
    /// methods (RFC 9110 §9.2.2): a pooled connection that dies without a response byte most
    /// often never delivered the request, but we cannot know, and a repeated POST could move
    /// money twice.
    pub(super) fn replayable(&self) -> bool {
        !self.taken && self.method.is_idempotent()
    }

    fn encode_head(&self, w: &mut Vec<u8>, host: &HeaderValue) {
        w.extend_from_slice(self.method.as_str().as_bytes());
        w.push(b' ');
        let target = self.uri.path_and_query().map_or("/", |pq| pq.as_str());
        w.extend_from_slice(target.as_bytes());
        w.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        w.extend_from_slice(host.as_bytes());
        w.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            if name == HOST || self.forwarded.is_some() && Forwarded::owns(name) {
                continue;
            }
            crate::heads::put_field(w, name, value);
        }
        if let Some(f) = &self.forwarded {
            f.encode(w);
        }
        if self.framing == Framing::Chunked {
            w.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        w.extend_from_slice(b"\r\n");
    }

    /// Takes the body's first frame if it is there already (it usually arrived with the head).
    async fn prefetch(&mut self) -> Result<(), Failure> {
        if self.prefetched || self.framing == Framing::Empty {
            return Ok(());
        }
        self.prefetched = true;
        let body = &mut self.body;
        let polled =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await;
        match polled {
            Poll::Pending => {}
            Poll::Ready(None) => self.ended = true,
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => self.first = Some(data),
                // Trailers end the body; we do not forward them (see `send`).
                Err(_) => self.ended = true,
            },
            Poll::Ready(Some(Err(e))) => return Err(Failure::Body(e)),
        }
        Ok(())
    }
}

/// The response head, and whether the request was written whole (an early response leaves
/// the connection mid-request, unusable for another).
pub(super) struct Answer {
    pub(super) head: Head,
    pub(super) request_complete: bool,
}

/// Sends `out` on `conn` and reads the response head. `seen` is set once any response byte
/// arrived: from then on the upstream has acted on the request and it must not be repeated.
pub(super) async fn exchange(
    conn: &mut Conn,
    out: &mut Outgoing<'_>,
    host: &HeaderValue,
    reused: bool,
    seen: &mut bool,
    progress: &ProgressCell,
) -> Result<Answer, Failure> {
    let head_request = out.method == Method::HEAD;
    out.prefetch().await?;
    match send(conn, out, host, seen, head_request, progress).await {
        Ok(Some(head)) => Ok(Answer {
            head,
            request_complete: false,
        }),
        Ok(None) => Ok(Answer {
            head: read_head(conn, seen, head_request).await?,
            request_complete: true,
        }),
        // The upstream may have answered and closed without reading the whole request (an
        // early 413, say); that answer is worth more than the write error. A reused
        // connection that failed unseen is rather retried by the caller.
        Err(Failure::Write(e)) if !reused || out.taken || *seen => {
            match read_head(conn, seen, head_request).await {
                Ok(head) => Ok(Answer {
                    head,
                    request_complete: false,
                }),
                Err(_) => Err(Failure::Write(e)),
            }
        }
        Err(e) => Err(e),
    }
}

/// Writes the request. `Ok(Some)`: a complete response head arrived before the body was sent.
async fn send(
    conn: &mut Conn,
    out: &mut Outgoing<'_>,
    host: &HeaderValue,
    seen: &mut bool,
    head_request: bool,
    progress: &ProgressCell,
) -> Result<Option<Head>, Failure> {
    conn.wbuf.clear();
    out.encode_head(&mut conn.wbuf, host);
    if out.framing == Framing::Empty {
        conn.stream
            .write_all(&conn.wbuf)
            .await
            .map_err(Failure::Write)?;
        return Ok(None);
    }

    let chunked = out.framing == Framing::Chunked;
    let mut left = match out.framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut data = out.first.clone().unwrap_or_default();
    let mut tail: &'static [u8] = b"";
    let mut done = out.ended;
    frame_data(&mut conn.wbuf, &mut data, &mut tail, chunked, &mut left);
    if !chunked && left == 0 {
        done = true;
    }
    if done {
        finish_body(&mut tail, chunked, left)?;
    }

    loop {
        let total = conn.wbuf.len() + data.len() + tail.len();
        let mut written = 0;
        while written < total {
            tokio::select! {
                biased;
                r = conn.stream.readable() => {
                    r.map_err(Failure::Read)?;
                    if let Some(head) = watch(conn, seen, head_request)? {
                        return Ok(Some(head));
                    }
                }
                w = conn.stream.writable() => {
                    w.map_err(Failure::Write)?;
                    let slices = unwritten([&conn.wbuf, &data, tail], written);
                    match conn.stream.try_write_vectored(&slices) {
                        Ok(n) => written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(Failure::Write(e)),
                    }
                }
            }
        }
        if done {
            return Ok(None);
        }
        conn.wbuf.clear();
        tail = b"";
        progress.set(ProgressCell::CLIENT);
        let frame = tokio::select! {
            biased;
            r = conn.stream.readable() => {
                r.map_err(Failure::Read)?;
                if let Some(head) = watch(conn, seen, head_request)? {
                    return Ok(Some(head));
                }
                data = Bytes::new();
                continue;
            }
            f = out.body.frame() => f,
        };
        data = Bytes::new();
        progress.set(ProgressCell::UPSTREAM);
        match frame {
            Some(Ok(frame)) => {
                out.taken = true;
                // Trailers are dropped: the `Trailer` field announcing them is hop-by-hop and
                // never reaches the upstream, as with hyper's client.
                if let Ok(d) = frame.into_data() {
                    data = d;
                    frame_data(&mut conn.wbuf, &mut data, &mut tail, chunked, &mut left);
                    if !chunked && left == 0 {
                        done = true;
                    }
                }
            }
            Some(Err(e)) => return Err(Failure::Body(e)),
            None => {
                out.ended = true;
                done = true;
            }
        }
        if done {
            finish_body(&mut tail, chunked, left)?;
        }
    }
}

/// Frames one data frame: a chunk header in `w` and the CRLF after it, or for a declared
/// length, the data as is (cut at the length: more would corrupt the connection).
fn frame_data(
    w: &mut Vec<u8>,
    data: &mut Bytes,
    tail: &mut &'static [u8],
    chunked: bool,
    left: &mut u64,
) {
    if chunked {
        // An empty chunk would be the last-chunk marker.
        if !data.is_empty() {
            chunk_size_line(w, data.len());
            *tail = b"\r\n";
        }
    } else {
        if data.len() as u64 > *left {
            data.truncate(*left as usize);
        }
        *left -= data.len() as u64;
    }
}

fn finish_body(tail: &mut &'static [u8], chunked: bool, left: u64) -> Result<(), Failure> {
    if chunked {
        *tail = if tail.is_empty() {
            b"0\r\n\r\n"
        } else {
            b"\r\n0\r\n\r\n"
        };
    } else if left > 0 {
        return Err(Failure::ShortBody(left));
    }
    Ok(())
}

/// The parts still to write after `skip` bytes were written.
fn unwritten<'a>(parts: [&'a [u8]; 3], mut skip: usize) -> [IoSlice<'a>; 3] {
    parts.map(|p| {
        let s = skip.min(p.len());
        skip -= s;
        IoSlice::new(&p[s..])
    })
}

/// Reads what the upstream sent while the request is still going out.
fn watch(conn: &mut Conn, seen: &mut bool, head_request: bool) -> Result<Option<Head>, Failure> {
    reserve(conn);
    match conn.stream.try_read_buf(&mut conn.rbuf) {
        Ok(0) => Err(Failure::Closed),
        Ok(_) => {
            *seen = true;
            Ok(response::parse_head(
                &mut conn.rbuf,
                head_request,
                &mut conn.scratch,
            )?)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(Failure::Read(e)),
    }
}

async fn read_head(conn: &mut Conn, seen: &mut bool, head_request: bool) -> Result<Head, Failure> {
    loop {
        if !conn.rbuf.is_empty()
            && let Some(head) =
                response::parse_head(&mut conn.rbuf, head_request, &mut conn.scratch)?
        {
            return Ok(head);
        }
        reserve(conn);
        match conn.stream.read_buf(&mut conn.rbuf).await {
            Ok(0) => return Err(Failure::Closed),
            Ok(_) => *seen = true,
            Err(e) => return Err(Failure::Read(e)),
        }
    }
}

fn reserve(conn: &mut Conn) {
    if conn.rbuf.capacity() - conn.rbuf.len() < 1024 {
        conn.rbuf.reserve(READ_BUF);
    }
}
