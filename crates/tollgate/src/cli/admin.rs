//! `tollgate admin <group> <verb>`: one command per admin API route, with tables by default and
//! the API's JSON under `--json`.

use super::AdminArgs;
use super::client::{Client, seg};
use super::table::{Table, cell, fields};
use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Subcommand, ValueEnum};
use http::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Tenants and their admin tokens.
    #[command(subcommand)]
    Tenants(Tenants),
    /// APIs registered as OpenAPI documents.
    #[command(subcommand)]
    Apis(Apis),
    /// Usage plans: rate, burst, quota.
    #[command(subcommand)]
    Plans(Plans),
    /// Consumers, their plans and temporary rate overrides.
    #[command(subcommand)]
    Consumers(Consumers),
    /// API keys of consumers.
    #[command(subcommand)]
    Keys(Keys),
    /// Request counts per consumer, API and period.
    Usage {
        #[arg(long)]
        consumer: Option<String>,
        /// An API id.
        #[arg(long)]
        api: Option<String>,
        /// Start: RFC 3339 or unix seconds (default: 24 h before --to).
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive: RFC 3339 or unix seconds (default: now).
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum)]
        granularity: Option<Granularity>,
    },
    /// Consumers by request rate over the last window, highest first.
    Top {
        /// How far back: 60s, 5m, ... (at most 1h).
        #[arg(long, default_value = "60s")]
        window: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Tenants {
    /// Every tenant, config-file ones included.
    List,
    /// One tenant.
    Get { id: String },
    /// A new tenant.
    Create {
        id: String,
        /// Display name (default: the id).
        #[arg(long)]
        name: Option<String>,
    },
    /// A tenant with its registered APIs and admin tokens.
    Delete { id: String },
    /// Issue a tenant admin token: printed once, stored only as a digest.
    Token { id: String },
}

#[derive(Subcommand, Debug)]
pub enum Apis {
    /// The tenant's APIs.
    List { tenant: String },
    /// Print the stored OpenAPI document as registered.
    Get { tenant: String, api: String },
    /// Register or replace an API from an OpenAPI document (.json, or .yaml/.yml).
    Apply {
        tenant: String,
        api: String,
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Unregister an API: its routes stop within 2 s.
    Delete { tenant: String, api: String },
}

#[derive(Subcommand, Debug)]
pub enum Plans {
    /// Every plan, config-file ones included.
    List,
    /// One plan.
    Get { id: String },
    /// A new plan.
    Create {
        id: String,
        /// Requests per second, sustained.
        #[arg(long)]
        rate: f64,
        /// Requests at once.
        #[arg(long)]
        burst: u32,
        /// Requests per --period.
        #[arg(long, requires = "period")]
        quota: Option<u64>,
        #[arg(long, value_enum, requires = "quota")]
        period: Option<Period>,
    },
    /// A plan no consumer is on.
    Delete { id: String },
}

#[derive(Subcommand, Debug)]
pub enum Consumers {
    /// Every consumer, config-file ones included.
    List,
    /// One consumer with its keys (ids and prefixes).
    Get { id: String },
    /// A new consumer.
    Create {
        id: String,
        #[arg(long)]
        plan: Option<String>,
        /// A scope the consumer holds; repeat for more.
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// Move a consumer to another plan.
    SetPlan { id: String, plan: String },
    /// A temporary rate limit in place of the plan's, until --expires.
    Override {
        id: String,
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        burst: u32,
        /// RFC 3339 instant, like 2027-01-01T00:00:00Z.
        #[arg(long)]
        expires: String,
    },
    /// End a temporary override: the plan applies again.
    ClearOverride { id: String },
    /// A consumer and its keys.
    Delete { id: String },
}

#[derive(Subcommand, Debug)]
pub enum Keys {
    /// Issue an API key: printed once, the gateway keeps only a keyed hash.
    Issue { consumer: String },
    /// Revoke a key: it stops working within 2 s.
    Revoke { consumer: String, key_id: String },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Period {
    Hour,
    Day,
    Week,
    Month,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

// The names the admin API expects, which are also the names clap accepts.
impl Period {
    fn as_str(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }
}

impl Granularity {
    fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }
}

/// How a command's answer is shown.
enum Shown {
    /// Aligned columns of the listed items.
    List(Vec<Value>, fn(&[Value]) -> Table),
    /// One entity as `key: value` lines.
    One(Value),
    /// A sentence (deletes), or `{"deleted": ...}` under `--json`.
    Done(String, Value),
    /// Text to print as is (a stored document).
    Raw(String),
}

pub async fn run(args: AdminArgs) -> Result<()> {
    let c = args.conn.client()?;
    let shown = match args.command {
        AdminCommand::Tenants(t) => tenants(&c, t).await?,
        AdminCommand::Apis(a) => apis(&c, a).await?,
        AdminCommand::Plans(p) => plans(&c, p).await?,
        AdminCommand::Consumers(cmd) => consumers(&c, cmd).await?,
        AdminCommand::Keys(k) => keys(&c, k).await?,
        AdminCommand::Usage {
            consumer,
            api,
            from,
            to,
            granularity,
        } => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in [
                ("consumer", consumer),
                ("api", api),
                ("from", from),
                ("to", to),
            ] {
                if let Some(v) = v {
                    q.append_pair(k, &v);
                }
            }
            if let Some(g) = granularity {
                q.append_pair("granularity", g.as_str());
            }
            Shown::List(
                c.list_all(&format!("/admin/usage?{}", q.finish())).await?,
                usage_table,
            )
        }
        AdminCommand::Top { window } => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("window", &window);
            let v = c
                .get(&format!("/admin/top-consumers?{}", q.finish()))
                .await?;
            if args.json {
                // The window is part of the answer; keep it.
                println!("{}", pretty(&v));
                return Ok(());
            }
            let items = v.get("items").and_then(Value::as_array).cloned();
            Shown::List(items.unwrap_or_default(), top_table)
        }
    };
    print!("{}", render(shown, args.json));
    Ok(())
}

fn render(shown: Shown, as_json: bool) -> String {
    match (shown, as_json) {
        (Shown::List(items, _), true) => format!("{}\n", pretty(&json!({ "items": items }))),
        (Shown::List(items, table), false) => table(&items).render(),
        (Shown::One(v), true) | (Shown::Done(_, v), true) => format!("{}\n", pretty(&v)),
        (Shown::One(v), false) => fields(&v),
        (Shown::Done(text, _), false) => format!("{text}\n"),
        (Shown::Raw(text), _) => {
            if text.ends_with('\n') {
                text
            } else {
                format!("{text}\n")
            }
        }
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

async fn delete(c: &Client, path: &str, what: String) -> Result<Shown> {
    c.send(Method::DELETE, path, None).await?;
    Ok(Shown::Done(
        format!("deleted {what}"),
        json!({ "deleted": what }),
    ))
}

async fn tenants(c: &Client, cmd: Tenants) -> Result<Shown> {
    Ok(match cmd {
        Tenants::List => Shown::List(c.list_all("/admin/tenants").await?, |items| {
            let mut t = Table::new(&["ID", "NAME", "READ_ONLY", "CREATED"]);
            for i in items {
                t.row(vec![
                    cell(&i["id"]),
                    cell(&i["name"]),
                    cell(&i["read_only"]),
                    cell(&i["created_at"]),
                ]);
            }
            t
        }),
        Tenants::Get { id } => Shown::One(c.get(&format!("/admin/tenants/{}", seg(&id))).await?),
        Tenants::Create { id, name } => {
            let mut body = json!({ "id": id });
            if let Some(n) = name {
                body["name"] = Value::String(n);
            }
            Shown::One(c.json(Method::POST, "/admin/tenants", Some(&body)).await?)
        }
        Tenants::Delete { id } => {
            delete(
                c,
                &format!("/admin/tenants/{}", seg(&id)),
                format!("tenant {id}"),
            )
            .await?
        }
        Tenants::Token { id } => {
            let v = c
                .json(
                    Method::POST,
                    &format!("/admin/tenants/{}/tokens", seg(&id)),
                    Some(&json!({})),
                )
                .await?;
            eprintln!("note: the token is shown only now; store it safely");
            Shown::One(v)
        }
    })
}

/// The body and content type of an OpenAPI document file: YAML by extension, else JSON.
pub fn document(file: &Path) -> Result<(&'static str, Bytes)> {
    let body = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let yaml = matches!(
        file.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let ct = if yaml {
        "application/yaml"
    } else {
        "application/json"
    };
    Ok((ct, Bytes::from(body)))
}

fn apis_table(items: &[Value]) -> Table {
    let mut t = Table::new(&["ID", "UPSTREAM", "ROUTES", "READ_ONLY", "UPDATED"]);
    for i in items {
        let routes = i["routes"].as_array().map_or(0, Vec::len);
        t.row(vec![
            cell(&i["id"]),
            cell(&i["upstream"]),
            routes.to_string(),
            cell(&i["read_only"]),
            cell(&i["updated_at"]),
        ]);
    }
    t
}

async fn apis(c: &Client, cmd: Apis) -> Result<Shown> {
    Ok(match cmd {
        Apis::List { tenant } => Shown::List(
            c.list_all(&format!("/admin/tenants/{}/apis", seg(&tenant)))
                .await?,
            apis_table,
        ),
        Apis::Get { tenant, api } => {
            let r = c
                .send(
                    Method::GET,
                    &format!("/admin/tenants/{}/apis/{}", seg(&tenant), seg(&api)),
                    None,
                )
                .await?;
            let text = String::from_utf8_lossy(&r.body).into_owned();
            // JSON documents come back compact; indent them for reading. YAML stays as stored.
            match serde_json::from_str::<Value>(&text) {
                Ok(v) if !r.content_type.contains("yaml") => Shown::Raw(pretty(&v)),
                _ => Shown::Raw(text),
            }
        }
        Apis::Apply { tenant, api, file } => {
            let body = document(&file)?;
            let r = c
                .send(
                    Method::PUT,
                    &format!("/admin/tenants/{}/apis/{}", seg(&tenant), seg(&api)),
                    Some(body),
                )
                .await?;
            let created = r.status == http::StatusCode::CREATED;
            eprintln!(
                "{} api {tenant}/{api}",
                if created { "registered" } else { "replaced" }
            );
            Shown::One(r.json()?)
        }
        Apis::Delete { tenant, api } => {
            delete(
                c,
                &format!("/admin/tenants/{}/apis/{}", seg(&tenant), seg(&api)),
                format!("api {tenant}/{api}"),
            )
            .await?
        }
    })
}

/// `1000/day`, or `-`.
fn quota_cell(q: &Value) -> String {
    match (q.get("limit"), q.get("period").and_then(Value::as_str)) {
        (Some(l), Some(p)) => format!("{l}/{p}"),
        _ => "-".into(),
    }
}

async fn plans(c: &Client, cmd: Plans) -> Result<Shown> {
    Ok(match cmd {
        Plans::List => Shown::List(c.list_all("/admin/plans").await?, |items| {
            let mut t = Table::new(&["ID", "RATE", "BURST", "QUOTA", "READ_ONLY"]);
            for i in items {
                t.row(vec![
                    cell(&i["id"]),
                    cell(&i["rate"]),
                    cell(&i["burst"]),
                    quota_cell(&i["quota"]),
                    cell(&i["read_only"]),
                ]);
            }
            t
        }),
        Plans::Get { id } => Shown::One(c.get(&format!("/admin/plans/{}", seg(&id))).await?),
        Plans::Create {
            id,
            rate,
            burst,
            quota,
            period,
        } => {
            let mut body = json!({ "id": id, "rate": rate, "burst": burst });
            if let (Some(limit), Some(period)) = (quota, period) {
                body["quota"] = json!({ "limit": limit, "period": period.as_str() });
            }
            Shown::One(c.json(Method::POST, "/admin/plans", Some(&body)).await?)
        }
        Plans::Delete { id } => {
            delete(
                c,
                &format!("/admin/plans/{}", seg(&id)),
                format!("plan {id}"),
            )
            .await?
        }
    })
}

async fn patch_consumer(c: &Client, id: &str, body: Value) -> Result<Shown> {
    let path = format!("/admin/consumers/{}", seg(id));
    Ok(Shown::One(c.json(Method::PATCH, &path, Some(&body)).await?))
}

async fn consumers(c: &Client, cmd: Consumers) -> Result<Shown> {
    Ok(match cmd {
        Consumers::List => Shown::List(c.list_all("/admin/consumers").await?, |items| {
            let mut t = Table::new(&["ID", "PLAN", "SCOPES", "KEYS", "OVERRIDE", "READ_ONLY"]);
            for i in items {
                let over = match i.get("override") {
                    Some(o) if o.is_object() => format!(
                        "{}/s burst {} until {}",
                        cell(&o["rate"]),
                        cell(&o["burst"]),
                        cell(&o["expires_at"])
                    ),
                    _ => "-".into(),
                };
                t.row(vec![
                    cell(&i["id"]),
                    cell(&i["plan"]),
                    cell(&i["scopes"]),
                    i["keys"].as_array().map_or(0, Vec::len).to_string(),
                    over,
                    cell(&i["read_only"]),
                ]);
            }
            t
        }),
        Consumers::Get { id } => {
            Shown::One(c.get(&format!("/admin/consumers/{}", seg(&id))).await?)
        }
        Consumers::Create { id, plan, scopes } => {
            let mut body = json!({ "id": id, "scopes": scopes });
            if let Some(p) = plan {
                body["plan"] = Value::String(p);
            }
            Shown::One(
                c.json(Method::POST, "/admin/consumers", Some(&body))
                    .await?,
            )
        }
        Consumers::SetPlan { id, plan } => patch_consumer(c, &id, json!({ "plan": plan })).await?,
        Consumers::Override {
            id,
            rate,
            burst,
            expires,
        } => {
            let body =
                json!({ "override": { "rate": rate, "burst": burst, "expires_at": expires } });
            patch_consumer(c, &id, body).await?
        }
        Consumers::ClearOverride { id } => {
            patch_consumer(c, &id, json!({ "override": null })).await?
        }
        Consumers::Delete { id } => {
            delete(
                c,
                &format!("/admin/consumers/{}", seg(&id)),
                format!("consumer {id}"),
            )
            .await?
        }
    })
}

async fn keys(c: &Client, cmd: Keys) -> Result<Shown> {
    Ok(match cmd {
        Keys::Issue { consumer } => {
            let v = c
                .json(
                    Method::POST,
                    &format!("/admin/consumers/{}/keys", seg(&consumer)),
                    Some(&json!({})),
                )
                .await?;
            eprintln!("note: the key is shown only now; hand it to the consumer safely");
            Shown::One(v)
        }
        Keys::Revoke { consumer, key_id } => {
            c.send(
                Method::DELETE,
                &format!("/admin/consumers/{}/keys/{}", seg(&consumer), seg(&key_id)),
                None,
            )
            .await?;
            Shown::Done(
                format!("revoked key {key_id} of consumer {consumer}"),
                json!({ "revoked": key_id, "consumer": consumer }),
            )
        }
    })
}

fn usage_table(items: &[Value]) -> Table {
    let mut t = Table::new(&[
        "START",
        "CONSUMER",
        "API",
        "REQUESTS",
        "2XX",
        "4XX",
        "5XX",
        "THROTTLED",
        "P50_MS",
        "P99_MS",
    ]);
    for i in items {
        t.row(
            [
                "start",
                "consumer",
                "api",
                "requests",
                "status_2xx",
                "status_4xx",
                "status_5xx",
                "throttled",
                "latency_p50_ms",
                "latency_p99_ms",
            ]
            .iter()
            .map(|k| cell(&i[*k]))
            .collect(),
        );
    }
    t
}

fn top_table(items: &[Value]) -> Table {
    let mut t = Table::new(&["CONSUMER", "REQUESTS", "RATE_PER_SECOND"]);
    for i in items {
        t.row(vec![
            cell(&i["consumer"]),
            cell(&i["requests"]),
            cell(&i["rate_per_second"]),
        ]);
    }
    t
}
