//! A client's request body, read straight out of its connection's buffer on the request's own
//! task. The body borrows the connection's read side for as long as it streams and hands it
//! back when it ends or is dropped; the connection then drains whatever the body left unread.

use super::io::Reader;
use crate::framing::{Decoder, FramingError};
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

/// Body reads start at this size and double while the socket keeps filling them, up to
/// `MAX_READ`: a large upload moves in few reads without small bodies paying for it.
const READ_BUF: usize = 8 * 1024;
const MAX_READ: usize = 128 * 1024;

/// The connection's read side: the socket, bytes read but not yet consumed, and whether the
/// client closed its end.
pub(crate) struct ReadSide {
    pub(super) io: Reader,
    pub(super) buf: BytesMut,
    pub(super) eof: bool,
}

impl ReadSide {
    /// Reads once into the buffer, making room for `want` more bytes first.
    pub(super) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want);
        }
        let n = ready!(self.io.poll_read_buf(cx, &mut self.buf))?;
        if n == 0 {
            self.eof = true;
        }
        Poll::Ready(Ok(n))
    }
}

/// What a connection and the body of its current request share.
#[derive(Default)]
pub(super) struct Handoff {
    /// The read side, back from a body that ended or was dropped, with the body's decoder.
    returned: Mutex<Option<(ReadSide, Decoder)>>,
    /// The body was polled and waits for `100 Continue` to be sent.
    wants_continue: AtomicBool,
    /// `100 Continue` went out.
    continued: AtomicBool,
}

impl Handoff {
    pub(super) fn reset(&self) {
        self.wants_continue.store(false, Ordering::Relaxed);
        self.continued.store(false, Ordering::Relaxed);
    }

    pub(super) fn wants_continue(&self) -> bool {
        self.wants_continue.load(Ordering::Acquire) && !self.continued.load(Ordering::Acquire)
    }

    pub(super) fn continued(&self) -> bool {
        self.continued.load(Ordering::Acquire)
    }

    pub(super) fn set_continued(&self) {
        self.continued.store(true, Ordering::Release);
    }

    pub(super) fn take(&self) -> Option<(ReadSide, Decoder)> {
        self.returned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn give_back(&self, side: ReadSide, decoder: Decoder) {
        *self.returned.lock().unwrap_or_else(|p| p.into_inner()) = Some((side, decoder));
    }
}

/// Why reading a client's body failed.
#[derive(Debug, thiserror::Error)]
pub enum H1BodyError {
    #[error("client body: {0}")]
    Framing(#[from] FramingError),
    #[error("client body: {0}")]
    Io(#[from] std::io::Error),
}

/// An HTTP/1.1 request body.
pub struct H1Body {
    side: Option<ReadSide>,
    decoder: Decoder,
    handoff: std::sync::Arc<Handoff>,
    /// `Expect: 100-continue` and no `100 Continue` sent yet.
    awaiting_continue: bool,
    read_size: usize,
}

impl H1Body {
    pub(super) fn new(
        side: ReadSide,
        decoder: Decoder,
        handoff: std::sync::Arc<Handoff>,
        expect_continue: bool,
    ) -> Self {
        Self {
            side: Some(side),
            decoder,
            handoff,
            awaiting_continue: expect_continue,
            read_size: READ_BUF,
        }
    }

    fn give_back(&mut self) {
        if let Some(side) = self.side.take() {
            let decoder = std::mem::replace(
                &mut self.decoder,
                Decoder::new(crate::framing::Framing::Length(0)),
            );
            self.handoff.give_back(side, decoder);
        }
    }
}

impl http_body::Body for H1Body {
    type Data = Bytes;
    type Error = H1BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1BodyError>>> {
        let this = &mut *self;
        if this.awaiting_continue {
            if !this.handoff.continued() {
                // The connection, which polls the request on this same task, sees the flag,
                // sends `100 Continue` and polls again: no waker needed.
                this.handoff.wants_continue.store(true, Ordering::Release);
                return Poll::Pending;
            }
            this.awaiting_continue = false;
        }
        loop {
            let Some(side) = this.side.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut side.buf, side.eof) {
                Ok(Some(frame)) => {
                    if this.decoder.is_done() {
                        this.give_back();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) if this.decoder.is_done() => {
                    this.give_back();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => {
                    // The decoder is not done, so the connection closes after the response.
                    this.give_back();
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            let want = this.decoder.want(this.read_size);
            match ready!(side.poll_fill(cx, want)) {
                Ok(n) => {
                    if n >= this.read_size && this.read_size < MAX_READ {
                        this.read_size *= 2;
                    }
                }
                Err(e) => {
                    side.eof = true;
                    this.give_back();
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.side.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        self.give_back();
    }
}
