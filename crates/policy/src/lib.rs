//! Tollgate's request policies. Each policy is one module implementing
//! [`tollgate_core::Policy`]; [`chain_for`] is the one place that turns a route's config into its
//! compiled, phase-ordered chain, so adding a policy means adding a module and a line there.

pub mod auth;
pub mod edge;
pub mod limits;
pub mod versioning;

use std::sync::Arc;
use tollgate_config::{Api, Route};
use tollgate_core::{Clock, Policy};

pub use auth::Identity;

/// Everything a policy may need at compile time besides its own config.
#[derive(Clone)]
pub struct Env {
    pub clock: Arc<dyn Clock>,
}

/// Builds the policy chain of one route, sorted by phase. `identity` is the snapshot's
/// identity runtime, shared by every route.
pub fn chain_for(
    env: &Env,
    identity: &Arc<Identity>,
    api: &Api,
    route: &Route,
) -> Vec<Arc<dyn Policy>> {
    let mut chain: Vec<Arc<dyn Policy>> = Vec::new();
    if let Some(p) = versioning::Versioning::from_config(env, api, route) {
        chain.push(Arc::new(p));
    }

    if let Some(a) = route.auth.as_ref().or(api.auth.as_ref()) {
        chain.push(Arc::new(auth::Auth::new(identity.clone(), a)));
    }
    chain.sort_by_key(|p| p.phase());
    chain
}
