//! Runs the real `tollgate` binary as a child process against a config written to a temp dir.
//!
//! Listener ports are learned from the gateway's JSON log on stderr (`"message":"listening"`
//! lines, then `"tollgate started"`). stdout (the access log) and stderr are drained into
//! buffers by background threads for the whole life of the process, so a test can read them
//! at any time and the child never blocks on a full pipe.

use anyhow::{Context as _, Result, anyhow, bail};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The admin bearer token every test gateway gets in `TOLLGATE_ADMIN_TOKEN`.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Signals a test can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Hup,
    Term,
    Int,
}

impl Signal {
    fn flag(self) -> &'static str {
        match self {
            Signal::Hup => "-HUP",
            Signal::Term => "-TERM",
            Signal::Int => "-INT",
        }
    }
}

/// A unique, empty temp folder, removed by [`TempDir`]'s `Drop`.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How to start a gateway.
#[derive(Debug, Clone)]
pub struct GatewayBuilder {
    bin: PathBuf,
    yaml: String,
    watch: bool,
    env: Vec<(String, String)>,
    workers: Option<usize>,
}

impl GatewayBuilder {
    /// Reload when the config file changes (off by default: tests reload explicitly).
    pub fn watch(mut self, on: bool) -> Self {
        self.watch = on;
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Writes the config, starts the process and waits until it says it has started.
    pub async fn start(self) -> Result<Gateway> {
        let dir = TempDir::new("tollgate-it")?;
        let config = dir.path().join("gateway.yaml");
        std::fs::write(&config, &self.yaml)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve").arg("--config").arg(&config);
        if !self.watch {
            cmd.arg("--no-watch");
        }
        for var in [
            "TOLLGATE_PUBLIC_ADDR",
            "TOLLGATE_TLS_ADDR",
            "TOLLGATE_ADMIN_ADDR",
            "TOLLGATE_CONFIG",
            "TOLLGATE_WORKERS",
            "TOLLGATE_DATABASE_URL",
            "TOLLGATE_REDIS_URL",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info");
        if let Some(w) = self.workers {
            cmd.env("TOLLGATE_WORKERS", w.to_string());
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            drain(out, stdout.clone());
        }
        if let Some(err) = child.stderr.take() {
            drain(err, stderr.clone());
        }
        let mut gw = Gateway {
            child,
            dir,
            config,
            public: None,
            tls: None,
            admin: None,
            stdout,
            stderr,
        };
        gw.wait_started(Duration::from_secs(30)).await?;
        Ok(gw)
    }
}

fn drain(mut r: impl Read + Send + 'static, buf: Arc<Mutex<Vec<u8>>>) {
    std::thread::spawn(move || {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&chunk[..n]),
            }
        }
    });
}

/// A running gateway process; killed when dropped.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    dir: TempDir,
    config: PathBuf,
    public: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Gateway {
    /// A builder for `bin` (pass `env!("CARGO_BIN_EXE_tollgate")`) serving `yaml`.
    pub fn builder(bin: impl AsRef<Path>, yaml: &str) -> GatewayBuilder {
        GatewayBuilder {
            bin: bin.as_ref().to_path_buf(),
            yaml: yaml.to_string(),
            watch: false,
            env: Vec::new(),
            workers: None,
        }
    }

    /// Starts `bin serve --config <yaml in a temp dir> --no-watch`.
    pub async fn start(bin: impl AsRef<Path>, yaml: &str) -> Result<Gateway> {
        Self::builder(bin, yaml).start().await
    }

    async fn wait_started(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut started = false;
            for line in self.stderr_json() {
                match line.get("message").and_then(|m| m.as_str()) {
                    Some("listening") => {
                        let addr: Option<SocketAddr> = line
                            .get("addr")
                            .and_then(|a| a.as_str())
                            .and_then(|a| a.parse().ok());
                        match line.get("listener").and_then(|l| l.as_str()) {
                            Some("public") => self.public = addr,
                            Some("tls") => self.tls = addr,
                            Some("admin") => self.admin = addr,
                            _ => {}
                        }
                    }
                    Some("tollgate started") => started = true,
                    _ => {}
                }
            }
            if started {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "tollgate exited with {status} before starting; stderr:\n{}",
                    self.stderr_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "tollgate did not start within {timeout:?}; stderr:\n{}",
                    self.stderr_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The folder holding the config file; removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// # Panics
    /// If the config has no public listener.
    #[allow(clippy::expect_used)]
    pub fn public_addr(&self) -> SocketAddr {
        self.public.expect("the gateway has a public listener")
    }

    /// `http://127.0.0.1:PORT`
    pub fn public_url(&self) -> String {
        format!("http://{}", self.public_addr())
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.public_url())
    }

    /// # Panics
    /// If the config has no TLS listener.
    #[allow(clippy::expect_used)]
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls.expect("the gateway has a TLS listener")
    }

    /// `https://{host}:{tls port}{path}`; pair it with a [`tls_client`](Self::tls_client),
    /// which resolves the test host names to the TLS listener.
    pub fn tls_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.tls_addr().port())
    }

    /// # Panics
    /// If the config has no admin listener.
    #[allow(clippy::expect_used)]
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("the gateway has an admin listener")
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr())
    }

    /// A plain HTTP/1.1 client (no proxy, 30 s timeout).
    ///
    /// # Panics
    /// If reqwest cannot build a client (a harness bug).
    #[allow(clippy::expect_used)]
    pub fn client(&self) -> reqwest::Client {
        client_builder().build().expect("reqwest client")
    }

    /// A client speaking HTTP/2 by prior knowledge (h2c) on plain connections.
    ///
    /// # Panics
    /// If reqwest cannot build a client (a harness bug).
    #[allow(clippy::expect_used)]
    pub fn h2c_client(&self) -> reqwest::Client {
        client_builder()
            .http2_prior_knowledge()
            .build()
            .expect("reqwest client")
    }

    /// A builder for a TLS client that trusts only `ca_pem` and resolves `api.bank.test`,
    /// `localhost` and `hosts` to the TLS listener; `tls_info` is on.
    pub fn tls_client_builder(
        &self,
        ca_pem: &Path,
        hosts: &[&str],
    ) -> Result<reqwest::ClientBuilder> {
        let pem = std::fs::read(ca_pem).with_context(|| format!("read {}", ca_pem.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)?;
        let mut b = client_builder().tls_certs_only(certs).tls_info(true);
        let addr = self.tls_addr();
        for h in ["api.bank.test", "localhost"].iter().chain(hosts) {
            b = b.resolve(h, addr);
        }
        Ok(b)
    }

    /// A TLS client trusting only `ca_pem` (ALPN offers h2 and http/1.1).
    pub fn tls_client(&self, ca_pem: &Path) -> Result<reqwest::Client> {
        Ok(self.tls_client_builder(ca_pem, &[])?.build()?)
    }

    /// Sends a signal with `kill`, avoiding unsafe code.
    pub fn send_signal(&self, sig: Signal) -> Result<()> {
        let status = Command::new("kill")
            .arg(sig.flag())
            .arg(self.pid().to_string())
            .status()
            .context("run kill")?;
        if !status.success() {
            bail!("kill {} {} failed: {status}", sig.flag(), self.pid());
        }
        Ok(())
    }

    /// Replaces the config file atomically (write a sibling, rename over).
    pub fn rewrite_config(&self, yaml: &str) -> Result<()> {
        let tmp = self.dir.path().join(".gateway.yaml.tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, &self.config)?;
        Ok(())
    }

    /// `POST /admin/reload` with the admin token.
    pub async fn admin_reload(&self) -> Result<reqwest::Response> {
        Ok(self
            .client()
            .post(format!("{}/admin/reload", self.admin_url()))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?)
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> Result<String> {
        let r = self
            .client()
            .get(format!("{}/metrics", self.admin_url()))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("/metrics answered {}", r.status());
        }
        Ok(r.text().await?)
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// stderr lines that are JSON objects (the gateway's own log).
    pub fn stderr_json(&self) -> Vec<serde_json::Value> {
        json_lines(&self.stderr_text())
    }

    /// The access log so far: one JSON object per completed request.
    pub fn access_log_lines(&self) -> Vec<serde_json::Value> {
        json_lines(&self.stdout_text())
    }

    /// Polls the access log until a line satisfies `pred`.
    pub async fn wait_access_log(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.access_log_lines().into_iter().find(|l| pred(l)) {
                return Ok(l);
            }
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "no matching access log line within {timeout:?}; stdout:\n{}",
                    self.stdout_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls stderr until it contains `needle`.
    pub async fn wait_stderr(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.stderr_text().contains(needle) {
            if Instant::now() > deadline {
                bail!(
                    "stderr did not show {needle:?} within {timeout:?}:\n{}",
                    self.stderr_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) => {}
                Err(_) => return None,
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident set size of the process, from `/proc/PID/status`.
    pub fn rss_bytes(&self) -> Result<u64> {
        rss_of(self.pid())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- tollgate stderr ----\n{}", self.stderr_text());
            let out = self.stdout_text();
            let tail: Vec<&str> = out.lines().rev().take(20).collect();
            eprintln!("---- tollgate stdout (last 20 lines) ----");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// VmRSS of a process in bytes.
pub fn rss_of(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("bad VmRSS line {line}"))?
        .parse()?;
    Ok(kb * 1024)
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

/// The harness's reqwest defaults: no proxy from the environment, 30 s per request.
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
}
