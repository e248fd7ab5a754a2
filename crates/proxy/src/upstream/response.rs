//! The upstream's response: the head, parsed with httparse into `http` types whose header
//! values share the head's bytes, and the body, framed as RFC 9112 §6.3 says and streamed
//! straight out of the connection's read buffer.

use super::Target;
use super::pool::Conn;
use crate::forward::is_hop_by_hop_name;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

/// Larger heads are refused: no sane upstream sends one, and the buffer must stay bounded.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// httparse fills a stack array of this many fields; more is a 502.
const MAX_HEADERS: usize = 100;
/// A chunk-size line with extensions; anything longer is not a chunk header.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Body reads start at `READ_BUF` and double while the socket keeps filling them, up to this.
const MAX_READ: usize = 128 * 1024;

/// Why a response head was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum InvalidHead {
    #[error("invalid response head: {0}")]
    Parse(httparse::Error),
    #[error("more than {MAX_HEADERS} response header fields")]
    TooManyHeaders,
    #[error("response head exceeds {MAX_HEAD} bytes")]
    TooLarge,
    #[error("invalid HTTP status code {0}")]
    Status(u16),
    #[error("unexpected 101 Switching Protocols")]
    Upgrade,
    #[error("invalid response header field")]
    Header,
    #[error("invalid or conflicting content-length")]
    ContentLength,
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Length(u64),
    Chunked,
    /// Until the upstream closes: never reusable.
    Close,
}

pub(super) struct Head {
    pub(super) response: Response<()>,
    pub(super) framing: Framing,
    /// The upstream lets the connection carry another request once this one is over.
    pub(super) keep_alive: bool,
}

/// Byte ranges of one header field within the head.
#[derive(Clone, Copy, Default)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

fn range(base: &[u8], part: &[u8]) -> (u32, u32) {
    if part.is_empty() {
        // An empty slice need not point into `base`.
        return (0, 0);
    }
    // httparse hands out subslices of `base`; their offsets are all a head needs to survive
    // the buffer being split and frozen. Heads are capped at 64 KiB, so u32 suffices.
    let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
    (start as u32, (start + part.len()) as u32)
}

/// Parses a complete response head at the front of `buf` and removes it, skipping 1xx
/// interim responses. `Ok(None)`: more bytes are needed.
pub(super) fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<Head>, InvalidHead> {
    loop {
        let mut fields = [Field::default(); MAX_HEADERS];
        let mut count = 0;
        let mut reason = (0, 0);
        let mut content_length: Option<u64> = None;
        let mut transfer_encoding = false;
        let mut chunked = false;
        let mut close = false;
        let mut keep_alive = false;
        // `Connection` named a field beyond the fixed hop-by-hop set: rare, left to the
        // general removal once the map is built.
        let mut names_others = false;
        let (len, code, version) = {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            let len = match resp.parse(buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                    return Err(InvalidHead::TooLarge);
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => return Err(InvalidHead::TooManyHeaders),
                Err(e) => return Err(InvalidHead::Parse(e)),
            };
            if len > MAX_HEAD {
                return Err(InvalidHead::TooLarge);
            }
            let code = resp.code.unwrap_or(0);
            if (100..200).contains(&code) {
                if code == 101 {
                    return Err(InvalidHead::Upgrade);
                }
                buf.advance(len);
                continue;
            }
            if let Some(r) = resp.reason {
                reason = range(buf, r.as_bytes());
            }
            for h in resp.headers.iter() {
                let name = h.name.as_bytes();
                if name.eq_ignore_ascii_case(b"content-length") {
                    for part in h.value.split(|b| *b == b',') {
                        let n =
                            parse_length(part.trim_ascii()).ok_or(InvalidHead::ContentLength)?;
                        if content_length.is_some_and(|c| c != n) {
                            return Err(InvalidHead::ContentLength);
                        }
                        content_length = Some(n);
                    }
                } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    transfer_encoding = true;
                    // Only the final coding counts, and a later field comes after an earlier.
                    chunked = h
                        .value
                        .rsplit(|b| *b == b',')
                        .next()
                        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                } else if name.eq_ignore_ascii_case(b"connection") {
                    for token in h.value.split(|b| *b == b',') {
                        let token = token.trim_ascii();
                        let is_close = token.eq_ignore_ascii_case(b"close");
                        close |= is_close;
                        keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                        names_others |=
                            !is_close && !token.is_empty() && !is_hop_by_hop_name(token);
                    }
                }
                // Hop-by-hop fields (RFC 9110 §7.6.1) are for this connection only: they are
                // read above and never enter the map the client's response is built from.
                if is_hop_by_hop_name(name) && !names_others {
                    continue;
                }
                fields[count] = Field {
                    name: range(buf, name),
                    value: range(buf, h.value),
                };
                count += 1;
            }
            (len, code, resp.version.unwrap_or(1))
        };

        let head = buf.split_to(len).freeze();
        let status = StatusCode::from_u16(code).map_err(|_| InvalidHead::Status(code))?;
        let mut headers = HeaderMap::with_capacity(count);
        for f in &fields[..count] {
            let name = HeaderName::from_bytes(&head[f.name.0 as usize..f.name.1 as usize])
                .map_err(|_| InvalidHead::Header)?;
            let value =
                HeaderValue::from_maybe_shared(head.slice(f.value.0 as usize..f.value.1 as usize))
                    .map_err(|_| InvalidHead::Header)?;
            headers.append(name, value);
        }
        if names_others {
            crate::forward::strip_hop_by_hop(&mut headers);
        }
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = if version == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        *response.headers_mut() = headers;
        let reason = &head[reason.0 as usize..reason.1 as usize];
        // A non-standard reason phrase goes back to the client as sent, as hyper's client did.
        if !reason.is_empty()
            && status.canonical_reason().map(str::as_bytes) != Some(reason)
            && let Ok(r) = hyper::ext::ReasonPhrase::try_from(head.slice_ref(reason))
        {
            response.extensions_mut().insert(r);
        }

        let no_body = head_request || code == 204 || code == 304;
        let framing = if no_body {
            Framing::Length(0)
        } else if transfer_encoding {
            if chunked {
                Framing::Chunked
            } else {
                Framing::Close
            }
        } else {
            content_length.map_or(Framing::Close, Framing::Length)
        };
        let persistent = if version == 0 {
            keep_alive && !close
        } else {
            !close
        };
        // Both framings at once is a smuggling vector: honour TE but never reuse.
        let keep_alive = persistent
            && framing != Framing::Close
            && !(transfer_encoding && content_length.is_some());
        return Ok(Some(Head {
            response,
            framing,
            keep_alive,
        }));
    }
}

/// Digits only: `+5`, `0x5` or an empty value are not lengths.
fn parse_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The upstream's body broke off or was malformed; the client connection is then aborted, as
/// a proxy cannot signal this any other way once the head is sent.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error("upstream body: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream body: connection closed before message completed")]
    Incomplete,
    #[error("upstream body: invalid chunk framing")]
    Chunk,
    #[error("upstream body: invalid trailer fields")]
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    Close,
    Done,
}

/// Chunked-framing steps that produce no frame: a chunk's CRLF, the next size line, an empty
/// trailer section (→ `Done`). `Ok(true)`: progressed.
fn advance(state: &mut State, buf: &mut BytesMut) -> Result<bool, UpstreamBodyError> {
    match *state {
        State::ChunkEnd => {
            if buf.len() < 2 {
                return Ok(false);
            }
            if &buf[..2] != b"\r\n" {
                return Err(UpstreamBodyError::Chunk);
            }
            buf.advance(2);
            *state = State::ChunkSize;
            Ok(true)
        }
        State::ChunkSize => match httparse::parse_chunk_size(buf) {
            // httparse reads a line without digits as size 0; that is not a last chunk.
            Ok(httparse::Status::Complete(_))
                if !buf.first().is_some_and(u8::is_ascii_hexdigit) =>
            {
                Err(UpstreamBodyError::Chunk)
            }
            Ok(httparse::Status::Complete((used, size))) => {
                buf.advance(used);
                *state = if size == 0 {
                    State::Trailers
                } else {
                    State::ChunkData(size)
                };
                Ok(true)
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                Err(UpstreamBodyError::Chunk)
            }
            Ok(httparse::Status::Partial) => Ok(false),
            Err(_) => Err(UpstreamBodyError::Chunk),
        },
        State::Trailers if buf.starts_with(b"\r\n") => {
            buf.advance(2);
            *state = State::Done;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// An upstream response body. Owns the connection it arrives on and gives it back to the
/// target's pool the moment the last byte is read; dropped earlier, it closes the connection.
pub struct UpstreamBody {
    conn: Option<Conn>,
    target: Arc<Target>,
    state: State,
    /// Hand the connection back at the end (framed body, request fully written, keep-alive).
    reuse: bool,
    eof: bool,
    /// The whole body, when it was already in the buffer with the head.
    ready: Option<Bytes>,
    read_size: usize,
}

impl UpstreamBody {
    pub(super) fn new(conn: Conn, target: Arc<Target>, framing: Framing, reuse: bool) -> Self {
        let mut body = Self {
            conn: Some(conn),
            target,
            state: match framing {
                Framing::Length(n) => State::Length(n),
                Framing::Chunked => State::ChunkSize,
                Framing::Close => State::Close,
            },
            reuse,
            eof: false,
            ready: None,
            read_size: super::pool::READ_BUF,
        };
        // Small bodies usually arrive with the head: take them now so the connection is back
        // in the pool before the client is even written to.
        if let State::Length(n) = body.state
            && let Some(conn) = body.conn.as_mut()
            && conn.rbuf.len() as u64 >= n
        {
            if n > 0 {
                body.ready = Some(conn.rbuf.split_to(n as usize).freeze());
            }
            body.finish();
        }
        body
    }

    /// The body is complete: the connection goes back to the pool if it can carry another
    /// request, and is closed otherwise.
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(conn) = self.conn.take()
            && self.reuse
            && conn.rbuf.is_empty()
        {
            self.target.checkin(conn);
        }
    }

    /// The next frame from buffered bytes. `Ok(None)` with the state not `Done`: read more.
    fn step(&mut self) -> Result<Option<Frame<Bytes>>, UpstreamBodyError> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Ok(None);
            };
            let buf = &mut conn.rbuf;
            match self.state {
                State::Length(rem) | State::ChunkData(rem) if !buf.is_empty() => {
                    let n = rem.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    let left = rem - n;
                    match self.state {
                        State::Length(_) if left == 0 => self.finish(),
                        State::Length(_) => self.state = State::Length(left),
                        _ if left == 0 => {
                            self.state = State::ChunkEnd;
                            self.settle();
                        }
                        _ => self.state = State::ChunkData(left),
                    }
                    return Ok(Some(Frame::data(data)));
                }
                State::Close if !buf.is_empty() => {
                    return Ok(Some(Frame::data(buf.split().freeze())));
                }
                State::Trailers if !buf.is_empty() && !buf.starts_with(b"\r\n") => {
                    return self.trailers();
                }
                State::Done => return Ok(None),
                _ => {}
            }
            if advance(&mut self.state, buf)? {
                if self.state == State::Done {
                    self.finish();
                }
                continue;
            }
            if self.eof {
                if self.state == State::Close {
                    self.reuse = false;
                    self.finish();
                    return Ok(None);
                }
                return Err(UpstreamBodyError::Incomplete);
            }
            return Ok(None);
        }
    }

    /// After a chunk's last byte, the terminator and the last chunk usually sit in the buffer
    /// already: consume them so the body ends, and the connection returns, without a poll.
    fn settle(&mut self) {
        while let Some(conn) = self.conn.as_mut() {
            match advance(&mut self.state, &mut conn.rbuf) {
                Ok(true) if self.state == State::Done => return self.finish(),
                Ok(true) if !matches!(self.state, State::ChunkData(_)) => {}
                // Errors surface on the next poll, which meets the same bytes.
                _ => return,
            }
        }
    }

    fn trailers(&mut self) -> Result<Option<Frame<Bytes>>, UpstreamBodyError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (used, map) = match httparse::parse_headers(&conn.rbuf, &mut fields) {
            Ok(httparse::Status::Complete((used, fields))) => {
                let mut map = HeaderMap::with_capacity(fields.len());
                for f in fields.iter() {
                    let name = HeaderName::from_bytes(f.name.as_bytes())
                        .map_err(|_| UpstreamBodyError::Trailers)?;
                    let value = HeaderValue::from_bytes(f.value)
                        .map_err(|_| UpstreamBodyError::Trailers)?;
                    map.append(name, value);
                }
                (used, map)
            }
            Ok(httparse::Status::Partial) if conn.rbuf.len() < MAX_HEAD => {
                return if self.eof {
                    Err(UpstreamBodyError::Incomplete)
                } else {
                    Ok(None)
                };
            }
            _ => return Err(UpstreamBodyError::Trailers),
        };
        conn.rbuf.advance(used);
        self.finish();
        Ok(Some(Frame::trailers(map)))
    }

    /// Reads more of the body into the buffer; sets `eof` when the upstream closed.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UpstreamBodyError>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let want = match self.state {
            State::Length(rem) | State::ChunkData(rem) => {
                (rem.min(self.read_size as u64) as usize).max(1024)
            }
            _ => self.read_size,
        };
        if conn.rbuf.capacity() - conn.rbuf.len() < want {
            conn.rbuf.reserve(want);
        }
        let room = conn.rbuf.capacity() - conn.rbuf.len();
        loop {
            ready!(conn.stream.poll_read_ready(cx))?;
            match conn.stream.try_read_buf(&mut conn.rbuf) {
                Ok(0) => {
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
                Ok(n) => {
                    if n == room && self.read_size < MAX_READ {
                        self.read_size *= 2;
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        let this = self.get_mut();
        if let Some(b) = this.ready.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        loop {
            match this.step() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) if this.state == State::Done => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    // The connection is in an unknown state: close it.
                    this.conn = None;
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if let Err(e) = ready!(this.poll_fill(cx)) {
                this.conn = None;
                this.state = State::Done;
                return Poll::Ready(Some(Err(e)));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_none() && self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        let ready = self.ready.as_ref().map_or(0, |b| b.len() as u64);
        match self.state {
            State::Length(n) => SizeHint::with_exact(n + ready),
            State::Done => SizeHint::with_exact(ready),
            _ => SizeHint::default(),
        }
    }
}
