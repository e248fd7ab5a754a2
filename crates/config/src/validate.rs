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
    r.0
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
                if !full.is_file() {
                    r.err(
                        format!("listeners.tls.certificates[{i}].{field}"),
                        format!("file {} does not exist", full.display()),
                    );
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
    for (k, d) in [
        ("header_read_timeout", s.header_read_timeout),
        ("idle_timeout", s.idle_timeout),
    ] {
        if d.get().is_zero() {
            r.err(format!("server.{k}"), "must be greater than 0");
        }
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
    if authority.parse::<http::uri::Authority>().is_err() {
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
            for (i, route) in api.routes.iter().enumerate() {
                let rkey = format!("{akey}.routes[{i}]");
                check_route(cfg, api.upstream.as_deref(), route, &rkey, r);
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

fn check_route(cfg: &Config, api_upstream: Option<&str>, route: &Route, key: &str, r: &mut Report) {
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
        && !is_ident(id)
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
