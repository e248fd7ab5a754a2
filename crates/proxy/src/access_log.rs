//! The JSON access log: one line per request, written when the response body has ended (so
//! durations and byte counts are final).
//!
//! Lines are formatted into a shared buffer that a dedicated thread flushes in batches: the
//! request path never waits on a slow sink, and its only syscall for logging is one wake-up of
//! the flusher per full batch. If the sink falls more than `MAX_PENDING` behind, lines are
//! dropped and counted rather than letting memory grow without bound.

use prometheus_client::metrics::counter::Counter;
use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

const MAX_PENDING: usize = 8 * 1024 * 1024;
const FLUSH_EVERY: Duration = Duration::from_millis(100);
const FLUSH_AT: usize = 64 * 1024;
/// Room reserved per line before formatting it, beyond the path.
const LINE_ESTIMATE: usize = 512;

/// Everything one access log line says.
pub struct Record<'a> {
    /// When the request finished, by the gateway's clock.
    pub at: SystemTime,
    pub request_id: &'a str,
    pub client_ip: IpAddr,
    /// Ours, like `protocol`, `error` and `fault`: logged without escaping.
    pub listener: &'static str,
    pub protocol: &'static str,
    /// A token by type: logged without escaping.
    pub method: &'a http::Method,
    pub path: &'a str,
    /// The matched route's `tenant`, `api` and `route` members, rendered when compiling.
    pub route: Option<&'a RouteFields>,
    pub consumer: Option<&'a str>,
    pub status: u16,
    pub duration: Duration,
    pub upstream_duration: Option<Duration>,
    /// The upstream target's `host:port`, rendered when compiling.
    pub upstream: Option<&'a JsonStr>,
    pub bytes_in: Option<u64>,
    pub bytes_out: u64,
    pub error: Option<&'static str>,
    pub fault: Option<&'static str>,
    /// The client went away before the response body ended.
    pub aborted: bool,
}

/// A string rendered once as a JSON string literal, quotes included: for values the config
/// fixes (an upstream target's name), so no log line scans them for characters to escape.
#[derive(Debug, Clone)]
pub struct JsonStr(Box<[u8]>);

impl JsonStr {
    pub fn new(s: &str) -> Self {
        let mut out = Vec::with_capacity(s.len() + 2);
        json_str(&mut out, s);
        Self(out.into())
    }
}

/// A route's `tenant`, `api` and `route` members of a log line, rendered once per route when
/// the config is compiled: three names that would otherwise be scanned for escapes per line.
#[derive(Debug, Clone)]
pub struct RouteFields(Box<[u8]>);

impl RouteFields {
    pub fn new(tenant: &str, api: &str, route: &str) -> Self {
        let mut out = Vec::new();
        field_str(&mut out, ",\"tenant\":", Some(tenant));
        field_str(&mut out, ",\"api\":", Some(api));
        field_str(&mut out, ",\"route\":", Some(route));
        Self(out.into())
    }
}

/// The members of a request that matched no route.
const NO_ROUTE: &[u8] = b",\"tenant\":null,\"api\":null,\"route\":null";

/// Lines waiting for the flusher.
#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// `flush` wants the lines written now, however few.
    forced: bool,
}

impl Pending {
    /// Appends a request's line; says whether the flusher must be woken for it. Only the line
    /// that fills a batch does: waking the flusher costs a syscall even when it is already awake
    /// (a futex wake), and the lines after it are in the batch it is about to take.
    fn push(&mut self, r: &Record<'_>) -> bool {
        let short = self.lines.len() < FLUSH_AT;
        format_record(&mut self.lines, r);
        short && self.lines.len() >= FLUSH_AT
    }

    /// Whether the flusher should write now rather than at its next tick. Checked before it
    /// sleeps too, so a wake-up sent while it was writing is not lost.
    fn ready(&self) -> bool {
        self.forced || self.lines.len() >= FLUSH_AT
    }

    /// Hands the lines to the flusher in exchange for its emptied buffer, which starts the
    /// next batch.
    fn take(&mut self, out: &mut Vec<u8>) {
        debug_assert!(out.is_empty());
        std::mem::swap(&mut self.lines, out);
        self.forced = false;
    }
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Count of completed flush rounds, so `flush` can wait for a write to land.
    rounds: Mutex<u64>,
    round_done: Condvar,
}

#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
    dropped: Counter,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

/// Where lines go.
pub enum Sink {
    Stdout,
    Stderr,
    File(std::fs::File),
    /// For tests: lines are appended here.
    Memory(Arc<Mutex<Vec<u8>>>),
}

impl AccessLog {
    /// Starts the flushing thread. It lives as long as the process; `flush` forces a write.
    pub fn start(sink: Sink, dropped: Counter) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                lines: Vec::with_capacity(FLUSH_AT * 2),
                ..Pending::default()
            }),
            wake: Condvar::new(),
            rounds: Mutex::new(0),
            round_done: Condvar::new(),
        });
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || flush_loop(&s, sink));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access log thread; access log lines will be dropped");
        }
        Self { shared, dropped }
    }

    pub fn log(&self, r: &Record<'_>) {
        // Formatted straight into the shared buffer: the flusher holds the lock only to swap
        // buffers, so formatting under it costs no contention worth a second copy.
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if pending.lines.len() > MAX_PENDING {
            drop(pending);
            self.dropped.inc();
            return;
        }
        if pending.push(r) {
            // Released first, so the flusher does not wake into a held lock.
            drop(pending);
            self.shared.wake.notify_one();
        }
    }

    /// Asks the flusher to write what is pending now (used at shutdown).
    pub fn flush(&self) {
        let rounds = self.shared.rounds.lock().unwrap_or_else(|p| p.into_inner());
        let start = *rounds;
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forced = true;
        self.shared.wake.notify_one();
        // Two rounds: the one in progress may have swapped out its buffer before our lines.
        let _ = self
            .shared
            .round_done
            .wait_timeout_while(rounds, Duration::from_secs(2), |r| *r < start + 2);
    }
}

fn flush_loop(shared: &Shared, mut sink: Sink) {
    let mut out = Vec::with_capacity(FLUSH_AT * 2);
    loop {
        {
            let guard = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            let (mut pending, _) = shared
                .wake
                .wait_timeout_while(guard, FLUSH_EVERY, |p| !p.ready())
                .unwrap_or_else(|p| p.into_inner());
            pending.take(&mut out);
        }
        if !out.is_empty() {
            write_batch(&mut sink, &out);
            out.clear();
        }
        *shared.rounds.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        shared.round_done.notify_all();
    }
}

fn write_batch(sink: &mut Sink, out: &[u8]) {
    {
        let res = match sink {
            Sink::Stdout => std::io::stdout().lock().write_all(out),
            Sink::Stderr => std::io::stderr().lock().write_all(out),
            Sink::File(f) => f.write_all(out),
            Sink::Memory(m) => {
                m.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(out);
                Ok(())
            }
        };
        if let Err(e) = res {
            // Losing log lines must not take the gateway down; say so once per batch.
            eprintln!("tollgate: access log write failed: {e}");
        }
    }
}

/// Whether a JSON string holding `s` needs any escape: a `"`, a `\\` or a control
/// character. Eight bytes at a time with the "has a byte less than n" bit trick, exact as a
/// yes/no answer; bytes of 0x80 and up never match. The tail is padded with a plain byte.
#[inline]
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    #[inline(always)]
    fn hit(w: u64) -> u64 {
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        control | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))
    }
    let mut chunks = s.chunks_exact(8);
    let mut found = 0;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        found |= hit(u64::from_ne_bytes(w));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [b'a'; 8];
        w[..rest.len()].copy_from_slice(rest);
        found |= hit(u64::from_ne_bytes(w));
    }
    found != 0
}

#[inline]
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    // Almost every value is plain ASCII with nothing to escape: copy it in one go.
    if !needs_escape(s.as_bytes()) {
        out.extend_from_slice(s.as_bytes());
    } else {
        for c in s.chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                c if (c as u32) < 0x20 => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    let b = c as u8;
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0xf)]);
                }
                c => {
                    let mut utf8 = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
            }
        }
    }
    out.push(b'"');
}

/// `key` is the whole separator and member name, e.g. `,"route":`, so each field costs one
/// copy for its name. Inlined: the key's length is then a constant and its copy a few moves
/// rather than a `memcpy` call.
#[inline(always)]
fn field_str(out: &mut Vec<u8>, key: &str, v: Option<&str>) {
    out.extend_from_slice(key.as_bytes());
    match v {
        Some(v) => json_str(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// For values that cannot need escaping by their type: our own constants, and methods (RFC 9110
/// tokens, which `http::Method` enforces).
#[inline(always)]
fn field_plain(out: &mut Vec<u8>, key: &str, v: Option<&str>) {
    out.extend_from_slice(key.as_bytes());
    match v {
        Some(v) => {
            debug_assert!(!v.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20));
            out.push(b'"');
            out.extend_from_slice(v.as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

#[inline(always)]
fn field_num(out: &mut Vec<u8>, key: &str, v: Option<u64>) {
    out.extend_from_slice(key.as_bytes());
    match v {
        Some(v) => out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

fn field_ms(out: &mut Vec<u8>, key: &str, d: Option<Duration>) {
    out.extend_from_slice(key.as_bytes());
    match d {
        // Microsecond precision as a decimal number of milliseconds.
        Some(d) => {
            let us = d.as_micros() as u64;
            out.extend_from_slice(itoa::Buffer::new().format(us / 1000).as_bytes());
            let frac = us % 1000;
            out.extend_from_slice(&[
                b'.',
                b'0' + (frac / 100) as u8,
                b'0' + (frac / 10 % 10) as u8,
                b'0' + (frac % 10) as u8,
            ]);
        }
        None => out.extend_from_slice(b"null"),
    }
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = itoa::Buffer::new();
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(buf.format(*o).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// RFC 3339 UTC timestamp with milliseconds. The part up to the seconds changes once a second,
/// so it is formatted once a second per thread.
fn push_timestamp(out: &mut Vec<u8>, now: SystemTime) {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let full = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(secs),
            )
            .to_string();
            // "2026-11-28T04:54:12Z" → keep everything before the Z.
            c.1 = full.trim_end_matches('Z').to_string();
            c.0 = secs;
        }
        out.extend_from_slice(c.1.as_bytes());
    });
    let ms = since.subsec_millis();
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
}

pub(crate) fn format_record(out: &mut Vec<u8>, r: &Record<'_>) {
    // A line is a few hundred bytes: one capacity check up front, not one per field.
    out.reserve(LINE_ESTIMATE + r.path.len());
    out.extend_from_slice(b"{\"ts\":\"");
    push_timestamp(out, r.at);
    field_str(out, "\",\"request_id\":", Some(r.request_id));
    out.extend_from_slice(b",\"client_ip\":\"");
    push_ip(out, r.client_ip);
    field_plain(out, "\",\"listener\":", Some(r.listener));
    field_plain(out, ",\"protocol\":", Some(r.protocol));
    field_plain(out, ",\"method\":", Some(r.method.as_str()));
    field_str(out, ",\"path\":", Some(r.path));
    out.extend_from_slice(r.route.map_or(NO_ROUTE, |f| &f.0));
    field_str(out, ",\"consumer\":", r.consumer);
    field_num(out, ",\"status\":", Some(u64::from(r.status)));
    field_ms(out, ",\"duration_ms\":", Some(r.duration));
    field_ms(out, ",\"upstream_ms\":", r.upstream_duration);
    out.extend_from_slice(b",\"upstream\":");
    out.extend_from_slice(r.upstream.map_or(&b"null"[..], |u| &u.0));
    field_num(out, ",\"bytes_in\":", r.bytes_in);
    field_num(out, ",\"bytes_out\":", Some(r.bytes_out));
    field_plain(out, ",\"error\":", r.error);
    field_plain(out, ",\"fault\":", r.fault);
    if r.aborted {
        out.extend_from_slice(b",\"aborted\":true");
    }
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_valid_json_and_escape_hostile_values() {
        let mut s = Vec::new();
        format_record(
            &mut s,
            &Record {
                at: SystemTime::now(),
                request_id: "abc\"\\",
                client_ip: [10, 0, 0, 1].into(),
                listener: "public",
                protocol: "HTTP/1.1",
                method: &http::Method::GET,
                path: "/a\u{1}b",
                route: Some(&RouteFields::new("retail", "ac\"counts", "r")),
                consumer: Some("partner-gold"),
                status: 200,
                duration: Duration::from_micros(1234),
                upstream_duration: None,
                upstream: Some(&JsonStr::new("127.0.0.1:9101")),
                bytes_in: None,
                bytes_out: 42,
                error: None,
                fault: None,
                aborted: true,
            },
        );
        let s = String::from_utf8(s).expect("utf8");
        assert!(s.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(s.trim()).expect("valid json");
        assert_eq!(v["request_id"], "abc\"\\");
        assert_eq!(v["path"], "/a\u{1}b");
        assert_eq!(v["duration_ms"], 1.234);
        assert_eq!(v["tenant"], "retail");
        assert_eq!(v["api"], "ac\"counts");
        assert_eq!(v["route"], "r");
        assert_eq!(v["upstream"], "127.0.0.1:9101");
        assert_eq!(v["bytes_out"], 42);
        assert_eq!(v["aborted"], true);
        assert_eq!(v["client_ip"], "10.0.0.1");
        let ts = v["ts"].as_str().expect("ts");
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
        assert_eq!(ts.len(), "2026-11-28T04:54:12.123Z".len(), "{ts}");
    }

    #[test]
    fn milliseconds_are_zero_padded() {
        let mut s = Vec::new();
        field_ms(&mut s, ",\"d\":", Some(Duration::from_micros(2_007)));
        assert_eq!(s, b",\"d\":2.007");
        let mut s = Vec::new();
        field_ms(&mut s, ",\"d\":", Some(Duration::from_micros(12_345_678)));
        assert_eq!(s, b",\"d\":12345.678");
        let mut s = Vec::new();
        push_ip(&mut s, "2001:db8::1".parse().expect("ip"));
        assert_eq!(s, b"2001:db8::1");
    }

    /// A request that matched no route, with `id` as its request id.
    fn unrouted(id: &str) -> Record<'_> {
        Record {
            at: SystemTime::now(),
            request_id: id,
            client_ip: [127, 0, 0, 1].into(),
            listener: "public",
            protocol: "HTTP/1.1",
            method: &http::Method::GET,
            path: "/",
            route: None,
            consumer: None,
            status: 404,
            duration: Duration::ZERO,
            upstream_duration: None,
            upstream: None,
            bytes_in: Some(0),
            bytes_out: 0,
            error: Some("not-found"),
            fault: Some("client"),
            aborted: false,
        }
    }

    #[test]
    fn memory_sink_receives_lines() {
        let mem = Arc::new(Mutex::new(Vec::new()));
        let log = AccessLog::start(Sink::Memory(mem.clone()), Counter::default());
        log.log(&unrouted("x"));
        log.flush();
        let text = String::from_utf8(mem.lock().expect("lock").clone()).expect("utf8");
        assert!(text.contains("\"error\":\"not-found\""), "{text}");
        let v: serde_json::Value = serde_json::from_str(text.trim()).expect("valid json");
        assert_eq!(v["route"], serde_json::Value::Null);
        assert_eq!(v["upstream"], serde_json::Value::Null);
    }

    #[test]
    fn a_full_batch_wakes_the_flusher_once() {
        let mut p = Pending::default();
        for _ in 0..2 {
            let (mut lines, mut wakes) = (0, 0);
            while p.lines.len() < 3 * FLUSH_AT {
                wakes += usize::from(p.push(&unrouted("x")));
                lines += 1;
                // Below a batch the flusher waits for its tick; from one batch on it writes
                // whenever it looks, woken or not.
                assert_eq!(p.ready(), p.lines.len() >= FLUSH_AT);
            }
            assert_eq!(wakes, 1, "one wake-up for {lines} lines");
            let mut out = Vec::new();
            p.take(&mut out);
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), lines);
            assert!(p.lines.is_empty() && !p.ready());
        }
        // A forced flush is ready with any number of lines, and taking them clears it.
        p.push(&unrouted("x"));
        p.forced = true;
        assert!(p.ready());
        p.take(&mut Vec::new());
        assert!(!p.ready());
    }

    #[test]
    fn lines_of_many_batches_arrive_whole_and_in_order() {
        let mem = Arc::new(Mutex::new(Vec::new()));
        let dropped = Counter::default();
        let log = AccessLog::start(Sink::Memory(mem.clone()), dropped.clone());
        let ids: Vec<String> = (0..2_000).map(|i| i.to_string()).collect();
        for id in &ids {
            log.log(&unrouted(id));
        }
        log.flush();
        let text = String::from_utf8(mem.lock().expect("lock").clone()).expect("utf8");
        assert!(
            text.len() > 4 * FLUSH_AT,
            "{} bytes: fewer batches than meant",
            text.len()
        );
        let got: Vec<String> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("valid json");
                v["request_id"].as_str().expect("request_id").to_owned()
            })
            .collect();
        assert_eq!(got, ids);
        assert_eq!(dropped.get(), 0);
    }

    #[test]
    fn the_word_at_a_time_escape_check_agrees_with_a_byte_at_a_time_one() {
        let naive = |s: &[u8]| s.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20);
        // Every byte value at every position of every length up to three words, among
        // neighbours just above and below the bounds the bit trick works with.
        for len in 1..=24 {
            for pos in 0..len {
                for b in 0..=255u8 {
                    for fill in [b'a', b' ', 0x7f, 0x80, 0xff, b'!', b']', b'#'] {
                        let mut s = vec![fill; len];
                        s[pos] = b;
                        assert_eq!(needs_escape(&s), naive(&s), "{s:?}");
                    }
                }
            }
        }
        assert!(!needs_escape(b""));
    }
}
