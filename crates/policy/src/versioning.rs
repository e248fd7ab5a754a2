//! API versions: choosing a version by query parameter, header or media type, announcing
//! deprecation (RFC 9745 `Deprecation`, RFC 8594 `Sunset`, `Link rel="successor-version"`), and
//! answering `410 Gone` once a version is retired or its sunset has passed.

use http::header::{ACCEPT, LINK, VARY};
use http::{HeaderName, HeaderValue};
use std::sync::Arc;
use std::time::SystemTime;
use tollgate_config::{Api, Deprecation, Route};
use tollgate_core::{Clock, GatewayError, Kind, Phase, Policy, RequestCtx, Step};

use crate::Env;

const SUNSET: HeaderName = HeaderName::from_static("sunset");
const DEPRECATION: HeaderName = HeaderName::from_static("deprecation");

/// Precomputed response headers for one deprecated version.
#[derive(Debug, Clone)]
struct Notice {
    deprecation: HeaderValue,
    sunset: Option<(SystemTime, HeaderValue)>,
    link: Option<HeaderValue>,
    successor: Option<Arc<str>>,
}

impl Notice {
    fn new(d: &Deprecation) -> Option<Self> {
        Some(Self {
            deprecation: HeaderValue::from_str(&format!("@{}", d.since.unix_seconds())).ok()?,
            sunset: match d.sunset {
                Some(s) => Some((
                    s.0,
                    HeaderValue::from_str(&httpdate::fmt_http_date(s.0)).ok()?,
                )),
                None => None,
            },
            link: match &d.successor {
                Some(s) => {
                    Some(HeaderValue::from_str(&format!("<{s}>; rel=\"successor-version\"")).ok()?)
                }
                None => None,
            },
            successor: d.successor.as_deref().map(Arc::from),
        })
    }
}

/// How a request names the version it wants.
#[derive(Debug)]
struct Selector {
    query: Option<String>,
    header: Option<HeaderName>,
    /// (version value, media type) per variant; variant `i` is index `i + 1` in `notices`.
    variants: Vec<(String, Option<String>)>,
    vary: HeaderValue,
}

impl Selector {
    fn select(&self, req: &http::request::Parts) -> Option<usize> {
        if let Some(h) = &self.header
            && let Some(v) = req.headers.get(h).and_then(|v| v.to_str().ok())
            && let Some(i) = self.variants.iter().position(|(ver, _)| ver == v.trim())
        {
            return Some(i + 1);
        }
        if let (Some(name), Some(q)) = (&self.query, req.uri.query()) {
            for pair in q.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if k == name
                    && let Some(i) = self.variants.iter().position(|(ver, _)| ver == v)
                {
                    return Some(i + 1);
                }
            }
        }
        // RFC 9110 §12.5.1: the variant whose media type has the highest weight, unless the
        // client weighs a type the default version could answer with (`application/json`,
        // `application/*`, `*/*`) higher still. `text/html` and the like do not count.
        let mut best: Option<(usize, f32)> = None;
        let mut other = 0.0f32;
        for accept in req.headers.get_all(ACCEPT) {
            let Ok(accept) = accept.to_str() else {
                continue;
            };
            for range in accept.split(',') {
                let mut params = range.split(';');
                let media = params.next().unwrap_or("").trim();
                let q = params
                    .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                    .find_map(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                match self.variants.iter().position(|(_, mt)| {
                    mt.as_deref()
                        .is_some_and(|mt| mt.eq_ignore_ascii_case(media))
                }) {
                    Some(i) if q > 0.0 && best.is_none_or(|(_, bq)| q > bq) => {
                        best = Some((i + 1, q));
                    }
                    Some(_) => {}
                    None if media == "*/*"
                        || media
                            .get(..12)
                            .is_some_and(|t| t.eq_ignore_ascii_case("application/")) =>
                    {
                        other = other.max(q)
                    }
                    None => {}
                }
            }
        }
        best.filter(|(_, q)| *q >= other).map(|(i, _)| i)
    }
}

#[derive(Debug)]
pub struct Versioning {
    clock: Arc<dyn Clock>,
    /// Retired outright: every request gets 410.
    gone: Option<GoneNotice>,
    /// Deprecation notice per variant (0 = the route's own upstream).
    notices: Vec<Option<Notice>>,
    selector: Option<Selector>,
}

#[derive(Debug)]
struct GoneNotice {
    /// As configured, possibly a template (`/v2/accounts/{id}`): the problem names it so.
    successor: Arc<str>,
    /// The `Link` when the successor has no parameters; otherwise built per request.
    link: Option<HeaderValue>,
    /// The retired route's path template, whose parameters fill the successor's.
    template: Arc<str>,
    sunset: Option<HeaderValue>,
}

impl GoneNotice {
    /// `Link` to the successor for this request: a URI reference cannot hold `{id}`, so the
    /// successor's parameters take the values the request gave the retired route's. `None`
    /// when the successor names a parameter the route does not have.
    fn link_for(&self, path: &str) -> Option<HeaderValue> {
        if self.link.is_some() || !self.successor.contains('{') {
            return self.link.clone();
        }
        let mut values: Vec<(&str, &str)> = Vec::new();
        let mut rest = path;
        for t in self.template.split('/') {
            let (seg, after) = rest.split_once('/').unwrap_or((rest, ""));
            if let Some(name) = t.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
                match name.strip_prefix('*') {
                    // A catch-all takes the rest of the path.
                    Some(name) => {
                        values.push((name, rest));
                        break;
                    }
                    None => values.push((name, seg)),
                }
            }
            rest = after;
        }
        let mut out = String::with_capacity(self.successor.len() + 16);
        for (i, seg) in self.successor.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            match seg.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
                Some(name) => {
                    let name = name.trim_start_matches('*');
                    let (_, v) = values.iter().find(|(n, _)| *n == name)?;
                    out.push_str(v);
                }
                None => out.push_str(seg),
            }
        }
        HeaderValue::from_str(&format!("<{out}>; rel=\"successor-version\"")).ok()
    }
}

impl Versioning {
    /// `None` when the route has nothing version-related, so it costs nothing at run time.
    pub fn from_config(env: &Env, api: &Api, route: &Route) -> Option<Self> {
        let own = route.deprecation.as_ref().or(api.deprecation.as_ref());
        if route.gone.is_none() && own.is_none() && route.versions.is_none() {
            return None;
        }
        let mut notices = vec![own.and_then(Notice::new)];
        let selector = route.versions.as_ref().map(|v| {
            for var in &v.variants {
                notices.push(var.deprecation.as_ref().and_then(Notice::new));
            }
            let mut vary = vec!["Accept"];
            if let Some(h) = &v.header {
                vary.push(h.as_str());
            }
            Selector {
                query: v.query.clone(),
                header: v
                    .header
                    .as_deref()
                    .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
                variants: v
                    .variants
                    .iter()
                    .map(|x| (x.version.clone(), x.media_type.clone()))
                    .collect(),
                vary: HeaderValue::from_str(&vary.join(", "))
                    .unwrap_or(HeaderValue::from_static("Accept")),
            }
        });
        let gone = route.gone.as_ref().map(|g| GoneNotice {
            successor: Arc::from(g.successor.as_str()),
            link: if g.successor.contains('{') {
                None
            } else {
                HeaderValue::from_str(&format!("<{}>; rel=\"successor-version\"", g.successor)).ok()
            },
            template: Arc::from(route.path.as_str()),
            sunset: g
                .sunset
                .and_then(|s| HeaderValue::from_str(&httpdate::fmt_http_date(s.0)).ok()),
        });
        Some(Self {
            clock: env.clock.clone(),
            gone,
            notices,
            selector,
        })
    }

    fn gone_error(
        successor: &str,
        link: Option<&HeaderValue>,
        sunset: Option<&HeaderValue>,
    ) -> GatewayError {
        let mut e = GatewayError::new(
            Kind::Gone,
            format!("this API version has been retired; use {successor}"),
        )
        .with_extension("successor", successor.into());
        if let Some(l) = link {
            e = e.with_header(LINK, l.clone());
        }
        if let Some(s) = sunset {
            e = e.with_header(SUNSET, s.clone());
        }
        e
    }
}

impl Policy for Versioning {
    fn name(&self) -> &'static str {
        "versioning"
    }

    fn phase(&self) -> Phase {
        Phase::Version
    }

    fn on_request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut http::request::Parts,
    ) -> Step<'a> {
        if let Some(g) = &self.gone {
            return Step::Reject(Self::gone_error(
                &g.successor,
                g.link_for(req.uri.path()).as_ref(),
                g.sunset.as_ref(),
            ));
        }
        if let Some(sel) = &self.selector {
            ctx.variant = sel.select(req).unwrap_or(0);
        }
        if let Some(Some(n)) = self.notices.get(ctx.variant)
            && let Some((at, value)) = &n.sunset
            && self.clock.now() >= *at
        {
            let successor = n.successor.as_deref().unwrap_or("a newer version");
            return Step::Reject(Self::gone_error(successor, n.link.as_ref(), Some(value)));
        }
        Step::Continue
    }

    /// `Deprecation` and `Sunset` replace whatever the upstream said.
    fn edits_response(&self) -> bool {
        true
    }

    fn on_response(&self, ctx: &RequestCtx, resp: &mut http::response::Parts) {
        if let Some(sel) = &self.selector {
            resp.headers.append(VARY, sel.vary.clone());
        }
        if self.gone.is_some() {
            return;
        }
        if let Some(Some(n)) = self.notices.get(ctx.variant) {
            resp.headers.insert(DEPRECATION, n.deprecation.clone());
            if let Some((_, s)) = &n.sunset {
                resp.headers.insert(SUNSET, s.clone());
            }
            // Appended, as the upstream may link elsewhere too; but once only: the 410 after
            // the sunset already carries it.
            if let Some(l) = &n.link
                && !resp.headers.get_all(LINK).iter().any(|v| v == l)
            {
                resp.headers.append(LINK, l.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};
    use tollgate_core::{Listener, ManualClock};

    const API: &str = "
upstream: v2
routes:
  - path: /accounts/{id}
    methods: [GET]
    versions:
      query: version
      header: Api-Version
      variants:
        - version: '1'
          media_type: application/vnd.bank.v1+json
          upstream: v1
          deprecation:
            since: 2026-01-01T00:00:00Z
            sunset: 2027-03-15T00:00:00Z
            successor: /v2/accounts
  - path: /v0/accounts/{id}
    methods: [GET]
    gone:
      successor: /v2/accounts/{id}
";

    fn setup(now_secs: u64) -> (Arc<ManualClock>, Versioning, Versioning) {
        let api: Api = yaml_serde::from_str(API).expect("api");
        let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(now_secs)));
        let env = Env::new(clock.clone());
        let neg = Versioning::from_config(&env, &api, &api.routes[0]).expect("policy");
        let gone = Versioning::from_config(&env, &api, &api.routes[1]).expect("policy");
        (clock, neg, gone)
    }

    fn ctx() -> RequestCtx {
        RequestCtx::new(
            HeaderValue::from_static("r"),
            [127, 0, 0, 1].into(),
            Listener::Public,
            std::time::Instant::now(),
        )
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("req").into_parts().0
    }

    fn run(
        p: &Versioning,
        req: &mut http::request::Parts,
    ) -> (RequestCtx, Result<(), GatewayError>) {
        let mut c = ctx();
        let r = match p.on_request(&mut c, req) {
            Step::Continue => Ok(()),
            Step::Reject(e) => Err(e),
            _ => panic!("unexpected step"),
        };
        (c, r)
    }

    const JAN_2027: u64 = 1_798_761_600;

    #[test]
    fn selects_variant_by_query_header_or_media_type() {
        let (_, neg, _) = setup(JAN_2027);
        for (uri, hdrs, want) in [
            ("/accounts/1", vec![], 0),
            ("/accounts/1?version=1", vec![], 1),
            ("/accounts/1?x=2&version=1", vec![], 1),
            ("/accounts/1?version=7", vec![], 0),
            (
                "/accounts/1",
                vec![("accept", "application/vnd.bank.v1+json")],
                1,
            ),
            (
                "/accounts/1",
                vec![("accept", "text/html, application/VND.bank.v1+json;q=0.9")],
                1,
            ),
            ("/accounts/1", vec![("api-version", "1")], 1),
            ("/accounts/1", vec![("accept", "application/json")], 0),
            // Weights decide between the default's type and the variant's.
            (
                "/accounts/1",
                vec![(
                    "accept",
                    "application/json, application/vnd.bank.v1+json;q=0.9",
                )],
                0,
            ),
            (
                "/accounts/1",
                vec![(
                    "accept",
                    "application/json;q=0.5, application/vnd.bank.v1+json",
                )],
                1,
            ),
            (
                "/accounts/1",
                vec![("accept", "*/*, application/vnd.bank.v1+json")],
                1,
            ),
            (
                "/accounts/1",
                vec![("accept", "application/vnd.bank.v1+json;q=0")],
                0,
            ),
        ] {
            let (c, r) = run(&neg, &mut parts(uri, &hdrs));
            assert!(r.is_ok());
            assert_eq!(c.variant, want, "{uri} {hdrs:?}");
        }
    }

    #[test]
    fn deprecated_variant_announces_itself_and_default_does_not() {
        let (_, neg, _) = setup(JAN_2027);
        let (c, _) = run(&neg, &mut parts("/accounts/1?version=1", &[]));
        let mut resp = http::Response::new(()).into_parts().0;
        neg.on_response(&c, &mut resp);
        assert_eq!(resp.headers["deprecation"], "@1767225600");
        assert_eq!(resp.headers["sunset"], "Mon, 15 Mar 2027 00:00:00 GMT");
        assert_eq!(
            resp.headers["link"],
            "</v2/accounts>; rel=\"successor-version\""
        );
        assert_eq!(resp.headers["vary"], "Accept, Api-Version");

        let (c, _) = run(&neg, &mut parts("/accounts/1", &[]));
        let mut resp = http::Response::new(()).into_parts().0;
        neg.on_response(&c, &mut resp);
        assert!(resp.headers.get("deprecation").is_none());
    }

    #[test]
    fn after_sunset_the_variant_is_gone() {
        let (clock, neg, _) = setup(JAN_2027);
        clock.set(UNIX_EPOCH + Duration::from_secs(1_805_068_800)); // 2027-03-15T00:00:00Z
        let (_, r) = run(&neg, &mut parts("/accounts/1?version=1", &[]));
        let e = r.expect_err("gone");
        assert_eq!(e.status(), 410);
        // The response hook runs on the 410 too: its `Link` stays one field.
        let (c, _) = run(&neg, &mut parts("/accounts/1?version=1", &[]));
        let mut resp = e.to_response("r").into_parts().0;
        neg.on_response(&c, &mut resp);
        assert_eq!(resp.headers.get_all("link").iter().count(), 1, "{resp:?}");
        assert!(run(&neg, &mut parts("/accounts/1", &[])).1.is_ok());
    }

    #[test]
    fn retired_route_names_its_successor() {
        let (_, _, gone) = setup(JAN_2027);
        let e = run(&gone, &mut parts("/v0/accounts/1", &[]))
            .1
            .expect_err("gone");
        assert_eq!(e.status(), 410);
        assert!(e.detail.contains("/v2/accounts/{id}"));
        let body = String::from_utf8(e.problem_json("r").to_vec()).expect("utf8");
        assert!(
            body.contains("\"successor\":\"/v2/accounts/{id}\""),
            "{body}"
        );
        // The header is a URI reference: the template filled with the request's values.
        let link = e.headers.iter().find(|(n, _)| n == LINK).map(|(_, v)| v);
        assert_eq!(
            link.and_then(|v| v.to_str().ok()),
            Some("</v2/accounts/1>; rel=\"successor-version\"")
        );
        let g = |successor: &str, template: &str| GoneNotice {
            successor: successor.into(),
            link: None,
            template: template.into(),
            sunset: None,
        };
        let link = |n: GoneNotice, path: &str| {
            n.link_for(path)
                .map(|v| v.to_str().unwrap_or("").to_string())
        };
        assert_eq!(
            link(g("/v2/{b}/x/{a}", "/v0/{a}/{b}"), "/v0/1/2").as_deref(),
            Some("</v2/2/x/1>; rel=\"successor-version\"")
        );
        assert_eq!(
            link(g("/v2/files/{*rest}", "/v0/files/{*rest}"), "/v0/files/a/b").as_deref(),
            Some("</v2/files/a/b>; rel=\"successor-version\"")
        );
        // A parameter the retired route does not have: no header rather than a template.
        assert_eq!(link(g("/v2/{zz}", "/v0/{a}"), "/v0/1"), None);
    }
}
