//! The gateway handle: owns the current snapshot (swapped atomically on reload), metrics, the
//! access log, and injected time and ids.

use crate::access_log::{AccessLog, Sink};
use crate::compile::{Snapshot, compile};
use crate::metrics::{Metrics, ResultLabels};
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tollgate_config::{ConfigError, EnvOverrides, LoadedConfig, Overlay, Problem};
use tollgate_core::trace::{IdSource, RandomIds};
use tollgate_core::{Clock, SystemClock};

/// Injected dependencies; defaults are the real clock, random ids and the configured log target.
pub struct Options {
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdSource>,
    pub env: EnvOverrides,
    /// Overrides the config's access log target (tests capture lines in memory).
    pub access_log_sink: Option<Sink>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            ids: Arc::new(RandomIds),
            env: EnvOverrides::default(),
            access_log_sink: None,
        }
    }
}

pub(crate) struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    pub ids: Arc<dyn IdSource>,
    pub policy_env: tollgate_policy::Env,
    pub env: EnvOverrides,
    /// Serialises reloads; never held on the request path. Guards the file config and the
    /// overlay the current snapshot was compiled from.
    pub reload_lock: Mutex<Sources>,
    /// Reads of the config file, numbered as they start: files are parsed outside the lock
    /// (a slow one must not stall the admin API), and one read after a newer one is applied
    /// is stale.
    pub reads: std::sync::atomic::AtomicU64,
    pub usage: Arc<crate::usage::Usage>,
}

/// What the current snapshot was compiled from: the file as read, and the runtime overlay.
pub(crate) struct Sources {
    file: Arc<LoadedConfig>,
    overlay: Arc<Overlay>,
    /// Which read of the file `file` is (see [`Shared::reads`]).
    file_read: u64,
}

/// A running or ready-to-run gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("generation", &self.shared.snapshot.load().generation)
            .finish_non_exhaustive()
    }
}

/// Why a reload was refused. The running config is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl Gateway {
    /// Compiles the first config. Fails with the same problems `tollgate validate` reports.
    pub fn new(loaded: LoadedConfig, opts: Options) -> Result<Self, ConfigError> {
        let metrics = Arc::new(Metrics::new());
        let policy_env = tollgate_policy::Env::new(opts.clock.clone());
        tollgate_policy::traffic::connect_redis_from_env(&policy_env.stores)
            .map_err(|p| invalid(&loaded, vec![p]))?;
        let file = Arc::new(loaded);
        let loaded = file.clone();
        let snap = compile(loaded.clone(), None, &metrics, &policy_env, 1)
            .map_err(|problems| invalid(&loaded, problems))?;
        metrics.config_generation.set(1);
        snap.identity.start();
        let sink = match opts.access_log_sink {
            Some(s) => s,
            None => sink_for(&loaded).map_err(|e| ConfigError::Read {
                path: PathBuf::from(&loaded.config.access_log.target),
                reason: e,
            })?,
        };
        let access_log = AccessLog::start(sink, metrics.access_log_dropped.clone());
        Ok(Self {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(snap),
                metrics,
                access_log,
                ids: opts.ids,
                policy_env,
                env: opts.env,
                reload_lock: Mutex::new(Sources {
                    file,
                    overlay: Arc::default(),
                    file_read: 0,
                }),
                reads: std::sync::atomic::AtomicU64::new(1),
                usage: Arc::new(crate::usage::Usage::new(opts.clock.clone())),
            }),
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// Per-consumer, per-API request counts since the last drain (usage analytics).
    pub fn usage(&self) -> &Arc<crate::usage::Usage> {
        &self.shared.usage
    }

    pub fn flush_access_log(&self) {
        self.shared.access_log.flush();
    }

    /// Re-reads the config file the gateway was started with, compiles it and swaps it in.
    /// Blocking (file I/O, certificate parsing): call from a blocking context.
    pub fn reload(&self) -> Result<u64, ReloadError> {
        let path = self.shared.snapshot.load().loaded.source_path.clone();
        let result = self.try_reload(&path);
        let label = if result.is_ok() { "success" } else { "failure" };
        self.shared
            .metrics
            .reloads
            .get_or_create(&ResultLabels { result: label })
            .inc();
        match &result {
            Ok(generation) => tracing::info!(generation, path = %path.display(), "config reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "config reload refused; the running config stays")
            }
        }
        result
    }

    fn try_reload(&self, path: &std::path::Path) -> Result<u64, ReloadError> {
        // Reloads may overlap (SIGHUP right after an edit the watcher also saw): each reads
        // and parses on its own, outside the lock, and the newest read wins. One that finds
        // a newer read applied has nothing to add.
        let read = self
            .shared
            .reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = Arc::new(tollgate_config::load(path, &self.shared.env)?);
        let mut sources = match self.shared.reload_lock.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if sources.file_read > read {
            return Ok(self.shared.snapshot.load().generation);
        }
        let generation = self.swap(&file, &sources.overlay)?;
        sources.file = file;
        sources.file_read = read;
        Ok(generation)
    }

    /// Replaces the runtime overlay (entities from the admin API) and swaps in the merged
    /// config. On any problem the running snapshot and the previous overlay stay.
    /// Blocking: call from a blocking context.
    pub fn set_overlay(&self, overlay: Arc<Overlay>) -> Result<u64, ReloadError> {
        let mut sources = match self.shared.reload_lock.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if *sources.overlay == *overlay {
            return Ok(self.shared.snapshot.load().generation);
        }
        let generation = self.swap(&sources.file.clone(), &overlay)?;
        sources.overlay = overlay;
        Ok(generation)
    }

    /// Whether `overlay` would compile over the current file, without swapping anything in.
    pub fn check_overlay(&self, overlay: &Overlay) -> Result<(), Vec<Problem>> {
        let file = match self.shared.reload_lock.lock() {
            Ok(g) => g.file.clone(),
            Err(poisoned) => poisoned.into_inner().file.clone(),
        };
        let merged = Arc::new(overlay.apply(&file)?);
        let old = self.shared.snapshot.load_full();
        let checked = compile(
            merged,
            Some(&old),
            &self.shared.metrics,
            &self.shared.policy_env,
            old.generation,
        )
        .map(drop);
        // The candidate's routes were only looked at.
        self.shared.metrics.prune_routes();
        checked
    }

    /// The overlay the current snapshot was compiled with.
    pub fn overlay(&self) -> Arc<Overlay> {
        match self.shared.reload_lock.lock() {
            Ok(g) => g.overlay.clone(),
            Err(poisoned) => poisoned.into_inner().overlay.clone(),
        }
    }

    /// The config file as read, without the overlay.
    pub fn file_config(&self) -> Arc<LoadedConfig> {
        match self.shared.reload_lock.lock() {
            Ok(g) => g.file.clone(),
            Err(poisoned) => poisoned.into_inner().file.clone(),
        }
    }

    fn swap(&self, file: &Arc<LoadedConfig>, overlay: &Overlay) -> Result<u64, ReloadError> {
        let loaded = if overlay.is_empty() {
            file.clone()
        } else {
            Arc::new(overlay.apply(file).map_err(|p| invalid(file, p))?)
        };
        let old = self.shared.snapshot.load_full();
        let generation = old.generation + 1;
        let snap = compile(
            loaded.clone(),
            Some(&old),
            &self.shared.metrics,
            &self.shared.policy_env,
            generation,
        )
        .map_err(|problems| {
            // A refused compile may have made handles for routes that never went live.
            self.shared.metrics.prune_routes();
            invalid(&loaded, problems)
        })?;
        warn_on_restart_only_changes(&old, &snap);
        snap.identity.start();
        self.shared.snapshot.store(Arc::new(snap));
        self.shared.metrics.config_generation.set(generation as i64);
        drop(old);
        self.shared.metrics.prune_routes();
        Ok(generation)
    }
}

fn invalid(loaded: &LoadedConfig, problems: Vec<Problem>) -> ConfigError {
    ConfigError::Invalid {
        path: loaded.source_path.clone(),
        problems,
    }
}

fn sink_for(loaded: &LoadedConfig) -> std::io::Result<Sink> {
    Ok(match loaded.config.access_log.target.as_str() {
        "stdout" => Sink::Stdout,
        "stderr" => Sink::Stderr,
        p => Sink::File(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(loaded.resolve(std::path::Path::new(p)))?,
        ),
    })
}

/// Listener addresses and the access log target are bound at start; say so instead of
/// silently ignoring a change.
fn warn_on_restart_only_changes(old: &Snapshot, new: &Snapshot) {
    let (o, n) = (old.config(), new.config());
    if o.listeners.public.as_ref().map(|l| l.addr) != n.listeners.public.as_ref().map(|l| l.addr)
        || o.listeners.tls.as_ref().map(|l| l.addr) != n.listeners.tls.as_ref().map(|l| l.addr)
        || o.listeners.admin.as_ref().map(|l| l.addr) != n.listeners.admin.as_ref().map(|l| l.addr)
        || o.listeners.tls.is_some() != n.listeners.tls.is_some()
    {
        tracing::warn!("listener changes take effect at the next restart");
    }
    if o.access_log.target != n.access_log.target {
        tracing::warn!("access log target changes take effect at the next restart");
    }
    if o.server.max_connections != n.server.max_connections
        || o.server.header_read_timeout != n.server.header_read_timeout
        || o.server.send_timeout != n.server.send_timeout
    {
        tracing::warn!(
            "max_connections, header_read_timeout and send_timeout take effect at the next restart"
        );
    }
}
