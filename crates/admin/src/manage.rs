//! The management plane's engine: the store behind the admin API, the runtime overlay compiled
//! from it, propagation between nodes and the usage flush.
//!
//! Propagation is versioned polling: every mutation bumps the store's change version in the
//! same transaction; each node polls the version every [`POLL`] and, when it moved, reads all
//! managed entities in one consistent read and swaps in a new snapshot. Polling works the same on
//! SQLite and PostgreSQL, needs no extra connection per node, and bounds propagation by
//! `POLL` plus one compile. A node that cannot reach the store keeps serving its last snapshot.

use crate::error::{ApiError, FieldError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tollgate_config::{ApiKey, Consumer, Overlay, OverlayApi, Plan};
use tollgate_proxy::Gateway;
use tollgate_proxy::usage::Delta;
use tollgate_store::{Dynamic, Store, StoreError, UsageDelta};

/// How often a node asks the store whether anything changed.
pub const POLL: Duration = Duration::from_millis(500);
/// How often a node writes its usage counts to the store.
pub const FLUSH: Duration = Duration::from_secs(1);

pub struct Management {
    store: Store,
    gateway: Gateway,
    applied: AtomicI64,
    sync_lock: tokio::sync::Mutex<()>,
    flush_lock: tokio::sync::Mutex<()>,
    /// Serialises this node's writes; [`Management::begin_write`] adds the store's lock for
    /// other nodes' writes.
    write_lock: tokio::sync::Mutex<()>,
}

/// A management write in progress: see [`Management::begin_write`]. Dropping it ends the write.
#[derive(Debug)]
pub struct WriteGuard<'a> {
    _store: tollgate_store::WriteLock,
    _node: tokio::sync::MutexGuard<'a, ()>,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Management")
            .field("applied", &self.applied.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Management {
    /// Loads everything managed from the store and makes it live before returning, so a
    /// restarted node serves registered APIs and keys from its first request.
    pub async fn start(store: Store, gateway: Gateway) -> Result<Arc<Self>, StoreError> {
        let m = Arc::new(Self {
            store,
            gateway,
            applied: AtomicI64::new(-1),
            sync_lock: tokio::sync::Mutex::new(()),
            flush_lock: tokio::sync::Mutex::new(()),
            write_lock: tokio::sync::Mutex::new(()),
        });
        m.sync().await?;
        Ok(m)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Reads the managed entities and swaps in a snapshot built from them. Entities that no
    /// longer fit (say, the config file took a path a registered API had) are left out, each
    /// logged and counted, so that one of them cannot hold back every later change, a key's
    /// revocation included. Only a set that does not compile even without them leaves the
    /// running snapshot as it is.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let _g = self.sync_lock.lock().await;
        let dynamic = self.store.load_all().await?;
        let version = dynamic.version;
        let overlay = build_overlay(&dynamic);
        let gw = self.gateway.clone();
        match tokio::task::spawn_blocking(move || apply_what_fits(&gw, overlay)).await {
            Ok(Ok((generation, left_out))) => {
                let count = i64::try_from(left_out.len()).unwrap_or(i64::MAX);
                self.gateway.metrics().managed_left_out.set(count);
                for (what, why) in &left_out {
                    tracing::error!(version, entity = %what, reason = %why, "stored entity left out of the running config");
                }
                tracing::debug!(version, generation, "managed entities applied");
            }
            Ok(Err(e)) => {
                tracing::error!(version, error = %e, "managed entities refused; the running config stays");
            }
            Err(e) => tracing::error!(error = %e, "overlay task failed"),
        }
        // Recorded even when refused: retrying the same version every poll would only repeat
        // the same error; the next change (or a file reload) tries again.
        self.applied.store(version, Ordering::Release);
        Ok(())
    }

    /// Starts a write: takes this node's write lock and the store's lock for every node's
    /// writes, then brings this node's snapshot up to everything committed before. Whatever a
    /// handler checks after this (path clashes against the running routes, a plan's users,
    /// an `If-Match`) cannot be invalidated by another node's write before its own commits;
    /// checked against a snapshot a poll behind, two nodes could each accept one of two
    /// clashing registrations.
    pub async fn begin_write(&self) -> Result<WriteGuard<'_>, StoreError> {
        let node = self.write_lock.lock().await;
        let store = self.store.lock_writes().await?;
        self.poll().await?;
        Ok(WriteGuard {
            _store: store,
            _node: node,
        })
    }

    /// Deletes through `op` as one write ([`Management::begin_write`]) and makes the result
    /// live here at once: 204, or 404 naming `what` when there was nothing to delete.
    pub async fn delete(
        &self,
        what: &str,
        op: impl AsyncFnOnce(&Store) -> Result<bool, StoreError>,
    ) -> Result<axum::http::StatusCode, ApiError> {
        let _w = self.begin_write().await?;
        if !op(&self.store).await? {
            return Err(ApiError::not_found(what));
        }
        self.sync().await?;
        Ok(axum::http::StatusCode::NO_CONTENT)
    }

    /// Applies changes made through any node, if the store's version moved.
    pub async fn poll(&self) -> Result<(), StoreError> {
        let v = self.store.version().await?;
        if v != self.applied.load(Ordering::Acquire) {
            self.sync().await?;
        }
        Ok(())
    }

    /// Writes this node's usage counts to the store. On failure they are kept for the next try.
    pub async fn flush_usage(&self) -> Result<(), StoreError> {
        let _g = self.flush_lock.lock().await;
        let drained = self.gateway.usage().drain();
        if drained.is_empty() {
            return Ok(());
        }
        let deltas: Vec<UsageDelta> = drained.iter().map(to_store_delta).collect();
        if let Err(e) = self.store.add_usage(&deltas).await {
            self.gateway.usage().restore(drained);
            return Err(e);
        }
        Ok(())
    }

    /// Polls for changes and flushes usage until `shutdown`; flushes once more on the way out.
    pub fn spawn(
        self: &Arc<Self>,
        mut shutdown: tollgate_proxy::Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        let m = self.clone();
        tokio::spawn(async move {
            let mut poll = tokio::time::interval(POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut flush = tokio::time::interval(FLUSH);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut store_down = false;
            loop {
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = poll.tick() => {
                        match m.poll().await {
                            Ok(()) if store_down => {
                                store_down = false;
                                tracing::info!("store reachable again");
                            }
                            Ok(()) => {}
                            Err(e) if !store_down => {
                                store_down = true;
                                tracing::error!(error = %e, "store unreachable; serving the last good config");
                            }
                            Err(_) => {}
                        }
                    }
                    _ = flush.tick() => {
                        if let Err(e) = m.flush_usage().await {
                            tracing::warn!(error = %e, "usage flush failed; counts kept for the next try");
                        }
                    }
                }
            }
            if let Err(e) = m.flush_usage().await {
                tracing::warn!(error = %e, "final usage flush failed");
            }
        })
    }
}

fn to_store_delta(d: &Delta) -> UsageDelta {
    UsageDelta {
        minute_ms: d.minute_ms,
        tenant: d.tenant.to_string(),
        consumer: d.consumer.to_string(),
        api: d.api.to_string(),
        requests: d.counts.requests,
        status_2xx: d.counts.status_2xx,
        status_4xx: d.counts.status_4xx,
        status_5xx: d.counts.status_5xx,
        throttled: d.counts.throttled,
        latency_buckets: d.counts.latency.to_vec(),
    }
}

/// Whether a body with this content type is YAML (else JSON).
pub fn is_yaml(content_type: &str) -> bool {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    matches!(
        ct.to_ascii_lowercase().as_str(),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml"
    )
}

/// Parses, validates and compiles one registered API document.
pub fn import_api(
    tenant: &str,
    id: &str,
    document: &[u8],
    yaml: bool,
) -> Result<OverlayApi, Vec<FieldError>> {
    let to_field = |v: Vec<tollgate_config::openapi::DocProblem>| {
        v.into_iter()
            .map(|p| FieldError::new(p.pointer, p.message))
            .collect::<Vec<_>>()
    };
    let value = tollgate_config::openapi::parse_document(document, yaml).map_err(to_field)?;
    let mut imported = tollgate_config::openapi::import(tenant, id, &value).map_err(to_field)?;
    // Upstream names are config identifiers (letters, digits, `-`, `_`); ids may hold dots.
    let name = format!("api_{}_{}", tenant.replace('.', "-"), id.replace('.', "-"));
    imported.api.upstream = Some(name.clone());
    for r in &mut imported.api.routes {
        if r.upstream.as_deref() == Some(imported.upstream_name.as_str()) {
            r.upstream = Some(name.clone());
        }
    }
    Ok(OverlayApi {
        tenant: tenant.to_owned(),
        id: id.to_owned(),
        api: imported.api,
        upstream_name: name,
        upstream: imported.upstream,
    })
}

/// Swaps in `overlay`, or as much of it as fits. Blocking. Returns the generation and what
/// was left out, with why.
fn apply_what_fits(
    gw: &Gateway,
    overlay: Overlay,
) -> Result<(u64, Vec<(String, String)>), tollgate_proxy::ReloadError> {
    /// Rounds of leaving out what the compiler names before giving up.
    const ROUNDS: usize = 4;
    let refused = match gw.set_overlay(Arc::new(overlay.clone())) {
        Ok(generation) => return Ok((generation, Vec::new())),
        Err(e) => e,
    };
    let mut o = overlay;
    let mut left = Vec::new();
    let (kept, clashing) =
        crate::paths::fitting_apis(&gw.file_config().config, std::mem::take(&mut o.apis));
    o.apis = kept;
    for (a, why) in clashing {
        left.push((format!("api {}/{}", a.tenant, a.id), why));
    }
    for _ in 0..ROUNDS {
        let problems = match gw.set_overlay(Arc::new(o.clone())) {
            Ok(generation) => return Ok((generation, left)),
            Err(tollgate_proxy::ReloadError::Config(tollgate_config::ConfigError::Invalid {
                problems,
                ..
            })) => problems,
            Err(e) => return Err(e),
        };
        if !leave_out_named(&mut o, &problems, &mut left) {
            break;
        }
    }
    Err(refused)
}

/// Whether `p`'s key path points into `prefix` (`consumers.gold`, `tenants.t.apis.a`).
fn names(prefix: &str, p: &tollgate_config::Problem) -> bool {
    p.key_path
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// Removes the entry of `map` (a config section such as `consumers`) that `p` points into.
fn take_named<V>(
    map: &mut BTreeMap<String, V>,
    section: &str,
    p: &tollgate_config::Problem,
) -> Option<String> {
    let id = map
        .keys()
        .find(|k| names(&format!("{section}.{k}"), p))
        .cloned()?;
    map.remove(&id);
    Some(id)
}

/// Removes from `o` each stored entity a problem's key path points into; false if none.
fn leave_out_named(
    o: &mut Overlay,
    problems: &[tollgate_config::Problem],
    left: &mut Vec<(String, String)>,
) -> bool {
    let before = left.len();
    for p in problems {
        let why = format!("{}: {}", p.key_path, p.message);
        if let Some(i) = o.apis.iter().position(|a| {
            names(&format!("tenants.{}.apis.{}", a.tenant, a.id), p)
                || names(&format!("upstreams.{}", a.upstream_name), p)
        }) {
            let a = o.apis.remove(i);
            left.push((format!("api {}/{}", a.tenant, a.id), why));
        } else if let Some(id) = take_named(&mut o.consumers, "consumers", p) {
            left.push((format!("consumer {id}"), why));
        } else if let Some(id) = take_named(&mut o.plans, "plans", p) {
            left.push((format!("plan {id}"), why));
        }
    }
    left.len() > before
}

/// The store's entities as a config overlay. Rows that no longer import are logged and left
/// out rather than taking every other entity down with them. APIs come oldest first, which is
/// the order [`apply_what_fits`] keeps them in.
pub fn build_overlay(d: &Dynamic) -> Overlay {
    let mut o = Overlay::default();
    for t in &d.tenants {
        o.tenants.insert(t.id.clone(), t.name.clone());
    }
    let mut apis: Vec<_> = d.apis.iter().collect();
    apis.sort_by(|x, y| (x.updated_at, &x.tenant, &x.id).cmp(&(y.updated_at, &y.tenant, &y.id)));
    for a in apis {
        match import_api(
            &a.tenant,
            &a.id,
            a.document.as_bytes(),
            is_yaml(&a.content_type),
        ) {
            Ok(api) => o.apis.push(api),
            Err(errors) => {
                tracing::error!(tenant = %a.tenant, api = %a.id, ?errors, "stored API no longer imports; left out")
            }
        }
    }
    for p in &d.plans {
        match serde_json::from_value::<Plan>(p.body.clone()) {
            Ok(plan) => {
                o.plans.insert(p.id.clone(), plan);
            }
            Err(e) => tracing::error!(plan = %p.id, error = %e, "stored plan unreadable; left out"),
        }
    }
    let mut keys: BTreeMap<&str, Vec<ApiKey>> = BTreeMap::new();
    for k in &d.keys {
        keys.entry(k.consumer.as_str()).or_default().push(ApiKey {
            id: k.id.clone(),
            hash: k.hash.clone(),
        });
    }
    for c in &d.consumers {
        match serde_json::from_value::<Consumer>(c.body.clone()) {
            Ok(mut consumer) => {
                consumer.api_keys = keys.remove(c.id.as_str()).unwrap_or_default();
                o.consumers.insert(c.id.clone(), consumer);
            }
            Err(e) => {
                tracing::error!(consumer = %c.id, error = %e, "stored consumer unreadable; left out")
            }
        }
    }
    o
}

/// A copy of `current` with one API added or replaced (or removed when `api` is `None`).
pub fn with_api(current: &Overlay, tenant: &str, id: &str, api: Option<OverlayApi>) -> Overlay {
    let mut o = current.clone();
    o.apis.retain(|a| !(a.tenant == tenant && a.id == id));
    if let Some(a) = api {
        o.tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| tenant.to_owned());
        o.apis.push(a);
    }
    o
}

impl From<Vec<tollgate_config::Problem>> for ApiError {
    fn from(problems: Vec<tollgate_config::Problem>) -> Self {
        let errors = problems
            .into_iter()
            .map(|p| FieldError::new("", format!("{}: {}", p.key_path, p.message)))
            .collect();
        ApiError::invalid(
            "the change does not fit the running configuration; nothing changed",
            errors,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(key_path: &str) -> tollgate_config::Problem {
        tollgate_config::Problem {
            key_path: key_path.into(),
            line: None,
            message: "m".into(),
        }
    }

    #[test]
    fn only_the_entity_a_problem_points_into_is_left_out() {
        let mut o = Overlay::default();
        for id in ["a", "ab"] {
            o.consumers.insert(id.into(), Consumer::default());
        }
        o.plans.insert(
            "a".into(),
            Plan {
                rate: 1.0,
                burst: 1,
                quota: None,
                routes: BTreeMap::new(),
            },
        );
        let mut left = Vec::new();
        assert!(leave_out_named(
            &mut o,
            &[problem("consumers.ab.plan")],
            &mut left
        ));
        assert_eq!(
            left,
            [("consumer ab".to_owned(), "consumers.ab.plan: m".to_owned())]
        );
        assert!(o.consumers.contains_key("a") && o.plans.contains_key("a"));
        // A path into the file's own sections names no stored entity.
        assert!(!leave_out_named(
            &mut o,
            &[problem("tenants.retail.apis.accounts.routes[0].id")],
            &mut left
        ));
        assert!(leave_out_named(&mut o, &[problem("plans.a")], &mut left));
        assert!(o.plans.is_empty() && o.consumers.contains_key("a"));
    }
}
