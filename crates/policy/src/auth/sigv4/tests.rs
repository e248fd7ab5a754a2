//! Requests are signed here exactly as a client would sign them, with the `aws-sigv4` crate's
//! own signer and its default settings, then handed to the verifier as the server would see them.

use super::*;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use http::header::{HOST, HeaderValue};
use http::{Method, Request};
use proptest::prelude::*;
use std::borrow::Cow;
use tollgate_core::ManualClock;

const AKID: &str = "AKIDTOLLGATEREPORTS";
const SECRET: &str = "reports-secret-0123456789abcdef";
const CONSUMER: &str = "svc-reporting";
const SERVICE: &str = "execute-api";
const REGION: &str = "bank-1";
const SIGNED_AT: &str = "20261128T093000Z";

fn at(amz_date: &str) -> SystemTime {
    parse_amz_date(amz_date).expect("test date")
}

fn verifier_at(now: SystemTime) -> SigV4Verifier {
    SigV4Verifier::new(SERVICE, REGION, Arc::new(ManualClock::new(now))).with_key(
        AKID,
        SecretKey::new(SECRET),
        CONSUMER,
    )
}

fn verifier() -> SigV4Verifier {
    verifier_at(at(SIGNED_AT))
}

#[derive(Clone)]
struct Signer {
    akid: &'static str,
    secret: &'static str,
    region: &'static str,
    service: &'static str,
    time: SystemTime,
    settings: SigningSettings,
    unsigned_payload: bool,
}

impl Default for Signer {
    fn default() -> Self {
        Self {
            akid: AKID,
            secret: SECRET,
            region: REGION,
            service: SERVICE,
            time: at(SIGNED_AT),
            settings: SigningSettings::default(),
            unsigned_payload: false,
        }
    }
}

impl Signer {
    fn presigned(expires: Duration) -> Self {
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(expires);
        Self {
            settings,
            ..Self::default()
        }
    }

    fn with_content_sha256(mut self) -> Self {
        self.settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        self
    }

    fn excluding(mut self, header: &'static str) -> Self {
        self.settings
            .excluded_headers
            .get_or_insert_with(Vec::new)
            .push(Cow::Borrowed(header));
        self
    }

    /// Signs a client request (absolute URI, as an SDK holds it) in place.
    fn sign(&self, req: &mut Request<Vec<u8>>) {
        let identity: Identity =
            Credentials::new(self.akid, self.secret, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(self.region)
            .name(self.service)
            .time(self.time)
            .settings(self.settings.clone())
            .build()
            .expect("signing params")
            .into();
        let uri = req.uri().to_string();
        let headers: Vec<(&str, &str)> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().expect("ascii header")))
            .collect();
        let body = if self.unsigned_payload {
            SignableBody::UnsignedPayload
        } else {
            SignableBody::Bytes(req.body())
        };
        let signable = SignableRequest::new(req.method().as_str(), uri, headers.into_iter(), body)
            .expect("signable request");
        let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
        instructions.apply_to_request_http1x(req);
    }

    fn signed(&self, req: Request<Vec<u8>>) -> Request<Vec<u8>> {
        let mut req = req;
        self.sign(&mut req);
        req
    }
}

fn get(uri: &str) -> Request<Vec<u8>> {
    Request::get(uri).body(Vec::new()).expect("request")
}

/// What an HTTP/1.1 server sees: origin-form target and a Host header.
fn server(req: Request<Vec<u8>>) -> Parts {
    let (mut parts, _) = req.into_parts();
    if !parts.headers.contains_key(HOST) {
        let authority = parts.uri.authority().expect("absolute uri").as_str();
        let host = HeaderValue::from_str(authority).expect("host");
        parts.headers.insert(HOST, host);
    }
    let target = parts.uri.path_and_query().expect("path").as_str();
    parts.uri = target.parse().expect("origin-form uri");
    parts
}

fn set_header(parts: &mut Parts, name: &'static str, value: &str) {
    parts
        .headers
        .insert(name, HeaderValue::from_str(value).expect("header value"));
}

fn authorization(parts: &Parts) -> String {
    parts
        .headers
        .get(AUTHORIZATION)
        .expect("signed")
        .to_str()
        .expect("ascii")
        .to_owned()
}

fn signed_get(uri: &str) -> Parts {
    server(Signer::default().signed(get(uri)))
}

const REPORTS: &str = "https://api.bank.example/internal/reports/2026-q3";

#[test]
fn known_answer_get_vanilla() {
    // AWS's public SigV4 test suite, "get-vanilla".
    const EXPECTED: &str = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
    let time = at("20150830T123600Z");
    let client = Signer {
        akid: "AKIDEXAMPLE",
        secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        region: "us-east-1",
        service: "service",
        time,
        ..Signer::default()
    };
    let signed = client.signed(get("https://example.amazonaws.com/"));
    assert_eq!(
        authorization(&server(signed)),
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature={EXPECTED}"
        ),
        "aws-sigv4 reproduces the published vector"
    );

    // And the verifier accepts the published request, written out by hand.
    let req = Request::get("/")
        .header("Host", "example.amazonaws.com")
        .header("X-Amz-Date", "20150830T123600Z")
        .header(
            "Authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature={EXPECTED}"
            ),
        )
        .body(())
        .expect("request");
    let verifier = SigV4Verifier::new("service", "us-east-1", Arc::new(ManualClock::new(time)))
        .with_key(
            "AKIDEXAMPLE",
            SecretKey::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            "example",
        );
    let (parts, ()) = req.into_parts();
    let verified = verifier.verify(&parts).expect("known answer verifies");
    assert_eq!(&*verified.consumer, "example");
    assert_eq!(verified.payload, SignedPayload::Empty);
}

#[test]
fn scenario_key_get_report() {
    let parts = signed_get(REPORTS);
    let verified = verifier().verify(&parts).expect("verifies");
    assert_eq!(&*verified.consumer, CONSUMER);
    assert_eq!(&*verified.access_key, AKID);
    assert_eq!(verified.payload, SignedPayload::Empty);
    assert!(is_sigv4(&parts));
}

#[test]
fn query_unsorted_repeated_and_percent_encoded() {
    for query in [
        "z=1&a=2&a=1&m=",
        "q=caf%C3%A9%20au%20lait&sep=a%2Fb%3Bc&tilde=~x&plus=a+b",
        "b=2&b=1&b=3&flag&a=%41",
        "format=csv&from=2026-07-01T00%3A00%3A00Z",
    ] {
        let parts = signed_get(&format!("{REPORTS}?{query}"));
        assert_eq!(parts.uri.query(), Some(query), "sent as written");
        verifier()
            .verify(&parts)
            .unwrap_or_else(|e| panic!("{query}: {e}"));
    }
}

#[test]
fn paths_with_segments_and_escapes() {
    for path in [
        "/internal/reports/2026-q3",
        "/internal/reports/2026-q3/summary.json",
        "/internal/reports/q3%20final",
        "/internal/reports/a%2Fb",
        "/internal/reports/caf%C3%A9",
        "/internal/reports/",
    ] {
        let parts = signed_get(&format!("https://api.bank.example{path}"));
        verifier()
            .verify(&parts)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}

#[test]
fn http2_authority_stands_in_for_host() {
    let signed = Signer::default().signed(get(REPORTS));
    let (mut parts, _) = signed.into_parts();
    assert!(!parts.headers.contains_key(HOST));
    assert!(parts.uri.authority().is_some());
    verifier().verify(&parts).expect("verifies from :authority");
    parts.uri = "https://other.example/internal/reports/2026-q3"
        .parse()
        .expect("uri");
    assert_eq!(
        verifier().verify(&parts),
        Err(SigV4Error::SignatureMismatch)
    );
}

#[test]
fn unsigned_headers_are_ignored() {
    let mut parts = signed_get(REPORTS);
    set_header(&mut parts, "x-forwarded-for", "203.0.113.9");
    set_header(&mut parts, "user-agent", "curl/8.0");
    set_header(&mut parts, "accept", "text/csv");
    verifier()
        .verify(&parts)
        .expect("extra headers don't matter");
}

#[test]
fn signed_user_agent_is_honoured() {
    // aws-sigv4 leaves user-agent out by default; other signers include it. The verifier must sign
    // whatever SignedHeaders lists.
    let mut client = Signer::default();
    client.settings.excluded_headers = None;
    let mut req = get(REPORTS);
    req.headers_mut()
        .insert("user-agent", HeaderValue::from_static("reporting-job/1.0"));
    let mut parts = server(client.signed(req));
    assert!(authorization(&parts).contains("SignedHeaders=host;user-agent;x-amz-date"));
    verifier().verify(&parts).expect("verifies");
    set_header(&mut parts, "user-agent", "reporting-job/2.0");
    assert_eq!(
        verifier().verify(&parts),
        Err(SigV4Error::SignatureMismatch)
    );
}

#[test]
fn header_values_are_trimmed_canonically() {
    let mut req = get(REPORTS);
    req.headers_mut().insert(
        "x-report-tag",
        HeaderValue::from_static("quarter   three  final"),
    );
    let mut parts = server(Signer::default().signed(req));
    assert!(authorization(&parts).contains("x-report-tag"));
    verifier().verify(&parts).expect("as sent");
    // A proxy that collapses or pads spaces does not change the canonical value.
    for respaced in ["quarter three final", "  quarter three   final  "] {
        set_header(&mut parts, "x-report-tag", respaced);
        verifier()
            .verify(&parts)
            .unwrap_or_else(|e| panic!("{respaced:?}: {e}"));
    }
    set_header(&mut parts, "x-report-tag", "quarter four final");
    assert_eq!(
        verifier().verify(&parts),
        Err(SigV4Error::SignatureMismatch)
    );
}

#[test]
fn content_sha256_header_empty_body() {
    let parts = server(Signer::default().with_content_sha256().signed(get(REPORTS)));
    assert!(parts.headers.contains_key(X_AMZ_CONTENT_SHA256));
    let verified = verifier().verify(&parts).expect("verifies");
    let empty = decode_hex32("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        .expect("hex");
    assert_eq!(verified.payload, SignedPayload::Sha256(empty));
}

#[test]
fn unsigned_payload() {
    let client = Signer {
        unsigned_payload: true,
        ..Signer::default()
    }
    .with_content_sha256();
    let parts = server(client.signed(get(REPORTS)));
    assert_eq!(
        parts
            .headers
            .get(X_AMZ_CONTENT_SHA256)
            .map(HeaderValue::as_bytes),
        Some(UNSIGNED_PAYLOAD.as_bytes())
    );
    let verified = verifier().verify(&parts).expect("verifies");
    assert_eq!(verified.payload, SignedPayload::Unsigned);
}

fn post(body: &[u8]) -> Request<Vec<u8>> {
    Request::builder()
        .method(Method::POST)
        .uri(format!("{REPORTS}/exports?dry_run=true"))
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .body(body.to_vec())
        .expect("request")
}

const BODY: &[u8] = br#"{"format":"csv","quarter":"2026-q3"}"#;

#[test]
fn post_with_body_hash_header() {
    let signed = Signer::default().with_content_sha256().signed(post(BODY));
    let (parts, body) = {
        let body = signed.body().clone();
        (server(signed), body)
    };
    let verified = verifier().verify(&parts).expect("verifies from the head");
    let SignedPayload::Sha256(digest) = verified.payload else {
        panic!("expected a digest, got {:?}", verified.payload);
    };
    let declared = parts
        .headers
        .get(X_AMZ_CONTENT_SHA256)
        .and_then(|v| v.to_str().ok())
        .and_then(decode_hex32)
        .expect("declared digest");
    assert_eq!(digest, declared);

    let with_body = verifier()
        .verify_with_body(&parts, &body)
        .expect("body matches");
    assert_eq!(with_body.payload, SignedPayload::Checked);
    assert_eq!(
        verifier().verify_with_body(&parts, br#"{"format":"pdf","quarter":"2026-q3"}"#),
        Err(SigV4Error::SignatureMismatch),
        "a body other than the declared one"
    );
}

#[test]
fn post_with_body_but_no_hash_header() {
    let signed = Signer::default().signed(post(BODY));
    let parts = server(signed);
    assert!(!parts.headers.contains_key(X_AMZ_CONTENT_SHA256));
    assert_eq!(
        verifier().verify(&parts),
        Err(SigV4Error::PayloadHashRequired)
    );
    let verified = verifier()
        .verify_with_body(&parts, BODY)
        .expect("verifies with the body");
    assert_eq!(verified.payload, SignedPayload::Checked);
    assert_eq!(
        verifier().verify_with_body(&parts, b"{}"),
        Err(SigV4Error::SignatureMismatch)
    );
}

#[test]
fn streaming_payloads_are_unsupported() {
    let mut parts = signed_get(REPORTS);
    set_header(
        &mut parts,
        "x-amz-content-sha256",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    );
    assert_eq!(
        verifier().verify(&parts),
        Err(SigV4Error::UnsupportedPayload)
    );
}

#[test]
fn wrong_secret() {
    let client = Signer {
        secret: "reports-secret-0123456789abcdeX",
        ..Signer::default()
    };
    let parts = server(client.signed(get(REPORTS)));
    assert_eq!(
        verifier().verify(&parts),
        Err(SigV4Error::SignatureMismatch)
    );
}

#[test]
fn unknown_key() {
    let client = Signer {
        akid: "AKIDSOMEONEELSE",
        ..Signer::default()
    };
    let parts = server(client.signed(get(REPORTS)));
    let err = verifier().verify(&parts).expect_err("unknown key");
    assert_eq!(err, SigV4Error::UnknownAccessKey("AKIDSOMEONEELSE".into()));
    assert_eq!(err.reason(), "unknown_access_key");
}

#[test]
fn tampering_is_detected() {
    let original = signed_get(&format!("{REPORTS}?format=csv&a=1"));
    verifier().verify(&original).expect("untouched");

    let mut tampered: Vec<(&str, Parts)> = Vec::new();
    for (what, target) in [
        ("path", "/internal/reports/2026-q4?format=csv&a=1"),
        ("query value", "/internal/reports/2026-q3?format=pdf&a=1"),
        (
            "query added",
            "/internal/reports/2026-q3?format=csv&a=1&b=2",
        ),
        ("query dropped", "/internal/reports/2026-q3?format=csv"),
    ] {
        let mut parts = signed_get(&format!("{REPORTS}?format=csv&a=1"));
        parts.uri = target.parse().expect("uri");
        tampered.push((what, parts));
    }
    let mut parts = signed_get(&format!("{REPORTS}?format=csv&a=1"));
    set_header(&mut parts, "host", "evil.example");
    tampered.push(("host", parts));
    let mut parts = signed_get(&format!("{REPORTS}?format=csv&a=1"));
    parts.method = Method::DELETE;
    tampered.push(("method", parts));

    for (what, parts) in tampered {
        assert_eq!(
            verifier().verify(&parts),
            Err(SigV4Error::SignatureMismatch),
            "{what}"
        );
    }
}

#[test]
fn tampered_signed_date_is_detected() {
    // Moving X-Amz-Date within the skew window and the same day must still break the signature.
    let mut parts = signed_get(REPORTS);
    set_header(&mut parts, "x-amz-date", "20261128T093100Z");
    assert_eq!(
        verifier().verify(&parts),
        Err(SigV4Error::SignatureMismatch)
    );
}

#[test]
fn host_and_date_must_be_signed() {
    let parts = server(Signer::default().excluding("host").signed(get(REPORTS)));
    assert!(authorization(&parts).contains("SignedHeaders=x-amz-date,"));
    assert_eq!(
        verifier().verify(&parts),
        Err(SigV4Error::UnsignedRequiredHeader("host"))
    );

    let parts = server(
        Signer::default()
            .excluding("x-amz-date")
            .signed(get(REPORTS)),
    );
    assert_eq!(
        verifier().verify(&parts),
        Err(SigV4Error::UnsignedRequiredHeader("x-amz-date"))
    );
}

#[test]
fn signed_header_missing_from_request() {
    let mut req = get(REPORTS);
    req.headers_mut()
        .insert("x-report-tag", HeaderValue::from_static("q3"));
    let mut parts = server(Signer::default().signed(req));
    parts.headers.remove("x-report-tag");
    assert_eq!(
        verifier().verify(&parts),
        Err(SigV4Error::SignedHeaderAbsent("x-report-tag".into()))
    );
}

#[test]
fn clock_skew_window() {
    let signed_at = at(SIGNED_AT);
    let parts = signed_get(REPORTS);
    let limit = Duration::from_secs(5 * 60);
    let inside = Duration::from_secs(4 * 60 + 59);
    let outside = limit + Duration::from_secs(1);

    for (now, expected) in [
        (signed_at + inside, Ok(())),
        (signed_at - inside, Ok(())),
        (signed_at + limit, Ok(())),
        (signed_at - limit, Ok(())),
        (signed_at + outside, Err(SigV4Error::ClockSkew(Skew::Past))),
        (
            signed_at - outside,
            Err(SigV4Error::ClockSkew(Skew::Future)),
        ),
    ] {
        assert_eq!(verifier_at(now).verify(&parts).map(|_| ()), expected);
    }

    let lenient = verifier_at(signed_at + outside).with_max_skew(Duration::from_secs(15 * 60));
    lenient.verify(&parts).expect("configured skew");
}

#[test]
fn clock_moves_under_a_verifier() {
    let clock = Arc::new(ManualClock::new(at(SIGNED_AT)));
    let verifier = SigV4Verifier::new(SERVICE, REGION, clock.clone()).with_key(
        AKID,
        SecretKey::new(SECRET),
        CONSUMER,
    );
    let parts = signed_get(REPORTS);
    verifier.verify(&parts).expect("now");
    clock.advance(Duration::from_secs(301));
    assert_eq!(
        verifier.verify(&parts),
        Err(SigV4Error::ClockSkew(Skew::Past))
    );
}

#[test]
fn scope_must_name_our_service_and_region() {
    let other_region = Signer {
        region: "bank-2",
        ..Signer::default()
    };
    let parts = server(other_region.signed(get(REPORTS)));
    assert_eq!(
        verifier().verify(&parts),
        Err(SigV4Error::ScopeMismatch("region"))
    );

    let other_service = Signer {
        service: "s3",
        ..Signer::default()
    };
    let parts = server(other_service.signed(get(REPORTS)));
    assert_eq!(
        verifier().verify(&parts),
        Err(SigV4Error::ScopeMismatch("service"))
    );
}

#[test]
fn scope_date_must_match_request_date() {
    let mut parts = signed_get(REPORTS);
    let auth = authorization(&parts).replace("/20261128/", "/20261127/");
    set_header(&mut parts, "authorization", &auth);
    assert_eq!(
        verifier().verify(&parts),
        Err(SigV4Error::ScopeMismatch("date"))
    );
}

#[test]
fn malformed_authorization_headers() {
    let good = authorization(&signed_get(REPORTS));
    let sig = good
        .rsplit_once("Signature=")
        .expect("signature")
        .1
        .to_owned();
    let cred = format!("Credential={AKID}/20261128/{REGION}/{SERVICE}/aws4_request");
    let cases: Vec<(String, SigV4Error)> = vec![
        (
            "AWS4-HMAC-SHA512 Credential=x".into(),
            SigV4Error::UnsupportedAlgorithm,
        ),
        (
            "AWS4-ECDSA-P256-SHA256 Credential=x".into(),
            SigV4Error::UnsupportedAlgorithm,
        ),
        ("AWS4-HMAC-SHA256".into(), SigV4Error::UnsupportedAlgorithm),
        (
            "AWS4-HMAC-SHA256 ".into(),
            SigV4Error::Malformed("authorization component without '='"),
        ),
        (
            format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=host;x-amz-date"),
            SigV4Error::MissingComponent("Signature"),
        ),
        (
            format!("AWS4-HMAC-SHA256 {cred}, Signature={sig}"),
            SigV4Error::MissingComponent("SignedHeaders"),
        ),
        (
            format!("AWS4-HMAC-SHA256 SignedHeaders=host;x-amz-date, Signature={sig}"),
            SigV4Error::MissingComponent("Credential"),
        ),
        (
            format!(
                "AWS4-HMAC-SHA256 {cred}, {cred}, SignedHeaders=host;x-amz-date, Signature={sig}"
            ),
            SigV4Error::Malformed("repeated authorization component"),
        ),
        (
            format!(
                "AWS4-HMAC-SHA256 {cred}, SignedHeaders=host;x-amz-date, Signature={sig}, Extra=1"
            ),
            SigV4Error::Malformed("unknown authorization component"),
        ),
        (
            format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=host;x-amz-date, Signature=abc"),
            SigV4Error::Malformed("signature is not 64 hex digits"),
        ),
        (
            format!(
                "AWS4-HMAC-SHA256 {cred}, SignedHeaders=host;x-amz-date, Signature={}",
                "g".repeat(64)
            ),
            SigV4Error::Malformed("signature is not 64 hex digits"),
        ),
        (
            format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=x-amz-date;host, Signature={sig}"),
            SigV4Error::Malformed("signed headers are not sorted and unique"),
        ),
        (
            format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=Host;x-amz-date, Signature={sig}"),
            SigV4Error::Malformed("invalid signed header name"),
        ),
        (
            format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=host;;x-amz-date, Signature={sig}"),
            SigV4Error::Malformed("invalid signed header name"),
        ),
        (
            format!(
                "AWS4-HMAC-SHA256 Credential={AKID}/20261128/{REGION}/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature={sig}"
            ),
            SigV4Error::Malformed("credential scope is incomplete"),
        ),
        (
            format!(
                "AWS4-HMAC-SHA256 Credential={AKID}/20261128/{REGION}/{SERVICE}/aws4_request/x, \
                 SignedHeaders=host;x-amz-date, Signature={sig}"
            ),
            SigV4Error::Malformed("credential scope has extra parts"),
        ),
        (
            format!(
                "AWS4-HMAC-SHA256 Credential={AKID}/20261128/{REGION}/{SERVICE}/aws5_request, \
                 SignedHeaders=host;x-amz-date, Signature={sig}"
            ),
            SigV4Error::ScopeMismatch("terminator"),
        ),
        (
            format!(
                "AWS4-HMAC-SHA256 Credential=AKID-X/20261128/{REGION}/{SERVICE}/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature={sig}"
            ),
            SigV4Error::Malformed("invalid access key id"),
        ),
        (
            format!(
                "AWS4-HMAC-SHA256 Credential={AKID}/2026-11-28/{REGION}/{SERVICE}/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature={sig}"
            ),
            SigV4Error::Malformed("invalid credential scope date"),
        ),
        (
            format!(
                "AWS4-HMAC-SHA256 {cred}, SignedHeaders={}, Signature={sig}",
                (0..65)
                    .map(|i| format!("h{i:03}"))
                    .collect::<Vec<_>>()
                    .join(";")
            ),
            SigV4Error::Malformed("too many signed headers"),
        ),
    ];
    for (header, expected) in cases {
        let mut parts = signed_get(REPORTS);
        set_header(&mut parts, "authorization", &header);
        assert_eq!(verifier().verify(&parts), Err(expected), "{header}");
    }

    // Compact spacing some signers use is fine.
    let mut parts = signed_get(REPORTS);
    set_header(&mut parts, "authorization", &good.replace(", ", ","));
    verifier().verify(&parts).expect("no space after commas");
}

#[test]
fn malformed_dates_and_headers() {
    for date in [
        "20261128T093000",
        "2026-11-28T09:30:00Z",
        "20261131T093000Z",
        "20261128T246000Z",
        "20261128 093000Z",
        "+0261128T093000Z",
        "",
    ] {
        let mut parts = signed_get(REPORTS);
        set_header(&mut parts, "x-amz-date", date);
        assert_eq!(
            verifier().verify(&parts),
            Err(SigV4Error::Malformed("invalid X-Amz-Date")),
            "{date:?}"
        );
    }

    let mut parts = signed_get(REPORTS);
    parts.headers.remove("x-amz-date");
    assert_eq!(
        verifier().verify(&parts),
        Err(SigV4Error::MissingComponent("X-Amz-Date"))
    );

    let mut parts = signed_get(REPORTS);
    let auth = parts.headers.get(AUTHORIZATION).expect("auth").clone();
    parts.headers.append(AUTHORIZATION, auth);
    assert_eq!(
        verifier().verify(&parts),
        Err(SigV4Error::Malformed("repeated authentication header"))
    );

    let mut req = get(REPORTS);
    req.headers_mut()
        .insert("x-report-tag", HeaderValue::from_static("q3"));
    let mut parts = server(Signer::default().signed(req));
    parts.headers.insert(
        "x-report-tag",
        HeaderValue::from_bytes(b"caf\xe9").expect("obs-text"),
    );
    assert_eq!(
        verifier().verify(&parts),
        Err(SigV4Error::Malformed(
            "signed header value is not visible ASCII"
        ))
    );
}

#[test]
fn requests_without_sigv4() {
    let (parts, ()) = Request::get("/internal/reports/2026-q3")
        .header("host", "api.bank.example")
        .header("authorization", "Bearer abc")
        .body(())
        .expect("request")
        .into_parts();
    assert!(!is_sigv4(&parts));
    assert_eq!(verifier().verify(&parts), Err(SigV4Error::Missing));

    let (parts, ()) = Request::get("/internal/reports/2026-q3?X-Amz-Date=1")
        .body(())
        .expect("request")
        .into_parts();
    assert!(!is_sigv4(&parts));
}

#[test]
fn presigned_query_form() {
    let client = Signer::presigned(Duration::from_secs(600));
    let parts = server(client.signed(get(&format!("{REPORTS}?format=csv&b=2&a=1"))));
    assert!(!parts.headers.contains_key(AUTHORIZATION));
    let query = parts.uri.query().expect("query");
    assert!(query.contains("X-Amz-Signature="), "{query}");
    assert!(is_sigv4(&parts));

    let verified = verifier().verify(&parts).expect("presigned verifies");
    assert_eq!(&*verified.consumer, CONSUMER);
    assert_eq!(verified.payload, SignedPayload::Empty);

    let signed_at = at(SIGNED_AT);
    // Valid for its whole X-Amz-Expires, not just the skew window...
    verifier_at(signed_at + Duration::from_secs(600))
        .verify(&parts)
        .expect("at expiry");
    assert_eq!(
        verifier_at(signed_at + Duration::from_secs(601)).verify(&parts),
        Err(SigV4Error::Expired)
    );
    // ...and not usable early, beyond the skew.
    assert_eq!(
        verifier_at(signed_at - Duration::from_secs(301)).verify(&parts),
        Err(SigV4Error::ClockSkew(Skew::Future))
    );

    // Tampering with a signed or a signing parameter.
    let original = parts.uri.to_string();
    for (from, to) in [
        ("format=csv", "format=pdf"),
        ("X-Amz-Expires=600", "X-Amz-Expires=6000"),
        ("/2026-q3", "/2026-q4"),
    ] {
        let mut tampered = server(get(&format!(
            "https://api.bank.example{}",
            original.replace(from, to)
        )));
        assert_ne!(tampered.uri.to_string(), original, "{from}");
        tampered.method = Method::GET;
        assert_eq!(
            verifier().verify(&tampered),
            Err(SigV4Error::SignatureMismatch),
            "{from} -> {to}"
        );
    }
}

#[test]
fn presigned_s3_style_unsigned_payload() {
    let client = Signer {
        unsigned_payload: true,
        ..Signer::presigned(Duration::from_secs(60))
    };
    let parts = server(client.signed(get(REPORTS)));
    let verified = verifier().verify(&parts).expect("verifies");
    assert_eq!(verified.payload, SignedPayload::Unsigned);
}

#[test]
fn presigned_malformed() {
    let parts = server(Signer::presigned(Duration::from_secs(60)).signed(get(REPORTS)));
    let query = parts.uri.query().expect("query").to_owned();
    let cases = [
        (
            query.replace("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-X"),
            SigV4Error::UnsupportedAlgorithm,
        ),
        (
            query.replace("X-Amz-Expires=60", "X-Amz-Expires=060"),
            SigV4Error::Malformed("invalid X-Amz-Expires"),
        ),
        (
            query.replace("X-Amz-Expires=60", "X-Amz-Expires=604801"),
            SigV4Error::Malformed("X-Amz-Expires exceeds seven days"),
        ),
        (
            query.replace("X-Amz-Expires=60", "X-Amz-Expires=0"),
            SigV4Error::Malformed("invalid X-Amz-Expires"),
        ),
        (
            query.replace("X-Amz-Expires=60&", ""),
            SigV4Error::MissingComponent("X-Amz-Expires"),
        ),
        (
            format!("{query}&X-Amz-Date=20261128T093000Z"),
            SigV4Error::Malformed("repeated presigned parameter"),
        ),
        (
            query.replace("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=x-amz-date"),
            SigV4Error::UnsignedRequiredHeader("host"),
        ),
    ];
    for (q, expected) in cases {
        assert_ne!(q, query, "case must change the query: {expected}");
        let mut parts = signed_get(REPORTS);
        parts.headers.remove(AUTHORIZATION);
        parts.uri = format!("/internal/reports/2026-q3?{q}")
            .parse()
            .expect("uri");
        assert_eq!(verifier().verify(&parts), Err(expected), "{q}");
    }

    // A header signature and a query signature at once.
    let mut both = signed_get(REPORTS);
    both.uri = format!("/internal/reports/2026-q3?{query}")
        .parse()
        .expect("uri");
    assert_eq!(verifier().verify(&both), Err(SigV4Error::Ambiguous));
}

#[test]
fn secrets_and_signatures_stay_out_of_output() {
    let verifier = verifier();
    let debug = format!("{verifier:?}");
    assert!(!debug.contains(SECRET), "{debug}");
    assert!(debug.contains("***"));
    assert_eq!(format!("{:?}", SecretKey::new(SECRET)), "***");

    let client = Signer {
        secret: "another-secret",
        ..Signer::default()
    };
    let parts = server(client.signed(get(REPORTS)));
    let auth = authorization(&parts);
    let sig = auth.rsplit_once("Signature=").expect("sig").1;
    let err = verifier.verify(&parts).expect_err("wrong secret");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(sig) && !shown.contains(SECRET), "{shown}");
}

#[test]
fn verifier_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SigV4Verifier>();
}

#[test]
fn overlong_signed_header_name() {
    let mut parts = signed_get(REPORTS);
    let auth = authorization(&parts).replace(
        "SignedHeaders=host;x-amz-date",
        &format!("SignedHeaders=host;x-amz-date;{}", "z".repeat(200)),
    );
    set_header(&mut parts, "authorization", &auth);
    assert_eq!(
        verifier().verify(&parts),
        Err(SigV4Error::Malformed("invalid signed header name"))
    );
}

#[test]
fn reasons_are_distinct() {
    let all = [
        SigV4Error::Missing,
        SigV4Error::Ambiguous,
        SigV4Error::UnsupportedAlgorithm,
        SigV4Error::Malformed("x"),
        SigV4Error::MissingComponent("x"),
        SigV4Error::ScopeMismatch("x"),
        SigV4Error::UnsignedRequiredHeader("x"),
        SigV4Error::SignedHeaderAbsent("x".into()),
        SigV4Error::UnknownAccessKey("x".into()),
        SigV4Error::ClockSkew(Skew::Past),
        SigV4Error::Expired,
        SigV4Error::PayloadHashRequired,
        SigV4Error::UnsupportedPayload,
        SigV4Error::SignatureMismatch,
    ];
    let mut reasons: Vec<&str> = all.iter().map(SigV4Error::reason).collect();
    assert!(
        reasons
            .iter()
            .all(|r| r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    );
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), all.len());
}

fn mutate(base: &str, edits: &[(usize, u8, u8)]) -> String {
    let mut bytes = base.as_bytes().to_vec();
    for &(pos, op, byte) in edits {
        if bytes.is_empty() {
            bytes.push(byte);
            continue;
        }
        let pos = pos % bytes.len();
        match op % 3 {
            0 => bytes[pos] = byte,
            1 => {
                bytes.remove(pos);
            }
            _ => bytes.insert(pos, byte),
        }
    }
    bytes.retain(|b| (0x20..0x7f).contains(b));
    String::from_utf8(bytes).unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_authorization_never_panics(header in "AWS4-HMAC-SHA256[ -~]{0,200}") {
        let mut parts = signed_get(REPORTS);
        if let Ok(value) = HeaderValue::from_str(&header) {
            parts.headers.insert(AUTHORIZATION, value);
            let _ = verifier().verify(&parts);
        }
    }

    #[test]
    fn mutated_authorization_never_panics_or_passes(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0x20u8..0x7f), 1..6)
    ) {
        let parts = signed_get(REPORTS);
        let good = authorization(&parts);
        let mutated = mutate(&good, &edits);
        let mut parts = parts;
        if let Ok(value) = HeaderValue::from_str(&mutated) {
            parts.headers.insert(AUTHORIZATION, value);
            let result = verifier().verify(&parts);
            // Only edits that canonicalise away (e.g. spacing) may still verify.
            if result.is_ok() {
                let normal = |s: &str| s.replace(' ', "").to_ascii_lowercase();
                prop_assert_eq!(normal(&mutated), normal(&good));
            }
        }
    }

    #[test]
    fn arbitrary_query_never_panics(query in "[ -~&&[^#]]{0,120}") {
        let target = format!("/internal/reports/2026-q3?{query}");
        if let Ok(uri) = target.parse::<http::Uri>() {
            let mut parts = signed_get(REPORTS);
            parts.headers.remove(AUTHORIZATION);
            parts.uri = uri;
            let _ = verifier().verify(&parts);
            let _ = is_sigv4(&parts);
        }
    }
}
