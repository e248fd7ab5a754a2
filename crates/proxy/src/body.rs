//! Body types of the proxy path. Both are concrete enums rather than boxed trait objects, so a
//! proxied request allocates no body wrapper; both stream frame by frame and never buffer.

use crate::upstream::{RawFields, UpstreamBody, UpstreamBodyError};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// A client's request body as the connection delivers it.
pub enum ClientBody {
    /// No body (no `Content-Length` or `Transfer-Encoding` on HTTP/1.1).
    Empty,
    /// Read by our HTTP/1.1 server straight from the connection.
    H1(crate::h1::H1Body),
    /// A body hyper delivered: an HTTP/2 stream's data.
    Hyper(Incoming),
}

/// Why a client's body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error(transparent)]
    H1(#[from] crate::h1::H1BodyError),
    #[error("client body: {0}")]
    Hyper(#[from] hyper::Error),
}

impl ClientBodyError {
    /// The client is gone: its connection closed before the body was complete, or failed, or
    /// its HTTP/2 stream did. Malformed framing is the client's mistake, not its absence.
    pub fn client_gone(&self) -> bool {
        match self {
            Self::H1(crate::h1::H1BodyError::Framing(f)) => {
                matches!(f, crate::framing::FramingError::Incomplete)
            }
            Self::H1(crate::h1::H1BodyError::Io(_)) | Self::Hyper(_) => true,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::H1(b) => b.is_end_stream(),
            ClientBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::H1(b) => b.size_hint(),
            ClientBody::Hyper(b) => b.size_hint(),
        }
    }
}

/// The request body sent upstream: the client's stream, cut off with an error once it exceeds
/// the route's limit (a missing or lying `Content-Length` cannot get past it).
pub struct RequestBody {
    inner: Option<ClientBody>,
    remaining: u64,
    limit: u64,
}

/// The client sent more body than the route allows.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// Why the request body stream failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error(transparent)]
    TooLarge(#[from] BodyTooLarge),
    #[error(transparent)]
    Client(#[from] ClientBodyError),
}

impl RequestBody {
    pub fn new(inner: ClientBody, limit: Option<u64>) -> Self {
        let limit = limit.unwrap_or(u64::MAX);
        Self {
            inner: Some(inner),
            remaining: limit,
            limit,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        // The upstream request fails with this error, which the proxy turns into
                        // 413; the rest of the client's body is read and discarded meanwhile.
                        if let Some(rest) = this.inner.take() {
                            linger(rest);
                        }
                        return Poll::Ready(Some(Err(BodyTooLarge(this.limit).into())));
                    }
                    this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// The response body sent to the client: an upstream's stream or a gateway-made document.
// Unboxed on purpose: the upstream variant is the common one, and a box would be an
// allocation per proxied request to save a few moves of the rare gateway-made one.
#[allow(clippy::large_enum_variant)]
pub enum ResponseBody {
    /// The upstream's body; it owns its connection and returns it to the pool itself.
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

impl ResponseBody {
    pub fn full(b: Bytes) -> Self {
        ResponseBody::Full(Some(b))
    }

    /// An upstream response's fields kept as they arrived (not in the response's map).
    pub fn raw_fields(&self) -> Option<&RawFields> {
        match self {
            ResponseBody::Upstream(b) => b.raw_fields(),
            ResponseBody::Full(_) => None,
        }
    }

    pub fn take_raw_fields(&mut self) -> Option<RawFields> {
        match self {
            ResponseBody::Upstream(b) => b.take_raw_fields(),
            ResponseBody::Full(_) => None,
        }
    }
}

/// Moves fields kept raw into the response's map, for whatever needs them there.
pub fn materialize(resp: &mut http::Response<ResponseBody>) {
    if let Some(raw) = resp.body_mut().take_raw_fields() {
        raw.into_map(resp.headers_mut());
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        match self.get_mut() {
            ResponseBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(b) => b.is_end_stream(),
            ResponseBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(b) => b.size_hint(),
            ResponseBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}

/// How much of a refused request body we read and discard so the client can still read our
/// answer. Closing with unread data makes the kernel reset the connection, and a client still
/// writing its body would see a broken pipe instead of the 4xx we sent (nginx's lingering close).
pub const LINGER_MAX_BYTES: u64 = 1024 * 1024;
pub const LINGER_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and discards what remains of a request body in the background, within limits. An
/// HTTP/1.1 connection drains its own body after the response, so only HTTP/2 needs a task.
pub fn linger(body: ClientBody) {
    let ClientBody::Hyper(body) = body else {
        return;
    };
    if body.is_end_stream() {
        return;
    }
    if body.size_hint().lower() > LINGER_MAX_BYTES {
        // Declared too large to be worth reading: let the connection close.
        return;
    }
    tokio::spawn(async move {
        let mut body = body;
        let mut seen = 0u64;
        let _ = tokio::time::timeout(LINGER_MAX_TIME, async {
            while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut body).await {
                if let Some(d) = frame.data_ref() {
                    seen += d.len() as u64;
                    if seen > LINGER_MAX_BYTES {
                        break;
                    }
                }
            }
        })
        .await;
    });
}
