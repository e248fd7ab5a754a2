//! Builds gateway YAML from a few upstreams and routes, so tests stay short.
//!
//! Every listener binds `127.0.0.1:0`; the harness learns the real ports from the log. All
//! routes live in tenant `test`, API `main` (the labels metrics and the access log show).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Tenant and API that [`ConfigBuilder`] puts every route in.
pub const TENANT: &str = "test";
pub const API: &str = "main";

/// One upstream: targets with weights plus optional timeouts.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    name: String,
    targets: Vec<(String, u32)>,
    extra: Vec<(String, String)>,
}

impl UpstreamSpec {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            targets: Vec::new(),
            extra: Vec::new(),
        }
    }

    pub fn target(self, url: &str) -> Self {
        self.weighted(url, 1)
    }

    pub fn weighted(mut self, url: &str, weight: u32) -> Self {
        self.targets.push((url.into(), weight));
        self
    }

    /// e.g. `"1s"`
    pub fn connect_timeout(self, d: &str) -> Self {
        self.set("connect_timeout", d)
    }

    /// e.g. `"1s"`
    pub fn response_timeout(self, d: &str) -> Self {
        self.set("response_timeout", d)
    }

    /// Any other key of the upstream, written as is.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.extra.push((key.into(), value.into()));
        self
    }
}

/// One route of API `main`.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    id: String,
    path: String,
    methods: Vec<String>,
    upstream: Option<String>,
    listeners: Option<Vec<String>>,
    max_body_bytes: Option<u64>,
    limits: Option<String>,
}

impl RouteSpec {
    /// A route with id `id` for `GET path` to `upstream`.
    pub fn new(id: &str, path: &str, upstream: &str) -> Self {
        Self {
            id: id.into(),
            path: path.into(),
            methods: vec!["GET".into()],
            upstream: Some(upstream.into()),
            listeners: None,
            max_body_bytes: None,
            limits: None,
        }
    }

    pub fn methods(mut self, methods: &[&str]) -> Self {
        self.methods = methods.iter().map(|m| (*m).to_string()).collect();
        self
    }

    /// `public`, `tls`.
    pub fn listeners(mut self, ls: &[&str]) -> Self {
        self.listeners = Some(ls.iter().map(|m| (*m).to_string()).collect());
        self
    }

    pub fn max_body_bytes(mut self, n: u64) -> Self {
        self.max_body_bytes = Some(n);
        self
    }

    /// The route's `limits:` value, as YAML flow text (`{ concurrency: { max: 1, per: all } }`).
    pub fn limits(mut self, yaml: &str) -> Self {
        self.limits = Some(yaml.into());
        self
    }
}

/// The whole config file.
#[derive(Debug, Clone, Default)]
pub struct ConfigBuilder {
    upstreams: Vec<UpstreamSpec>,
    routes: Vec<RouteSpec>,
    server: Vec<(String, String)>,
    certificates: Vec<(PathBuf, PathBuf)>,
    access_log: Option<bool>,
    no_admin: bool,
}

impl ConfigBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// An upstream with one target of weight 1.
    pub fn upstream(self, name: &str, url: &str) -> Self {
        self.upstream_spec(UpstreamSpec::new(name).target(url))
    }

    pub fn upstream_spec(mut self, u: UpstreamSpec) -> Self {
        self.upstreams.push(u);
        self
    }

    /// `GET path` → `upstream`, with id `id`.
    pub fn get(self, id: &str, path: &str, upstream: &str) -> Self {
        self.route(RouteSpec::new(id, path, upstream))
    }

    pub fn route(mut self, r: RouteSpec) -> Self {
        self.routes.push(r);
        self
    }

    /// A `server:` key, value written as is (e.g. `("max_headers", "10")`,
    /// `("trusted_proxies", "[127.0.0.0/8]")`).
    pub fn server(mut self, key: &str, value: &str) -> Self {
        self.server.push((key.into(), value.into()));
        self
    }

    /// Adds the TLS listener (first certificate added is the default).
    pub fn tls_certificate(mut self, cert: &Path, key: &Path) -> Self {
        self.certificates
            .push((cert.to_path_buf(), key.to_path_buf()));
        self
    }

    /// The bank example's server certificate (api.bank.test, localhost, 127.0.0.1).
    pub fn bank_tls(self) -> Self {
        let dir = crate::bank_certs_dir();
        self.tls_certificate(&dir.join("server.pem"), &dir.join("server-key.pem"))
    }

    pub fn access_log(mut self, enabled: bool) -> Self {
        self.access_log = Some(enabled);
        self
    }

    pub fn without_admin(mut self) -> Self {
        self.no_admin = true;
        self
    }

    pub fn render(&self) -> String {
        let mut y = String::new();
        y.push_str("listeners:\n  public:\n    addr: \"127.0.0.1:0\"\n");
        if !self.certificates.is_empty() {
            y.push_str("  tls:\n    addr: \"127.0.0.1:0\"\n    certificates:\n");
            for (c, k) in &self.certificates {
                let _ = writeln!(
                    y,
                    "      - cert: {}\n        key: {}",
                    q(&c.display().to_string()),
                    q(&k.display().to_string())
                );
            }
        }
        if !self.no_admin {
            y.push_str("  admin:\n    addr: \"127.0.0.1:0\"\n");
        }
        if !self.server.is_empty() {
            y.push_str("server:\n");
            for (k, v) in &self.server {
                let _ = writeln!(y, "  {k}: {v}");
            }
        }
        if let Some(on) = self.access_log {
            let _ = writeln!(y, "access_log:\n  enabled: {on}\n  target: stdout");
        }
        if !self.upstreams.is_empty() {
            y.push_str("upstreams:\n");
            for u in &self.upstreams {
                let _ = writeln!(y, "  {}:\n    targets:", u.name);
                for (url, w) in &u.targets {
                    let _ = writeln!(y, "      - url: {}\n        weight: {w}", q(url));
                }
                for (k, v) in &u.extra {
                    let _ = writeln!(y, "    {k}: {v}");
                }
            }
        }
        if !self.routes.is_empty() {
            let _ = writeln!(
                y,
                "tenants:\n  {TENANT}:\n    apis:\n      {API}:\n        routes:"
            );
            for r in &self.routes {
                let _ = writeln!(y, "          - id: {}", r.id);
                let _ = writeln!(y, "            path: {}", q(&r.path));
                let _ = writeln!(y, "            methods: [{}]", r.methods.join(", "));
                if let Some(u) = &r.upstream {
                    let _ = writeln!(y, "            upstream: {u}");
                }
                if let Some(ls) = &r.listeners {
                    let _ = writeln!(y, "            listeners: [{}]", ls.join(", "));
                }
                if let Some(l) = &r.limits {
                    let _ = writeln!(y, "            limits: {l}");
                }
                if let Some(n) = r.max_body_bytes {
                    let _ = writeln!(y, "            max_body_bytes: {n}");
                }
            }
        }
        y
    }
}

/// A double-quoted YAML scalar (JSON string syntax is valid YAML).
fn q(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}
