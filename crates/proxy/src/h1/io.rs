//! The two halves of a client connection, plain or TLS. Split so a request body can read while
//! the connection keeps the write side; concrete enums, so no call goes through a vtable.

use bytes::BytesMut;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::server::TlsStream;

/// A client connection as accepted.
pub(crate) enum Transport {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    pub(super) fn split(self) -> (Reader, Writer) {
        match self {
            Transport::Tcp(s) => {
                let (r, w) = s.into_split();
                (Reader::Tcp(r), Writer::Tcp(w))
            }
            Transport::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (Reader::Tls(r), Writer::Tls(w))
            }
        }
    }
}

pub(crate) enum Reader {
    Tcp(OwnedReadHalf),
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

impl Reader {
    /// One read into the buffer's spare room. tokio's `poll_read` path marks the socket
    /// drained after a short read, which saves the `EAGAIN` read a raw `try_read` would need.
    pub(super) fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Reader::Tcp(r) => pin!(r.read_buf(buf)).poll(cx),
            Reader::Tls(r) => pin!(r.read_buf(buf)).poll(cx),
        }
    }
}

pub(crate) enum Writer {
    Tcp(OwnedWriteHalf),
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

impl Writer {
    pub(super) async fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Writer::Tcp(w) => w.write_all(b).await,
            Writer::Tls(w) => {
                w.write_all(b).await?;
                // rustls holds records until flushed.
                w.flush().await
            }
        }
    }

    pub(super) fn poll_write(&mut self, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Writer::Tcp(w) => Pin::new(w).poll_write(cx, b),
            Writer::Tls(w) => match Pin::new(&mut *w).poll_write(cx, b) {
                Poll::Ready(Ok(n)) => match Pin::new(w).poll_flush(cx) {
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    // A pending flush finishes with the next write or flush.
                    _ => Poll::Ready(Ok(n)),
                },
                other => other,
            },
        }
    }

    /// Closes our sending side (TCP FIN, or TLS close_notify first).
    pub(super) async fn shutdown(&mut self) {
        let _ = match self {
            Writer::Tcp(w) => w.shutdown().await,
            Writer::Tls(w) => w.shutdown().await,
        };
    }
}
