//! Tollgate's request policies. Each policy is one module implementing
//! [`tollgate_core::Policy`]; [`chain_for`] is the one place that turns a route's config into its
//! compiled, phase-ordered chain, so adding a policy means adding a module and a line there.

pub mod auth;
pub mod edge;
pub mod limits;
pub mod traffic;
pub mod versioning;

use std::sync::Arc;
use tollgate_config::{Api, Route};
use tollgate_core::{Clock, Policy};

pub use auth::Identity;

/// Maps built from the config and probed on the request path (plans, overrides, consumers, key
/// digests). foldhash rather than SipHash: lookups hash client input, but only the config's keys
/// are ever inserted, so a client cannot make a table collide (and API-key digests are HMAC
/// outputs it cannot predict).
pub type ConfigMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Everything a policy may need at compile time besides its own config. Lives as long as the
/// gateway, so state in it (limiter buckets) survives reloads.
#[derive(Clone)]
pub struct Env {
    pub clock: Arc<dyn Clock>,
    pub stores: Arc<traffic::Stores>,
}

impl Env {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            stores: Arc::new(traffic::Stores::new(1_000_000)),
        }
    }
}

/// What one compiled config shares among its routes' policies.
pub struct Shared {
    pub identity: Arc<Identity>,
    pub plans: Arc<traffic::PlanBook>,
}

/// Stable names of a route for limiter keys: `tenant/api` and the route id.
#[derive(Debug, Clone, Copy)]
pub struct RouteIds<'a> {
    pub api_scope: &'a str,
    pub route_id: &'a str,
}

/// Builds the policy chain of one route, sorted by phase. `identity` is the snapshot's
/// identity runtime, shared by every route.
pub fn chain_for(
    env: &Env,
    shared: &Shared,
    ids: RouteIds<'_>,
    api: &Api,
    route: &Route,
) -> Vec<Arc<dyn Policy>> {
    let identity = &shared.identity;
    let mut chain: Vec<Arc<dyn Policy>> = Vec::new();
    if let Some(p) = versioning::Versioning::from_config(env, api, route) {
        chain.push(Arc::new(p));
    }

    if let Some(a) = route.auth.as_ref().or(api.auth.as_ref()) {
        chain.push(Arc::new(auth::Auth::new(identity.clone(), a)));
    }
    if let Some(t) = traffic::Traffic::new(
        env.stores.clone(),
        shared.plans.clone(),
        env.clock.clone(),
        ids.api_scope,
        ids.route_id,
        api.limits.as_ref(),
        route.limits.as_ref(),
    ) {
        chain.push(Arc::new(t));
    }
    chain.sort_by_key(|p| p.phase());
    chain
}
