//! A real `redis-server` on a free loopback port, without persistence, for tests of the shared
//! limits. [`RedisServer::kill`] and [`RedisServer::restart`] (same port, empty data, as after
//! a crash without persistence) let a test take Redis away mid-load; [`RedisServer::pause`]
//! stalls it instead (connections stay open, nothing is answered).
//!
//! [`RedisServer::command`] speaks just enough RESP to inspect keys from a test without a client
//! library.

use anyhow::{Context as _, Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process; killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port of 127.0.0.1 and waits until it answers `PING`.
    pub fn start() -> Result<Self> {
        let mut last = None;
        // The port is free when picked but not reserved: another test may pick it too before
        // this server binds it. `spawn` notices (the server answering is not ours); try again.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut me = Self { port, child: None };
            match me.spawn() {
                Ok(()) => return Ok(me),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    fn spawn(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start redis-server (apt-get install redis-server)")?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(info) = self.command(&["INFO", "server"])
                && info.contains("redis_version")
            {
                // Whoever answers must be the server just started, not another test's.
                if info.contains(&format!("process_id:{pid}\r")) {
                    return Ok(());
                }
                self.kill();
                bail!("port {} is taken by another redis-server", self.port);
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                bail!("redis-server on port {} exited: {status}", self.port);
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("redis-server on port {} did not answer", self.port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `redis://127.0.0.1:PORT/`, for `TOLLGATE_REDIS_URL`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// SIGKILL, as a crash: clients see their connections reset.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a fresh server on the same port (the data is gone: no persistence).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// SIGSTOP: the server keeps its connections but answers nothing, like a stalled host.
    pub fn pause(&self) -> Result<()> {
        self.signal("-STOP")
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) -> Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, flag: &str) -> Result<()> {
        let Some(child) = &self.child else {
            bail!("redis-server is not running");
        };
        // `kill` rather than libc: no unsafe code in the harness.
        let status = Command::new("kill")
            .arg(flag)
            .arg(child.id().to_string())
            .status()
            .context("run kill")?;
        if !status.success() {
            bail!("kill {flag} {} failed: {status}", child.id());
        }
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Runs one command and returns the reply flattened to text: a simple or bulk string as is,
    /// an integer in decimal, nil as `(nil)`, an array as its elements joined by `\n`.
    pub fn command(&self, args: &[&str]) -> Result<String> {
        let mut s = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes())?;
        read_reply(&mut BufReader::new(s))
    }
}

fn read_reply(r: &mut impl BufRead) -> Result<String> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(rest.to_string()),
        "-" => bail!("redis error: {rest}"),
        "$" => {
            let n: i64 = rest.parse()?;
            if n < 0 {
                return Ok("(nil)".into());
            }
            let mut buf = vec![0u8; usize::try_from(n)? + 2];
            std::io::Read::read_exact(r, &mut buf)?;
            buf.truncate(buf.len() - 2);
            Ok(String::from_utf8(buf)?)
        }
        "*" => {
            let n: i64 = rest.parse()?;
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(read_reply(r)?);
            }
            Ok(items.join("\n"))
        }
        _ => bail!("unexpected reply line {line:?}"),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
