//! Checks that need more than one key to decide: references between sections, ranges, files.
//! Every problem is collected (not just the first) so an operator fixes a file in one pass.

use crate::{Config, ListenerName, Problem, Route};
use std::collections::BTreeSet;
use std::path::Path;

struct Report(Vec<Problem>);

impl Report {
    fn err(&mut self, key_path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key_path: key_path.into(),
            line: None,
            message: message.into(),
        });
    }
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
];

pub fn validate(cfg: &Config, base_dir: &Path) -> Vec<Problem> {
    let mut r = Report(Vec::new());
    listeners(cfg, base_dir, &mut r);
    server(cfg, &mut r);
    upstreams(cfg, &mut r);
    tenants(cfg, &mut r);
    identity(cfg, base_dir, &mut r);
    consumers(cfg, &mut r);
    traffic(cfg, &mut r);
    r.0
}

/// The slowest rate a token bucket takes: one request per 100,000 s (about a day). Slower is a
/// quota's job, and a rate like 1e-300 would answer with a `Retry-After` of centuries.
pub const MIN_RATE: f64 = 1e-5;
pub const MAX_RATE: f64 = 1e9;
/// The largest quota, as the admin API accepts it.
pub const MAX_QUOTA: u64 = 1_000_000_000_000;

fn check_rate(rate: f64, burst: u32, key: &str, r: &mut Report) {
    if !(rate.is_finite() && (MIN_RATE..=MAX_RATE).contains(&rate)) {
        r.err(
            format!("{key}.rate"),
            "must be a number of requests per second between 0.00001 and 1e9",
        );
    }
    if burst == 0 {
        r.err(format!("{key}.burst"), "must be at least 1");
    }
}

fn check_route_limits(l: &crate::RouteLimits, key: &str, r: &mut Report) {
    if let Some(x) = &l.rate {
        check_rate(x.rate, x.burst, &format!("{key}.rate"), r);
    }
    if let Some(q) = &l.quota
        && !(1..=MAX_QUOTA).contains(&q.limit)
    {
        r.err(
            format!("{key}.quota.limit"),
            "must be between 1 and 1000000000000",
        );
    }
    if let Some(s) = &l.spike_arrest {
        check_rate(s.rate, 1, &format!("{key}.spike_arrest"), r);
    }
    if let Some(c) = &l.concurrency
        && c.max == 0
    {
        r.err(format!("{key}.concurrency.max"), "must be at least 1");
    }
}

fn traffic(cfg: &Config, r: &mut Report) {
    let route_ids: BTreeSet<String> = cfg
        .tenants
        .iter()
        .flat_map(|(t, tn)| {
            tn.apis.iter().flat_map(move |(a, api)| {
                api.routes
                    .iter()
                    .enumerate()
                    .map(move |(i, rt)| rt.id.clone().unwrap_or_else(|| format!("{t}/{a}/{i}")))
            })
        })
        .collect();
    for (name, p) in &cfg.plans {
        let key = format!("plans.{name}");
        if !is_ident(name) {
            r.err(&key, "names may contain only letters, digits, `-` and `_`");
        }
        check_rate(p.rate, p.burst, &key, r);
        if let Some(q) = &p.quota
            && !(1..=MAX_QUOTA).contains(&q.limit)
        {
            r.err(
                format!("{key}.quota.limit"),
                "must be between 1 and 1000000000000",
            );
        }
        for (rid, l) in &p.routes {
            if !route_ids.contains(rid) {
                r.err(
                    format!("{key}.routes.{rid}"),
                    format!("unknown route id `{rid}`"),
                );
            }
            check_rate(l.rate, l.burst, &format!("{key}.routes.{rid}"), r);
        }
    }
    for (name, c) in &cfg.consumers {
        if let Some(p) = &c.plan
            && !cfg.plans.is_empty()
            && !cfg.plans.contains_key(p)
        {
            r.err(
                format!("consumers.{name}.plan"),
                format!("unknown plan `{p}`"),
            );
        }
        if let Some(o) = &c.rate_override {
            check_rate(o.rate, o.burst, &format!("consumers.{name}.override"), r);
        }
    }
    if let Some(g) = &cfg.limits.gateway {
        check_rate(g.rate, g.burst, "limits.gateway", r);
    }
    if let Some(o) = &cfg.limits.quota_utc_offset
        && parse_utc_offset(o).is_none()
    {
        r.err(
            "limits.quota_utc_offset",
            format!("`{o}` is not an offset like +02:00 or -05:30"),
        );
    }
    redis_limits(&cfg.limits.redis, r);
    for (i, rule) in cfg.edge.ip_rules.iter().enumerate() {
        let key = format!("edge.ip_rules[{i}]");
        if rule.max_requests == 0 {
            r.err(format!("{key}.max_requests"), "must be at least 1");
        }
        if rule.window.get().is_zero() {
            r.err(format!("{key}.window"), "must be greater than 0");
        }
    }
    for (tname, t) in &cfg.tenants {
        for (aname, api) in &t.apis {
            let akey = format!("tenants.{tname}.apis.{aname}");
            if let Some(l) = &api.limits {
                check_route_limits(l, &format!("{akey}.limits"), r);
            }
            for (i, route) in api.routes.iter().enumerate() {
                if let Some(l) = &route.limits {
                    check_route_limits(l, &format!("{akey}.routes[{i}].limits"), r);
                }
            }
        }
    }
}

fn redis_limits(l: &crate::RedisLimits, r: &mut Report) {
    let t = l.timeout.get();
    if t.is_zero() || t > std::time::Duration::from_secs(10) {
        // Every limited request may wait this long on a dead Redis: keep it short.
        r.err("limits.redis.timeout", "must be between 1ms and 10s");
    }
    if l.expected_nodes == 0 {
        r.err("limits.redis.expected_nodes", "must be at least 1");
    }
    if l.breaker.failures == 0 {
        r.err("limits.redis.breaker.failures", "must be at least 1");
    }
    if l.breaker.cool_down.get().is_zero() {
        r.err("limits.redis.breaker.cool_down", "must be greater than 0");
    }
    if l.key_prefix.len() > 64
        || l.key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        r.err(
            "limits.redis.key_prefix",
            "at most 64 characters, no spaces or control characters",
        );
    }
}

/// `+HH:MM` / `-HH:MM` / `Z` → seconds east of UTC.
pub fn parse_utc_offset(s: &str) -> Option<i32> {
    let s = s.trim();
    if s == "Z" || s == "+00:00" || s == "-00:00" {
        return Some(0);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    Some(sign * (h * 3600 + m * 60))
}

/// Why a file the config names cannot be used, if it cannot (relative to the config's folder).
fn file_problem(base_dir: &Path, p: &Path) -> Option<String> {
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    };
    crate::files::check(&full, crate::files::MAX_SECRET_BYTES).err()
}

fn identity(cfg: &Config, base_dir: &Path, r: &mut Report) {
    let id = &cfg.identity;
    if http::HeaderName::from_bytes(id.api_key_header.as_bytes()).is_err() {
        r.err(
            "identity.api_key_header",
            format!("`{}` is not a header name", id.api_key_header),
        );
    }
    if let Some(p) = &id.hash_secret_file
        && let Some(why) = file_problem(base_dir, p)
    {
        r.err("identity.hash_secret_file", why);
    }
    for (i, j) in id.jwt.iter().enumerate() {
        let key = format!("identity.jwt[{i}]");
        let sources = [
            j.jwks_url.is_some(),
            j.jwks_file.is_some(),
            j.hmac_secret_file.is_some(),
        ];
        if sources.iter().filter(|x| **x).count() != 1 {
            r.err(
                &key,
                "set exactly one of `jwks_url`, `jwks_file` and `hmac_secret_file`",
            );
        }
        if let Some(u) = &j.jwks_url
            && !u.starts_with("http://")
        {
            r.err(
                format!("{key}.jwks_url"),
                format!("`{u}`: only http:// JWKS URLs are supported"),
            );
        }
        for (field, p) in [
            ("jwks_file", &j.jwks_file),
            ("hmac_secret_file", &j.hmac_secret_file),
        ] {
            if let Some(p) = p
                && let Some(why) = file_problem(base_dir, p)
            {
                r.err(format!("{key}.{field}"), why);
            }
        }
        let hmac: Vec<&String> = j
            .algorithms
            .iter()
            .filter(|a| a.starts_with("HS"))
            .collect();
        if j.hmac_secret_file.is_some() {
            if hmac.len() != 1 || j.algorithms.len() != 1 {
                r.err(
                    format!("{key}.algorithms"),
                    "with `hmac_secret_file`, name exactly one of HS256, HS384, HS512",
                );
            }
        } else if !hmac.is_empty() {
            r.err(format!("{key}.algorithms"), "HS256/384/512 need `hmac_secret_file`: HMAC tokens are never checked with public keys");
        }
        if j.audiences.is_empty() {
            r.err(format!("{key}.audiences"), "name at least one audience");
        }
        for a in &j.algorithms {
            if !JWT_ALGORITHMS.contains(&a.as_str()) {
                r.err(
                    format!("{key}.algorithms"),
                    format!("`{a}` is not one of {}", JWT_ALGORITHMS.join(", ")),
                );
            }
        }
    }
    if let Some(t) = &id.token_issuer {
        if let Some(why) = file_problem(base_dir, &t.signing_key) {
            r.err("identity.token_issuer.signing_key", why);
        }
        if t.ttl.get().is_zero() || t.ttl.get() > std::time::Duration::from_secs(900) {
            r.err("identity.token_issuer.ttl", "must be between 1s and 15m");
        }
    }
    if let Some(m) = &id.mtls {
        if let Some(why) = file_problem(base_dir, &m.client_ca) {
            r.err("identity.mtls.client_ca", why);
        }
        if cfg.listeners.tls.is_none() {
            r.err(
                "identity.mtls",
                "client certificates need the `tls` listener",
            );
        }
    }
    for (name, a) in &id.authorizers {
        if let Err(msg) = check_http_url(&a.url) {
            r.err(format!("identity.authorizers.{name}.url"), msg);
        }
        if a.timeout.get().is_zero() {
            r.err(
                format!("identity.authorizers.{name}.timeout"),
                "must be greater than 0",
            );
        }
    }
}

const JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
    "HS384", "HS512",
];

/// `http://host[:port]/path` for control-plane calls (authorizers).
fn check_http_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("`{url}` must start with http://"));
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.parse::<http::uri::Authority>().is_err() {
        return Err(format!("`{url}` has an invalid host or port"));
    }
    url.parse::<http::Uri>()
        .map(|_| ())
        .map_err(|_| format!("`{url}` is not a valid URL"))
}

fn consumers(cfg: &Config, r: &mut Report) {
    let mut subjects = BTreeSet::new();
    let mut cert_subjects = BTreeSet::new();
    let mut access_keys = BTreeSet::new();
    let mut needs_secret = false;
    for (name, c) in &cfg.consumers {
        let key = format!("consumers.{name}");
        if !is_ident(name) {
            r.err(&key, "names may contain only letters, digits, `-` and `_`");
        }
        let mut ids = BTreeSet::new();
        for (i, k) in c.api_keys.iter().enumerate() {
            needs_secret = true;
            if !ids.insert(&k.id) {
                r.err(
                    format!("{key}.api_keys[{i}].id"),
                    format!("key id `{}` is used twice", k.id),
                );
            }
            if !is_hmac_hash(&k.hash) {
                r.err(
                    format!("{key}.api_keys[{i}].hash"),
                    "must be `hmac-sha256:` followed by 64 hex digits (see `tollgate hash`)",
                );
            }
        }
        if let Some(h) = &c.client_secret_hash {
            needs_secret = true;
            if !is_hmac_hash(h) {
                r.err(
                    format!("{key}.client_secret_hash"),
                    "must be `hmac-sha256:` followed by 64 hex digits (see `tollgate hash`)",
                );
            }
        }
        let own = [name.clone()];
        for s in c.jwt_subjects.as_deref().unwrap_or(&own) {
            if !subjects.insert(s.clone()) {
                r.err(
                    format!("{key}.jwt_subjects"),
                    format!("subject `{s}` already names another consumer"),
                );
            }
        }
        for s in &c.certificate_subjects {
            if !cert_subjects.insert(s.clone()) {
                r.err(
                    format!("{key}.certificate_subjects"),
                    format!("subject `{s}` already names another consumer"),
                );
            }
        }
        for (i, k) in c.sigv4_keys.iter().enumerate() {
            if !access_keys.insert(k.access_key.clone()) {
                r.err(
                    format!("{key}.sigv4_keys[{i}].access_key"),
                    "access key used twice",
                );
            }
            if k.secret_file.is_some() == k.secret_env.is_some() {
                r.err(
                    format!("{key}.sigv4_keys[{i}]"),
                    "set exactly one of `secret_file` and `secret_env`",
                );
            }
        }
        if !c.sigv4_keys.is_empty() && cfg.identity.sigv4.is_none() {
            r.err(
                format!("{key}.sigv4_keys"),
                "SigV4 keys need `identity.sigv4`",
            );
        }
        if let Some(t) = &c.tenant
            && !cfg.tenants.contains_key(t)
        {
            r.err(format!("{key}.tenant"), format!("unknown tenant `{t}`"));
        }
    }
    if needs_secret && cfg.identity.hash_secret_file.is_none() {
        r.err(
            "identity.hash_secret_file",
            "API keys and client secrets need a hash secret file",
        );
    }
}

fn is_hmac_hash(s: &str) -> bool {
    s.strip_prefix("hmac-sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn check_auth(
    cfg: &Config,
    auth: &crate::RouteAuth,
    listeners: &[ListenerName],
    key: &str,
    r: &mut Report,
) {
    use crate::AuthScheme;
    let schemes: &[AuthScheme] = match (auth.any.is_empty(), auth.all.is_empty()) {
        (false, true) => &auth.any,
        (true, false) => &auth.all,
        _ => {
            r.err(key, "set exactly one of `any` and `all`");
            return;
        }
    };
    let id = &cfg.identity;
    for s in schemes {
        let missing = match s {
            AuthScheme::ApiKey => None,
            AuthScheme::Jwt => (id.jwt.is_empty() && id.token_issuer.is_none())
                .then_some("`identity.jwt` or `identity.token_issuer`"),
            AuthScheme::Mtls => id.mtls.is_none().then_some("`identity.mtls`"),
            AuthScheme::Sigv4 => id.sigv4.is_none().then_some("`identity.sigv4`"),
            AuthScheme::Authorizer => None,
        };
        if let Some(m) = missing {
            r.err(
                key,
                format!("scheme `{s:?}` needs {m}")
                    .to_lowercase()
                    .replace("apikey", "api_key"),
            );
        }
        if *s == AuthScheme::Mtls && listeners.contains(&ListenerName::Public) {
            r.err(key, "mtls routes must be limited to `listeners: [tls]`");
        }
        if *s == AuthScheme::Authorizer {
            match &auth.authorizer {
                None => r.err(format!("{key}.authorizer"), "name the authorizer to use"),
                Some(a) if !id.authorizers.contains_key(a) => {
                    r.err(
                        format!("{key}.authorizer"),
                        format!("unknown authorizer `{a}`"),
                    );
                }
                _ => {}
            }
        }
    }
}

fn listeners(cfg: &Config, base_dir: &Path, r: &mut Report) {
    let l = &cfg.listeners;
    if l.public.is_none() && l.tls.is_none() {
        r.err("listeners", "configure at least one of `public` or `tls`");
    }
    if let Some(tls) = &l.tls {
        if tls.certificates.is_empty() {
            r.err(
                "listeners.tls.certificates",
                "a TLS listener needs at least one certificate",
            );
        }
        for (i, c) in tls.certificates.iter().enumerate() {
            for (field, p) in [("cert", &c.cert), ("key", &c.key)] {
                let full = if p.is_absolute() {
                    p.clone()
                } else {
                    base_dir.join(p)
                };
                if let Err(why) = crate::files::check(&full, crate::files::MAX_SECRET_BYTES) {
                    r.err(format!("listeners.tls.certificates[{i}].{field}"), why);
                }
            }
        }
    }
    let mut seen = Vec::new();
    for (name, addr) in [
        ("public", l.public.as_ref().map(|x| x.addr.0)),
        ("tls", l.tls.as_ref().map(|x| x.addr.0)),
        ("admin", l.admin.as_ref().map(|x| x.addr.0)),
    ] {
        if let Some(a) = addr {
            if a.port() != 0
                && let Some((other, _)) = seen.iter().find(|(_, b)| *b == a)
            {
                r.err(
                    format!("listeners.{name}.addr"),
                    format!("{a} is already used by listener `{other}`"),
                );
            }
            seen.push((name, a));
        }
    }
    if let Some(admin) = &l.admin
        && admin.token_env.trim().is_empty()
    {
        r.err(
            "listeners.admin.token_env",
            "must name an environment variable",
        );
    }
}

fn server(cfg: &Config, r: &mut Report) {
    let s = &cfg.server;
    let positive = [
        ("max_connections", s.max_connections),
        ("max_uri_bytes", s.max_uri_bytes),
        ("max_header_bytes", s.max_header_bytes),
        ("max_headers", s.max_headers),
    ];
    for (k, v) in positive {
        if v == 0 {
            r.err(format!("server.{k}"), "must be greater than 0");
        }
    }
    if s.max_headers > 10_000 {
        r.err("server.max_headers", "must be at most 10000");
    }
    if s.max_header_bytes > 1024 * 1024 {
        r.err("server.max_header_bytes", "must be at most 1 MiB");
    }
    if s.max_uri_bytes > 1024 * 1024 {
        r.err("server.max_uri_bytes", "must be at most 1 MiB");
    }
    if s.max_connections > 10_000_000 {
        r.err("server.max_connections", "must be at most 10000000");
    }
    if s.header_read_timeout.get().is_zero() {
        r.err("server.header_read_timeout", "must be greater than 0");
    }
    if s.send_timeout.get().is_zero() {
        r.err("server.send_timeout", "must be greater than 0");
    }
}

fn upstreams(cfg: &Config, r: &mut Report) {
    for (name, u) in &cfg.upstreams {
        let key = format!("upstreams.{name}");
        if !is_ident(name) {
            r.err(&key, "names may contain only letters, digits, `-` and `_`");
        }
        if u.targets.is_empty() {
            r.err(
                format!("{key}.targets"),
                "an upstream needs at least one target",
            );
        }
        for (i, t) in u.targets.iter().enumerate() {
            if let Err(msg) = check_target_url(&t.url) {
                r.err(format!("{key}.targets[{i}].url"), msg);
            }
            if t.weight == 0 || t.weight > 100 {
                r.err(
                    format!("{key}.targets[{i}].weight"),
                    "must be between 1 and 100",
                );
            }
        }
        for (k, d) in [
            ("connect_timeout", u.connect_timeout),
            ("response_timeout", u.response_timeout),
        ] {
            if d.get().is_zero() {
                r.err(format!("{key}.{k}"), "must be greater than 0");
            }
        }
        if u.max_requests_per_target == 0 || u.max_requests_per_target > 1_000_000 {
            r.err(
                format!("{key}.max_requests_per_target"),
                "must be between 1 and 1000000",
            );
        }
    }
}

/// Accepts `http://host:port` with an optional trailing slash and nothing else, so the proxy
/// can build upstream URIs by concatenation.
pub(crate) fn check_target_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(if url.starts_with("https://") {
            format!("`{url}`: TLS to upstreams is not supported yet; use http://")
        } else {
            format!("`{url}` must start with http://")
        });
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!("`{url}` must be http://host[:port] with no path"));
    }
    // `http` takes any digits as a port; a connection needs 1-65535.
    let port_ok = match authority.rsplit_once(':') {
        Some((_, p)) if !authority.ends_with(']') => p.parse::<u16>().is_ok_and(|p| p > 0),
        _ => true,
    };
    if !port_ok || authority.parse::<http::uri::Authority>().is_err() {
        return Err(format!("`{url}` has an invalid host or port"));
    }
    Ok(())
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn tenants(cfg: &Config, r: &mut Report) {
    let mut route_ids = BTreeSet::new();
    for (tname, tenant) in &cfg.tenants {
        let tkey = format!("tenants.{tname}");
        if !is_ident(tname) {
            r.err(&tkey, "names may contain only letters, digits, `-` and `_`");
        }
        for (aname, api) in &tenant.apis {
            let akey = format!("{tkey}.apis.{aname}");
            if !is_ident(aname) {
                r.err(&akey, "names may contain only letters, digits, `-` and `_`");
            }
            if let Some(u) = &api.upstream
                && !cfg.upstreams.contains_key(u)
            {
                r.err(
                    format!("{akey}.upstream"),
                    format!("unknown upstream `{u}`"),
                );
            }
            if let Some(ls) = &api.listeners {
                check_listeners(cfg, ls, &format!("{akey}.listeners"), r);
            }
            if api.routes.is_empty() {
                r.err(format!("{akey}.routes"), "an API needs at least one route");
            }
            if let Some(a) = &api.auth {
                let ls = api
                    .listeners
                    .as_deref()
                    .unwrap_or(&[ListenerName::Public, ListenerName::Tls]);
                check_auth(cfg, a, ls, &format!("{akey}.auth"), r);
            }
            for (i, route) in api.routes.iter().enumerate() {
                let rkey = format!("{akey}.routes[{i}]");
                let scope = format!("{tname}/{aname}/");
                check_route(cfg, api.upstream.as_deref(), route, &rkey, &scope, r);
                if let Some(a) = &route.auth {
                    let ls = route
                        .listeners
                        .as_deref()
                        .or(api.listeners.as_deref())
                        .unwrap_or(&[ListenerName::Public, ListenerName::Tls]);
                    check_auth(cfg, a, ls, &format!("{rkey}.auth"), r);
                }
                let id = route
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("{tname}/{aname}/{i}"));
                if !route_ids.insert(id.clone()) {
                    r.err(
                        format!("{rkey}.id"),
                        format!("route id `{id}` is used twice"),
                    );
                }
            }
        }
    }
}

fn check_listeners(cfg: &Config, ls: &[ListenerName], key: &str, r: &mut Report) {
    if ls.is_empty() {
        r.err(key, "name at least one listener");
    }
    for l in ls {
        let present = match l {
            ListenerName::Public => cfg.listeners.public.is_some(),
            ListenerName::Tls => cfg.listeners.tls.is_some(),
        };
        if !present {
            r.err(
                key,
                format!("listener `{l:?}` is not configured").to_lowercase(),
            );
        }
    }
}

/// `scope`: `tenant/api/`, the prefix a route id may carry (registered APIs' operationIds are
/// scoped so: see `openapi::import`).
fn check_route(
    cfg: &Config,
    api_upstream: Option<&str>,
    route: &Route,
    key: &str,
    scope: &str,
    r: &mut Report,
) {
    if let Err(msg) = check_path_template(&route.path) {
        r.err(format!("{key}.path"), msg);
    }
    if route.methods.is_empty() {
        r.err(format!("{key}.methods"), "name at least one method");
    }
    let mut seen = BTreeSet::new();
    for m in &route.methods {
        if !METHODS.contains(&m.as_str()) {
            r.err(
                format!("{key}.methods"),
                format!("`{m}` is not one of {}", METHODS.join(", ")),
            );
        } else if !seen.insert(m) {
            r.err(format!("{key}.methods"), format!("`{m}` is listed twice"));
        }
    }
    if let Some(id) = &route.id
        && !is_ident(id.strip_prefix(scope).unwrap_or(id))
    {
        r.err(
            format!("{key}.id"),
            "ids may contain only letters, digits, `-` and `_`",
        );
    }
    if let Some(ls) = &route.listeners {
        check_listeners(cfg, ls, &format!("{key}.listeners"), r);
    }
    match (&route.upstream, route.gone.is_some()) {
        (Some(u), _) if !cfg.upstreams.contains_key(u) => {
            r.err(format!("{key}.upstream"), format!("unknown upstream `{u}`"));
        }
        (None, false) if api_upstream.is_none() => {
            r.err(
                key,
                "no upstream: set `upstream` on the route or its API, or mark it `gone`",
            );
        }
        _ => {}
    }
    if let Some(v) = &route.versions {
        if v.variants.is_empty() {
            r.err(
                format!("{key}.versions.variants"),
                "list at least one variant",
            );
        }
        for (i, var) in v.variants.iter().enumerate() {
            if !cfg.upstreams.contains_key(&var.upstream) {
                r.err(
                    format!("{key}.versions.variants[{i}].upstream"),
                    format!("unknown upstream `{}`", var.upstream),
                );
            }
        }
        if let Some(h) = &v.header
            && http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            r.err(
                format!("{key}.versions.header"),
                format!("`{h}` is not a header name"),
            );
        }
    }
    if let Some(d) = &route.deprecation
        && let Some(s) = d.sunset
        && s < d.since
    {
        r.err(
            format!("{key}.deprecation.sunset"),
            "sunset comes before deprecation",
        );
    }
}

/// Path templates: absolute, `{name}` segments only as whole segments, no dot segments.
pub(crate) fn check_path_template(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` must start with `/`"));
    }
    if path.contains(['?', '#', ' ', '*']) {
        return Err(format!("`{path}` may not contain `?`, `#`, `*` or spaces"));
    }
    let mut names = BTreeSet::new();
    for seg in path.split('/').skip(1) {
        if seg == "." || seg == ".." {
            return Err(format!("`{path}` contains a dot segment"));
        }
        let opens = seg.matches('{').count();
        let closes = seg.matches('}').count();
        if opens == 0 && closes == 0 {
            continue;
        }
        let whole = seg.len() > 2
            && seg.starts_with('{')
            && seg.ends_with('}')
            && opens == 1
            && closes == 1;
        if !whole {
            return Err(format!(
                "`{path}`: a parameter must be a whole segment like `{{id}}`"
            ));
        }
        let name = &seg[1..seg.len() - 1];
        if !is_ident(name) {
            return Err(format!("`{path}`: parameter `{name}` is not a valid name"));
        }
        if !names.insert(name) {
            return Err(format!("`{path}`: parameter `{name}` appears twice"));
        }
    }
    Ok(())
}
