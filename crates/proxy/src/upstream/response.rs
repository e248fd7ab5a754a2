//! The upstream's response: the head, parsed with httparse into `http` types whose header
//! values share the head's bytes, and the body, framed as RFC 9112 §6.3 says and streamed
//! straight out of the connection's read buffer.

use super::Target;
use super::pool::Conn;
pub(crate) use crate::framing::Framing;
use crate::framing::{Decoder, FramingError};
use crate::heads::{FramingFields, NameCache, NameKind, range};
use bytes::{Buf, Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

/// Larger heads are refused: no sane upstream sends one, and the buffer must stay bounded.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// httparse fills a stack array of this many fields; more is a 502.
const MAX_HEADERS: usize = 100;
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

pub(super) struct Head {
    /// With an empty header map when the fields are kept raw.
    pub(super) response: Response<()>,
    pub(super) raw: Option<RawFields>,
    pub(super) framing: Framing,
    /// The upstream lets the connection carry another request once this one is over.
    pub(super) keep_alive: bool,
}

/// How many runs of field lines a response keeps verbatim. A head whose kept fields are more
/// scattered than this (between fields that are left out) is parsed into a map instead.
const RAW_SPANS: usize = 4;

/// An upstream response's end-to-end fields as they arrived: runs of whole field lines of the
/// head, written to an HTTP/1.1 client as they are. Parsing them into a `HeaderMap` (names
/// looked up, values checked again, every field hashed and inserted) and encoding them back
/// out was the largest single cost of a proxied request, so they become a map only when
/// something must read or change them: a response policy, or an HTTP/2 client
/// ([`RawFields::into_map`]).
///
/// Left out, because the gateway writes its own: hop-by-hop fields, `Content-Length` (its
/// value is `length`) and `X-Request-ID`.
pub struct RawFields {
    head: Bytes,
    spans: [(u32, u32); RAW_SPANS],
    n: u8,
    /// The response's `Content-Length`.
    pub(crate) length: Option<u64>,
    /// The response has a `Date` field.
    pub(crate) date: bool,
}

impl RawFields {
    /// The field lines, each ending in CRLF.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        for &(a, b) in &self.spans[..usize::from(self.n)] {
            out.extend_from_slice(&self.head[a as usize..b as usize]);
        }
    }

    /// Appends the fields, and `Content-Length`, to `map`.
    pub fn into_map(self, map: &mut HeaderMap) {
        for &(a, b) in &self.spans[..usize::from(self.n)] {
            let run = self.head.slice(a as usize..b as usize);
            let mut at = 0;
            // httparse checked every line when it parsed the head: `name: value CRLF`.
            while let Some(eol) = run[at..].iter().position(|c| *c == b'\n') {
                let line = at..at + eol + 1;
                at = line.end;
                let Some(colon) = run[line.clone()].iter().position(|c| *c == b':') else {
                    continue;
                };
                let Ok(name) = HeaderName::from_bytes(&run[line.start..line.start + colon]) else {
                    continue;
                };
                let value = run[line.start + colon + 1..line.end].trim_ascii();
                if let Ok(value) = HeaderValue::from_maybe_shared(run.slice_ref(value)) {
                    map.append(name, value);
                }
            }
        }
        if let Some(n) = self.length {
            map.append(CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
}

/// Collects the runs of field lines to keep while the head is parsed; gives up (`None`) on
/// anything the verbatim path does not handle, and the head is parsed into a map.
struct SpanBuilder {
    spans: [(u32, u32); RAW_SPANS],
    n: usize,
    /// The line seen last: its start and whether it is kept. Its end is the next line's start.
    open: Option<(u32, bool)>,
    ok: bool,
}

impl SpanBuilder {
    fn new() -> Self {
        Self {
            spans: [(0, 0); RAW_SPANS],
            n: 0,
            open: None,
            ok: true,
        }
    }

    /// The next field line starts at `start`.
    fn line(&mut self, head: &[u8], start: u32, keep: bool) {
        self.close(head, start);
        self.open = Some((start, keep));
    }

    /// Ends the open line at `end`, which must follow a CRLF: a bare LF line ending is legal
    /// for httparse but not something to pass on.
    fn close(&mut self, head: &[u8], end: u32) {
        let Some((start, keep)) = self.open.take() else {
            return;
        };
        let e = end as usize;
        if e < 2 || e > head.len() || &head[e - 2..e] != b"\r\n" {
            self.ok = false;
            return;
        }
        if !keep {
            return;
        }
        match self.n {
            n if n > 0 && self.spans[n - 1].1 == start => self.spans[n - 1].1 = end,
            n if n < RAW_SPANS => {
                self.spans[n] = (start, end);
                self.n += 1;
            }
            _ => self.ok = false,
        }
    }

    /// Closes the last line at the end of the head (`len` includes the blank line).
    fn finish(mut self, head: &[u8], len: usize) -> Option<([(u32, u32); RAW_SPANS], u8)> {
        if len < 4 || &head[len - 4..len] != b"\r\n\r\n" {
            return None;
        }
        self.close(head, (len - 2) as u32);
        self.ok.then_some((self.spans, self.n as u8))
    }
}

/// One kept header field: its name's slot in the name cache and its value's byte range
/// within the head.
#[derive(Clone, Copy, Default)]
struct Field {
    name: u32,
    value: (u32, u32),
}

/// What a connection keeps between response heads so that parsing one allocates nothing and
/// mostly compares bytes.
#[derive(Default)]
pub(crate) struct Scratch {
    fields: Vec<Field>,
    names: NameCache,
}

/// Parses a complete response head at the front of `buf` and removes it, skipping 1xx
/// interim responses. `Ok(None)`: more bytes are needed. `scratch` is the connection's.
pub(super) fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    scratch: &mut Scratch,
) -> Result<Option<Head>, InvalidHead> {
    loop {
        scratch.fields.clear();
        let mut reason = (0, 0);
        let mut framing_fields = FramingFields::default();
        let mut spans = SpanBuilder::new();
        let mut date = false;
        let raw_spans;
        let (len, code, version) = {
            // Uninitialised: filling 100 empty fields per response costs more than parsing.
            let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
            let len = match parsed {
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
            for (pos, h) in resp.headers.iter().enumerate() {
                let kind = scratch
                    .names
                    .classify(pos, h.name.as_bytes())
                    .ok_or(InvalidHead::Header)?;
                framing_fields
                    .add(kind, h.value)
                    .map_err(|_| InvalidHead::ContentLength)?;
                date |= kind == NameKind::Date;
                let keep = !kind.is_hop_by_hop()
                    && kind != NameKind::ContentLength
                    && kind != NameKind::RequestId;
                spans.line(buf, range(buf, h.name.as_bytes()).0, keep);
                // Hop-by-hop fields (RFC 9110 §7.6.1) are for this connection only: they are
                // read above and never enter the map the client's response is built from.
                // `Connection` naming a field beyond the fixed set is rare: those are left to
                // the general removal once the map is built.
                if kind.is_hop_by_hop() && !framing_fields.names_others {
                    continue;
                }
                scratch.fields.push(Field {
                    name: pos as u32,
                    value: range(buf, h.value),
                });
            }
            raw_spans = spans.finish(buf, len);
            (len, code, resp.version.unwrap_or(1))
        };

        let head = buf.split_to(len).freeze();
        let status = StatusCode::from_u16(code).map_err(|_| InvalidHead::Status(code))?;
        // `Connection` naming other fields needs the general removal, on a map.
        let raw = match raw_spans {
            Some((spans, n)) if !framing_fields.names_others => Some(RawFields {
                head: head.clone(),
                spans,
                n,
                length: framing_fields.content_length,
                date,
            }),
            _ => None,
        };
        // A raw head's map holds only what the gateway adds (RateLimit fields), and an empty
        // map does not allocate: on most routes it stays empty.
        let mut headers = HeaderMap::new();
        if raw.is_none() {
            // Room for what the gateway adds: growing a map rehashes it.
            headers.reserve(scratch.fields.len() + 4);
            for f in scratch.fields.iter() {
                let name = scratch
                    .names
                    .name(f.name as usize)
                    .ok_or(InvalidHead::Header)?
                    .clone();
                let value = HeaderValue::from_maybe_shared(
                    head.slice(f.value.0 as usize..f.value.1 as usize),
                )
                .map_err(|_| InvalidHead::Header)?;
                headers.append(name, value);
            }
        }
        let FramingFields {
            content_length,
            transfer_encoding,
            chunked,
            close,
            keep_alive,
            names_others,
        } = framing_fields;
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
            raw,
            framing,
            keep_alive,
        }));
    }
}

/// The upstream's body broke off or was malformed; the client connection is then aborted, as
/// a proxy cannot signal this any other way once the head is sent.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error("upstream body: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream body: {0}")]
    Framing(#[from] FramingError),
}

/// An upstream response body. Owns the connection it arrives on and gives it back to the
/// target's pool the moment the last byte is read; dropped earlier, it closes the connection.
pub struct UpstreamBody {
    conn: Option<Box<Conn>>,
    target: Arc<Target>,
    decoder: Decoder,
    /// Hand the connection back at the end (framed body, request fully written, keep-alive).
    reuse: bool,
    eof: bool,
    /// The whole body, when it was already in the buffer with the head.
    ready: Option<Bytes>,
    read_size: usize,
    /// The response's fields, when they were kept as they arrived.
    raw: Option<RawFields>,
    /// Holds one of the target's request slots (see [`Target`]) until the connection is
    /// released.
    slot: bool,
}

impl UpstreamBody {
    pub(super) fn new(
        conn: Box<Conn>,
        target: Arc<Target>,
        framing: Framing,
        reuse: bool,
        raw: Option<RawFields>,
    ) -> Self {
        let mut body = Self {
            conn: Some(conn),
            target,
            raw,
            decoder: Decoder::new(framing),
            // A body delimited by the upstream closing leaves nothing to reuse.
            reuse: reuse && framing != Framing::Close,
            eof: false,
            ready: None,
            read_size: super::pool::READ_BUF,
            slot: true,
        };
        // Small bodies usually arrive with the head: take them now so the connection is back
        // in the pool before the client is even written to.
        if let Some(conn) = body.conn.as_mut() {
            body.ready = body
                .decoder
                .take_whole(&mut conn.rbuf)
                .filter(|b| !b.is_empty());
        }
        if body.decoder.is_done() {
            body.finish();
        }
        body
    }

    /// The body is complete: the connection goes back to the pool if it can carry another
    /// request, and is closed otherwise.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.reuse
            && conn.rbuf.is_empty()
        {
            self.target.checkin(conn);
        }
        self.release_slot();
    }

    fn release_slot(&mut self) {
        if std::mem::take(&mut self.slot) {
            self.target.release_slot();
        }
    }

    /// The next frame from buffered bytes. `Ok(None)` with the body not done: read more.
    fn step(&mut self) -> Result<Option<Frame<Bytes>>, UpstreamBodyError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let frame = self.decoder.decode(&mut conn.rbuf, self.eof)?;
        if self.decoder.is_done() {
            self.finish();
        }
        Ok(frame)
    }

    /// Reads more of the body into the buffer; sets `eof` when the upstream closed.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UpstreamBodyError>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let want = self.decoder.want(self.read_size);
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

impl UpstreamBody {
    /// The response's fields when they were kept raw: the response's header map does not have
    /// them. See [`RawFields`].
    pub fn raw_fields(&self) -> Option<&RawFields> {
        self.raw.as_ref()
    }

    pub fn take_raw_fields(&mut self) -> Option<RawFields> {
        self.raw.take()
    }

    /// Ends the body after an error: the connection is in an unknown state and is closed.
    fn fail(&mut self) {
        self.conn = None;
        self.decoder = Decoder::new(Framing::Length(0));
        self.release_slot();
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.release_slot();
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
                Ok(None) if this.decoder.is_done() => return Poll::Ready(None),
                Ok(None) if this.conn.is_none() => {
                    return Poll::Ready(Some(Err(FramingError::Incomplete.into())));
                }
                Ok(None) => {}
                Err(e) => {
                    // The connection is in an unknown state: close it.
                    this.fail();
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if let Err(e) = ready!(this.poll_fill(cx)) {
                this.fail();
                return Poll::Ready(Some(Err(e)));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_none() && self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        let ready = self.ready.as_ref().map_or(0, |b| b.len() as u64);
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n + ready),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 9110 §7.6.1 written out plainly, as the reference the parser is held to: a response
    /// head's end-to-end fields are all of its fields but the hop-by-hop ones (the gateway's
    /// fixed list) and those its `Connection` names; `Content-Length` and `X-Request-ID` are
    /// left to the gateway. `None`: httparse does not take the head.
    fn end_to_end(head: &[u8]) -> Option<HeaderMap> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(_)) = resp.parse(head) else {
            return None;
        };
        let lower = |b: &[u8]| b.to_ascii_lowercase();
        let named: Vec<Vec<u8>> = resp
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|b| *b == b',').map(|t| lower(t.trim_ascii())))
            .collect();
        let mut map = HeaderMap::new();
        for h in resp.headers.iter() {
            let name = lower(h.name.as_bytes());
            if crate::forward::is_hop_by_hop_name(&name)
                || named.contains(&name)
                || name == b"content-length"
                || name == b"x-request-id"
            {
                continue;
            }
            map.append(
                HeaderName::from_bytes(&name).ok()?,
                HeaderValue::from_bytes(h.value.trim_ascii()).ok()?,
            );
        }
        Some(map)
    }

    /// The end-to-end fields a parsed head hands on, by whichever path it took: for a kept
    /// head both the bytes written to an HTTP/1.1 client (read back) and the map built for
    /// HTTP/2 and response policies; otherwise the map.
    fn handed_on(head: Head) -> Vec<HeaderMap> {
        let strip = |mut m: HeaderMap| {
            m.remove(CONTENT_LENGTH);
            m.remove(crate::forward::X_REQUEST_ID);
            m
        };
        let Some(raw) = head.raw else {
            return vec![strip(head.response.headers().clone())];
        };
        let mut lines = Vec::new();
        raw.encode(&mut lines);
        lines.extend_from_slice(b"\r\n");
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Ok(httparse::Status::Complete((_, fs))) = httparse::parse_headers(&lines, &mut fields)
        else {
            panic!(
                "kept lines that do not parse: {:?}",
                String::from_utf8_lossy(&lines)
            );
        };
        let mut written = HeaderMap::new();
        for f in fs.iter() {
            written.append(
                HeaderName::from_bytes(f.name.as_bytes()).expect("a parsed name"),
                HeaderValue::from_bytes(f.value).expect("a parsed value"),
            );
        }
        let length = raw.length;
        let mut built = HeaderMap::new();
        raw.into_map(&mut built);
        assert_eq!(
            built.get(CONTENT_LENGTH).map(|v| v.as_bytes().to_vec()),
            length.map(|n| n.to_string().into_bytes())
        );
        vec![strip(written), strip(built)]
    }

    const INTERIM: &[u8] = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n";

    /// Response heads from a pool of status lines, names (in several spellings, the framing
    /// and hop-by-hop ones among them) and values, some with bare LF line endings; and
    /// whether an interim response comes first.
    fn head_strategy() -> impl Strategy<Value = (bool, Vec<u8>)> {
        let status = prop::sample::select(vec![
            "HTTP/1.1 200 OK",
            "HTTP/1.1 204 No Content",
            "HTTP/1.1 304 Not Modified",
            "HTTP/1.0 200 OK",
            "HTTP/1.1 404 Gone Fishing",
            "HTTP/1.1 200",
            "HTTP/1.1 999 X",
        ]);
        let name = prop::sample::select(vec![
            "Content-Type",
            "content-length",
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "connection",
            "Keep-Alive",
            "TE",
            "Trailer",
            "Upgrade",
            "Proxy-Connection",
            "Date",
            "X-Request-ID",
            "X-A",
            "x-a",
            "X-B",
            "Set-Cookie",
            "Server",
        ]);
        let value = prop_oneof![
            prop::sample::select(vec![
                "0",
                "12",
                "12, 12",
                "3,4",
                "chunked",
                "gzip, chunked",
                "close",
                "keep-alive",
                "x-a",
                "X-B, close",
                "x-a, x-b",
                "",
                "  padded\t ",
            ])
            .prop_map(str::to_string),
            "[ -~]{0,10}",
        ];
        let eol = prop::sample::select(vec!["\r\n", "\r\n", "\r\n", "\r\n", "\n"]);
        (
            prop::bool::weighted(0.2),
            status,
            prop::collection::vec((name, value, eol.clone()), 0..8),
            eol,
        )
            .prop_map(|(interim, status, fields, eol)| {
                let mut h = format!("{status}\r\n");
                for (n, v, e) in fields {
                    h.push_str(&format!("{n}: {v}{e}"));
                }
                h.push_str(eol);
                (interim, h.into_bytes())
            })
    }

    fn with_interim((interim, head): &(bool, Vec<u8>)) -> Vec<u8> {
        let mut input = if *interim {
            INTERIM.to_vec()
        } else {
            Vec::new()
        };
        input.extend_from_slice(head);
        input
    }

    /// A parsed head in a form that compares.
    type Summary = Option<Result<(u16, Vec<HeaderMap>, Framing, bool), String>>;

    fn summary(r: Result<Option<Head>, InvalidHead>) -> Summary {
        match r {
            Ok(None) => None,
            Ok(Some(h)) => {
                let (status, framing, keep_alive) =
                    (h.response.status().as_u16(), h.framing, h.keep_alive);
                Some(Ok((status, handed_on(h), framing, keep_alive)))
            }
            Err(e) => Some(Err(e.to_string())),
        }
    }

    proptest! {
        /// Whichever path a head takes (kept verbatim, or parsed into a map), what it hands on
        /// is exactly its end-to-end fields, and the bytes after it stay in the buffer.
        #[test]
        fn a_head_hands_on_exactly_its_end_to_end_fields(
            head in head_strategy(),
            next in prop::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut input = with_interim(&head);
            input.extend_from_slice(&next);
            let mut buf = BytesMut::from(&input[..]);
            if let Ok(Some(h)) = parse_head(&mut buf, false, &mut Scratch::default()) {
                let want = end_to_end(&head.1);
                prop_assert!(want.is_some(), "took a head httparse refuses");
                for got in handed_on(h) {
                    prop_assert_eq!(Some(&got), want.as_ref());
                }
                prop_assert_eq!(&buf[..], &next[..]);
            }
        }

        /// A connection's name cache never makes one response head read like another: heads
        /// parsed one after another on one scratch come out as on a fresh one each.
        #[test]
        fn a_connection_parses_its_heads_as_a_fresh_one_would(
            heads in prop::collection::vec(head_strategy(), 1..5),
        ) {
            let mut scratch = Scratch::default();
            for h in &heads {
                let input = with_interim(h);
                let shared = summary(parse_head(&mut BytesMut::from(&input[..]), false, &mut scratch));
                let fresh = summary(parse_head(&mut BytesMut::from(&input[..]), false, &mut Scratch::default()));
                prop_assert_eq!(shared, fresh);
            }
        }

        /// Arbitrary bytes from an upstream get a head, a wait or an error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic_the_response_parser(
            input in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut buf = BytesMut::from(&input[..]);
            let _ = summary(parse_head(&mut buf, false, &mut Scratch::default()));
        }
    }
}
