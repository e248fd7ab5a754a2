//! Header handling between client and upstream: hop-by-hop removal (RFC 9110 §7.6.1), the
//! client IP behind trusted proxies, and `X-Forwarded-*`.

use http::header::{CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use std::net::IpAddr;
use tollgate_core::trace::TraceParent;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("proxy-authenticate");
const PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");

/// The fields RFC 9110 §7.6.1 (and its predecessors' common practice) make hop-by-hop. A
/// `static`, not a `const`: a const array of `HeaderName`s would be built and dropped at every use.
static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
];

/// The same names as bytes, for checks on raw field names and `Connection` tokens without
/// going through `HeaderName::as_str` (a table lookup per name).
const HOP_BY_HOP_NAMES: [&[u8]; 9] = [
    b"connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
];

fn hop_by_hop_index(n: &HeaderName) -> Option<usize> {
    HOP_BY_HOP.iter().position(|h| h == n)
}

/// Whether a field name is one of the fixed hop-by-hop fields (`Connection` among them).
pub(crate) fn is_hop_by_hop(n: &HeaderName) -> bool {
    hop_by_hop_index(n).is_some()
}

/// Whether a raw field name (any case) is one of the fixed hop-by-hop fields. The upstream
/// client calls this for every response field, so length is compared first: most names differ
/// from all nine in length alone.
pub(crate) fn is_hop_by_hop_name(name: &[u8]) -> bool {
    HOP_BY_HOP_NAMES
        .iter()
        .any(|h| h.len() == name.len() && name.eq_ignore_ascii_case(h))
}

/// Removes hop-by-hop headers, including every header the `Connection` field names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass of name comparisons (standard names compare as enum tags) into a bit set: most
    // requests have nothing to remove, and most upstream responses only `Connection:
    // keep-alive`, so the common cases allocate nothing.
    let mut present = 0u16;
    for k in h.keys() {
        if let Some(i) = hop_by_hop_index(k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // Names listed in `Connection` that are not already hop-by-hop; the usual tokens
        // (`keep-alive`, `close`) never land here, so this stays empty and unallocated.
        let mut named: Vec<HeaderName> = Vec::new();
        for v in h.get_all(CONNECTION) {
            let Ok(s) = v.to_str() else { continue };
            for token in s.split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") || is_hop_by_hop_name(token.as_bytes()) {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(token.as_bytes())
                    && h.contains_key(&n)
                {
                    named.push(n);
                }
            }
        }
        for n in named {
            h.remove(n);
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(n);
        }
    }
}

/// Client fields the pipeline deals with after the policies, noticed while stripping.
#[derive(Debug, Default, Clone, Copy)]
pub struct Noticed {
    /// The API key field: authentication still needs it, the upstream never sees it.
    pub api_key: bool,
    /// `tracestate`: it goes with the client's trace, and goes away if we start another.
    pub tracestate: bool,
}

/// Removes headers through which the gateway tells upstreams who the caller is
/// (`X-Consumer-*`, `X-Auth-*`, the client-certificate header): only the gateway may set them,
/// so a client's copies never pass. One pass over the names, which also notices the fields
/// dealt with later.
pub fn strip_identity(
    h: &mut HeaderMap,
    cert_header: &HeaderName,
    key_header: &HeaderName,
) -> Noticed {
    let mut found: Vec<HeaderName> = Vec::new();
    let mut seen = Noticed::default();
    for k in h.keys() {
        let s = k.as_str();
        if s.starts_with("x-consumer-") || s.starts_with("x-auth-") || k == cert_header {
            found.push(k.clone());
        }
        seen.api_key |= k == key_header;
        seen.tracestate |= k == TRACESTATE;
    }
    for k in found {
        h.remove(k);
    }
    seen
}

fn trusted(ip: IpAddr, nets: &[IpNet]) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|n| n.contains(&ip))
}

/// IPv4-mapped IPv6 peers (`::ffff:1.2.3.4`) are matched as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the right-most
/// `X-Forwarded-For` entry that is not itself trusted. Entries that fail to parse end the walk
/// (everything left of them is the client's own claim).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_nets: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if trusted_nets.is_empty() || !trusted(peer, trusted_nets) {
        return peer;
    }
    let mut client = peer;
    // Later header lines are appended by later proxies: walk them last to first.
    let values: Vec<&HeaderValue> = headers.get_all(X_FORWARDED_FOR).iter().collect();
    for v in values.iter().rev() {
        let Ok(s) = v.to_str() else { return client };
        for entry in s.rsplit(',') {
            let Some(ip) = parse_xff_entry(entry.trim()) else {
                return client;
            };
            client = canonical(ip);
            if !trusted(client, trusted_nets) {
                return client;
            }
        }
    }
    client
}

fn parse_xff_entry(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    // `1.2.3.4:5678` and `[::1]:5678` appear in the wild.
    s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

/// The fields the gateway sets on every request it forwards: `X-Forwarded-For/-Proto/-Host`,
/// `X-Request-ID` and `traceparent`. They never enter the request's header map: the upstream
/// client leaves the request's own fields of these names out ([`Forwarded::owns`]) and writes
/// these after the rest, which saves five map insertions per request.
#[derive(Debug, Clone)]
pub struct Forwarded<'a> {
    pub xff: HeaderValue,
    pub proto: HeaderValue,
    pub host: Option<HeaderValue>,
    pub request_id: HeaderValue,
    pub traceparent: TraceParent,
    /// The authenticated consumer's fields ([`tollgate_core::Consumer::upstream_fields`]),
    /// borrowed from the request's context, which outlives the send.
    pub extra: &'a [(HeaderName, HeaderValue)],
}

impl Forwarded<'_> {
    /// A trusted peer's `X-Forwarded-*` values are extended; an untrusted client's are
    /// replaced, so the upstream never sees a forged chain as ours. `peer` is the peer address
    /// already rendered as a header value (once per connection).
    pub fn new(
        h: &HeaderMap,
        peer: &HeaderValue,
        peer_trusted: bool,
        proto: &'static str,
        host: Option<HeaderValue>,
        request_id: HeaderValue,
        traceparent: TraceParent,
    ) -> Self {
        let proto = HeaderValue::from_static(proto);
        if !peer_trusted {
            return Self {
                xff: peer.clone(),
                proto,
                host,
                request_id,
                traceparent,
                extra: &[],
            };
        }
        let mut lines = h.get_all(X_FORWARDED_FOR).iter().peekable();
        let xff = if lines.peek().is_some() {
            // Fold multiple lines into one list, then append the peer.
            let mut joined = Vec::with_capacity(64);
            for v in lines {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(peer.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| peer.clone())
        } else {
            peer.clone()
        };
        Self {
            xff,
            proto: h.get(X_FORWARDED_PROTO).cloned().unwrap_or(proto),
            host: h.get(X_FORWARDED_HOST).cloned().or(host),
            request_id,
            traceparent,
            extra: &[],
        }
    }

    /// Whether a request field of this name is replaced by ours.
    pub fn owns(name: &HeaderName) -> bool {
        // Standard names compare by tag alone; these five are all custom, so this is a few
        // length comparisons for almost every field.
        name == X_FORWARDED_FOR
            || name == X_FORWARDED_PROTO
            || name == X_FORWARDED_HOST
            || name == X_REQUEST_ID
            || name == TRACEPARENT
    }

    /// The fields as HTTP/1.1 field lines.
    pub fn encode(&self, w: &mut Vec<u8>) {
        w.extend_from_slice(b"x-forwarded-for: ");
        w.extend_from_slice(self.xff.as_bytes());
        w.extend_from_slice(b"\r\nx-forwarded-proto: ");
        w.extend_from_slice(self.proto.as_bytes());
        if let Some(host) = &self.host {
            w.extend_from_slice(b"\r\nx-forwarded-host: ");
            w.extend_from_slice(host.as_bytes());
        }
        w.extend_from_slice(b"\r\nx-request-id: ");
        w.extend_from_slice(self.request_id.as_bytes());
        w.extend_from_slice(b"\r\ntraceparent: ");
        w.extend_from_slice(&self.traceparent.encode());
        w.extend_from_slice(b"\r\n");
        for (name, value) in self.extra {
            crate::heads::put_field(w, name, value);
        }
    }
}

/// The peer address as it appears in `X-Forwarded-For`.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&canonical(peer).to_string())
        .unwrap_or(HeaderValue::from_static("unknown"))
}

pub fn is_trusted(peer: IpAddr, nets: &[IpNet]) -> bool {
    !nets.is_empty() && trusted(peer, nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().expect("net")).collect()
    }

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("n"),
                HeaderValue::from_str(v).expect("v"),
            );
        }
        h
    }

    #[test]
    fn the_byte_names_of_hop_by_hop_fields_match_the_header_names() {
        let names: Vec<&[u8]> = HOP_BY_HOP.iter().map(|n| n.as_str().as_bytes()).collect();
        assert_eq!(names, HOP_BY_HOP_NAMES);
        assert!(is_hop_by_hop_name(b"Keep-Alive"));
        assert!(!is_hop_by_hop_name(b"content-type"));
    }

    #[test]
    fn hop_by_hop_headers_and_connection_tokens_go() {
        let mut h = hm(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn client_ip_honours_only_trusted_peers() {
        let t = nets(&["127.0.0.0/8", "10.0.0.0/8"]);
        let h = hm(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.1.1")]);
        // Untrusted peer: its header is ignored.
        assert_eq!(
            client_ip("198.51.100.1".parse().expect("ip"), &h, &t),
            "198.51.100.1".parse::<IpAddr>().expect("ip")
        );
        // Trusted peer: right-most untrusted entry.
        assert_eq!(
            client_ip("127.0.0.1".parse().expect("ip"), &h, &t),
            "203.0.113.9".parse::<IpAddr>().expect("ip")
        );
        // Garbage stops the walk at the last good entry.
        let h = hm(&[("x-forwarded-for", "1.1.1.1, garbage, 10.0.0.5")]);
        assert_eq!(
            client_ip("127.0.0.1".parse().expect("ip"), &h, &t),
            "10.0.0.5".parse::<IpAddr>().expect("ip")
        );
        // Multiple header lines: the last line is the nearest hop.
        let h = hm(&[
            ("x-forwarded-for", "9.9.9.9"),
            ("x-forwarded-for", "8.8.8.8"),
        ]);
        assert_eq!(
            client_ip("127.0.0.1".parse().expect("ip"), &h, &t),
            "8.8.8.8".parse::<IpAddr>().expect("ip")
        );
        // Mapped IPv6 peers count as IPv4.
        assert_eq!(
            client_ip("::ffff:127.0.0.1".parse().expect("ip"), &h, &t),
            "8.8.8.8".parse::<IpAddr>().expect("ip")
        );
    }

    fn forwarded(
        h: &HeaderMap,
        peer: &str,
        trusted: bool,
        host: Option<&'static str>,
    ) -> HeaderMap {
        let tp = TraceParent {
            trace_id: 1,
            parent_id: 2,
            flags: 0,
        };
        let f = Forwarded::new(
            h,
            &peer_value(peer.parse().expect("ip")),
            trusted,
            "http",
            host.map(HeaderValue::from_static),
            HeaderValue::from_static("rid"),
            tp,
        );
        // What the upstream client sends: the request's fields minus ours, then ours.
        let mut wire = Vec::new();
        for (k, v) in h {
            if !Forwarded::owns(k) {
                wire.extend_from_slice(k.as_str().as_bytes());
                wire.extend_from_slice(b": ");
                wire.extend_from_slice(v.as_bytes());
                wire.extend_from_slice(b"\r\n");
            }
        }
        f.encode(&mut wire);
        let mut parsed = HeaderMap::new();
        for line in wire.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let line = std::str::from_utf8(line).expect("utf8").trim_end();
            let (k, v) = line.split_once(": ").expect("field line");
            parsed.append(
                HeaderName::from_bytes(k.as_bytes()).expect("n"),
                HeaderValue::from_str(v).expect("v"),
            );
        }
        parsed
    }

    #[test]
    fn forwarded_headers_are_replaced_for_untrusted_and_extended_for_trusted() {
        let h = hm(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.test"),
            ("x-request-id", "forged"),
            ("traceparent", "forged"),
            ("host", "api.bank.test"),
        ]);
        let out = forwarded(&h, "198.51.100.1", false, Some("api.bank.test"));
        assert_eq!(out["x-forwarded-for"], "198.51.100.1");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-forwarded-host"], "api.bank.test");
        assert_eq!(out["x-request-id"], "rid");
        assert_eq!(
            out["traceparent"],
            "00-00000000000000000000000000000001-0000000000000002-00"
        );
        assert_eq!(out["host"], "api.bank.test");
        assert_eq!(out.len(), 6, "{out:?}");

        // No host to forward: a client's X-Forwarded-Host does not pass either.
        let out = forwarded(&h, "198.51.100.1", false, None);
        assert!(!out.contains_key("x-forwarded-host"));

        let h = hm(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7"),
            ("x-forwarded-proto", "https"),
        ]);
        let out = forwarded(&h, "::ffff:127.0.0.1", true, None);
        assert_eq!(out["x-forwarded-for"], "6.6.6.6, 7.7.7.7, 127.0.0.1");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert!(!out.contains_key("x-forwarded-host"));
    }
}
