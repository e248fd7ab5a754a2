//! RFC 9457 problem document checks, including validation against the RFC's JSON Schema
//! (`shared/testdata/rfc9457-problem-details/problem.schema.json`).

use http::{HeaderMap, StatusCode};
use std::sync::OnceLock;

/// Where the RFC 9457 schema lives: `shared/` beside the workspace root.
pub fn schema_path() -> std::path::PathBuf {
    crate::workspace_root().join("../shared/testdata/rfc9457-problem-details/problem.schema.json")
}

fn validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let path = schema_path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("cannot read the RFC 9457 schema at {}: {e}", path.display())
        });
        let schema: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("the RFC 9457 schema is not JSON: {e}"));
        jsonschema::validator_for(&schema)
            .unwrap_or_else(|e| panic!("the RFC 9457 schema does not compile: {e}"))
    })
}

/// Asserts that a response is a gateway problem with `expected` status and returns the
/// document: `Content-Type: application/problem+json`, members `type`, `title`, `status`,
/// `detail` and `request_id` present, `status` equal to the HTTP status, and the body valid
/// against the RFC 9457 schema.
///
/// # Panics
/// When any of that does not hold (it is an assertion).
pub fn assert_problem(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    expected: u16,
) -> serde_json::Value {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status.as_u16(), expected, "status; body: {text}");
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/problem+json")),
        "Content-Type is {ct:?}, not application/problem+json; body: {text}"
    );
    let doc: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("problem body is not JSON ({e}): {text}"));
    assert!(doc.is_object(), "problem body is not an object: {text}");
    for m in ["type", "title", "detail", "request_id"] {
        assert!(
            doc.get(m).is_some_and(serde_json::Value::is_string),
            "member `{m}` missing or not a string: {text}"
        );
    }
    assert_eq!(
        doc.get("status").and_then(serde_json::Value::as_u64),
        Some(u64::from(expected)),
        "status member: {text}"
    );
    let errors: Vec<String> = validator()
        .iter_errors(&doc)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "problem does not match the RFC 9457 schema: {errors:?}; body: {text}"
    );
    doc
}

/// [`assert_problem`] on a reqwest response (consumes it). Also checks that the problem's
/// `request_id` equals the response's `X-Request-ID` when both are present.
pub async fn expect_problem(resp: reqwest::Response, expected: u16) -> serde_json::Value {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("reading the problem body failed: {e}"));
    let doc = assert_problem(status, &headers, &body, expected);
    if let Some(rid) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        assert_eq!(doc["request_id"], rid, "problem request_id vs X-Request-ID");
    }
    doc
}
