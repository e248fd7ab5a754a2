//! Request heads: parsed with httparse into `http` types whose header values share the head's
//! bytes, and the body framing RFC 9112 §6 derives from them, refusing the ambiguous cases
//! request smuggling lives on.

use crate::framing::Framing;
use crate::heads::{BadLength, FramingFields, NameCache, NameKind, range};
use crate::pipeline::HeadFields;
use bytes::BytesMut;
use http::{HeaderMap, HeaderValue, Method, Request, Uri, Version};
use std::mem::MaybeUninit;
use tollgate_core::{GatewayError, Kind};

/// Fields parsed in a stack array (uninitialised, so its size costs nothing); a config
/// allowing more parses on the heap. The parse bound is twice `max_headers` (64 by default).
const INLINE_FIELDS: usize = 256;

/// Request fields policies may add before forwarding (identity's `X-Consumer-*`); the
/// forwarding fields are written by the upstream client and never enter the map.
const ADDED_FIELDS: usize = 4;

/// What bounds a head before it is even parsed. The configured (lower) limits are checked by
/// the pipeline, which answers them with specific problems; these keep the buffer bounded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    /// Bytes a head may take in the buffer.
    pub(crate) max_head: usize,
    /// Fields httparse may return.
    pub(crate) max_fields: usize,
}

pub(super) struct Head {
    pub(super) request: Request<()>,
    /// `None`: the request has no body.
    pub(super) framing: Option<Framing>,
    /// The client lets the connection carry another request after this one.
    pub(super) keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for our go before sending the body.
    pub(super) expect_continue: bool,
    /// `TE: trailers`: the client accepts trailer fields in a chunked response.
    pub(super) trailers: bool,
    /// Fields the pipeline reads, recognised while parsing.
    pub(super) fields: HeadFields,
}

/// One header field: its name's slot in the name cache, what the name means, and its value's
/// byte range within the head.
#[derive(Clone, Copy)]
struct Field {
    name: u32,
    kind: NameKind,
    value: (u32, u32),
}

/// What a connection keeps between request heads, so that parsing one allocates nothing and
/// mostly compares bytes.
#[derive(Default)]
pub(super) struct Scratch {
    fields: Vec<Field>,
    names: NameCache,
}

fn bad(detail: &str) -> GatewayError {
    GatewayError::new(Kind::BadRequest, detail.to_string())
}

/// Parses a complete request head at the front of `buf` and removes it. `Ok(None)`: more
/// bytes are needed. `scratch` is the connection's.
pub(super) fn parse(
    buf: &mut BytesMut,
    limits: HeadLimits,
    scratch: &mut Scratch,
) -> Result<Option<Head>, GatewayError> {
    scratch.fields.clear();
    let parsed = if limits.max_fields <= INLINE_FIELDS {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; INLINE_FIELDS];
        scan(buf, &mut slots[..limits.max_fields], scratch)
    } else {
        let mut slots = Vec::new();
        slots.resize_with(limits.max_fields, MaybeUninit::uninit);
        scan(buf, &mut slots, scratch)
    };
    let scan = match parsed {
        Ok(Some(s)) => s,
        Ok(None) if buf.len() >= limits.max_head => {
            // Still inside the request line: the target is what is too long.
            return Err(if !buf.contains(&b'\n') {
                GatewayError::new(Kind::UriTooLong, "the request line is too long")
            } else {
                GatewayError::new(Kind::HeadersTooLarge, "the request head is too large")
            });
        }
        Ok(None) => return Ok(None),
        Err(e) => return Err(e),
    };
    if scan.len > limits.max_head {
        return Err(GatewayError::new(
            Kind::HeadersTooLarge,
            "the request head is too large",
        ));
    }

    let head = buf.split_to(scan.len).freeze();
    let method = Method::from_bytes(&head[scan.method.0 as usize..scan.method.1 as usize])
        .map_err(|_| bad("invalid method"))?;
    let target = scan.target.0 as usize..scan.target.1 as usize;
    // `http` holds a URI of at most 64 KiB − 2 bytes, whatever `max_uri_bytes` allows: a longer
    // target is too long (414), not malformed.
    if target.len() >= usize::from(u16::MAX) - 1 {
        return Err(GatewayError::new(
            Kind::UriTooLong,
            "the request target is too long",
        ));
    }
    let uri =
        Uri::from_maybe_shared(head.slice(target)).map_err(|_| bad("invalid request target"))?;
    // Room for fields policies add: growing a map rehashes it.
    let mut headers = HeaderMap::with_capacity(scratch.fields.len() + ADDED_FIELDS);
    let mut fields = HeadFields::default();
    let mut hosts = 0usize;
    for f in scratch.fields.iter() {
        let name = scratch
            .names
            .name(f.name as usize)
            .ok_or_else(|| bad("invalid header field name"))?
            .clone();
        let value =
            HeaderValue::from_maybe_shared(head.slice(f.value.0 as usize..f.value.1 as usize))
                .map_err(|_| bad("invalid header field value"))?;
        // The first of each, as a map lookup would find it.
        let slot = match f.kind {
            NameKind::RequestId => Some(&mut fields.request_id),
            NameKind::Host => {
                hosts += 1;
                Some(&mut fields.host)
            }
            NameKind::TraceParent => Some(&mut fields.traceparent),
            k => {
                fields.hop_by_hop |= k.is_hop_by_hop();
                None
            }
        };
        if let Some(slot) = slot
            && slot.is_none()
        {
            *slot = Some(value.clone());
        }
        headers.append(name, value);
    }

    let http10 = scan.version == 0;
    // RFC 9112 §3.2: the target's authority must be unambiguous, and the forwarding fields and
    // routing by host depend on it. HTTP/1.0 predates `Host`.
    match (hosts, &fields.host) {
        (0, _) if !http10 => return Err(bad("the request has no Host field")),
        (0, _) => {}
        (1, Some(h)) if valid_host(h.as_bytes()) => {}
        (1, _) => return Err(bad("the Host field is not a valid authority")),
        _ => return Err(bad("the request has more than one Host field")),
    }
    let f = &scan.framing;
    let framing = if f.transfer_encoding {
        // RFC 9112 §6.1: chunked must be the final coding, and a request cannot carry both
        // framings (the classic smuggling vector); HTTP/1.0 has no transfer codings at all.
        if f.content_length.is_some() {
            return Err(bad(
                "both Transfer-Encoding and Content-Length in one request",
            ));
        }
        if http10 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if !f.chunked {
            return Err(bad("the final transfer coding is not chunked"));
        }
        Some(Framing::Chunked)
    } else {
        match f.content_length {
            Some(0) | None => None,
            Some(n) => Some(Framing::Length(n)),
        }
    };
    let keep_alive = if http10 {
        f.keep_alive && !f.close
    } else {
        !f.close
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *request.headers_mut() = headers;
    Ok(Some(Head {
        request,
        framing,
        keep_alive,
        expect_continue: scan.expect_continue && !http10 && framing.is_some(),
        trailers: scan.trailers,
        fields,
    }))
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2) without user info, which the
/// field must not carry; empty is allowed for a target without an authority. A table lookup
/// per byte: this runs on every request.
fn valid_host(v: &[u8]) -> bool {
    static OK: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            t[b] = c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'['
                        | b']'
                );
            b += 1;
        }
        t
    };
    v.iter().all(|&b| OK[b as usize])
}

/// What one pass over the raw head found.
struct Scan {
    len: usize,
    version: u8,
    method: (u32, u32),
    target: (u32, u32),
    framing: FramingFields,
    expect_continue: bool,
    trailers: bool,
}

fn scan<'b>(
    buf: &'b [u8],
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
    scratch: &mut Scratch,
) -> Result<Option<Scan>, GatewayError> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(GatewayError::new(
                Kind::HeadersTooLarge,
                "too many request header fields",
            ));
        }
        Err(httparse::Error::Version) => {
            return Err(bad("unsupported HTTP version"));
        }
        Err(_) => return Err(bad("malformed request head")),
    };
    let mut s = Scan {
        len,
        version: req.version.unwrap_or(1),
        method: range(buf, req.method.unwrap_or("").as_bytes()),
        target: range(buf, req.path.unwrap_or("").as_bytes()),
        framing: FramingFields::default(),
        expect_continue: false,
        trailers: false,
    };
    for (pos, h) in req.headers.iter().enumerate() {
        let kind = scratch
            .names
            .classify(pos, h.name.as_bytes())
            .ok_or_else(|| bad("invalid header field name"))?;
        s.framing.add(kind, h.value).map_err(|e| match e {
            BadLength::Invalid => bad("invalid Content-Length"),
            BadLength::Conflicting => bad("conflicting Content-Length values"),
        })?;
        match kind {
            NameKind::Expect => {
                s.expect_continue |= h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            }
            NameKind::Te => {
                s.trailers |= h
                    .value
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
            }
            _ => {}
        }
        scratch.fields.push(Field {
            name: pos as u32,
            kind,
            value: range(buf, h.value),
        });
    }
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head: 16 * 1024,
        max_fields: 100,
    };

    fn parse_str(s: &str) -> Result<Option<Head>, GatewayError> {
        let mut buf = BytesMut::from(s.as_bytes());
        parse(&mut buf, LIMITS, &mut Scratch::default())
    }

    #[test]
    fn a_head_becomes_a_request_sharing_its_bytes_and_leaves_the_rest() {
        let mut buf = BytesMut::from(
            &b"POST /pay/1?x=2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhelloGET"[..],
        );
        let head = parse(&mut buf, LIMITS, &mut Scratch::default())
            .expect("valid")
            .expect("complete");
        let r = &head.request;
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri().path(), "/pay/1");
        assert_eq!(r.uri().query(), Some("x=2"));
        assert_eq!(r.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(head.framing, Some(Framing::Length(5)));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"helloGET");
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_are_refused() {
        assert!(
            parse_str("GET / HTTP/1.1\r\nHost: a\r\n")
                .expect("ok")
                .is_none()
        );
        let mut buf = BytesMut::from(format!("GET /{} HTTP/1.1", "a".repeat(20_000)).as_bytes());
        let e = parse(&mut buf, LIMITS, &mut Scratch::default())
            .err()
            .expect("refused");
        assert_eq!(e.kind, Kind::UriTooLong);
        let mut buf =
            BytesMut::from(format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(20_000)).as_bytes());
        let e = parse(&mut buf, LIMITS, &mut Scratch::default())
            .err()
            .expect("refused");
        assert_eq!(e.kind, Kind::HeadersTooLarge);
        // A whole head whose target is longer than a URI can be: too long, not malformed.
        let roomy = HeadLimits {
            max_head: 1 << 20,
            max_fields: 100,
        };
        for len in [65_534, 70_000] {
            let mut buf = BytesMut::from(
                format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(len)).as_bytes(),
            );
            let e = parse(&mut buf, roomy, &mut Scratch::default())
                .err()
                .expect("refused");
            assert_eq!(e.kind, Kind::UriTooLong, "{len}");
        }
    }

    #[test]
    fn ambiguous_framing_is_a_400() {
        for bad in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        ] {
            let e = parse_str(bad)
                .err()
                .unwrap_or_else(|| panic!("accepted {bad:?}"));
            assert_eq!(e.kind, Kind::BadRequest, "{bad:?}");
        }
        let h = parse_str("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n")
            .expect("same value twice is one length")
            .expect("complete");
        assert_eq!(h.framing, Some(Framing::Length(5)));
    }

    #[test]
    fn an_http11_request_has_exactly_one_valid_host() {
        for (head, why) in [
            ("GET / HTTP/1.1\r\n\r\n", "no Host field"),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
                "more than one",
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                "more than one",
            ),
            (
                "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
                "not a valid authority",
            ),
            (
                "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
                "not a valid authority",
            ),
            (
                "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
                "not a valid authority",
            ),
            ("GET http://a/ HTTP/1.1\r\n\r\n", "no Host field"),
        ] {
            let e = parse_str(head)
                .err()
                .unwrap_or_else(|| panic!("accepted {head:?}"));
            assert_eq!(e.kind, Kind::BadRequest, "{head:?}");
            assert!(e.detail.contains(why), "{head:?}: {}", e.detail);
        }
        for head in [
            "GET / HTTP/1.1\r\nHost: api.bank.test\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
            "GET / HTTP/1.1\r\nHost:\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
        ] {
            assert!(parse_str(head).expect(head).is_some(), "{head:?}");
        }
    }

    #[test]
    fn the_fields_the_pipeline_reads_are_found_while_parsing() {
        let h = parse_str(
            "GET / HTTP/1.1\r\nhost: a\r\nX-Request-Id: r1\r\nx-request-id: r2\r\nTraceParent: t\r\n\r\n",
        )
        .expect("ok")
        .expect("complete");
        let f = &h.fields;
        assert_eq!(
            f.request_id.as_ref().map(|v| v.as_bytes()),
            Some(&b"r1"[..])
        );
        assert_eq!(f.host.as_ref().map(|v| v.as_bytes()), Some(&b"a"[..]));
        assert_eq!(
            f.traceparent.as_ref().map(|v| v.as_bytes()),
            Some(&b"t"[..])
        );
        assert!(!f.hop_by_hop);
        // The same as looking them up in the map.
        let of = HeadFields::of(h.request.headers());
        assert_eq!(
            (&of.request_id, &of.host, &of.traceparent, of.hop_by_hop),
            (&f.request_id, &f.host, &f.traceparent, f.hop_by_hop)
        );
        for hop in [
            "Connection: close",
            "Keep-Alive: 5",
            "Upgrade: x",
            "Proxy-Connection: x",
        ] {
            let h = parse_str(&format!("GET / HTTP/1.1\r\n{hop}\r\nHost: a\r\n\r\n"))
                .expect("ok")
                .expect("complete");
            assert!(h.fields.hop_by_hop, "{hop}");
            assert!(HeadFields::of(h.request.headers()).hop_by_hop, "{hop}");
            assert!(h.fields.request_id.is_none() && h.fields.traceparent.is_none());
        }
    }

    #[test]
    fn connection_options_decide_persistence_and_hop_by_hop_fields() {
        let h = parse_str("GET / HTTP/1.0\r\n\r\n")
            .expect("ok")
            .expect("complete");
        assert!(!h.keep_alive);
        let h = parse_str("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .expect("ok")
            .expect("complete");
        assert!(h.keep_alive);
        let h = parse_str("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTE: trailers\r\n\r\n")
            .expect("ok")
            .expect("complete");
        assert!(!h.keep_alive && h.trailers);
        let h = parse_str(
            "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        )
        .expect("ok")
        .expect("complete");
        assert!(h.expect_continue);
        let h = parse_str("GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n")
            .expect("ok")
            .expect("complete");
        assert!(!h.expect_continue, "nothing to continue without a body");
    }

    /// A parsed head, or the kind of error, in a form that compares.
    type Seen = Result<
        (
            String,
            String,
            Version,
            Vec<(String, Vec<u8>)>,
            Option<Framing>,
            [bool; 4],
            [Option<Vec<u8>>; 3],
        ),
        Kind,
    >;

    fn seen(r: Result<Head, GatewayError>) -> Seen {
        let h = r.map_err(|e| e.kind)?;
        let fields = h
            .request
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        let f = &h.fields;
        let found = [&f.request_id, &f.host, &f.traceparent]
            .map(|v| v.as_ref().map(|v| v.as_bytes().to_vec()));
        Ok((
            h.request.method().to_string(),
            h.request.uri().to_string(),
            h.request.version(),
            fields,
            h.framing,
            [h.keep_alive, h.expect_continue, h.trailers, f.hop_by_hop],
            found,
        ))
    }

    /// Parses heads one after another off `input`, delivered in the pieces `cuts` make of it,
    /// as a connection does; `fresh`: a new scratch per head instead of the connection's. Ends
    /// at the first error, or with `None` when the rest is incomplete.
    fn heads(input: &[u8], cuts: &[usize], fresh: bool) -> Vec<Option<Seen>> {
        let (mut buf, mut scratch, mut out) = (BytesMut::new(), Scratch::default(), Vec::new());
        for piece in crate::framing::pieces(input, cuts) {
            buf.extend_from_slice(piece);
            loop {
                if fresh {
                    scratch = Scratch::default();
                }
                match parse(&mut buf, LIMITS, &mut scratch) {
                    Ok(None) => break,
                    Ok(Some(h)) => out.push(Some(seen(Ok(h)))),
                    Err(e) => {
                        out.push(Some(seen(Err(e))));
                        return out;
                    }
                }
            }
        }
        out.push(None);
        out
    }

    /// Request heads from a pool of methods, targets, names (in several spellings, the ones
    /// that frame a message or are hop-by-hop among them, and names of equal length that a
    /// careless cache would confuse) and values; about one part in ten of each is invalid.
    fn head_strategy() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let pick = |good: Vec<&'static str>, bad: Vec<&'static str>| prop_oneof![9 => prop::sample::select(good), 1 => prop::sample::select(bad)];
        let method = pick(
            vec!["GET", "POST", "PUT", "HEAD", "get", "X-CUSTOM"],
            vec!["G T", ""],
        );
        let target = pick(
            vec!["/", "/a/b?x=1&y", "*", "http://h/p", "/%7e/", "//"],
            vec!["/a b", ""],
        );
        let version = pick(
            vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"],
            vec!["HTTP/1.2", "HTTP/2"],
        );
        let name = pick(
            vec![
                "Host",
                "host",
                "X-Request-ID",
                "x-request-id",
                "traceparent",
                "TraceParent",
                "Content-Length",
                "Transfer-Encoding",
                "Connection",
                "TE",
                "Expect",
                "Keep-Alive",
                "Upgrade",
                "X-A",
                "x-a",
                "X-B",
                "Cookie",
                "Accept",
                "Origin",
                "X-Trace-Id1",
            ],
            vec!["Bad Name", ""],
        );
        let value = prop_oneof![
            5 => prop::sample::select(vec![
                "0", "5", "5, 5", "chunked", "gzip, chunked", "trailers", "close", "keep-alive",
                "x-a, close", "100-continue", "",
            ])
            .prop_map(str::to_string),
            4 => "[ -~]{0,12}",
            1 => prop::sample::select(vec!["5,6", "+5", "chunked, gzip", "a\tb"])
                .prop_map(str::to_string),
        ];
        let eol = pick(vec!["\r\n"], vec!["\n"]);
        // Most heads name their host first, as clients do; the rest test its absence.
        let host = pick(
            vec!["Host: h\r\n", "host: a:80\r\n", "HOST: \r\n"],
            vec![""],
        );
        (
            method,
            target,
            version,
            host,
            prop::collection::vec((name, value, eol.clone()), 0..6),
            eol,
        )
            .prop_map(|(m, t, v, host, fields, eol)| {
                let mut h = format!("{m} {t} {v}\r\n{host}");
                for (n, val, e) in fields {
                    h.push_str(&format!("{n}: {val}{e}"));
                }
                h.push_str(eol);
                h.into_bytes()
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

        /// However reads split them, a connection's heads parse to the same requests (or the
        /// same error), and a connection's name cache never makes one head read like another.
        #[test]
        fn heads_parse_the_same_however_they_arrive(
            hs in proptest::collection::vec(head_strategy(), 1..4),
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..16),
            cuts in proptest::collection::vec(proptest::num::usize::ANY, 0..12),
        ) {
            let mut input: Vec<u8> = hs.concat();
            input.extend_from_slice(&noise);
            let whole = heads(&input, &[], false);
            proptest::prop_assert_eq!(&heads(&input, &cuts, false), &whole);
            proptest::prop_assert_eq!(&heads(&input, &[], true), &whole);
        }

        /// Arbitrary bytes get a head, a wait or an error, never a panic, and the same answer
        /// whatever the split and whatever the name cache held.
        #[test]
        fn arbitrary_bytes_never_panic_the_head_parser(
            input in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
            cuts in proptest::collection::vec(proptest::num::usize::ANY, 0..8),
        ) {
            proptest::prop_assert_eq!(heads(&input, &cuts, false), heads(&input, &[], true));
        }
    }
}
