//! Request correlation: `X-Request-ID` and W3C Trace Context `traceparent`.
//!
//! Randomness comes from an injected [`IdSource`] so tests can make ids deterministic.

use http::HeaderValue;

/// Where new ids come from. The default uses a fast non-cryptographic generator: ids need to be
/// unique and unguessable enough for correlation, not secret.
pub trait IdSource: Send + Sync + 'static {
    fn next_u128(&self) -> u128;
}

/// Thread-local wyrand seeded from the OS; no locking on the hot path.
#[derive(Debug, Default)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn next_u128(&self) -> u128 {
        fastrand::u128(..)
    }
}

/// Deterministic ids for tests: a seeded generator behind a mutex.
#[derive(Debug)]
pub struct SeededIds(std::sync::Mutex<fastrand::Rng>);

impl SeededIds {
    pub fn new(seed: u64) -> Self {
        Self(std::sync::Mutex::new(fastrand::Rng::with_seed(seed)))
    }
}

impl IdSource for SeededIds {
    fn next_u128(&self) -> u128 {
        match self.0.lock() {
            Ok(mut rng) => rng.u128(..),
            Err(poisoned) => poisoned.into_inner().u128(..),
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Every byte's two lowercase hex digits: one lookup per byte where two nibble lookups and
/// their bounds checks cost twice as much (every request writes 50 digits).
static HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

/// The low `out.len() / 2` bytes of `v` as lowercase hex; `out.len()` is even.
fn hex_into(out: &mut [u8], v: u128) {
    let bytes = v.to_be_bytes();
    let from = bytes.len().saturating_sub(out.len() / 2);
    for (o, b) in out.chunks_exact_mut(2).zip(&bytes[from..]) {
        o.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// The longest client-supplied request id we accept.
pub const MAX_REQUEST_ID: usize = 128;

/// A client's `X-Request-ID` is kept when it is 1..=128 visible ASCII characters; anything else
/// (empty, too long, spaces, control or non-ASCII bytes) is replaced, because it ends up in our
/// logs and in other systems' headers.
pub fn sane_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// A new request id: 32 lowercase hex characters.
pub fn new_request_id(ids: &dyn IdSource) -> HeaderValue {
    let mut buf = [0u8; 32];
    hex_into(&mut buf, ids.next_u128());
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
}

/// The parts of a `traceparent` we keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

fn parse_hex(s: &[u8]) -> Option<u128> {
    let mut v: u128 = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            // Trace Context requires lowercase.
            _ => return None,
        };
        v = (v << 4) | u128::from(d);
    }
    Some(v)
}

impl TraceParent {
    /// Parses per W3C Trace Context §3.2: version 00 exactly 55 chars; a higher version may carry
    /// more fields after a `-`; version ff, all-zero ids and uppercase hex are invalid.
    pub fn parse(v: &[u8]) -> Option<Self> {
        if v.len() < 55 {
            return None;
        }
        let version = parse_hex(&v[0..2])?;
        if version == 0xff || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        if version == 0 && v.len() != 55 {
            return None;
        }
        if version > 0 && v.len() > 55 && v[55] != b'-' {
            return None;
        }
        let trace_id = parse_hex(&v[3..35])?;
        let parent_id = parse_hex(&v[36..52])? as u64;
        let flags = parse_hex(&v[53..55])? as u8;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Our span as a child of `parent` (same trace, new span id, flags kept), or a new trace;
    /// `true` when the parent's trace continues.
    pub fn child_or_new(parent: Option<&HeaderValue>, ids: &dyn IdSource) -> (Self, bool) {
        let r = ids.next_u128();
        let span = (r as u64).max(1);
        match parent.and_then(|p| Self::parse(p.as_bytes())) {
            Some(p) => (
                Self {
                    trace_id: p.trace_id,
                    parent_id: span,
                    flags: p.flags & 0x01,
                },
                true,
            ),
            None => {
                let trace_id = ids.next_u128().max(1);
                (
                    Self {
                        trace_id,
                        parent_id: span,
                        flags: 0,
                    },
                    false,
                )
            }
        }
    }

    /// `00-{trace}-{span}-{flags}`; we always emit version 00, the one we understand.
    pub fn encode(self) -> [u8; 55] {
        let mut buf = [0u8; 55];
        buf[0] = b'0';
        buf[1] = b'0';
        buf[2] = b'-';
        hex_into(&mut buf[3..35], self.trace_id);
        buf[35] = b'-';
        hex_into(&mut buf[36..52], u128::from(self.parent_id));
        buf[52] = b'-';
        hex_into(&mut buf[53..55], u128::from(self.flags));
        buf
    }

    pub fn to_header(self) -> HeaderValue {
        HeaderValue::from_bytes(&self.encode()).unwrap_or(HeaderValue::from_static("00"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_sanity() {
        assert!(sane_request_id(&HeaderValue::from_static("abc-123_XYZ")));
        assert!(!sane_request_id(&HeaderValue::from_static("")));
        assert!(!sane_request_id(&HeaderValue::from_static("has space")));
        let long = "a".repeat(129);
        assert!(!sane_request_id(&HeaderValue::from_str(&long).expect("hv")));
        assert!(sane_request_id(
            &HeaderValue::from_str(&long[..128]).expect("hv")
        ));
        assert!(!sane_request_id(
            &HeaderValue::from_bytes(b"caf\xc3\xa9").expect("hv")
        ));
    }

    #[test]
    fn hex_digits_match_the_formatter_at_every_width() {
        let mut rng = fastrand::Rng::with_seed(3);
        for v in [0, 1, 0xab, u128::MAX, u128::from(u64::MAX) << 3]
            .into_iter()
            .chain((0..100).map(|_| rng.u128(..)))
        {
            let mut full = [0u8; 32];
            hex_into(&mut full, v);
            assert_eq!(std::str::from_utf8(&full), Ok(format!("{v:032x}").as_str()));
            let mut low = [0u8; 16];
            hex_into(&mut low, v);
            assert_eq!(
                std::str::from_utf8(&low),
                Ok(format!("{:016x}", v as u64).as_str())
            );
        }
    }

    #[test]
    fn new_request_ids_are_hex_and_deterministic_with_a_seed() {
        let a = new_request_id(&SeededIds::new(7));
        let b = new_request_id(&SeededIds::new(7));
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(new_request_id(&RandomIds), new_request_id(&RandomIds));
    }

    #[test]
    fn traceparent_encodes_the_spec_example() {
        let tp = TraceParent {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            parent_id: 0x00f0_67aa_0ba9_02b7,
            flags: 1,
        };
        assert_eq!(
            &tp.encode()[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(TraceParent::parse(&tp.encode()), Some(tp));
    }

    #[test]
    fn traceparent_child_keeps_trace_and_changes_span() {
        let parent =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let (child, continued) = TraceParent::child_or_new(Some(&parent), &SeededIds::new(1));
        assert!(continued);
        let s = child.to_header();
        let s = s.to_str().expect("ascii");
        assert!(s.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{s}");
        assert!(!s.contains("00f067aa0ba902b7"));
        assert!(s.ends_with("-01"));
        assert_eq!(TraceParent::parse(s.as_bytes()), Some(child));
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad}");
            let v = HeaderValue::from_str(bad).expect("value");
            let (new, continued) = TraceParent::child_or_new(Some(&v), &SeededIds::new(2));
            assert!(!continued && new.trace_id != 0x4bf92f3577b34da6a3ce929d0e0e4736);
        }
        // A future version may append fields.
        assert!(
            TraceParent::parse(
                b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds"
            )
            .is_some()
        );
    }
}
