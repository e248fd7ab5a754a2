//! Compiles a validated config into a [`Snapshot`]: routers per listener, upstream pools,
//! policy chains, TLS certificates and metric handles. Nothing here runs per request; the
//! request path only reads the snapshot it loaded when the request arrived.

use crate::access_log::RouteFields;
use crate::metrics::{Metrics, RouteMetrics};
use crate::router::{Builtin, CompiledRoute, Router, RouterBuilder};
use crate::tls::{self, CertSet};
use crate::upstream::Upstream;
use http::Method;
use std::collections::HashMap;
use std::sync::Arc;
use tollgate_config::{Config, ListenerName, LoadedConfig, Problem};
use tollgate_core::RouteMeta;
use tollgate_policy::Identity;

/// Request limits applied before routing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// How long a request body being forwarded may pause (`server.header_read_timeout`).
    pub body_pause: std::time::Duration,
}

/// One immutable, fully compiled configuration.
pub struct Snapshot {
    pub generation: u64,
    pub public: Router,
    pub tls: Router,
    pub limits: Limits,
    pub trusted_proxies: Box<[ipnet::IpNet]>,
    /// Metric handles for requests that matched no route.
    pub unmatched: Arc<RouteMetrics>,
    /// Consumers, credentials and verifiers of this config.
    pub identity: Arc<Identity>,
    /// CIDR lists and per-IP rules, checked before routing.
    pub edge: Option<Arc<tollgate_policy::edge::EdgeRules>>,
    /// The TLS listener's server config (certificates, client CA, ALPN) for this snapshot.
    pub tls_config: Option<Arc<rustls::ServerConfig>>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub loaded: Arc<LoadedConfig>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("public", &self.public)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    pub fn config(&self) -> &Config {
        &self.loaded.config
    }

    /// The routes a listener serves.
    pub fn router(&self, listener: tollgate_core::Listener) -> &Router {
        match listener {
            tollgate_core::Listener::Public => &self.public,
            tollgate_core::Listener::Tls => &self.tls,
        }
    }
}

/// Compile problems carry key paths like validation problems; `line` is filled from the source.
pub fn compile(
    loaded: Arc<LoadedConfig>,
    previous: Option<&Snapshot>,
    metrics: &Metrics,
    policy_env: &tollgate_policy::Env,
    generation: u64,
) -> Result<Snapshot, Vec<Problem>> {
    let cfg = &loaded.config;
    let mut problems = Vec::new();
    let mut push = |key_path: String, message: String| {
        // A route on both listeners would report its conflict once per listener.
        if problems
            .iter()
            .any(|p: &Problem| p.key_path == key_path && p.message == message)
        {
            return;
        }
        let line = tollgate_config::line_of(&loaded.source_text, &key_path);
        problems.push(Problem {
            key_path,
            line,
            message,
        });
    };

    let identity = match Identity::build(
        cfg,
        &loaded.base_dir,
        policy_env.clock.clone(),
        previous.map(|p| &*p.identity),
    ) {
        Ok(i) => Arc::new(i),
        Err(list) => {
            for (k, m) in list {
                push(k, m);
            }
            Arc::new(Identity::empty())
        }
    };

    let plans = match tollgate_policy::traffic::PlanBook::build(cfg, &policy_env.stores) {
        Ok(b) => Arc::new(b),
        Err(list) => {
            for (k, m) in list {
                push(k, m);
            }
            Arc::new(tollgate_policy::traffic::PlanBook::default())
        }
    };
    let shared = tollgate_policy::Shared {
        identity: identity.clone(),
        plans,
    };
    let edge = {
        let e = &cfg.edge;
        let ec = tollgate_policy::edge::EdgeConfig {
            allow: (!e.allow.is_empty()).then(|| e.allow.clone()),
            deny: e.deny.clone(),
            rate_rules: e
                .ip_rules
                .iter()
                .map(|r| tollgate_policy::edge::IpRateRule {
                    max_requests: r.max_requests,
                    window: r.window.get(),
                    block_for: r.block_for.get(),
                })
                .collect(),
            ..Default::default()
        };
        match tollgate_policy::edge::EdgeRules::new(&ec) {
            Ok(mut rules) => {
                // Blocks and counts survive a reload that keeps the same rules.
                if let Some(prev) = previous.and_then(|p| p.edge.as_ref()) {
                    rules.carry_state_from(prev);
                }
                if let Some(redis) = policy_env.stores.redis.get() {
                    rules.share_through(
                        redis.clone(),
                        tollgate_policy::traffic::redis_settings(cfg),
                        cfg.limits.redis.failure_mode,
                    );
                }
                (!rules.is_empty()).then(|| Arc::new(rules))
            }
            Err(e) => {
                push("edge".into(), e.to_string());
                None
            }
        }
    };

    // Upstreams: reuse the previous pool when the settings did not change, so a reload keeps
    // warm keep-alive connections.
    let mut upstreams = HashMap::new();
    for (name, u) in &cfg.upstreams {
        let reused = previous
            .and_then(|p| p.upstreams.get(name))
            .filter(|old| old.settings == *u)
            .cloned();
        match reused.map_or_else(|| Upstream::new(name, u).map(Arc::new), Ok) {
            Ok(up) => {
                upstreams.insert(name.clone(), up);
            }
            Err(e) => push(format!("upstreams.{name}"), e.to_string()),
        }
    }

    let mut public = RouterBuilder::default();
    let mut tls_routes = RouterBuilder::default();
    for (tname, tenant) in &cfg.tenants {
        let tenant_name: Arc<str> = Arc::from(tname.as_str());
        for (aname, api) in &tenant.apis {
            let api_name: Arc<str> = Arc::from(aname.as_str());
            for (i, route) in api.routes.iter().enumerate() {
                let key = format!("tenants.{tname}.apis.{aname}.routes[{i}]");
                let route_id = route
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("{tname}/{aname}/{i}"));
                let meta = Arc::new(RouteMeta {
                    tenant: tenant_name.clone(),
                    api: api_name.clone(),
                    route_id: Arc::from(route_id.as_str()),
                    template: Arc::from(route.path.as_str()),
                });
                let mut ups: Vec<Arc<Upstream>> = Vec::new();
                if route.gone.is_none() {
                    let own = route.upstream.as_ref().or(api.upstream.as_ref());
                    let names = own.into_iter().chain(
                        route
                            .versions
                            .iter()
                            .flat_map(|v| v.variants.iter().map(|x| &x.upstream)),
                    );
                    for n in names {
                        match upstreams.get(n) {
                            Some(u) => ups.push(u.clone()),
                            None => {
                                push(format!("{key}.upstream"), format!("unknown upstream `{n}`"))
                            }
                        }
                    }
                }
                let methods: Vec<Method> = route
                    .methods
                    .iter()
                    .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect();
                let policies: Box<[_]> = tollgate_policy::chain_for(
                    policy_env,
                    &shared,
                    tollgate_policy::RouteIds {
                        api_scope: &format!("{tname}/{aname}"),
                        route_id: &route_id,
                    },
                    api,
                    route,
                )
                .into();
                let compiled = Arc::new(CompiledRoute {
                    meta,
                    upstreams: ups.into(),
                    edits_response: policies.iter().any(|p| p.edits_response()),
                    policies,
                    builtin: None,
                    max_body_bytes: route.max_body_bytes.or(cfg.server.max_body_bytes),
                    metrics: metrics.route(tname, aname, &route_id),
                    log: RouteFields::new(tname, aname, &route_id),
                });
                let listeners = route
                    .listeners
                    .as_deref()
                    .or(api.listeners.as_deref())
                    .unwrap_or(&[ListenerName::Public, ListenerName::Tls]);
                for l in listeners {
                    let builder = match l {
                        ListenerName::Public => &mut public,
                        ListenerName::Tls => &mut tls_routes,
                    };
                    if let Err(e) = builder.add(&route.path, &methods, compiled.clone(), &key) {
                        push(e.key_path, e.message);
                    }
                }
            }
        }
    }
    if identity.token_issuer.is_some() {
        for (builtin, method, path, id) in [
            (
                Builtin::Token,
                Method::POST,
                "/oauth2/token",
                "oauth2-token",
            ),
            (Builtin::Jwks, Method::GET, "/.well-known/jwks.json", "jwks"),
        ] {
            let route = Arc::new(CompiledRoute {
                meta: Arc::new(RouteMeta {
                    tenant: Arc::from("gateway"),
                    api: Arc::from("oauth2"),
                    route_id: Arc::from(id),
                    template: Arc::from(path),
                }),
                upstreams: Box::new([]),
                policies: Box::new([]),
                edits_response: false,
                max_body_bytes: Some(
                    tollgate_policy::auth::token_endpoint::MAX_TOKEN_REQUEST_BYTES as u64,
                ),
                metrics: metrics.route("gateway", "oauth2", id),
                log: RouteFields::new("gateway", "oauth2", id),
                builtin: Some(builtin),
            });
            for b in [&mut public, &mut tls_routes] {
                if let Err(e) = b.add(
                    path,
                    std::slice::from_ref(&method),
                    route.clone(),
                    "identity.token_issuer",
                ) {
                    push(e.key_path, e.message);
                }
            }
        }
    }
    let public = public.build().map_err(|e| push(e.key_path, e.message)).ok();
    let tls_router = tls_routes
        .build()
        .map_err(|e| push(e.key_path, e.message))
        .ok();

    let mut tls_config = None;
    if let Some(t) = &cfg.listeners.tls {
        let mut loaded_certs = Vec::new();
        for (i, c) in t.certificates.iter().enumerate() {
            match tls::load_cert(&loaded.resolve(&c.cert), &loaded.resolve(&c.key)) {
                Ok(x) => loaded_certs.push(x),
                Err(e) => push(format!("listeners.tls.certificates[{i}]"), e.to_string()),
            }
        }
        let client_ca = match &cfg.identity.mtls {
            Some(m) => match tls::client_roots(&loaded.resolve(&m.client_ca)) {
                Ok(r) => Some(r),
                Err(e) => {
                    push("identity.mtls.client_ca".into(), e.to_string());
                    None
                }
            },
            None => None,
        };
        match CertSet::new(loaded_certs)
            .and_then(|set| tls::server_config(Arc::new(set), client_ca))
        {
            Ok(c) => tls_config = Some(c),
            Err(e) => push("listeners.tls.certificates".into(), e.to_string()),
        }
    }

    let (Some(public), Some(tls_router)) = (public, tls_router) else {
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let s = &cfg.server;
    Ok(Snapshot {
        generation,
        public,
        tls: tls_router,
        limits: Limits {
            max_uri_bytes: s.max_uri_bytes,
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
            body_pause: s.header_read_timeout.get(),
        },
        trusted_proxies: s.trusted_proxies.clone().into(),
        unmatched: metrics.route("", "", "unmatched"),
        tls_config,
        identity,
        edge,
        upstreams,
        loaded,
    })
}

/// Compiles a config without serving it (`tollgate validate`): same checks as a start or
/// reload, including certificates. Returns a one-line summary.
pub fn check(loaded: LoadedConfig) -> Result<String, tollgate_config::ConfigError> {
    let metrics = Metrics::new();
    let env = tollgate_policy::Env::new(Arc::new(tollgate_core::SystemClock));
    let path = loaded.source_path.clone();
    let snap = compile(Arc::new(loaded), None, &metrics, &env, 0)
        .map_err(|problems| tollgate_config::ConfigError::Invalid { path, problems })?;
    let listeners = &snap.config().listeners;
    let mut on = Vec::new();
    if listeners.public.is_some() {
        on.push(format!(
            "{} routes on the public listener",
            snap.public.len()
        ));
    }
    if listeners.tls.is_some() {
        on.push(format!("{} on TLS", snap.tls.len()));
    }
    on.push(format!("{} upstreams", snap.upstreams.len()));
    Ok(on.join(", "))
}
