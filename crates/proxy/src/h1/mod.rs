//! Our HTTP/1.1 server side. One task per connection reads a request head, runs the pipeline
//! on the same task, writes the response and loops, the same way our upstream client works:
//! no channel between a connection task and a request, no second task to wake, one write per
//! small response. A request body borrows the connection's read side while it streams.
//!
//! What it guarantees: heads bounded in size and in time (`header_read_timeout`, also for an
//! idle keep-alive connection), RFC 9112 framing with the smuggling-prone cases refused,
//! `Expect: 100-continue` answered only when the body is wanted, pipelined requests answered
//! in order, a client that hangs up mid-request cancelling its request, and a graceful stop
//! that closes idle connections and lets in-flight responses finish.

mod body;
mod io;
mod request;

pub use body::{H1Body, H1BodyError};
pub(crate) use io::Transport;
pub(crate) use request::HeadLimits;

use crate::body::{ClientBody, LINGER_MAX_BYTES, LINGER_MAX_TIME};
use crate::forward::X_REQUEST_ID;
use crate::framing::{Decoder, chunk_size_line, parse_length};
use crate::gateway::Shared;
use crate::heads::put_field;
use crate::pipeline::{ConnMeta, LoggedBody, handle};
use crate::server::Shutdown;
use body::{Handoff, ReadSide};
use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Version};
use http_body::Body;
use io::Writer;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tollgate_core::GatewayError;

/// The first read of a connection gets this much room; most heads fit in one read.
const READ_BUF: usize = 8 * 1024;
/// Response data up to this size is copied behind the head so both go out in one write;
/// larger frames are written as they are.
const COPY_MAX: usize = 16 * 1024;
/// While a request runs we keep reading, to notice a client that hangs up; pipelined bytes
/// beyond this wait in the socket.
const WATCH_MAX: usize = 64 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Connection settings, fixed when the listeners start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) limits: HeadLimits,
    pub(crate) header_read_timeout: Duration,
}

/// Serves one HTTP/1.1 connection until either side closes it. `prefix`: bytes already read
/// (while telling HTTP/1.1 from the HTTP/2 preface).
pub(crate) async fn serve(
    transport: Transport,
    prefix: &[u8],
    shared: Arc<Shared>,
    meta: ConnMeta,
    settings: Settings,
    shutdown: Shutdown,
) {
    let (reader, mut writer) = transport.split();
    let mut buf = BytesMut::with_capacity(READ_BUF);
    buf.extend_from_slice(prefix);
    let mut conn = Conn {
        side: Some(ReadSide {
            io: reader,
            buf,
            eof: false,
        }),
        handoff: None,
        scratch: request::Scratch::default(),
        out: Vec::with_capacity(1024),
        settings,
        registered: None,
    };
    let stop_flag = shutdown.clone();
    let mut stop = pin!(async move {
        let mut s = shutdown;
        s.wait().await;
    });
    // One timer for the connection's life, moved forward per request: tokio re-arms a timer
    // pushed later lazily, where a fresh timeout per request would register and cancel one.
    let mut timer = pin!(tokio::time::sleep(settings.header_read_timeout));

    loop {
        let head = match conn
            .next_head(timer.as_mut(), stop.as_mut(), &stop_flag)
            .await
        {
            Next::Head(h) => h,
            Next::Closed => break,
            Next::Refused(e) => {
                conn.refuse(&mut writer, &shared, e).await;
                break;
            }
        };
        let head_request = head.request.method() == Method::HEAD;
        let http11 = head.request.version() == Version::HTTP_11;
        let (parts, ()) = head.request.into_parts();
        let body = match head.framing {
            None => ClientBody::Empty,
            Some(framing) => {
                let Some(side) = conn.side.take() else { break };
                let handoff = conn.handoff.get_or_insert_with(Arc::default).clone();
                handoff.reset();
                ClientBody::H1(H1Body::new(
                    side,
                    Decoder::new(framing),
                    handoff,
                    head.expect_continue,
                ))
            }
        };
        // Pinned where it is built: the request future is large, and every move is a copy.
        let request = pin!(handle(
            shared.clone(),
            meta.clone(),
            Request::from_parts(parts, body),
            &head.fields,
        ));
        let Some(Ok(response)) = conn.run(request, &mut writer).await else {
            // The client hung up: the request was dropped with everything it held.
            break;
        };

        // The request is over; a body it did not read to the end comes back unfinished.
        let mut unread = None;
        if conn.side.is_none()
            && let Some((side, decoder)) = conn.handoff.as_ref().and_then(|h| h.take())
        {
            conn.side = Some(side);
            if !decoder.is_done() {
                unread = Some(decoder);
            }
        }
        let never_sent = head.expect_continue
            && unread.is_some()
            && !conn.handoff.as_ref().is_some_and(|h| h.continued());
        // A body the client still means to send (no `100 Continue` went out, so it may never
        // come) or one left in a broken state makes the connection unusable after this.
        let mut keep_alive = head.keep_alive
            && conn.side.as_ref().is_some_and(|s| !s.eof)
            && !never_sent
            && !stop_flag.is_triggered();
        let written = conn
            .write_response(
                &mut writer,
                response,
                head_request,
                http11,
                head.trailers,
                &mut keep_alive,
            )
            .await;
        if !written {
            return;
        }
        if keep_alive && let Some(decoder) = unread {
            keep_alive = conn.drain(decoder).await;
        }
        if !keep_alive {
            break;
        }
    }
    writer.shutdown().await;
}

// Unboxed on purpose: a head is the common case, returned once per request and taken apart
// at once; a box would be an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Next {
    Head(request::Head),
    /// The client closed, went silent past the timeout, or we are shutting down.
    Closed,
    Refused(GatewayError),
}

struct Conn {
    /// `None` while a request body has it.
    side: Option<ReadSide>,
    /// Shared with the current request's body; made for the first request that has one.
    handoff: Option<Arc<Handoff>>,
    /// What the head parser keeps between requests.
    scratch: request::Scratch,
    /// The response being written.
    out: Vec<u8>,
    settings: Settings,
    /// The waker the head timer and the shutdown signal were last polled with.
    registered: Option<std::task::Waker>,
}

impl Conn {
    /// Reads until a complete head is buffered, within the header read timeout.
    ///
    /// The timer is not moved per request. A wait's own deadline is kept here, and the timer,
    /// armed for an earlier wait, is pushed to it only once it fires early. The timer and the
    /// shutdown signal stay registered while pending, so they are polled again only when the
    /// task's waker changed; between those polls `shutdown` is read directly.
    async fn next_head(
        &mut self,
        mut timer: Pin<&mut Sleep>,
        mut stop: Pin<&mut impl Future<Output = ()>>,
        shutdown: &Shutdown,
    ) -> Next {
        let Some(side) = self.side.as_mut() else {
            return Next::Closed;
        };
        let limits = self.settings.limits;
        let timeout = self.settings.header_read_timeout;
        let registered = &mut self.registered;
        let mut deadline = None;
        poll_fn(|cx| {
            loop {
                if !side.buf.is_empty() {
                    match request::parse(&mut side.buf, limits, &mut self.scratch) {
                        Ok(Some(head)) => return Poll::Ready(Next::Head(head)),
                        Ok(None) => {}
                        Err(e) => return Poll::Ready(Next::Refused(e)),
                    }
                }
                if side.eof {
                    // A partial head and then EOF: nothing to answer.
                    return Poll::Ready(Next::Closed);
                }
                match side.poll_fill(cx, 1024) {
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Ready(Err(_)) => return Poll::Ready(Next::Closed),
                    Poll::Pending => {}
                }
                // Shutting down: an idle connection (or one mid-head, which the client can
                // safely send again elsewhere) is closed.
                if shutdown.is_triggered() {
                    return Poll::Ready(Next::Closed);
                }
                // The clock starts when the client leaves us waiting, not per read.
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + timeout);
                let mut repoll = !registered
                    .as_ref()
                    .is_some_and(|w: &std::task::Waker| w.will_wake(cx.waker()));
                if timer.is_elapsed() || timer.deadline() > deadline {
                    if Instant::now() >= deadline {
                        return Poll::Ready(Next::Closed);
                    }
                    timer.as_mut().reset(deadline);
                    repoll = true;
                }
                if repoll {
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Next::Closed);
                    }
                    if stop.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Next::Closed);
                    }
                    *registered = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
        })
        .await
    }

    /// Runs the request to its response. Meanwhile sends `100 Continue` when the body asks
    /// for it, and watches the client: `None` if it hung up.
    async fn run<F: Future>(
        &mut self,
        mut request: Pin<&mut F>,
        writer: &mut Writer,
    ) -> Option<F::Output> {
        let mut continue_sent = 0;
        poll_fn(|cx| {
            loop {
                if let Poll::Ready(r) = request.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                if let Some(h) = self.handoff.as_deref()
                    && h.wants_continue()
                {
                    match writer.poll_write(cx, &CONTINUE[continue_sent..]) {
                        Poll::Ready(Ok(n)) => {
                            continue_sent += n;
                            if continue_sent == CONTINUE.len() {
                                h.set_continued();
                            }
                            // Poll the request again: its body can read now.
                            continue;
                        }
                        Poll::Ready(Err(_)) => return Poll::Ready(None),
                        Poll::Pending => {}
                    }
                }
                if let Some(side) = self.side.as_mut()
                    && !side.eof
                    && side.buf.len() < WATCH_MAX
                {
                    match side.poll_fill(cx, 1024) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                        // Pipelined bytes of the next request: kept for later.
                        Poll::Ready(Ok(_)) => continue,
                        Poll::Pending => {}
                    }
                }
                return Poll::Pending;
            }
        })
        .await
    }

    /// Reads and discards the rest of a body the request did not consume, within the same
    /// bounds as HTTP/2's lingering reads (`crate::body::linger`): the client then sees our
    /// answer rather than a reset, and the connection can carry on.
    /// `true`: the connection is at the next request's first byte and can go on.
    async fn drain(&mut self, mut decoder: Decoder) -> bool {
        let Some(side) = self.side.as_mut() else {
            return false;
        };
        let mut seen = 0u64;
        let drained = tokio::time::timeout(
            LINGER_MAX_TIME,
            poll_fn(|cx| {
                loop {
                    match decoder.decode(&mut side.buf, side.eof) {
                        Ok(Some(frame)) => {
                            if let Some(d) = frame.data_ref() {
                                seen += d.len() as u64;
                                if seen > LINGER_MAX_BYTES {
                                    return Poll::Ready(false);
                                }
                            }
                            continue;
                        }
                        Ok(None) if decoder.is_done() => return Poll::Ready(true),
                        Ok(None) => {}
                        Err(_) => return Poll::Ready(false),
                    }
                    match side.poll_fill(cx, decoder.want(READ_BUF)) {
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(_)) => return Poll::Ready(false),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }),
        )
        .await;
        drained.unwrap_or(false)
    }

    /// Answers a head we could not accept with a problem document, then the connection closes.
    async fn refuse(&mut self, writer: &mut Writer, shared: &Shared, e: GatewayError) {
        tracing::debug!(kind = e.kind.slug(), detail = %e.detail, "request head refused");
        let id = tollgate_core::trace::new_request_id(&*shared.ids);
        let resp = e.to_response(id.to_str().unwrap_or("-"));
        let (parts, body) = resp.into_parts();
        self.out.clear();
        let fields = encode_fields_of(&mut self.out, &parts, Some(&id));
        end_head(
            &mut self.out,
            Some(body.len() as u64),
            false,
            Connection::Close,
            fields.date,
        );
        self.out.extend_from_slice(&body);
        let _ = writer.write_all(&self.out).await;
    }

    /// Writes the response. `keep_alive` comes in as what the request allows and goes out as
    /// what the response allowed too. `false`: the connection broke or the body failed midway.
    async fn write_response(
        &mut self,
        writer: &mut Writer,
        response: Response<LoggedBody>,
        head_request: bool,
        http11: bool,
        trailers_ok: bool,
        keep_alive: &mut bool,
    ) -> bool {
        let (parts, mut body) = response.into_parts();
        let code = parts.status.as_u16();
        let bodyless = head_request || code < 200 || code == 204 || code == 304;
        self.out.clear();
        let mut fields = encode_fields_of(&mut self.out, &parts, body.request_id());
        if let Some(raw) = body.raw_fields() {
            // The upstream's fields as they arrived; the map held only the gateway's.
            raw.encode(&mut self.out);
            if let Some(n) = raw.length {
                self.out.extend_from_slice(b"content-length: ");
                self.out
                    .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                self.out.extend_from_slice(b"\r\n");
                fields.length = Some(n);
            }
            fields.date |= raw.date;
        }
        for (name, value) in body.added_fields() {
            put_field(&mut self.out, name, value);
        }
        // The body's own length when the response does not declare one.
        let computed = if bodyless || fields.length.is_some() {
            None
        } else {
            body.size_hint().exact()
        };
        let mut mode = if bodyless {
            Mode::None
        } else if let Some(n) = fields.length.or(computed) {
            Mode::Length(n)
        } else if http11 {
            Mode::Chunked
        } else {
            // An HTTP/1.0 client learns where the body ends when we close.
            *keep_alive = false;
            Mode::Close
        };
        let connection = if !*keep_alive {
            Connection::Close
        } else if http11 {
            Connection::Default
        } else {
            // HTTP/1.0 closes unless told otherwise.
            Connection::KeepAlive
        };
        end_head(
            &mut self.out,
            computed,
            mode == Mode::Chunked,
            connection,
            fields.date,
        );
        if bodyless {
            // Never polled: hyper did not either, and a HEAD answer has nothing to send.
            let sent = writer.write_all(&self.out).await.is_ok();
            drop(body);
            return sent;
        }

        let mut trailers: Option<HeaderMap> = None;
        loop {
            let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            let frame = match polled {
                Poll::Ready(f) => f,
                Poll::Pending => {
                    // Nothing more for now: what we have goes out before we wait.
                    if !self.out.is_empty() {
                        if writer.write_all(&self.out).await.is_err() {
                            return false;
                        }
                        self.out.clear();
                    }
                    poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            };
            match frame {
                None => break,
                Some(Err(e)) => {
                    // Too late for a status: send what we have and close, so the client sees
                    // a truncated body rather than a complete-looking one.
                    tracing::debug!(error = %e, "response body failed");
                    let _ = writer.write_all(&self.out).await;
                    return false;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if !self.push(writer, &mut mode, data).await {
                            return false;
                        }
                        if body.is_end_stream() {
                            break;
                        }
                    }
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
            }
        }
        match mode {
            Mode::Chunked => {
                self.out.extend_from_slice(b"0\r\n");
                if trailers_ok && let Some(t) = &trailers {
                    encode_fields(&mut self.out, t);
                }
                self.out.extend_from_slice(b"\r\n");
            }
            Mode::Length(left) if left > 0 => {
                // The body ended short of its declared length: the client must not take it
                // for complete, nor the connection for reusable.
                let _ = writer.write_all(&self.out).await;
                return false;
            }
            _ => {}
        }
        let sent = writer.write_all(&self.out).await.is_ok();
        // Dropping the body records the request (metrics, usage, the log line): after the
        // response is handed to the socket, so none of that delays it.
        drop(body);
        sent
    }

    /// Frames one data frame into the output, writing large ones directly.
    async fn push(&mut self, writer: &mut Writer, mode: &mut Mode, mut data: Bytes) -> bool {
        if data.is_empty() {
            return true;
        }
        match mode {
            Mode::Length(left) => {
                // More than declared would corrupt the connection: cut it.
                if data.len() as u64 > *left {
                    data.truncate(*left as usize);
                }
                *left -= data.len() as u64;
            }
            Mode::Chunked => chunk_size_line(&mut self.out, data.len()),
            Mode::Close | Mode::None => {}
        }
        if data.len() <= COPY_MAX {
            self.out.extend_from_slice(&data);
        } else {
            if !self.out.is_empty() {
                if writer.write_all(&self.out).await.is_err() {
                    return false;
                }
                self.out.clear();
            }
            if writer.write_all(&data).await.is_err() {
                return false;
            }
        }
        if *mode == Mode::Chunked {
            self.out.extend_from_slice(b"\r\n");
        }
        true
    }
}

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// What writing a response's fields found out.
struct Written {
    /// The response's own `Content-Length`: its first valid value, the only one written.
    length: Option<u64>,
    date: bool,
}

/// Status line and fields. Framing and connection fields are ours to write: any the response
/// carries are left out, so the message can only be read one way. So is `X-Request-ID` when
/// `request_id` is given: the request's own id replaces whatever the map says.
fn encode_fields_of(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    request_id: Option<&HeaderValue>,
) -> Written {
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    // A non-standard reason phrase from the upstream goes back as sent.
    match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        Some(r) => out.extend_from_slice(r.as_bytes()),
        None => out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    let mut written = Written {
        length: None,
        date: false,
    };
    if let Some(id) = request_id {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &parts.headers {
        if name == CONNECTION
            || name == TRANSFER_ENCODING
            || request_id.is_some() && name == X_REQUEST_ID
        {
            continue;
        }
        if name == CONTENT_LENGTH {
            // Our upstream client refuses conflicting lengths, so a second value is a repeat.
            if written.length.is_some() {
                continue;
            }
            match parse_length(value.as_bytes()) {
                Some(n) => written.length = Some(n),
                None => continue,
            }
        }
        written.date |= name == DATE;
        put_field(out, name, value);
    }
    written
}

/// The framing and connection fields, `Date` if the response had none, and the blank line.
fn end_head(
    out: &mut Vec<u8>,
    content_length: Option<u64>,
    chunked: bool,
    connection: Connection,
    has_date: bool,
) {
    if let Some(n) = content_length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !has_date {
        date::append(out);
    }
    match connection {
        Connection::Default => {}
        Connection::Close => out.extend_from_slice(b"connection: close\r\n"),
        Connection::KeepAlive => out.extend_from_slice(b"connection: keep-alive\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// What the response's `Connection` field says, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    /// HTTP/1.1 and persistent: nothing to say.
    Default,
    Close,
    KeepAlive,
}

fn encode_fields(out: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        put_field(out, name, value);
    }
}

mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        /// The `Date` field, formatted once per second per thread.
        static CACHE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
    }

    pub(super) fn append(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHE.with_borrow_mut(|(at, text)| {
            if *at != secs {
                *at = secs;
                text.clear();
                text.extend_from_slice(b"date: ");
                text.extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
                text.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(text);
        });
    }
}
