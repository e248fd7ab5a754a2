//! The management plane's durable state, on embedded SQLite or on PostgreSQL.
//!
//! This crate owns the database schema (one set of migrations valid on both backends, embedded
//! in the binary and run by [`Store::open`]) and every query against it: tenants and their
//! admin tokens, registered APIs (the OpenAPI documents exactly as submitted), plans,
//! consumers, API keys, per-minute usage counters with latency histograms, and the audit log.
//!
//! Contracts the rest of Tollgate relies on:
//! - every management mutation runs in one transaction that also bumps the global change
//!   version ([`Store::version`], polled by gateway nodes) and appends an audit row;
//! - [`Store::load_all`] reads everything a gateway compiles in one consistent snapshot;
//! - usage writes ([`Store::add_usage`]) add to counters atomically, bump no version and are
//!   not audited: they are data-plane traffic, not configuration.
//!
//! Queries are checked at run time (no compile-time database), go through [`sqlx::AnyPool`]
//! and use only SQL both dialects share: `$1` placeholders, `ON CONFLICT`, `RETURNING`,
//! `CAST(SUM(..) AS BIGINT)` (PostgreSQL's `SUM(bigint)` is `numeric`, which the `Any` driver
//! cannot decode). Ids are chosen by the application; times are unix milliseconds.

mod types;
mod usage;

pub use types::{ApiDoc, AuditRow, Dynamic, Entity, KeyRow, MAX_PAGE, Page, Tenant, TokenRow};
pub use usage::{
    LATENCY_BOUNDS_MS, LATENCY_BUCKETS, UsageDelta, UsageKey, UsageQuery, UsageRow, latency_bucket,
};

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyConnection, AnyPool, AssertSqlSafe, Connection, Row, Transaction};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// What went wrong. Messages never carry a connection URL's password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The thing to change, or the parent it belongs to, does not exist.
    #[error("not found")]
    NotFound,
    /// A thing with this id (or this unique hash) already exists.
    #[error("already exists")]
    Conflict,
    /// The caller passed something the store cannot hold (an unknown URL scheme, a counter
    /// beyond i64, too many latency buckets).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The database failed or is unreachable.
    #[error("database: {0}")]
    Backend(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Backend(format!("migration: {e}"))
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Backend(format!("stored JSON: {e}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A handle on the database; cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

type Tx = Transaction<'static, Any>;

/// How long a management write waits for another node's to finish.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);
/// The advisory lock management writes take on PostgreSQL (an arbitrary, fixed number).
const WRITE_LOCK_KEY: i64 = 0x746f_6c6c_6761_7465;

/// Held while a management write checks and changes the store; see [`Store::lock_writes`].
pub struct WriteLock {
    tx: Option<Tx>,
}

impl std::fmt::Debug for WriteLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteLock")
            .field("held", &self.tx.is_some())
            .finish()
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        // Ending the transaction releases the lock. A dropped sqlx transaction only queues
        // its rollback until the connection is next used, which could keep other nodes
        // waiting; end it now.
        if let Some(tx) = self.tx.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            // A failed rollback means a broken connection, which the server ends, and the
            // lock with it.
            rt.spawn(async move {
                let _ = tx.rollback().await;
            });
        }
    }
}

/// A mutation in progress: the version is already bumped (which also takes the write lock
/// first, so SQLite never has to upgrade a read transaction), the audit row is written by
/// [`Write::commit`].
struct Write {
    tx: Tx,
    version: i64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn to_i64(n: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Invalid(format!("{what} {n} exceeds i64")))
}

/// A usage query's SQL text and the values its placeholders stand for, in order. Only
/// placeholders are interpolated into the text: values are always bound.
struct UsageSql<'q> {
    q: &'q UsageQuery,
    collate: &'static str,
    args: Vec<UsageArg<'q>>,
}

enum UsageArg<'q> {
    Int(i64),
    Text(&'q str),
}

impl<'q> UsageSql<'q> {
    fn new(q: &'q UsageQuery, collate: &'static str) -> Self {
        Self {
            q,
            collate,
            args: vec![UsageArg::Int(q.bucket_ms)],
        }
    }

    fn arg(&mut self, a: UsageArg<'q>) -> String {
        self.args.push(a);
        format!("${}", self.args.len())
    }

    /// The minute rows of the query, from `from_ms` on (later than the query's own start
    /// when a page begins further on).
    fn filter(&mut self, from_ms: i64, to_ms: i64) -> String {
        let from = self.arg(UsageArg::Int(from_ms));
        let to = self.arg(UsageArg::Int(to_ms));
        let mut f = format!("minute_ms >= {from} AND minute_ms < {to}");
        if let Some(c) = &self.q.consumer {
            let p = self.arg(UsageArg::Text(c));
            f.push_str(&format!(" AND consumer = {p}"));
        }
        if let Some(a) = &self.q.api {
            let p = self.arg(UsageArg::Text(a));
            f.push_str(&format!(" AND api = {p}"));
        }
        if let Some(t) = &self.q.tenant {
            let p = self.arg(UsageArg::Text(t));
            f.push_str(&format!(" AND tenant = {p}"));
        }
        f
    }

    /// `(start_ms, consumer, tenant, api) OP key` for `>`, `>=`, `<=`, spelled out column by
    /// column: the text columns compare in byte order (`collate`).
    fn compare(&mut self, op: &str, key: &'q UsageKey) -> String {
        let c = self.collate;
        let strict = &op[..1];
        let s = self.arg(UsageArg::Int(key.start_ms));
        let columns = [
            ("consumer", self.arg(UsageArg::Text(&key.consumer))),
            ("tenant", self.arg(UsageArg::Text(&key.tenant))),
            ("api", self.arg(UsageArg::Text(&key.api))),
        ];
        // From the last column outwards: `api OP a`, then `tenant > t OR (tenant = t AND …)`.
        let mut inner = String::new();
        for (i, (col, p)) in columns.iter().enumerate().rev() {
            inner = if i == columns.len() - 1 {
                format!("{col}{c} {op} {p}")
            } else {
                format!("{col}{c} {strict} {p} OR ({col} = {p} AND ({inner}))")
            };
        }
        format!("(start_ms {strict} {s} OR (start_ms = {s} AND ({inner})))")
    }

    fn counters(&mut self, after: Option<&'q UsageKey>, limit: Option<usize>) -> String {
        // Rows after a key start in its bucket at the earliest.
        let from = after.map_or(self.q.from_ms, |k| k.start_ms.max(self.q.from_ms));
        let filter = self.filter(from, self.q.to_ms);
        let keyset = match after {
            Some(key) => self.compare(">", key),
            None => "1 = 1".into(),
        };
        let limit = match limit {
            Some(n) => format!(
                " LIMIT {}",
                self.arg(UsageArg::Int(i64::try_from(n).unwrap_or(i64::MAX)))
            ),
            None => String::new(),
        };
        let c = self.collate;
        // Integer division of BIGINTs truncates on both backends; times are positive.
        format!(
            "SELECT * FROM (SELECT (minute_ms / $1) * $1 AS start_ms, consumer, tenant, api, \
             CAST(SUM(requests) AS BIGINT) AS requests, \
             CAST(SUM(status_2xx) AS BIGINT) AS status_2xx, \
             CAST(SUM(status_4xx) AS BIGINT) AS status_4xx, \
             CAST(SUM(status_5xx) AS BIGINT) AS status_5xx, \
             CAST(SUM(throttled) AS BIGINT) AS throttled \
             FROM usage_minute WHERE {filter} GROUP BY 1, 2, 3, 4) g \
             WHERE {keyset} ORDER BY start_ms, consumer{c}, tenant{c}, api{c}{limit}"
        )
    }

    fn latency(&mut self, first: &'q UsageKey, last: &'q UsageKey) -> String {
        let to = last
            .start_ms
            .saturating_add(self.q.bucket_ms)
            .min(self.q.to_ms);
        let filter = self.filter(first.start_ms.max(self.q.from_ms), to);
        let low = self.compare(">=", first);
        let high = self.compare("<=", last);
        format!(
            "SELECT * FROM (SELECT (minute_ms / $1) * $1 AS start_ms, consumer, tenant, api, \
             bucket, CAST(SUM(n) AS BIGINT) AS n \
             FROM usage_latency WHERE {filter} GROUP BY 1, 2, 3, 4, 5) g \
             WHERE {low} AND {high}"
        )
    }

    fn bind(&self, sql: String) -> sqlx::query::Query<'q, Any, <Any as sqlx::Database>::Arguments> {
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for a in &self.args {
            query = match *a {
                UsageArg::Int(n) => query.bind(n),
                UsageArg::Text(t) => query.bind(t),
            };
        }
        query
    }
}

fn to_u64(n: i64) -> u64 {
    // Counters are only ever added to from u64 values converted with `to_i64`.
    u64::try_from(n).unwrap_or(0)
}

/// Replaces the password of `url` (if any), as written and percent-decoded, in `msg`, so
/// errors can be logged and shown.
fn scrub(msg: String, url: &str) -> String {
    let password = url
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, pw)| pw)
        .filter(|pw| !pw.is_empty());
    match password {
        Some(pw) => msg.replace(pw, "***").replace(&percent_decode(pw), "***"),
        None => msg,
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod scrub_tests {
    use super::*;

    #[test]
    fn scrubs_plain_and_encoded_passwords() {
        let url = "postgres://app:p%40ss%2Fw0rd@db.internal:5432/tollgate";
        let msg = "failed for p%40ss%2Fw0rd and p@ss/w0rd at db.internal".to_string();
        assert_eq!(scrub(msg, url), "failed for *** and *** at db.internal");
        assert_eq!(scrub("x".into(), "postgres://app@db/x"), "x");
        assert_eq!(scrub("x".into(), "sqlite://data/x.db"), "x");
    }
}

impl Store {
    /// Opens (and migrates) the database at `url`: `sqlite://PATH` (created if missing),
    /// `sqlite::memory:` (private to this `Store`, for tests) or `postgres://...`.
    ///
    /// Installs sqlx's default `Any` drivers; a process that installed its own set first
    /// cannot use this.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Self::open_inner(url).await.map_err(|e| match e {
            StoreError::Backend(msg) => StoreError::Backend(scrub(msg, url)),
            StoreError::Invalid(msg) => StoreError::Invalid(scrub(msg, url)),
            other => other,
        })
    }

    async fn open_inner(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url, memory, pool) =
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                let pool = AnyPoolOptions::new()
                    .max_connections(5)
                    .acquire_timeout(Duration::from_secs(3));
                (Backend::Postgres, url.to_owned(), false, pool)
            } else if let Some(rest) = url.strip_prefix("sqlite:") {
                if rest == ":memory:" || rest.contains("mode=memory") {
                    // Every connection to `:memory:` is a database of its own: keep exactly one
                    // connection, forever.
                    let pool = AnyPoolOptions::new()
                        .max_connections(1)
                        .min_connections(1)
                        .idle_timeout(None)
                        .max_lifetime(None);
                    (Backend::Sqlite, url.to_owned(), true, pool)
                } else {
                    // SQLite creates the file but not its folder: a fresh install's
                    // `sqlite://data/tollgate.db` should just work.
                    let path = rest.trim_start_matches("//");
                    let path = percent_decode(path.split('?').next().unwrap_or(path));
                    if let Some(dir) = std::path::Path::new(&path).parent()
                        && !dir.as_os_str().is_empty()
                    {
                        tokio::fs::create_dir_all(dir).await.map_err(|e| {
                            StoreError::Backend(format!("create {}: {e}", dir.display()))
                        })?;
                    }
                    // `mode=rwc`: create the file if missing. sqlx's SQLite defaults already give
                    // a 5 s busy timeout and foreign keys on.
                    let url = if rest.contains("mode=") {
                        url.to_owned()
                    } else if rest.contains('?') {
                        format!("{url}&mode=rwc")
                    } else {
                        format!("{url}?mode=rwc")
                    };
                    // SQLite has one writer at a time; a few readers are all it can use.
                    let pool = AnyPoolOptions::new()
                        .max_connections(4)
                        .acquire_timeout(Duration::from_secs(3));
                    (Backend::Sqlite, url, false, pool)
                }
            } else {
                return Err(StoreError::Invalid(
                    "database URL must start with sqlite: or postgres://".into(),
                ));
            };
        // The first connection is made outside the pool: a pool that cannot connect only
        // says "timed out" after acquire_timeout, this says why (refused, authentication,
        // unknown database, unwritable file) at once. For `:memory:` it is the pool's own.
        let pool = if memory {
            pool.connect(&url).await?
        } else {
            let conn = AnyConnection::connect(&url).await?;
            conn.close().await?;
            pool.connect_lazy(&url)?
        };
        if backend == Backend::Sqlite {
            // WAL lets readers (gateway polls, load_all) run beside the writer. The mode is
            // persistent in the file; on `:memory:` SQLite answers "memory" and that is fine.
            sqlx::query("PRAGMA journal_mode = WAL")
                .fetch_optional(&pool)
                .await?;
        }
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool: waits for checked-out connections to come back. Tests use it to
    /// reopen a SQLite file.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The current change version: bumped by every management mutation.
    pub async fn version(&self) -> Result<i64, StoreError> {
        let v: i64 = sqlx::query_scalar("SELECT v FROM meta WHERE k = 'version'")
            .fetch_one(&self.pool)
            .await?;
        Ok(v)
    }

    /// Serialises management writes across every node sharing this store, so a write's checks
    /// (does the path clash, is the plan in use, does `If-Match` still hold) and the write
    /// itself are one step: a second writer waits until the first has committed, then sees
    /// its change. On PostgreSQL a transaction-scoped advisory lock, held until the
    /// [`WriteLock`] is dropped. On SQLite nothing beyond the caller's own lock: a SQLite store
    /// is one node's (processes sharing a file still see each other's changes, but their
    /// checks are not serialised; clusters use PostgreSQL). [`StoreError::Backend`] if it is
    /// not granted within [`LOCK_WAIT`].
    pub async fn lock_writes(&self) -> Result<WriteLock, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(WriteLock { tx: None });
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query(AssertSqlSafe(format!(
            "SET LOCAL lock_timeout = '{}ms'",
            LOCK_WAIT.as_millis()
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(WRITE_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        Ok(WriteLock { tx: Some(tx) })
    }

    async fn write(&self) -> Result<Write, StoreError> {
        let mut tx = self.pool.begin().await?;
        let version: i64 =
            sqlx::query_scalar("UPDATE meta SET v = v + 1 WHERE k = 'version' RETURNING v")
                .fetch_one(&mut *tx)
                .await?;
        Ok(Write { tx, version })
    }

    // ---------------------------------------------------------------- tenants

    /// Creates a tenant; [`StoreError::Conflict`] if the id exists.
    pub async fn create_tenant(&self, t: &Tenant, actor: &str) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        let inserted = sqlx::query(
            "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&t.id)
        .bind(&t.name)
        .bind(t.created_at)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::Conflict);
        }
        let detail = serde_json::json!({ "name": t.name });
        w.commit(actor, "tenant.create", &t.id, detail).await
    }

    pub async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        let row = sqlx::query("SELECT id, name, created_at FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(tenant_from).transpose()
    }

    pub async fn list_tenants(&self, page: Page<'_>) -> Result<Vec<Tenant>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, created_at FROM tenants WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(page.after.unwrap_or(""))
        .bind(page.limit_i64())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(tenant_from).collect()
    }

    /// Deletes a tenant with its APIs and admin tokens; `false` if there was none.
    pub async fn delete_tenant(&self, id: &str, actor: &str) -> Result<bool, StoreError> {
        let mut w = self.write().await?;
        // Explicit, rather than relying on ON DELETE CASCADE alone, so the audit detail can
        // say what went and SQLite connections without foreign keys enforced behave the same.
        let apis = sqlx::query("DELETE FROM apis WHERE tenant = $1")
            .bind(id)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        let tokens = sqlx::query("DELETE FROM tenant_tokens WHERE tenant = $1")
            .bind(id)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        let deleted = sqlx::query("DELETE FROM tenants WHERE id = $1")
            .bind(id)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            // Rolls back the version bump: nothing changed.
            return Ok(false);
        }
        let detail = serde_json::json!({ "apis": apis, "tokens": tokens });
        w.commit(actor, "tenant.delete", id, detail).await?;
        Ok(true)
    }

    // ---------------------------------------------------------------- tenant tokens

    /// Stores a tenant admin token by its hash; [`StoreError::NotFound`] if the tenant does
    /// not exist, [`StoreError::Conflict`] if the id or hash is taken.
    pub async fn create_tenant_token(
        &self,
        tenant: &str,
        token_id: &str,
        token_hash: &str,
        actor: &str,
    ) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        w.require("SELECT id FROM tenants WHERE id = $1", tenant)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO tenant_tokens (id, tenant, token_hash, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(token_id)
        .bind(tenant)
        .bind(token_hash)
        .bind(now_ms())
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::Conflict);
        }
        // Never the hash: the audit log is readable by more people than the token table.
        let detail = serde_json::json!({ "token_id": token_id });
        w.commit(actor, "tenant_token.create", tenant, detail).await
    }

    /// The token with this hash, if any.
    pub async fn tenant_for_token(&self, token_hash: &str) -> Result<Option<TokenRow>, StoreError> {
        let row =
            sqlx::query("SELECT id, tenant, created_at FROM tenant_tokens WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| {
            Ok(TokenRow {
                id: r.try_get("id")?,
                tenant: r.try_get("tenant")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    // ---------------------------------------------------------------- APIs

    /// Creates or replaces an API document; `true` when created. [`StoreError::NotFound`] if
    /// the tenant does not exist.
    pub async fn put_api(&self, a: &ApiDoc, actor: &str) -> Result<bool, StoreError> {
        let mut w = self.write().await?;
        w.require("SELECT id FROM tenants WHERE id = $1", &a.tenant)
            .await?;
        let exists = sqlx::query("SELECT id FROM apis WHERE tenant = $1 AND id = $2")
            .bind(&a.tenant)
            .bind(&a.id)
            .fetch_optional(&mut *w.tx)
            .await?
            .is_some();
        if exists {
            sqlx::query(
                "UPDATE apis SET document = $3, content_type = $4, updated_at = $5 \
                 WHERE tenant = $1 AND id = $2",
            )
        } else {
            sqlx::query(
                "INSERT INTO apis (tenant, id, document, content_type, updated_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
        }
        .bind(&a.tenant)
        .bind(&a.id)
        .bind(&a.document)
        .bind(&a.content_type)
        .bind(a.updated_at)
        .execute(&mut *w.tx)
        .await?;
        let action = if exists { "api.replace" } else { "api.create" };
        let detail =
            serde_json::json!({ "content_type": a.content_type, "bytes": a.document.len() });
        w.commit(actor, action, &a.cursor(), detail).await?;
        Ok(!exists)
    }

    pub async fn get_api(&self, tenant: &str, id: &str) -> Result<Option<ApiDoc>, StoreError> {
        let row = sqlx::query(
            "SELECT tenant, id, document, content_type, updated_at FROM apis \
             WHERE tenant = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(api_from).transpose()
    }

    /// APIs ordered by (tenant, id), optionally of one tenant. The cursor is
    /// [`ApiDoc::cursor`] (`"tenant/id"`); with a tenant filter a bare id works too.
    pub async fn list_apis(
        &self,
        tenant: Option<&str>,
        page: Page<'_>,
    ) -> Result<Vec<ApiDoc>, StoreError> {
        let (after_tenant, after_id) = match (page.after, tenant) {
            (None, _) => ("", ""),
            (Some(after), Some(t)) if !after.contains('/') => (t, after),
            (Some(after), _) => after.split_once('/').unwrap_or((after, "")),
        };
        let cols = "SELECT tenant, id, document, content_type, updated_at FROM apis";
        let keyset = "(tenant > $1 OR (tenant = $1 AND id > $2))";
        let rows = match tenant {
            Some(t) => {
                sqlx::query(AssertSqlSafe(format!(
                    "{cols} WHERE {keyset} AND tenant = $4 ORDER BY tenant, id LIMIT $3"
                )))
                .bind(after_tenant)
                .bind(after_id)
                .bind(page.limit_i64())
                .bind(t)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(AssertSqlSafe(format!(
                    "{cols} WHERE {keyset} ORDER BY tenant, id LIMIT $3"
                )))
                .bind(after_tenant)
                .bind(after_id)
                .bind(page.limit_i64())
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(api_from).collect()
    }

    pub async fn delete_api(
        &self,
        tenant: &str,
        id: &str,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let mut w = self.write().await?;
        let deleted = sqlx::query("DELETE FROM apis WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Ok(false);
        }
        w.commit(
            actor,
            "api.delete",
            &format!("{tenant}/{id}"),
            serde_json::Value::Null,
        )
        .await?;
        Ok(true)
    }

    // ---------------------------------------------------------------- plans

    /// Creates or replaces a plan; `true` when created.
    pub async fn put_plan(
        &self,
        id: &str,
        body: &serde_json::Value,
        actor: &str,
    ) -> Result<bool, StoreError> {
        self.put_entity(Kind::Plan, id, body, actor).await
    }

    /// Creates a plan; [`StoreError::Conflict`] if the id exists.
    pub async fn create_plan(
        &self,
        id: &str,
        body: &serde_json::Value,
        actor: &str,
    ) -> Result<(), StoreError> {
        self.create_entity(Kind::Plan, id, body, actor).await
    }

    pub async fn get_plan(&self, id: &str) -> Result<Option<Entity>, StoreError> {
        self.get_entity(Kind::Plan, id).await
    }

    pub async fn list_plans(&self, page: Page<'_>) -> Result<Vec<Entity>, StoreError> {
        self.list_entities(Kind::Plan, page).await
    }

    pub async fn delete_plan(&self, id: &str, actor: &str) -> Result<bool, StoreError> {
        self.delete_entity(Kind::Plan, id, actor).await
    }

    // ---------------------------------------------------------------- consumers

    /// Creates a consumer; [`StoreError::Conflict`] if the id exists.
    pub async fn create_consumer(
        &self,
        id: &str,
        body: &serde_json::Value,
        actor: &str,
    ) -> Result<(), StoreError> {
        self.create_entity(Kind::Consumer, id, body, actor).await
    }

    /// Replaces an existing consumer's body; `false` if there is none.
    pub async fn update_consumer(
        &self,
        id: &str,
        body: &serde_json::Value,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let mut w = self.write().await?;
        let updated = sqlx::query("UPDATE consumers SET body = $2, updated_at = $3 WHERE id = $1")
            .bind(id)
            .bind(serde_json::to_string(body)?)
            .bind(now_ms())
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if updated == 0 {
            return Ok(false);
        }
        w.commit(actor, "consumer.update", id, body.clone()).await?;
        Ok(true)
    }

    pub async fn get_consumer(&self, id: &str) -> Result<Option<Entity>, StoreError> {
        self.get_entity(Kind::Consumer, id).await
    }

    pub async fn list_consumers(&self, page: Page<'_>) -> Result<Vec<Entity>, StoreError> {
        self.list_entities(Kind::Consumer, page).await
    }

    /// Deletes a consumer and all its keys; `false` if there was none.
    pub async fn delete_consumer(&self, id: &str, actor: &str) -> Result<bool, StoreError> {
        self.delete_entity(Kind::Consumer, id, actor).await
    }

    async fn put_entity(
        &self,
        kind: Kind,
        id: &str,
        body: &serde_json::Value,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let table = kind.table();
        let mut w = self.write().await?;
        let exists = sqlx::query(AssertSqlSafe(format!(
            "SELECT id FROM {table} WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&mut *w.tx)
        .await?
        .is_some();
        let sql = if exists {
            format!("UPDATE {table} SET body = $2, updated_at = $3 WHERE id = $1")
        } else {
            format!("INSERT INTO {table} (id, body, updated_at) VALUES ($1, $2, $3)")
        };
        sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .bind(serde_json::to_string(body)?)
            .bind(now_ms())
            .execute(&mut *w.tx)
            .await?;
        let action = kind.action(if exists { "replace" } else { "create" });
        w.commit(actor, &action, id, body.clone()).await?;
        Ok(!exists)
    }

    async fn create_entity(
        &self,
        kind: Kind,
        id: &str,
        body: &serde_json::Value,
        actor: &str,
    ) -> Result<(), StoreError> {
        let table = kind.table();
        let mut w = self.write().await?;
        let inserted = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} (id, body, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING"
        )))
        .bind(id)
        .bind(serde_json::to_string(body)?)
        .bind(now_ms())
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::Conflict);
        }
        w.commit(actor, &kind.action("create"), id, body.clone())
            .await
    }

    async fn get_entity(&self, kind: Kind, id: &str) -> Result<Option<Entity>, StoreError> {
        let table = kind.table();
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, body, updated_at FROM {table} WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(entity_from).transpose()
    }

    async fn list_entities(&self, kind: Kind, page: Page<'_>) -> Result<Vec<Entity>, StoreError> {
        let table = kind.table();
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, body, updated_at FROM {table} WHERE id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(page.after.unwrap_or(""))
        .bind(page.limit_i64())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entity_from).collect()
    }

    async fn delete_entity(&self, kind: Kind, id: &str, actor: &str) -> Result<bool, StoreError> {
        let table = kind.table();
        let mut w = self.write().await?;
        let mut detail = serde_json::Value::Null;
        if kind == Kind::Consumer {
            let keys = sqlx::query("DELETE FROM api_keys WHERE consumer = $1")
                .bind(id)
                .execute(&mut *w.tx)
                .await?
                .rows_affected();
            detail = serde_json::json!({ "keys": keys });
        }
        let deleted = sqlx::query(AssertSqlSafe(format!("DELETE FROM {table} WHERE id = $1")))
            .bind(id)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Ok(false);
        }
        w.commit(actor, &kind.action("delete"), id, detail).await?;
        Ok(true)
    }

    // ---------------------------------------------------------------- API keys

    /// Stores a key; [`StoreError::NotFound`] if the consumer does not exist,
    /// [`StoreError::Conflict`] if the id or hash is taken.
    pub async fn create_key(&self, k: &KeyRow, actor: &str) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        w.require("SELECT id FROM consumers WHERE id = $1", &k.consumer)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO api_keys (id, consumer, hash, prefix, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&k.id)
        .bind(&k.consumer)
        .bind(&k.hash)
        .bind(&k.prefix)
        .bind(k.created_at)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::Conflict);
        }
        let detail = serde_json::json!({ "key_id": k.id, "prefix": k.prefix });
        w.commit(actor, "key.create", &k.consumer, detail).await
    }

    /// Revokes a consumer's active key (it is kept, marked revoked, and no longer returned by
    /// [`Store::keys`] or [`Store::load_all`]); `false` if there is no such active key.
    pub async fn revoke_key(
        &self,
        consumer: &str,
        key_id: &str,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let mut w = self.write().await?;
        let revoked = sqlx::query(
            "UPDATE api_keys SET revoked_at = $3 \
             WHERE consumer = $1 AND id = $2 AND revoked_at IS NULL",
        )
        .bind(consumer)
        .bind(key_id)
        .bind(now_ms())
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if revoked == 0 {
            return Ok(false);
        }
        let detail = serde_json::json!({ "key_id": key_id });
        w.commit(actor, "key.revoke", consumer, detail).await?;
        Ok(true)
    }

    /// Active keys, of one consumer or all, ordered by id.
    pub async fn keys(&self, consumer: Option<&str>) -> Result<Vec<KeyRow>, StoreError> {
        let cols = "SELECT id, consumer, hash, prefix, created_at FROM api_keys \
                    WHERE revoked_at IS NULL";
        let rows = match consumer {
            Some(c) => {
                sqlx::query(AssertSqlSafe(format!(
                    "{cols} AND consumer = $1 ORDER BY id"
                )))
                .bind(c)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(AssertSqlSafe(format!("{cols} ORDER BY id")))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(key_from).collect()
    }

    // ---------------------------------------------------------------- snapshot

    /// Everything the gateway compiles, read in one transaction (a snapshot on both
    /// backends), with the version it corresponds to.
    pub async fn load_all(&self) -> Result<Dynamic, StoreError> {
        let mut tx = match self.backend {
            // PostgreSQL's default READ COMMITTED gives each statement its own snapshot.
            Backend::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
            // A SQLite (WAL) read transaction sees one snapshot from its first read on.
            Backend::Sqlite => self.pool.begin().await?,
        };
        let version: i64 = sqlx::query_scalar("SELECT v FROM meta WHERE k = 'version'")
            .fetch_one(&mut *tx)
            .await?;
        let tenants = sqlx::query("SELECT id, name, created_at FROM tenants ORDER BY id")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(tenant_from)
            .collect::<Result<_, _>>()?;
        let apis = sqlx::query(
            "SELECT tenant, id, document, content_type, updated_at FROM apis ORDER BY tenant, id",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(api_from)
        .collect::<Result<_, _>>()?;
        let plans = sqlx::query("SELECT id, body, updated_at FROM plans ORDER BY id")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(entity_from)
            .collect::<Result<_, _>>()?;
        let consumers = sqlx::query("SELECT id, body, updated_at FROM consumers ORDER BY id")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(entity_from)
            .collect::<Result<_, _>>()?;
        let keys = sqlx::query(
            "SELECT id, consumer, hash, prefix, created_at FROM api_keys \
             WHERE revoked_at IS NULL ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(key_from)
        .collect::<Result<_, _>>()?;
        tx.commit().await?;
        Ok(Dynamic {
            version,
            tenants,
            apis,
            plans,
            consumers,
            keys,
        })
    }

    // ---------------------------------------------------------------- usage

    /// Adds the deltas to the per-minute counters in one transaction. No version bump and no
    /// audit: this is traffic accounting, not configuration.
    pub async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        // Merge duplicates and apply in key order: concurrent writers then lock rows in the
        // same order and cannot deadlock (PostgreSQL), and each row is written once.
        type Key<'a> = (i64, &'a str, &'a str, &'a str);
        let mut merged: BTreeMap<Key<'_>, ([i64; 5], Vec<i64>)> = BTreeMap::new();
        for d in deltas {
            if d.latency_buckets.len() > LATENCY_BUCKETS {
                return Err(StoreError::Invalid(format!(
                    "{} latency buckets, at most {LATENCY_BUCKETS}",
                    d.latency_buckets.len()
                )));
            }
            let entry = merged
                .entry((
                    d.minute_ms,
                    d.tenant.as_str(),
                    d.consumer.as_str(),
                    d.api.as_str(),
                ))
                .or_insert_with(|| ([0; 5], vec![0; LATENCY_BUCKETS]));
            let counts = [
                to_i64(d.requests, "requests")?,
                to_i64(d.status_2xx, "status_2xx")?,
                to_i64(d.status_4xx, "status_4xx")?,
                to_i64(d.status_5xx, "status_5xx")?,
                to_i64(d.throttled, "throttled")?,
            ];
            for (sum, n) in entry.0.iter_mut().zip(counts) {
                *sum = sum.saturating_add(n);
            }
            for (sum, &n) in entry.1.iter_mut().zip(&d.latency_buckets) {
                *sum = sum.saturating_add(to_i64(n, "latency bucket")?);
            }
        }
        if merged.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for ((minute, tenant, consumer, api), (c, buckets)) in &merged {
            sqlx::query(
                "INSERT INTO usage_minute \
                 (minute_ms, consumer, api, requests, status_2xx, status_4xx, status_5xx, \
                 throttled, tenant) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (minute_ms, tenant, consumer, api) DO UPDATE SET \
                 requests = usage_minute.requests + excluded.requests, \
                 status_2xx = usage_minute.status_2xx + excluded.status_2xx, \
                 status_4xx = usage_minute.status_4xx + excluded.status_4xx, \
                 status_5xx = usage_minute.status_5xx + excluded.status_5xx, \
                 throttled = usage_minute.throttled + excluded.throttled",
            )
            .bind(*minute)
            .bind(*consumer)
            .bind(*api)
            .bind(c[0])
            .bind(c[1])
            .bind(c[2])
            .bind(c[3])
            .bind(c[4])
            .bind(*tenant)
            .execute(&mut *tx)
            .await?;
            for (bucket, &n) in buckets.iter().enumerate() {
                if n == 0 {
                    continue;
                }
                sqlx::query(
                    "INSERT INTO usage_latency (minute_ms, consumer, api, bucket, n, tenant) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (minute_ms, tenant, consumer, api, bucket) DO UPDATE SET \
                     n = usage_latency.n + excluded.n",
                )
                .bind(*minute)
                .bind(*consumer)
                .bind(*api)
                // At most LATENCY_BUCKETS (22), so the cast cannot truncate.
                .bind(bucket as i32)
                .bind(n)
                .bind(*tenant)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Usage summed per `q.bucket_ms` window, consumer and API, ordered by [`UsageKey`]; at
    /// most `q.limit` rows after `q.after`. Grouping and paging happen in SQL, so a page costs
    /// the gateway a page's memory however many rows the window holds.
    pub async fn query_usage(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        if q.bucket_ms <= 0 {
            return Err(StoreError::Invalid("bucket_ms must be positive".into()));
        }
        if q.limit == Some(0) {
            return Ok(Vec::new());
        }
        // Byte order on both backends, as in the cursor: PostgreSQL would otherwise compare
        // by the database's collation, which under a locale like en_US puts `a_b` before
        // `a-c` and `ab` before `aB`.
        let collate = match self.backend {
            Backend::Postgres => " COLLATE \"C\"",
            Backend::Sqlite => "",
        };
        let mut tx = match self.backend {
            Backend::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
            Backend::Sqlite => self.pool.begin().await?,
        };
        // Two statements, one snapshot: otherwise a concurrent add_usage could land between
        // them and the histogram would not match the counters.
        let mut sql = UsageSql::new(q, collate);
        let counters = sql.counters(q.after.as_ref(), q.limit);
        let rows = sql.bind(counters).fetch_all(&mut *tx).await?;
        let mut out: Vec<UsageRow> = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(UsageRow {
                start_ms: r.try_get("start_ms")?,
                consumer: r.try_get("consumer")?,
                tenant: r.try_get("tenant")?,
                api: r.try_get("api")?,
                requests: to_u64(r.try_get("requests")?),
                status_2xx: to_u64(r.try_get("status_2xx")?),
                status_4xx: to_u64(r.try_get("status_4xx")?),
                status_5xx: to_u64(r.try_get("status_5xx")?),
                throttled: to_u64(r.try_get("throttled")?),
                latency_buckets: vec![0; LATENCY_BUCKETS],
            });
        }
        let (Some(first), Some(last)) = (
            out.first().map(UsageRow::key),
            out.last().map(UsageRow::key),
        ) else {
            tx.commit().await?;
            return Ok(out);
        };
        // The histograms of exactly this page's rows: the ones from its first key to its last.
        let mut sql = UsageSql::new(q, collate);
        let latency = sql.latency(&first, &last);
        let hist = sql.bind(latency).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        for h in &hist {
            let key = UsageKey {
                start_ms: h.try_get("start_ms")?,
                consumer: h.try_get("consumer")?,
                tenant: h.try_get("tenant")?,
                api: h.try_get("api")?,
            };
            let bucket: i32 = h.try_get("bucket")?;
            let n: i64 = h.try_get("n")?;
            if let (Ok(i), Ok(b)) = (
                out.binary_search_by(|r| r.key().cmp(&key)),
                usize::try_from(bucket),
            ) && let Some(slot) = out[i].latency_buckets.get_mut(b)
            {
                *slot = to_u64(n);
            }
        }
        Ok(out)
    }

    /// Requests per consumer over minute rows starting at or after `since_ms`, highest
    /// first (ties by consumer id).
    pub async fn top_consumers(&self, since_ms: i64) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT consumer, CAST(SUM(requests) AS BIGINT) AS requests FROM usage_minute \
             WHERE minute_ms >= $1 GROUP BY consumer ORDER BY 2 DESC, 1",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("consumer")?, to_u64(r.try_get("requests")?))))
            .collect()
    }

    // ---------------------------------------------------------------- audit

    /// Audit rows in commit order (oldest first); the cursor is [`AuditRow::id`].
    pub async fn audit(&self, page: Page<'_>) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, version, at_ms, actor, action, target, detail FROM audit \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(page.after.unwrap_or(""))
        .bind(page.limit_i64())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let detail: String = r.try_get("detail")?;
                Ok(AuditRow {
                    id: r.try_get("id")?,
                    version: r.try_get("version")?,
                    at_ms: r.try_get("at_ms")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    detail: serde_json::from_str(&detail)?,
                })
            })
            .collect()
    }
}

impl Write {
    /// [`StoreError::NotFound`] unless `sql` (selecting by `$1 = id`) finds a row.
    async fn require(&mut self, sql: &'static str, id: &str) -> Result<(), StoreError> {
        let found = sqlx::query(sql)
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await?
            .is_some();
        if found {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }

    /// Appends the audit row and commits. Dropping a `Write` instead rolls back, version
    /// bump included.
    async fn commit(
        mut self,
        actor: &str,
        action: &str,
        target: &str,
        mut detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        redact_hashes(&mut detail);
        sqlx::query(
            "INSERT INTO audit (id, version, at_ms, actor, action, target, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(format!("{:020}", self.version))
        .bind(self.version)
        .bind(now_ms())
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(detail.to_string())
        .execute(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        Ok(())
    }
}

/// Hashed credentials (`client_secret_hash`, ...) in an entity's body, as the audit log shows
/// them: the log is readable by more people than the tables, and a keyed hash is still what a
/// guess is checked against.
fn redact_hashes(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k.ends_with("_hash") && !x.is_null() {
                    *x = serde_json::Value::String("(redacted)".into());
                } else {
                    redact_hashes(x);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact_hashes),
        _ => {}
    }
}

/// The two tables with the same shape: id, JSON body, updated_at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plan,
    Consumer,
}

impl Kind {
    fn table(self) -> &'static str {
        match self {
            Kind::Plan => "plans",
            Kind::Consumer => "consumers",
        }
    }

    fn action(self, verb: &str) -> String {
        match self {
            Kind::Plan => format!("plan.{verb}"),
            Kind::Consumer => format!("consumer.{verb}"),
        }
    }
}

fn tenant_from(r: &AnyRow) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        created_at: r.try_get("created_at")?,
    })
}

fn api_from(r: &AnyRow) -> Result<ApiDoc, StoreError> {
    Ok(ApiDoc {
        tenant: r.try_get("tenant")?,
        id: r.try_get("id")?,
        document: r.try_get("document")?,
        content_type: r.try_get("content_type")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn entity_from(r: &AnyRow) -> Result<Entity, StoreError> {
    let body: String = r.try_get("body")?;
    Ok(Entity {
        id: r.try_get("id")?,
        body: serde_json::from_str(&body)?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn key_from(r: &AnyRow) -> Result<KeyRow, StoreError> {
    Ok(KeyRow {
        id: r.try_get("id")?,
        consumer: r.try_get("consumer")?,
        hash: r.try_get("hash")?,
        prefix: r.try_get("prefix")?,
        created_at: r.try_get("created_at")?,
    })
}
