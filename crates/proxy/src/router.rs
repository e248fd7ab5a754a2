//! Path routing: one matchit tree per listener, built once per config. A lookup yields either
//! a route, "no such path" (404) or "path known, method not" (405 with `Allow`).

use crate::metrics::RouteMetrics;
use crate::upstream::Upstream;
use http::{HeaderValue, Method};
use std::sync::Arc;
use tollgate_core::{Policy, RouteMeta};

/// A route ready to serve: everything the request path needs, resolved at compile time.
pub struct CompiledRoute {
    pub meta: Arc<RouteMeta>,
    /// Index 0 is the route's own upstream, then one per version variant. Empty for a retired
    /// route, which never reaches an upstream.
    pub upstreams: Box<[Arc<Upstream>]>,
    pub policies: Box<[Arc<dyn Policy>]>,
    /// A policy's response hook needs the upstream's fields in the map
    /// ([`Policy::edits_response`]), decided once here rather than per response.
    pub edits_response: bool,
    pub max_body_bytes: Option<u64>,
    pub metrics: Arc<RouteMetrics>,
    /// The route's names as its access log lines carry them.
    pub log: crate::access_log::RouteFields,
    /// Answered by the gateway itself instead of an upstream.
    pub builtin: Option<Builtin>,
}

/// Endpoints the gateway serves itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// `POST /oauth2/token`
    Token,
    /// `GET /.well-known/jwks.json`
    Jwks,
}

impl std::fmt::Debug for CompiledRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRoute")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// All routes sharing one path template.
struct PathEntry {
    methods: Vec<(Method, Arc<CompiledRoute>)>,
    allow: HeaderValue,
    /// The path's version policy, if a route here has one: a version's deprecation notice is
    /// about the path, so it goes on a 405 there too.
    version: Option<Arc<dyn Policy>>,
}

pub enum Lookup<'a> {
    Found(&'a Arc<CompiledRoute>),
    MethodNotAllowed(&'a HeaderValue),
    NotFound,
}

#[derive(Default)]
pub struct Router {
    tree: matchit::Router<PathEntry>,
    len: usize,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("routes", &self.len).finish()
    }
}

/// Whether some request path matches both templates. A `{param}` matches one non-empty
/// segment, a trailing `{*rest}` one or more; anything else matches itself. The router picks a
/// literal over a parameter, so `/a/{id}` and `/a/b` overlap even though both can be routed:
/// a registration that did this would take requests away from another API.
pub fn templates_overlap(a: &str, b: &str) -> bool {
    fn param(seg: &str) -> Option<bool> {
        let name = seg.strip_prefix('{')?.strip_suffix('}')?;
        Some(name.starts_with('*'))
    }
    let (mut a, mut b) = (a.split('/'), b.split('/'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) => match (param(x), param(y)) {
                (Some(true), _) => return !y.is_empty(),
                (_, Some(true)) => return !x.is_empty(),
                (Some(false), Some(false)) => {}
                (Some(false), None) if !y.is_empty() => {}
                (None, Some(false)) if !x.is_empty() => {}
                (None, None) if x == y => {}
                _ => return false,
            },
            _ => return false,
        }
    }
}

/// Collects routes before the tree is built, so routes of one template may come from anywhere
/// in the config.
/// A method bound to a route, with the route's config key path for error messages.
type Binding = (Method, Arc<CompiledRoute>, String);

#[derive(Default)]
pub struct RouterBuilder {
    /// Path template and the methods bound under it, in config order.
    entries: Vec<(String, Vec<Binding>)>,
    /// Template → index in `entries`, so adding 10,000 routes stays linear.
    index: std::collections::HashMap<String, usize>,
}

#[derive(Debug, thiserror::Error)]
#[error("{key_path}: {message}")]
pub struct RouteConflict {
    pub key_path: String,
    pub message: String,
}

impl RouterBuilder {
    pub fn add(
        &mut self,
        template: &str,
        methods: &[Method],
        route: Arc<CompiledRoute>,
        key_path: &str,
    ) -> Result<(), RouteConflict> {
        let idx = match self.index.get(template) {
            Some(i) => *i,
            None => {
                self.entries.push((template.to_string(), Vec::new()));
                self.index
                    .insert(template.to_string(), self.entries.len() - 1);
                self.entries.len() - 1
            }
        };
        let list = &mut self.entries[idx].1;
        for m in methods {
            if let Some((_, _, other)) = list.iter().find(|(om, _, _)| om == m) {
                return Err(RouteConflict {
                    key_path: key_path.to_string(),
                    message: format!("{m} {template} is already routed by {other}"),
                });
            }
            list.push((m.clone(), route.clone(), key_path.to_string()));
        }
        // HEAD is served wherever GET is, unless a route claims HEAD itself (RFC 9110 §9.3.2).
        Ok(())
    }

    pub fn build(self) -> Result<Router, RouteConflict> {
        let mut tree = matchit::Router::new();
        let mut len = 0;
        for (template, mut list) in self.entries {
            let has_head = list.iter().any(|(m, _, _)| m == Method::HEAD);
            if !has_head
                && let Some((_, r, k)) = list.iter().find(|(m, _, _)| m == Method::GET).cloned()
            {
                list.push((Method::HEAD, r, k));
            }
            let mut names: Vec<&str> = list.iter().map(|(m, _, _)| m.as_str()).collect();
            names.sort_unstable();
            let allow =
                HeaderValue::from_str(&names.join(", ")).unwrap_or(HeaderValue::from_static("GET"));
            let first_key = list.first().map(|(_, _, k)| k.clone()).unwrap_or_default();
            len += list.len();
            let version = list.iter().find_map(|(_, r, _)| {
                r.policies
                    .iter()
                    .find(|p| p.phase() == tollgate_core::Phase::Version)
                    .cloned()
            });
            let entry = PathEntry {
                methods: list.into_iter().map(|(m, r, _)| (m, r)).collect(),
                allow,
                version,
            };
            tree.insert(template.as_str(), entry)
                .map_err(|e| RouteConflict {
                    key_path: first_key,
                    message: match e {
                        matchit::InsertError::Conflict { with } => format!(
                            "path `{template}` overlaps `{with}`, which another route serves: \
                             parameters in the same place must have the same name"
                        ),
                        other => format!("path `{template}` cannot be routed ({other})"),
                    },
                })?;
        }
        Ok(Router { tree, len })
    }
}

impl Router {
    pub fn lookup(&self, method: &Method, path: &str) -> Lookup<'_> {
        match self.tree.at(path) {
            Ok(m) => match m.value.methods.iter().find(|(rm, _)| rm == method) {
                Some((_, r)) => Lookup::Found(r),
                None => Lookup::MethodNotAllowed(&m.value.allow),
            },
            Err(_) => Lookup::NotFound,
        }
    }

    /// The version policy of the routes at `path` (see [`PathEntry::version`]).
    pub fn version_policy(&self, path: &str) -> Option<&Arc<dyn Policy>> {
        self.tree.at(path).ok()?.value.version.as_ref()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::templates_overlap;

    #[test]
    fn templates_overlap_when_one_request_path_could_match_both() {
        for (a, b) in [
            ("/acme/orders/{id}", "/acme/orders/{id}"),
            ("/acme/orders/{id}", "/acme/orders/{order}"),
            ("/acme/orders/{id}", "/acme/orders/special"),
            ("/{a}/b", "/x/{c}"),
            ("/files/{*rest}", "/files/a/b/c"),
            ("/files/{*rest}", "/files/{id}"),
            ("/v1", "/v1"),
        ] {
            assert!(templates_overlap(a, b), "{a} {b}");
            assert!(templates_overlap(b, a), "{b} {a}");
        }
        for (a, b) in [
            ("/acme/orders/{id}", "/beta/orders/{id}"),
            ("/acme/orders/{id}", "/acme/orders/{id}/items"),
            ("/acme/orders/{id}", "/acme/orders/"),
            ("/acme/orders", "/acme/orders/"),
            ("/files/{*rest}", "/files"),
            ("/files/{*rest}", "/files/"),
            ("/v1/payments", "/v1/payments/{id}"),
        ] {
            assert!(!templates_overlap(a, b), "{a} {b}");
            assert!(!templates_overlap(b, a), "{b} {a}");
        }
    }
}
