//! A real PostgreSQL server for tests: `initdb` in a temp folder, `postgres` on a free
//! loopback port with trust authentication, its unix socket inside the temp folder.
//!
//! PostgreSQL refuses to run as root, so when the tests are root the server runs as the
//! `postgres` OS user (the temp folder is handed to it). Tests share one server per test
//! process ([`PostgresServer::shared`]) and isolate themselves with a database each
//! ([`PostgresServer::create_database`]), so they run in parallel.
//!
//! A shared server lives in a `static` and is never dropped, so a watchdog shell stops it
//! (and removes its folder) once the test process is gone. A server from
//! [`PostgresServer::start`] is also stopped on `Drop`.

use anyhow::{Context as _, Result, bail};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A running PostgreSQL server; stopped when dropped.
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    bin: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
    watchdog: Option<Child>,
}

impl PostgresServer {
    /// `initdb` and start a server on a free port of 127.0.0.1 (waits until it accepts
    /// connections). Fails, never skips, when PostgreSQL is not installed or cannot start.
    pub fn start() -> Result<Self> {
        let bin = bin_dir()?;
        let as_postgres = is_root()?;
        let dir = unique_dir()?;
        let mut me = Self {
            port: 0,
            bin,
            dir,
            as_postgres,
            watchdog: None,
        };
        if as_postgres {
            // postgres must own its data folder and be able to create the socket there.
            me.run_checked(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&me.dir),
            )?;
        }
        let initdb = me.tool("initdb");
        let data = me.data();
        let mut cmd = me.as_server_user(initdb);
        cmd.args([
            "-D",
            path_str(&data)?,
            "-A",
            "trust",
            "-U",
            "postgres",
            "--locale=C",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        me.run_checked(&mut cmd)?;

        // A free port can be taken between our probe and the server's bind: retry.
        let mut last = None;
        for _ in 0..5 {
            me.port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            match me.pg_ctl_start() {
                Ok(()) => {
                    me.watchdog = Some(me.spawn_watchdog()?);
                    return Ok(me);
                }
                Err(e) => last = Some(e),
            }
        }
        let log = std::fs::read_to_string(me.dir.join("server.log")).unwrap_or_default();
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
            .with_context(|| format!("PostgreSQL did not start; server.log:\n{log}"))
    }

    /// One server for the whole test process, started on first use.
    pub fn shared() -> Result<&'static PostgresServer> {
        static SHARED: OnceLock<std::result::Result<PostgresServer, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| PostgresServer::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (the maintenance database).
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a fresh, empty database and returns its URL.
    pub fn create_database(&self) -> Result<String> {
        self.create_database_as("")
    }

    /// [`Self::create_database`] ordering text by ICU's English collation, as production
    /// databases created under a locale such as `en_US.UTF-8` do (the cluster's own is `C`).
    /// Its order is not the bytes' (`a_b` before `a-c`, `ab` before `aB`), so SQL that needs
    /// byte order must say so.
    pub fn create_database_with_locale_collation(&self) -> Result<String> {
        self.create_database_as(" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'")
    }

    fn create_database_as(&self, options: &str) -> Result<String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "t_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.psql(&format!("CREATE DATABASE {name}{options}"))?;
        Ok(self.url_of(&name))
    }

    /// Runs one SQL statement in the maintenance database with `psql`.
    pub fn psql(&self, sql: &str) -> Result<String> {
        let out = self.run_checked(
            Command::new(self.tool("psql"))
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", "-d", "postgres", "-c", sql]),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Runs SQL in the database of `url` (one made by [`Self::create_database`]) with `psql`:
    /// for tests that put rows in behind the gateway's back.
    pub fn psql_db(&self, url: &str, sql: &str) -> Result<String> {
        let db = url
            .rsplit('/')
            .next()
            .and_then(|tail| tail.split('?').next())
            .filter(|d| !d.is_empty())
            .ok_or_else(|| anyhow::anyhow!("no database name in {url}"))?;
        let out = self.run_checked(
            Command::new(self.tool("psql"))
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", "-d", db, "-c", sql]),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn url_of(&self, db: &str) -> String {
        // No TLS on the test server: skip the negotiation.
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    fn as_server_user(&self, program: PathBuf) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200 -c dynamic_shared_memory_type=mmap",
            self.port,
            path_str(&self.dir)?
        );
        let mut c = self.as_server_user(self.tool("pg_ctl"));
        c.args([
            "-D",
            path_str(&self.data())?,
            "-w",
            "-t",
            "60",
            "-o",
            &opts,
            "-l",
        ])
        .arg(self.dir.join("server.log"))
        .arg("start");
        self.run_checked(&mut c).map(drop)
    }

    /// A shell that waits for this process to end, then stops the server and removes the
    /// folder: statics are never dropped, and a killed test must not leak a server.
    fn spawn_watchdog(&self) -> Result<Child> {
        let stop = if self.as_postgres {
            "runuser -u postgres -- \"$2\" -D \"$3\" -m immediate stop"
        } else {
            "\"$2\" -D \"$3\" -m immediate stop"
        };
        let script = format!(
            "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf \"$4\""
        );
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("watchdog")
            .arg(std::process::id().to_string())
            .arg(self.tool("pg_ctl"))
            .arg(self.data())
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn the PostgreSQL watchdog")
    }

    fn run_checked(&self, c: &mut Command) -> Result<Output> {
        let out = c
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {c:?}"))?;
        if !out.status.success() {
            bail!(
                "{c:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Ok(data) = path_str(&self.data()) {
            let _ = self
                .as_server_user(self.tool("pg_ctl"))
                .args(["-D", data, "-m", "immediate", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The folder of `initdb`, `pg_ctl` and `psql`: `$TOLLGATE_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian keeps them off `PATH`), else `pg_config --bindir`.
fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TOLLGATE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .context("PostgreSQL not found (apt-get install postgresql)")?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && dir.join("initdb").exists() {
        Ok(dir)
    } else {
        bail!("PostgreSQL's initdb not found (apt-get install postgresql)")
    }
}

fn is_root() -> Result<bool> {
    let out = Command::new("id").arg("-u").output().context("run id -u")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn unique_dir() -> Result<PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    // Short: the socket path (dir + "/.s.PGSQL.PORT") must fit in 107 bytes.
    let dir = std::env::temp_dir().join(format!(
        "tg-pg-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("non-UTF-8 path {}", p.display()))
}
