//! A small client for the admin API on hyper's legacy client: plain HTTP only, because the
//! admin listener serves plain HTTP (put TLS in front with a tunnel or proxy if needed).

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{Method, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// How long one admin request may take, connect to last byte. Generous: API registration
/// compiles the whole configuration before it answers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An admin API error answer: its RFC 9457 problem (or the raw body when it is not one).
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub body: Value,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let title = self
            .body
            .get("title")
            .and_then(Value::as_str)
            .or(self.status.canonical_reason())
            .unwrap_or("error");
        write!(f, "{} ({})", title, self.status.as_u16())?;
        if let Some(detail) = self.body.get("detail").and_then(Value::as_str) {
            write!(f, ": {detail}")?;
        } else if let Some(text) = self.body.as_str().filter(|t| !t.is_empty()) {
            write!(f, ": {text}")?;
        }
        for e in self
            .body
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let pointer = e.get("pointer").and_then(Value::as_str).unwrap_or("");
            let message = e.get("message").and_then(Value::as_str).unwrap_or("");
            let pointer = if pointer.is_empty() { "/" } else { pointer };
            write!(f, "\n  {pointer}: {message}")?;
        }
        if self.status == StatusCode::UNAUTHORIZED {
            write!(
                f,
                "\n  hint: pass the admin token with --token or TOLLGATE_ADMIN_TOKEN"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

/// A successful answer.
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON; `null` when empty (204).
    pub fn json(&self) -> Result<Value> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body).context("the admin API answered with invalid JSON")
    }
}

pub struct Client {
    base: String,
    token: Option<String>,
    http: HyperClient<HttpConnector, Full<Bytes>>,
    /// Items per page when following cursors.
    pub page_size: u32,
}

impl Client {
    pub fn new(url: &str, token: Option<String>, page_size: u32) -> Result<Self> {
        let base = url.trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .with_context(|| format!("--url {base:?} is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => bail!(
                "--url: the admin listener serves plain HTTP; `{other}` is not supported (use http://)"
            ),
            None => bail!("--url {base:?} needs a scheme, like http://127.0.0.1:9901"),
        }
        let http = HyperClient::builder(TokioExecutor::new()).build_http();
        Ok(Self {
            base,
            token: token.filter(|t| !t.is_empty()),
            http,
            page_size,
        })
    }

    /// Sends one request; an error status becomes a [`Problem`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> Result<Reply> {
        let url = format!("{}{path}", self.base);
        let mut req = http::Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(header::ACCEPT, "application/json");
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some((ct, b)) => {
                req = req.header(header::CONTENT_TYPE, ct);
                b
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .with_context(|| format!("cannot build the request {method} {url}"))?;
        let fut = async {
            let resp = self
                .http
                .request(req)
                .await
                .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
            let status = resp.status();
            let content_type = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = resp
                .into_body()
                .collect()
                .await
                .with_context(|| format!("{method} {path}: the answer broke off"))?
                .to_bytes();
            anyhow::Ok(Reply {
                status,
                content_type,
                body,
            })
        };
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .with_context(|| format!("{method} {path}: no answer within {REQUEST_TIMEOUT:?}"))??;
        if !reply.status.is_success() {
            let body = serde_json::from_slice(&reply.body).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&reply.body).trim().to_owned())
            });
            return Err(Problem {
                status: reply.status,
                body,
            }
            .into());
        }
        Ok(reply)
    }

    /// A JSON request and its JSON answer.
    pub async fn json(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let body = body.map(|b| ("application/json", Bytes::from(b.to_string())));
        self.send(method, path, body).await?.json()
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.json(Method::GET, path, None).await
    }

    /// Every item of a list route, following `next_cursor` page by page.
    pub async fn list_all(&self, path: &str) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let sep = if path.contains('?') { '&' } else { '?' };
        loop {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("limit", &self.page_size.to_string());
            if let Some(c) = &cursor {
                q.append_pair("cursor", c);
            }
            let page = self.get(&format!("{path}{sep}{}", q.finish())).await?;
            if let Some(a) = page.get("items").and_then(Value::as_array) {
                items.extend(a.iter().cloned());
            }
            match page.get("next_cursor").and_then(Value::as_str) {
                // A server handing back the same cursor would loop forever.
                Some(c) if Some(c) != cursor.as_deref() => cursor = Some(c.to_owned()),
                _ => return Ok(items),
            }
        }
    }
}

/// One path segment, percent-encoded: ids come from the command line and must not be able to
/// change the route (`a/b`, `..`, `?`).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out == "." || out == ".." {
        // Dot segments would be normalised away by intermediaries.
        return out.replace('.', "%2E");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("acme-1_x.y"), "acme-1_x.y");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
        assert_eq!(seg(".."), "%2E%2E");
    }

    #[test]
    fn problems_list_their_errors() {
        let p = Problem {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: serde_json::json!({
                "title": "Invalid request", "detail": "the consumer is not valid",
                "errors": [{"pointer": "/plan", "message": "no plan `x`"}]
            }),
        };
        assert_eq!(
            p.to_string(),
            "Invalid request (422): the consumer is not valid\n  /plan: no plan `x`"
        );
    }

    #[test]
    fn only_plain_http() {
        assert!(Client::new("https://x", None, 100).is_err());
        assert!(Client::new("127.0.0.1:9901", None, 100).is_err());
        assert!(Client::new("http://127.0.0.1:9901/", None, 100).is_ok());
    }
}
