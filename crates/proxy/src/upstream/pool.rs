//! Upstream connections and the per-target stack of idle ones.
//!
//! A connection carries its own read and write buffers, so a reused connection reuses their
//! allocations too. The stack is a plain mutex-guarded `Vec`: checkout and checkin are a lock
//! and a pop or push, never held across an await.

use bytes::BytesMut;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The first read of a response head gets this much room; most heads fit in one read.
pub(super) const READ_BUF: usize = 8 * 1024;

/// One HTTP/1.1 connection to a target, idle between requests.
pub(crate) struct Conn {
    pub(super) stream: TcpStream,
    /// Response bytes read but not yet consumed. Between requests it is empty; its allocation
    /// is reclaimed once the frames split off it have been dropped.
    pub(super) rbuf: BytesMut,
    /// The request head (and chunk prefixes) being written.
    pub(super) wbuf: Vec<u8>,
    /// What the response head parser keeps between heads.
    pub(super) scratch: super::response::Scratch,
    /// The response timeout of the request on this connection, re-armed per request.
    pub(super) timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// When the connection's last request was sent. Back in the pool it counts as idle from
    /// then: a little early by the response's duration, which errs towards closing it before
    /// the upstream does, and saves a clock read per request.
    pub(super) used: Instant,
}

impl Conn {
    /// Boxed once per connection: a connection moves from the pool into a request, into its
    /// response body and back per request, and a pointer is cheaper to move than its state.
    pub(super) fn new(stream: TcpStream) -> Box<Self> {
        // Small requests and responses: one segment each way, without Nagle's delay.
        let _ = stream.set_nodelay(true);
        Box::new(Self {
            stream,
            rbuf: BytesMut::with_capacity(READ_BUF),
            wbuf: Vec::with_capacity(1024),
            scratch: Default::default(),
            timer: None,
            used: Instant::now(),
        })
    }

    /// Whether an idle connection can carry a request: the upstream has not closed it nor sent
    /// anything while it sat idle. Costs no syscall unless the socket was flagged readable.
    fn is_usable(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readiness can be stale (tokio clears it only on `WouldBlock`), so look: EOF or
            // stray bytes mean the connection cannot be used.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(
                    self.stream.try_read(&mut probe),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                )
            }
        }
    }
}

pub(super) struct Idle {
    // Boxed on purpose: checkout and checkin hand the box to a request and back (see
    // `Conn::new`), and unboxing it into the vector would copy the whole state each way.
    #[allow(clippy::vec_box)]
    stack: Mutex<Vec<Box<Conn>>>,
    max: usize,
    timeout: Duration,
}

impl Idle {
    pub(super) fn new(max: usize, timeout: Duration) -> Self {
        Self {
            stack: Mutex::new(Vec::new()),
            max,
            timeout,
        }
    }

    /// The most recently used connection that is still usable at `now`, if any. Stale ones
    /// are closed outside the lock.
    pub(super) fn checkout(&self, now: Instant) -> Option<Box<Conn>> {
        loop {
            let conn = {
                let mut stack = self.stack.lock().unwrap_or_else(|p| p.into_inner());
                let conn = stack.pop()?;
                if now.saturating_duration_since(conn.used) >= self.timeout {
                    // The stack is ordered by idle time: everything below is older still.
                    let stale = std::mem::take(&mut *stack);
                    drop(stack);
                    drop(stale);
                    return None;
                }
                conn
            };
            if conn.is_usable() {
                return Some(conn);
            }
        }
    }

    /// Closes connections idle for longer than the idle timeout or closed by the upstream.
    /// Checkout does this lazily; this is for pools no request touches for a while, whose
    /// sockets would otherwise linger (in CLOSE_WAIT once the upstream hung up).
    pub(super) fn reap(&self) {
        let stale: Vec<Box<Conn>> = {
            let mut stack = self.stack.lock().unwrap_or_else(|p| p.into_inner());
            let timeout = self.timeout;
            let now = Instant::now();
            let (keep, stale): (Vec<_>, Vec<_>) = std::mem::take(&mut *stack)
                .into_iter()
                .partition(|c| now.saturating_duration_since(c.used) < timeout && c.is_usable());
            *stack = keep;
            stale
        };
        // Closed outside the lock.
        drop(stale);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.stack.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Takes back a connection whose last response was read to the end.
    pub(super) fn checkin(&self, mut conn: Box<Conn>) {
        conn.wbuf.clear();
        let mut stack = self.stack.lock().unwrap_or_else(|p| p.into_inner());
        if stack.len() < self.max {
            stack.push(conn);
            return;
        }
        // Full: the connection is closed once the lock is released.
        drop(stack);
    }
}
