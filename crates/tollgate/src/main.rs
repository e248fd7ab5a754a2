//! The `tollgate` binary: `serve` a config, `validate` one, or run the bank `demo` with its
//! sample backends; `admin` and `apply` manage a running gateway through its admin API. Owns
//! process concerns only: CLI, logging, runtime, signals, file watching.

mod cli;
mod demo;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tollgate_config::EnvOverrides;
use tollgate_proxy::{Gateway, Options, ShutdownTrigger, shutdown_pair};

// A gateway allocates and frees the same few small sizes per request (header maps, request
// ids, body frames) on every worker. mimalloc's per-thread free lists serve them in a fraction
// of glibc's instructions and do not trim and regrow the heap under steady load (measured in
// docs/performance.md §8). Version 2: see the workspace manifest.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "tollgate",
    version,
    about = "An API gateway: routing, identity, usage plans and limits, in one binary."
)]
struct Cli {
    /// Worker threads; 1 runs everything on the calling thread. Default: one per CPU.
    #[arg(long, global = true, env = "TOLLGATE_WORKERS")]
    workers: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway with a config file.
    Serve {
        #[arg(long, short, env = "TOLLGATE_CONFIG")]
        config: PathBuf,
        /// Do not reload when the config file changes (SIGHUP and the admin API still work).
        #[arg(long)]
        no_watch: bool,
        /// Store for tenants, registered APIs, plans, consumers, keys and usage:
        /// `sqlite://PATH` or `postgres://...`. Default: `tollgate.db` beside the config file.
        #[arg(long, env = "TOLLGATE_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// Check a config file: exit 0 if it would load, 1 with every problem (key path and line) if not.
    Validate {
        #[arg(long, short, env = "TOLLGATE_CONFIG")]
        config: PathBuf,
    },
    /// Print the keyed hash of an API key or client secret, for `consumers.*.api_keys[].hash`
    /// and `client_secret_hash`, under the config's `identity.hash_secret_file`.
    Hash {
        #[arg(long, short, env = "TOLLGATE_CONFIG")]
        config: PathBuf,
        /// The values to hash (read from standard input, one per line, when none are given).
        values: Vec<String>,
    },
    /// Run the bank example with built-in sample backends and print requests to try.
    Demo {
        /// The example config; default: examples/bank/gateway.yaml of this source tree.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, env = "TOLLGATE_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// Manage a running gateway through its admin API: tenants, APIs, plans, consumers, keys, usage.
    Admin(cli::AdminArgs),
    /// Sync a directory (tenants.yaml, plans.yaml, consumers.yaml, apis/) to a running gateway.
    Apply(cli::ApplyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    tollgate_proxy::install_crypto_provider();
    let result = match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Hash { config, values } => hash(&config, values),
        Command::Admin(args) => return cli::admin(args),
        Command::Apply(args) => return cli::apply(args),
        Command::Serve {
            config,
            no_watch,
            database_url,
        } => run(cli.workers, serve(config, database_url, !no_watch, false)),
        Command::Demo {
            config,
            database_url,
        } => {
            let config = config.unwrap_or_else(demo::default_config);
            run(cli.workers, serve(config, database_url, true, true))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
}

fn run(
    workers: Option<usize>,
    fut: impl std::future::Future<Output = Result<ExitCode>>,
) -> Result<ExitCode> {
    let rt = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Some(0) => anyhow::bail!("--workers must be at least 1"),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    let code = rt.block_on(fut);
    // Connection tasks that outlived the grace period must not hold the process open.
    rt.shutdown_timeout(Duration::from_millis(200));
    // Dropping them recorded their requests (status 499); those lines came after the
    // server's own last flush.
    if let Some(gw) = EXITING.get() {
        gw.flush_access_log();
    }
    code
}

/// The gateway being served, for the access log's last flush once the runtime is gone.
static EXITING: std::sync::OnceLock<Gateway> = std::sync::OnceLock::new();

fn validate(path: &Path) -> Result<ExitCode> {
    let env = EnvOverrides::from_env();
    let checked = tollgate_config::load(path, &env).and_then(tollgate_proxy::compile::check);
    match checked {
        Ok(summary) => {
            println!("{}: ok ({summary})", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn hash(config: &Path, values: Vec<String>) -> Result<ExitCode> {
    // Only the secret's path is read: the config may still be waiting for these values.
    let secret = tollgate_config::hash_secret_path(config)?
        .context("the config sets no identity.hash_secret_file")?;
    let hasher =
        tollgate_policy::auth::KeyHasher::from_file(&secret).map_err(anyhow::Error::msg)?;
    let values = if values.is_empty() {
        std::io::read_to_string(std::io::stdin())?
            .lines()
            .map(str::to_string)
            .collect()
    } else {
        values
    };
    for v in values.iter().filter(|v| !v.is_empty()) {
        println!("{}", hasher.encode(v.as_bytes()));
    }
    Ok(ExitCode::SUCCESS)
}

/// The store's URL: the one given, else an SQLite file beside the config.
fn store_url(config: &Path, given: Option<String>) -> String {
    if let Some(u) = given.filter(|u| !u.trim().is_empty()) {
        return u;
    }
    let dir = config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    format!("sqlite://{}", dir.join("tollgate.db").display())
}

async fn serve(
    config: PathBuf,
    database_url: Option<String>,
    watch: bool,
    demo: bool,
) -> Result<ExitCode> {
    {
        let env = EnvOverrides::from_env();
        let loaded = tollgate_config::load(&config, &env)?;
        raise_open_file_limit(loaded.config.server.max_connections);
        if demo {
            demo::start_servers(&loaded.base_dir);
        }
        let gateway = Gateway::new(
            loaded,
            Options {
                env,
                ..Options::default()
            },
        )?;

        let _ = EXITING.set(gateway.clone());
        let (trigger, shutdown) = shutdown_pair();
        let url = store_url(&config, database_url);
        let store = tollgate_store::Store::open(&url).await.with_context(|| {
            format!("cannot open the store {}", tollgate_core::redact_url(&url))
        })?;
        tracing::info!(store = %tollgate_core::redact_url(&url), "store open");
        let manage = tollgate_admin::Management::start(store, gateway.clone())
            .await
            .with_context(|| {
                format!("cannot read the store {}", tollgate_core::redact_url(&url))
            })?;
        let manage_task = manage.spawn(shutdown.clone());
        let snap = gateway.snapshot();
        let cfg = snap.config();
        let bound = gateway.bind().await?;
        let admin = match &cfg.listeners.admin {
            Some(a) => {
                let l = tokio::net::TcpListener::bind(a.addr.0)
                    .await
                    .with_context(|| format!("cannot listen on {} (admin)", a.addr.0))?;
                let addr = l.local_addr()?;
                let mut token = std::env::var(&a.token_env).ok().filter(|t| !t.is_empty());
                if token.is_none() && demo {
                    // The demo must be usable as is: make a token and say what it is.
                    let t = format!(
                        "demo-{}",
                        tollgate_core::trace::new_request_id(&tollgate_core::trace::RandomIds)
                            .to_str()
                            .unwrap_or("token")
                    );
                    println!("admin token for this demo run: export {}={t}", a.token_env);
                    token = Some(t);
                }
                if token.is_none() {
                    tracing::warn!(variable = %a.token_env, "admin token not set: protected admin routes refuse every request");
                }
                tracing::info!(listener = "admin", addr = %addr, "listening");
                Some(tokio::spawn(tollgate_admin::serve(
                    l,
                    gateway.clone(),
                    token,
                    Some(manage.clone()),
                    [bound.public_addr, bound.tls_addr]
                        .into_iter()
                        .flatten()
                        .collect(),
                    shutdown.clone(),
                )))
            }
            None => None,
        };
        for (name, addr) in [("public", bound.public_addr), ("tls", bound.tls_addr)] {
            if let Some(addr) = addr {
                tracing::info!(listener = name, addr = %addr, "listening");
            }
        }
        if demo {
            demo::announce(&gateway)?;
        }
        tokio::spawn(signals(gateway.clone(), trigger));
        let _watcher = if watch {
            watch_config(&gateway, &config)
        } else {
            None
        };
        tracing::info!(generation = snap.generation, config = %config.display(), "tollgate started");
        drop(snap);

        gateway.serve(bound, shutdown.clone()).await;
        if let Some(a) = admin {
            let _ = tokio::time::timeout(Duration::from_secs(2), a).await;
        }
        // Usage counted up to the last request reaches the store. The management task flushed
        // when the shutdown began; what the drain answered since is flushed here.
        let _ = tokio::time::timeout(Duration::from_secs(5), manage_task).await;
        match tokio::time::timeout(Duration::from_secs(5), manage.flush_usage()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "final usage flush failed"),
            Err(_) => tracing::warn!("final usage flush timed out after 5 s"),
        }
        tracing::info!("shut down");
        gateway.flush_access_log();
        Ok(ExitCode::SUCCESS)
    }
}

/// Raises the soft open-file limit as far as the hard one allows. Many systems start services at a soft
/// limit of 1024, which a gateway allowed 10,000 connections would hit at a few hundred clients
/// (each holds an upstream connection too) with `EMFILE` on accept and connect. Upstreams
/// registered at run time each add connections too (up to `max_requests_per_target` in use
/// plus the idle pool per target), so no figure computed at start would stay right; the hard
/// limit is the operator's, and is only ever reported.
fn raise_open_file_limit(max_connections: usize) {
    // A client connection and its upstream connection, plus the admin listener's connections,
    // the store's pool, log files and the listeners themselves.
    let wanted = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(1024);
    // Linux refuses a soft limit above `fs.nr_open` (1,048,576 by default) even when the hard
    // limit is unlimited.
    match rlimit::increase_nofile_limit(wanted.max(1 << 20)) {
        Ok(limit) if limit < wanted => tracing::warn!(
            limit,
            wanted,
            max_connections,
            "the open-file limit is below what server.max_connections needs; connections beyond it fail with EMFILE: raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower server.max_connections"
        ),
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, wanted, "cannot raise the open-file limit"),
    }
}

/// SIGHUP reloads; SIGTERM and SIGINT start a graceful shutdown.
async fn signals(gateway: Gateway, trigger: ShutdownTrigger) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let gw = gateway.clone();
                let _ = tokio::task::spawn_blocking(move || gw.reload()).await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutdown requested: no new connections, draining in-flight requests");
    trigger.trigger();
}

/// Reloads when the config file changes. Watches the folder, not the file, because editors and
/// deploy tools replace files by rename; changes are debounced so a multi-step write reloads once.
fn watch_config(gateway: &Gateway, config: &Path) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let file = std::fs::canonicalize(config).ok()?;
    let dir = file.parent()?.to_path_buf();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let target = file.clone();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && (ev.kind.is_modify() || ev.kind.is_create())
            && ev.paths.iter().any(|p| p.file_name() == target.file_name())
        {
            let _ = tx.send(());
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the config file; use SIGHUP or the admin API to reload"))
    .ok()?;
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, "cannot watch the config folder");
        return None;
    }
    let gw = gateway.clone();
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            let gw = gw.clone();
            let _ = tokio::task::spawn_blocking(move || gw.reload()).await;
        }
    });
    Some(watcher)
}
