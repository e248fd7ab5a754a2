//! The one error type of the request path and its RFC 9457 rendering.
//!
//! Every error records *who* failed ([`Fault`]): the client sent something we refuse, the
//! upstream misbehaved, or the gateway itself could not do its job. The fault drives the status
//! class, whether a retry could help, and the metrics label; the [`Kind`] fixes the problem
//! `type` URI, title and status, which are part of our public contract (docs/errors.md).

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, header};
use std::borrow::Cow;

/// Base of every problem `type` URI; the slug after it is stable.
pub const PROBLEM_BASE: &str = "https://tollgate.dev/problems/";

pub const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Gateway,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
            Fault::Gateway => "gateway",
        }
    }
}

/// nginx's "client closed request", which log readers know.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// What went wrong. Each variant has one status, one title and one stable `type` slug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    BadRequest,
    NotFound,
    MethodNotAllowed,
    Gone,
    RequestTimeout,
    /// The client left before its request was complete. Nothing reaches it; the status is for
    /// logs and metrics (nginx's 499).
    ClientClosedRequest,
    PayloadTooLarge,
    UriTooLong,
    HeadersTooLarge,
    Unauthorized,
    Forbidden,
    Conflict,
    PreconditionFailed,
    UnsupportedMediaType,
    Unprocessable,
    TooManyRequests,
    QuotaExceeded,
    SpikeArrested,
    ConcurrencyLimited,
    UpstreamUnreachable,
    UpstreamTimeout,
    UpstreamBadResponse,
    /// Every request slot of the chosen target stayed taken until the response deadline.
    UpstreamBusy,
    ServiceUnavailable,
    Internal,
}

impl Kind {
    pub fn status(self) -> StatusCode {
        match self {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::Gone => StatusCode::GONE,
            Kind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Kind::ClientClosedRequest => {
                StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Kind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::UriTooLong => StatusCode::URI_TOO_LONG,
            Kind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Kind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::TooManyRequests
            | Kind::QuotaExceeded
            | Kind::SpikeArrested
            | Kind::ConcurrencyLimited => StatusCode::TOO_MANY_REQUESTS,
            Kind::UpstreamUnreachable | Kind::UpstreamBadResponse => StatusCode::BAD_GATEWAY,
            Kind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::UpstreamBusy | Kind::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable slug of the problem `type` URI.
    pub fn slug(self) -> &'static str {
        match self {
            Kind::BadRequest => "bad-request",
            Kind::NotFound => "not-found",
            Kind::MethodNotAllowed => "method-not-allowed",
            Kind::Gone => "gone",
            Kind::RequestTimeout => "request-timeout",
            Kind::ClientClosedRequest => "client-closed-request",
            Kind::PayloadTooLarge => "payload-too-large",
            Kind::UriTooLong => "uri-too-long",
            Kind::HeadersTooLarge => "headers-too-large",
            Kind::Unauthorized => "unauthorized",
            Kind::Forbidden => "forbidden",
            Kind::Conflict => "conflict",
            Kind::PreconditionFailed => "precondition-failed",
            Kind::UnsupportedMediaType => "unsupported-media-type",
            Kind::Unprocessable => "unprocessable",
            Kind::TooManyRequests => "rate-limited",
            Kind::QuotaExceeded => "quota-exceeded",
            Kind::SpikeArrested => "spike-arrested",
            Kind::ConcurrencyLimited => "concurrency-limited",
            Kind::UpstreamUnreachable => "upstream-unreachable",
            Kind::UpstreamTimeout => "upstream-timeout",
            Kind::UpstreamBadResponse => "upstream-bad-response",
            Kind::UpstreamBusy => "upstream-busy",
            Kind::ServiceUnavailable => "service-unavailable",
            Kind::Internal => "internal",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Kind::BadRequest => "Bad request",
            Kind::NotFound => "Not found",
            Kind::MethodNotAllowed => "Method not allowed",
            Kind::Gone => "Gone",
            Kind::RequestTimeout => "Request not received in time",
            Kind::ClientClosedRequest => "Client closed the request",
            Kind::PayloadTooLarge => "Request body too large",
            Kind::UriTooLong => "Request target too long",
            Kind::HeadersTooLarge => "Request headers too large",
            Kind::Unauthorized => "Unauthorized",
            Kind::Forbidden => "Forbidden",
            Kind::Conflict => "Conflict",
            Kind::PreconditionFailed => "Precondition failed",
            Kind::UnsupportedMediaType => "Unsupported media type",
            Kind::Unprocessable => "Unprocessable content",
            Kind::TooManyRequests => "Too many requests",
            Kind::QuotaExceeded => "Quota exceeded",
            Kind::SpikeArrested => "Spike arrest",
            Kind::ConcurrencyLimited => "Too many requests in flight",
            Kind::UpstreamUnreachable => "Upstream unreachable",
            Kind::UpstreamTimeout => "Upstream timed out",
            Kind::UpstreamBadResponse => "Bad response from upstream",
            Kind::UpstreamBusy => "Upstream at capacity",
            Kind::ServiceUnavailable => "Service unavailable",
            Kind::Internal => "Internal gateway error",
        }
    }

    pub fn fault(self) -> Fault {
        match self {
            Kind::UpstreamUnreachable
            | Kind::UpstreamTimeout
            | Kind::UpstreamBadResponse
            | Kind::UpstreamBusy => Fault::Upstream,
            Kind::ServiceUnavailable | Kind::Internal => Fault::Gateway,
            _ => Fault::Client,
        }
    }

    /// Every kind, for documentation tests.
    pub const ALL: &'static [Kind] = &[
        Kind::BadRequest,
        Kind::NotFound,
        Kind::MethodNotAllowed,
        Kind::Gone,
        Kind::RequestTimeout,
        Kind::ClientClosedRequest,
        Kind::PayloadTooLarge,
        Kind::UriTooLong,
        Kind::HeadersTooLarge,
        Kind::Unauthorized,
        Kind::Forbidden,
        Kind::Conflict,
        Kind::PreconditionFailed,
        Kind::UnsupportedMediaType,
        Kind::Unprocessable,
        Kind::TooManyRequests,
        Kind::QuotaExceeded,
        Kind::SpikeArrested,
        Kind::ConcurrencyLimited,
        Kind::UpstreamUnreachable,
        Kind::UpstreamTimeout,
        Kind::UpstreamBadResponse,
        Kind::UpstreamBusy,
        Kind::ServiceUnavailable,
        Kind::Internal,
    ];
}

/// An error produced by the gateway (never by an upstream: upstream responses pass through).
///
/// `detail` is shown to the client, so it must never contain a credential, a stack trace or an
/// internal address; `cause` is for logs only.
#[derive(Debug, thiserror::Error)]
#[error("{}: {detail}", kind.title())]
pub struct GatewayError {
    pub kind: Kind,
    pub detail: Cow<'static, str>,
    /// Extra response headers (`Allow`, `Retry-After`, `WWW-Authenticate`, ...).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Extra problem members, e.g. `successor` for 410 or `errors` for validation.
    pub extensions: Option<serde_json::Map<String, serde_json::Value>>,
    /// Internal cause for the log line; never rendered to the client.
    pub cause: Option<Cow<'static, str>>,
}

impl GatewayError {
    pub fn new(kind: Kind, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            headers: Vec::new(),
            extensions: None,
            cause: None,
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn with_extension(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extensions
            .get_or_insert_with(serde_json::Map::new)
            .insert(key.to_string(), value);
        self
    }

    pub fn with_cause(mut self, cause: impl Into<Cow<'static, str>>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    pub fn fault(&self) -> Fault {
        self.kind.fault()
    }

    /// The RFC 9457 document for this error.
    pub fn problem_json(&self, request_id: &str) -> Bytes {
        let mut doc = serde_json::Map::with_capacity(6);
        let ty = format!("{PROBLEM_BASE}{}", self.kind.slug());
        doc.insert("type".into(), ty.into());
        doc.insert("title".into(), self.kind.title().into());
        doc.insert("status".into(), self.status().as_u16().into());
        doc.insert("detail".into(), self.detail.as_ref().into());
        doc.insert("request_id".into(), request_id.into());
        if let Some(ext) = &self.extensions {
            for (k, v) in ext {
                // The standard members are ours; an extension cannot overwrite them.
                doc.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        // Serialising a Map of strings and numbers cannot fail.
        Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())
    }

    /// Builds the full response: status, problem body, content type and extra headers.
    pub fn to_response(&self, request_id: &str) -> http::Response<Bytes> {
        let body = self.problem_json(request_id);
        let mut resp = http::Response::new(body);
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, PROBLEM_JSON);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (k, v) in &self.headers {
            h.append(k.clone(), v.clone());
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_has_the_rfc9457_members_and_request_id() {
        let e = GatewayError::new(Kind::NotFound, "no route for GET /x")
            .with_extension("status", 999.into())
            .with_extension("hint", "check the path".into());
        let v: serde_json::Value = serde_json::from_slice(&e.problem_json("req-1")).expect("json");
        assert_eq!(v["type"], "https://tollgate.dev/problems/not-found");
        assert_eq!(v["title"], "Not found");
        assert_eq!(v["status"], 404);
        assert_eq!(v["detail"], "no route for GET /x");
        assert_eq!(v["request_id"], "req-1");
        assert_eq!(v["hint"], "check the path");
    }

    #[test]
    fn every_kind_has_a_distinct_slug_and_matching_fault() {
        let mut slugs: Vec<_> = Kind::ALL.iter().map(|k| k.slug()).collect();
        slugs.sort();
        slugs.dedup();
        assert_eq!(slugs.len(), Kind::ALL.len());
        for k in Kind::ALL {
            let class = k.status().as_u16() / 100;
            match k.fault() {
                Fault::Client => assert_eq!(class, 4, "{k:?}"),
                Fault::Upstream | Fault::Gateway => assert_eq!(class, 5, "{k:?}"),
            }
        }
    }

    #[test]
    fn cause_never_reaches_the_body() {
        let e = GatewayError::new(
            Kind::UpstreamUnreachable,
            "the upstream refused the connection",
        )
        .with_cause("connect 10.0.0.7:9101: ECONNREFUSED secret-token");
        let body = e.problem_json("r");
        let s = std::str::from_utf8(&body).expect("utf8");
        assert!(!s.contains("10.0.0.7") && !s.contains("secret-token"));
    }
}
