//! The `Auth` policy of one route: which schemes identify the caller (`any` or `all` of them),
//! which scopes it needs, and what reaches the upstream once it is known.
//!
//! The synchronous path covers API keys, cached JWTs, mTLS and SigV4 without allocating a
//! future; only a JWT with a not-yet-known `kid` and the external authorizer wait.

use super::authorizer::{AuthzRequest, Decision as AuthzDecision};
use super::identity::Identity;
use super::jwt::Verdict;
use super::sigv4;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue};
use std::sync::Arc;
use tollgate_config::{AuthScheme, RouteAuth};
use tollgate_core::{
    Consumer, Decision, GatewayError, Kind, Phase, Policy, RequestCtx, Scopes, Step,
};

pub use tollgate_core::{X_CONSUMER_ID, X_CONSUMER_PLAN, X_CONSUMER_TENANT};

/// Who a scheme found, and with which scopes.
struct Found {
    consumer: Arc<Consumer>,
    /// A token's claims, whose scopes apply; `None` means "the consumer's".
    token_scopes: Option<Arc<super::jwt::Claims>>,
    scheme: &'static str,
    /// Extra upstream headers (authorizer context, certificate subject).
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// Why a scheme did not identify the caller.
enum Miss {
    /// No credential of this kind in the request.
    Absent,
    /// A credential was there and is not good: 401 with this challenge and reason.
    Invalid {
        scheme: &'static str,
        reason: &'static str,
    },
    /// Authenticated but not allowed (a certificate not on the list, an authorizer's deny).
    Forbidden(&'static str),
    /// The authorizer could not answer: fail closed. The reason is for the log only.
    Unavailable(Arc<str>),
}

enum Attempt {
    Found(Found),
    Miss(Miss),
    /// Needs I/O: finish on the async path.
    Pending,
}

#[derive(Debug)]
pub struct Auth {
    identity: Arc<Identity>,
    schemes: Vec<AuthScheme>,
    all: bool,
    scopes: Vec<String>,
    certificate_subjects: Vec<String>,
    authorizer: Option<String>,
    /// Precomputed `WWW-Authenticate` challenges for a request with no credentials.
    challenges: Vec<HeaderValue>,
}

fn scheme_name(s: AuthScheme) -> &'static str {
    match s {
        AuthScheme::ApiKey => "api_key",
        AuthScheme::Jwt => "jwt",
        AuthScheme::Mtls => "mtls",
        AuthScheme::Sigv4 => "sigv4",
        AuthScheme::Authorizer => "authorizer",
    }
}

fn challenge(scheme: &'static str, reason: Option<&str>, scope: Option<&str>) -> HeaderValue {
    let mut s = match scheme {
        "jwt" | "authorizer" => String::from("Bearer realm=\"tollgate\""),
        // A realm like the others: a scheme's parameters follow it after a space, so a bare
        // scheme could not take the `error` below (RFC 9110 §11.2).
        "sigv4" => String::from("AWS4-HMAC-SHA256 realm=\"tollgate\""),
        "mtls" => String::from("Mutual realm=\"tollgate\""),
        _ => String::from("ApiKey realm=\"tollgate\""),
    };
    if let Some(r) = reason {
        let code = if scheme == "jwt" {
            "invalid_token"
        } else {
            "invalid_request"
        };
        s.push_str(&format!(", error=\"{code}\", error_description=\"{r}\""));
    }
    if let Some(sc) = scope {
        s.push_str(&format!(", error=\"insufficient_scope\", scope=\"{sc}\""));
    }
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("Bearer"))
}

impl Auth {
    pub fn new(identity: Arc<Identity>, cfg: &RouteAuth) -> Self {
        let (schemes, all) = if cfg.all.is_empty() {
            (cfg.any.clone(), false)
        } else {
            (cfg.all.clone(), true)
        };
        let challenges = schemes
            .iter()
            .map(|s| challenge(scheme_name(*s), None, None))
            .collect();
        Self {
            identity,
            schemes,
            all,
            scopes: cfg.scopes.clone(),
            certificate_subjects: cfg.certificate_subjects.clone(),
            authorizer: cfg.authorizer.clone(),
            challenges,
        }
    }

    fn bearer(req: &http::request::Parts) -> Option<&str> {
        let v = req.headers.get(AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }

    fn consumer_for_subject(&self, claims: &super::jwt::Claims) -> Option<Arc<Consumer>> {
        let ids = &self.identity;
        claims
            .subject
            .as_deref()
            .and_then(|s| ids.by_subject.get(s))
            .or_else(|| {
                claims
                    .client_id
                    .as_deref()
                    .and_then(|c| ids.by_subject.get(c))
            })
            .cloned()
    }

    fn consumer_of_token(&self, claims: &Arc<super::jwt::Claims>) -> Attempt {
        match self.consumer_for_subject(claims) {
            Some(consumer) => Attempt::Found(Found {
                consumer,
                token_scopes: Some(claims.clone()),
                scheme: "jwt",
                headers: Vec::new(),
            }),
            // A valid token for nobody we know: the caller is not a consumer.
            None => Attempt::Miss(Miss::Invalid {
                scheme: "jwt",
                reason: "unknown subject",
            }),
        }
    }

    /// One scheme, synchronously where possible.
    fn attempt(&self, scheme: AuthScheme, ctx: &RequestCtx, req: &http::request::Parts) -> Attempt {
        let ids = &self.identity;
        match scheme {
            AuthScheme::ApiKey => {
                let mut keys = req.headers.get_all(&ids.api_key_header).iter();
                let Some(key) = keys.next() else {
                    return Attempt::Miss(Miss::Absent);
                };
                // Two keys name two callers (or one caller and a guess): never pick one.
                if keys.next().is_some() {
                    return Attempt::Miss(Miss::Invalid {
                        scheme: "api_key",
                        reason: "more than one API key",
                    });
                }
                match ids.by_api_key(key.as_bytes()) {
                    Some(e) => Attempt::Found(Found {
                        consumer: e.consumer.clone(),
                        token_scopes: None,
                        scheme: "api_key",
                        headers: Vec::new(),
                    }),
                    None => Attempt::Miss(Miss::Invalid {
                        scheme: "api_key",
                        reason: "unknown API key",
                    }),
                }
            }
            AuthScheme::Jwt => {
                let (Some(token), Some(v)) = (Self::bearer(req), ids.jwt.as_ref()) else {
                    return Attempt::Miss(Miss::Absent);
                };
                if req.headers.get_all(AUTHORIZATION).iter().nth(1).is_some() {
                    return Attempt::Miss(Miss::Invalid {
                        scheme: "jwt",
                        reason: "more than one Authorization field",
                    });
                }
                match v.verify_cached(token) {
                    Verdict::Valid(claims) => self.consumer_of_token(&claims),
                    Verdict::Invalid(e) => Attempt::Miss(Miss::Invalid {
                        scheme: "jwt",
                        reason: e.reason(),
                    }),
                    Verdict::UnknownKey => Attempt::Pending,
                }
            }
            AuthScheme::Mtls => {
                let Some(cert) = ctx.client_cert.as_ref() else {
                    return Attempt::Miss(Miss::Absent);
                };
                let allowed = self.certificate_subjects.is_empty()
                    || cert
                        .names()
                        .any(|n| self.certificate_subjects.iter().any(|a| a == n));
                if !allowed {
                    return Attempt::Miss(Miss::Forbidden(
                        "this client certificate is not allowed on this route",
                    ));
                }
                let consumer = cert
                    .names()
                    .find_map(|n| ids.by_cert.get(n))
                    .cloned()
                    .or_else(|| {
                        // Listed on the route but not mapped to a consumer: the certificate's
                        // name is the caller's identity.
                        cert.common_name
                            .as_deref()
                            .map(|cn| Arc::new(self.identity.ad_hoc_consumer(cn)))
                    });
                let Some(consumer) = consumer else {
                    return Attempt::Miss(Miss::Forbidden(
                        "the client certificate names no known consumer",
                    ));
                };
                let subject = HeaderValue::from_str(&cert.subject).ok();
                Attempt::Found(Found {
                    consumer,
                    token_scopes: None,
                    scheme: "mtls",
                    headers: subject
                        .map(|s| vec![(ids.cert_header.clone(), s)])
                        .unwrap_or_default(),
                })
            }
            AuthScheme::Sigv4 => {
                let Some(v) = ids.sigv4.as_ref() else {
                    return Attempt::Miss(Miss::Absent);
                };
                if !sigv4::is_sigv4(req) {
                    return Attempt::Miss(Miss::Absent);
                }
                match v.verify(req) {
                    Ok(ok) => {
                        // A body signed by digest would need checking while it streams; the
                        // routes we protect with SigV4 are reads, so a body is refused.
                        if matches!(ok.payload, sigv4::SignedPayload::Sha256(_)) && has_body(req) {
                            return Attempt::Miss(Miss::Invalid {
                                scheme: "sigv4",
                                reason: "signed request bodies are not supported",
                            });
                        }
                        match ids.consumer(&ok.consumer) {
                            Some(c) => Attempt::Found(Found {
                                consumer: c.clone(),
                                token_scopes: None,
                                scheme: "sigv4",
                                headers: Vec::new(),
                            }),
                            None => Attempt::Miss(Miss::Invalid {
                                scheme: "sigv4",
                                reason: "unknown consumer",
                            }),
                        }
                    }
                    Err(e) => Attempt::Miss(Miss::Invalid {
                        scheme: "sigv4",
                        reason: e.reason(),
                    }),
                }
            }
            // Always a network call (or a cache hit we only learn about by asking).
            AuthScheme::Authorizer => Attempt::Pending,
        }
    }

    /// The same, finishing what needs I/O.
    async fn attempt_async(
        &self,
        scheme: AuthScheme,
        ctx: &RequestCtx,
        req: &http::request::Parts,
    ) -> Attempt {
        match self.attempt(scheme, ctx, req) {
            Attempt::Pending => {}
            done => return done,
        }
        match scheme {
            AuthScheme::Jwt => {
                let (Some(token), Some(v)) = (Self::bearer(req), self.identity.jwt.as_ref()) else {
                    return Attempt::Miss(Miss::Absent);
                };
                match v.verify(token).await {
                    Ok(claims) => self.consumer_of_token(&claims),
                    Err(e) => Attempt::Miss(Miss::Invalid {
                        scheme: "jwt",
                        reason: e.reason(),
                    }),
                }
            }
            AuthScheme::Authorizer => self.ask_authorizer(ctx, req).await,
            _ => Attempt::Miss(Miss::Absent),
        }
    }

    async fn ask_authorizer(&self, ctx: &RequestCtx, req: &http::request::Parts) -> Attempt {
        let Some(z) = self
            .authorizer
            .as_deref()
            .and_then(|n| self.identity.authorizers.get(n))
        else {
            return Attempt::Miss(Miss::Unavailable(Arc::from(
                "the route names an authorizer the config does not have",
            )));
        };
        let cache_key = req.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        let q = AuthzRequest {
            method: req.method.as_str(),
            path: req.uri.path(),
            headers: &req.headers,
            client_ip: ctx.client_ip,
            cache_key,
        };
        match z.decide(&q).await {
            Ok(d) => match &*d {
                AuthzDecision::Allow {
                    consumer,
                    context_headers,
                } => {
                    let c = self
                        .identity
                        .consumer(consumer)
                        .cloned()
                        .unwrap_or_else(|| {
                            // The authorizer is the authority for who the caller is.
                            Arc::new(self.identity.ad_hoc_consumer(consumer))
                        });
                    Attempt::Found(Found {
                        consumer: c,
                        token_scopes: None,
                        scheme: "authorizer",
                        headers: context_headers.clone(),
                    })
                }
                AuthzDecision::Deny => {
                    Attempt::Miss(Miss::Forbidden("the authorizer denied this request"))
                }
            },
            Err(e) => {
                tracing::warn!(request_id = ctx.request_id_str(), error = %e, "authorizer unavailable; failing closed");
                Attempt::Miss(Miss::Unavailable(Arc::from(e.to_string())))
            }
        }
    }

    /// `all`: every scheme must identify the same consumer; any miss refuses, an unavailable
    /// authorizer first (retry later).
    fn decide_all(&self, attempts: Vec<Attempt>) -> Result<Found, GatewayError> {
        let mut found: Vec<Found> = Vec::new();
        let mut worst = Worst::default();
        for a in attempts {
            match a {
                Attempt::Found(f) => found.push(f),
                Attempt::Miss(m) => worst.offer(m),
                Attempt::Pending => {}
            }
        }
        if let Some(m) = worst.0 {
            return Err(self.refuse(m));
        }
        let mut it = found.into_iter();
        let Some(mut first) = it.next() else {
            return Err(self.refuse(Miss::Absent));
        };
        for f in it {
            if f.consumer.id != first.consumer.id {
                // A 401 always says how to authenticate (RFC 9110 §11.6.1).
                let mut e = GatewayError::new(
                    Kind::Unauthorized,
                    "the credentials name different consumers",
                );
                for c in &self.challenges {
                    e = e.with_header(WWW_AUTHENTICATE, c.clone());
                }
                return Err(e);
            }
            // A token's scopes are what was granted for this call.
            if f.token_scopes.is_some() {
                first.token_scopes = f.token_scopes;
            }
            first.headers.extend(f.headers);
            if first.scheme == "api_key" {
                first.scheme = f.scheme;
            }
        }
        Ok(first)
    }

    fn refuse(&self, m: Miss) -> GatewayError {
        match m {
            Miss::Absent => {
                let mut e = GatewayError::new(Kind::Unauthorized, "this route needs credentials");
                for c in &self.challenges {
                    e = e.with_header(WWW_AUTHENTICATE, c.clone());
                }
                e
            }
            Miss::Invalid { scheme, reason } => GatewayError::new(
                Kind::Unauthorized,
                format!(
                    "the {} credentials were not accepted: {reason}",
                    scheme.replace('_', " ")
                ),
            )
            .with_header(WWW_AUTHENTICATE, challenge(scheme, Some(reason), None)),
            Miss::Forbidden(why) => GatewayError::new(Kind::Forbidden, why),
            Miss::Unavailable(why) => GatewayError::new(
                Kind::ServiceUnavailable,
                "the authorization service is unavailable; try again later",
            )
            .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
            .with_cause(why.to_string()),
        }
    }

    /// Scope check and the request changes that make the identity visible upstream.
    fn admit(
        &self,
        found: Found,
        ctx: &mut RequestCtx,
        req: &mut http::request::Parts,
    ) -> Result<(), GatewayError> {
        let scopes: Arc<dyn Scopes> = match &found.token_scopes {
            Some(claims) => claims.clone(),
            None => found.consumer.clone(),
        };
        if let Some(missing) = self.scopes.iter().find(|s| !scopes.contains(s)) {
            let scheme = if found.token_scopes.is_some() {
                "jwt"
            } else {
                found.scheme
            };
            return Err(GatewayError::new(
                Kind::Forbidden,
                format!("this route needs the scope `{missing}`"),
            )
            .with_header(
                WWW_AUTHENTICATE,
                challenge(scheme, None, Some(&self.scopes.join(" "))),
            )
            .with_extension("error", "insufficient_scope".into()));
        }
        // The key itself is removed by the pipeline after every policy, on every route.
        // `X-Consumer-*` go with the consumer (`Consumer::upstream_fields`), written by the
        // upstream client rather than inserted into the request's map: any a client sent is
        // already gone (`forward::strip_identity`).
        for (k, v) in found.headers {
            req.headers.insert(k, v);
        }
        ctx.scopes = Some(scopes);
        ctx.auth_scheme = Some(found.scheme);
        ctx.consumer = Some(found.consumer);
        Ok(())
    }

    async fn run_async(&self, ctx: &mut RequestCtx, req: &mut http::request::Parts) -> Decision {
        let result = if self.all {
            let mut attempts = Vec::with_capacity(self.schemes.len());
            for s in &self.schemes {
                attempts.push(self.attempt_async(*s, ctx, req).await);
            }
            self.decide_all(attempts)
        } else {
            let mut worst = Worst::default();
            let mut found = None;
            for s in &self.schemes {
                match self.attempt_async(*s, ctx, req).await {
                    Attempt::Found(f) => {
                        found = Some(f);
                        break;
                    }
                    Attempt::Miss(m) => worst.offer(m),
                    Attempt::Pending => {}
                }
            }
            found.ok_or_else(|| self.refuse(worst.0.unwrap_or(Miss::Absent)))
        };
        match result.and_then(|f| self.admit(f, ctx, req)) {
            Ok(()) => Decision::Continue,
            Err(e) => Decision::Reject(e),
        }
    }
}

fn has_body(req: &http::request::Parts) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

impl Policy for Auth {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn on_request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut http::request::Parts,
    ) -> Step<'a> {
        let result = if self.all {
            let mut attempts = Vec::with_capacity(self.schemes.len());
            for s in &self.schemes {
                let a = self.attempt(*s, ctx, req);
                if matches!(a, Attempt::Pending) {
                    return Step::Wait(Box::pin(self.run_async(ctx, req)));
                }
                attempts.push(a);
            }
            self.decide_all(attempts)
        } else {
            // `any`: the first scheme that identifies the caller wins; no bookkeeping needed
            // beyond the most telling refusal so far.
            let mut worst = Worst::default();
            let mut found = None;
            for s in &self.schemes {
                match self.attempt(*s, ctx, req) {
                    Attempt::Found(f) => {
                        found = Some(f);
                        break;
                    }
                    Attempt::Pending => return Step::Wait(Box::pin(self.run_async(ctx, req))),
                    Attempt::Miss(m) => worst.offer(m),
                }
            }
            found.ok_or_else(|| self.refuse(worst.0.unwrap_or(Miss::Absent)))
        };
        match result.and_then(|f| self.admit(f, ctx, req)) {
            Ok(()) => Step::Continue,
            Err(e) => Step::Reject(e),
        }
    }
}

/// The most telling refusal seen so far.
#[derive(Default)]
struct Worst(Option<Miss>);

impl Worst {
    fn offer(&mut self, m: Miss) {
        if self.0.as_ref().is_none_or(|w| rank(&m) > rank(w)) {
            self.0 = Some(m);
        }
    }
}

/// Which refusal tells the caller most: an unavailable authorizer (retry later) over a
/// forbidden identity over a bad credential over none at all.
fn rank(m: &Miss) -> u8 {
    match m {
        Miss::Unavailable(_) => 3,
        Miss::Forbidden(_) => 2,
        Miss::Invalid { .. } => 1,
        Miss::Absent => 0,
    }
}
