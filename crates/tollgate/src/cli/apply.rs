//! `tollgate apply -f DIR`: GitOps-style sync of a directory to the admin API. Reads what the
//! gateway reports, computes creates, updates and (with `--prune`) deletes of API-managed
//! entities, prints them, and makes them in dependency order. Entities from the gateway's config
//! file (`read_only: true`) are never touched: that file is their source of truth.

use super::ApplyArgs;
use super::admin::document;
use super::client::{Client, seg};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantSpec {
    id: String,
    name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Quota {
    limit: u64,
    period: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanSpec {
    id: String,
    rate: f64,
    burst: u32,
    quota: Option<Quota>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumerSpec {
    id: String,
    /// Absent: no plan on create, and the current plan is left as is on update (the admin
    /// API cannot take a plan away).
    plan: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Debug, Clone)]
struct ApiSpec {
    tenant: String,
    id: String,
    content_type: &'static str,
    body: Bytes,
    /// The document parsed, to compare with the stored one regardless of JSON/YAML form.
    doc: Value,
}

/// The directory. `None`: the file is absent, so that kind of entity is not managed by this
/// directory and nothing of it is created, changed or pruned.
#[derive(Debug, Default)]
struct Desired {
    tenants: Option<Vec<TenantSpec>>,
    plans: Option<Vec<PlanSpec>>,
    consumers: Option<Vec<ConsumerSpec>>,
    apis: Option<Vec<ApiSpec>>,
}

#[derive(Debug)]
enum Change {
    CreateTenant(TenantSpec),
    CreatePlan(PlanSpec),
    UpdatePlan(PlanSpec, Vec<String>),
    CreateConsumer(ConsumerSpec),
    UpdateConsumer(ConsumerSpec, Vec<String>),
    PutApi(ApiSpec, bool),
    DeleteApi(String, String),
    DeleteConsumer(String),
    DeletePlan(String),
    DeleteTenant(String),
}

impl Change {
    fn is_delete(&self) -> bool {
        matches!(
            self,
            Change::DeleteApi(..)
                | Change::DeleteConsumer(_)
                | Change::DeletePlan(_)
                | Change::DeleteTenant(_)
        )
    }

    fn line(&self) -> String {
        match self {
            Change::CreateTenant(t) => format!("+ tenant {}", t.id),
            Change::CreatePlan(p) => format!("+ plan {}", p.id),
            Change::UpdatePlan(p, what) => format!("~ plan {}: {}", p.id, what.join(", ")),
            Change::CreateConsumer(c) => format!("+ consumer {}", c.id),
            Change::UpdateConsumer(c, what) => {
                format!("~ consumer {}: {}", c.id, what.join(", "))
            }
            Change::PutApi(a, true) => format!("+ api {}/{}", a.tenant, a.id),
            Change::PutApi(a, false) => format!("~ api {}/{}: document changed", a.tenant, a.id),
            Change::DeleteApi(t, a) => format!("- api {t}/{a}"),
            Change::DeleteConsumer(c) => format!("- consumer {c}"),
            Change::DeletePlan(p) => format!("- plan {p}"),
            Change::DeleteTenant(t) => format!("- tenant {t}"),
        }
    }
}

pub async fn run(args: ApplyArgs) -> Result<()> {
    let desired = read_dir(&args.dir)?;
    let c = args.conn.client()?;
    let (changes, notes) = plan(&c, &desired).await?;
    for n in &notes {
        eprintln!("note: {n}");
    }
    let (deletes, rest): (Vec<Change>, Vec<Change>) =
        changes.into_iter().partition(Change::is_delete);
    for ch in &rest {
        println!("{}", ch.line());
    }
    for ch in &deletes {
        if args.prune {
            println!("{}", ch.line());
        } else {
            println!(
                "{}   (not in {}; kept without --prune)",
                ch.line(),
                args.dir.display()
            );
        }
    }
    let pruned = if args.prune { deletes.len() } else { 0 };
    let total = rest.len() + pruned;
    if total == 0 {
        println!("no changes: the gateway matches {}", args.dir.display());
    }
    if !args.prune && !deletes.is_empty() {
        println!(
            "{} entit{} would be pruned: run again with --prune to delete {}",
            deletes.len(),
            if deletes.len() == 1 { "y" } else { "ies" },
            if deletes.len() == 1 { "it" } else { "them" },
        );
    }
    if total == 0 {
        return Ok(());
    }
    if args.dry_run {
        println!("dry run: {total} change(s), nothing applied");
        return Ok(());
    }
    // Creates and updates in dependency order (the diff is built in it), then deletes in the
    // reverse order: APIs before their tenant, consumers before the plan they were on.
    for ch in &rest {
        make(&c, ch)
            .await
            .with_context(|| format!("applying `{}`", ch.line()))?;
    }
    if args.prune {
        for ch in &deletes {
            make(&c, ch)
                .await
                .with_context(|| format!("applying `{}`", ch.line()))?;
        }
    }
    println!("applied {total} change(s)");
    Ok(())
}

/// Parses a list file, or `None` when it does not exist.
fn read_list<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<Vec<T>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if text.trim().is_empty() {
        // An empty file declares "none of these", which is how one prunes them all.
        return Ok(Some(Vec::new()));
    }
    let items: Vec<T> = yaml_serde::from_str(&text)
        .with_context(|| format!("{}: expected a YAML list", path.display()))?;
    Ok(Some(items))
}

fn read_dir(dir: &Path) -> Result<Desired> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let mut d = Desired {
        tenants: read_list(&dir.join("tenants.yaml"))?,
        plans: read_list(&dir.join("plans.yaml"))?,
        consumers: read_list(&dir.join("consumers.yaml"))?,
        apis: None,
    };
    let apis_dir = dir.join("apis");
    if apis_dir.is_dir() {
        let mut apis = Vec::new();
        for t in sorted_entries(&apis_dir)? {
            if !t.is_dir() {
                continue;
            }
            let tenant = file_name(&t)?;
            for f in sorted_entries(&t)? {
                let ext = f.extension().and_then(|e| e.to_str());
                if !matches!(ext, Some("yaml" | "yml" | "json")) {
                    continue;
                }
                let id = f
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .with_context(|| format!("{}: the name is not UTF-8", f.display()))?
                    .to_owned();
                let (content_type, body) = document(&f)?;
                let doc = parse_doc(content_type, &body)
                    .with_context(|| format!("{}: not a JSON or YAML document", f.display()))?;
                apis.push(ApiSpec {
                    tenant: tenant.clone(),
                    id,
                    content_type,
                    body,
                    doc,
                });
            }
        }
        d.apis = Some(apis);
    }
    check_unique(&d)?;
    Ok(d)
}

fn sorted_entries(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        out.push(e?.path());
    }
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> Result<String> {
    p.file_name()
        .and_then(|s| s.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{}: the name is not UTF-8", p.display()))
}

/// A duplicate id would make the diff depend on file order; refuse it up front.
fn check_unique(d: &Desired) -> Result<()> {
    fn dup<'a>(kind: &str, ids: impl Iterator<Item = &'a str>) -> Result<()> {
        let mut seen = BTreeSet::new();
        for id in ids {
            if !seen.insert(id) {
                bail!("{kind} `{id}` is declared twice");
            }
        }
        Ok(())
    }
    dup("tenant", d.tenants.iter().flatten().map(|t| t.id.as_str()))?;
    dup("plan", d.plans.iter().flatten().map(|p| p.id.as_str()))?;
    dup(
        "consumer",
        d.consumers.iter().flatten().map(|c| c.id.as_str()),
    )?;
    let apis: Vec<String> = d
        .apis
        .iter()
        .flatten()
        .map(|a| format!("{}/{}", a.tenant, a.id))
        .collect();
    dup("api", apis.iter().map(String::as_str))
}

fn parse_doc(content_type: &str, body: &[u8]) -> Result<Value> {
    if content_type.contains("yaml") {
        Ok(yaml_serde::from_slice(body)?)
    } else {
        Ok(serde_json::from_slice(body)?)
    }
}

/// What the gateway has, keyed by id.
fn by_id(items: Vec<Value>) -> BTreeMap<String, Value> {
    items
        .into_iter()
        .filter_map(|v| Some((v.get("id")?.as_str()?.to_owned(), v)))
        .collect()
}

fn read_only(v: &Value) -> bool {
    v.get("read_only").and_then(Value::as_bool).unwrap_or(false)
}

/// Numbers as the admin API shows them: `10` and `10.0` are the same rate.
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        v.to_string()
    }
}

fn quota_text(q: Option<&Quota>) -> String {
    q.map_or("none".into(), |q| format!("{}/{}", q.limit, q.period))
}

/// The diff, in dependency order, plus notes about what is left alone and why.
async fn plan(c: &Client, d: &Desired) -> Result<(Vec<Change>, Vec<String>)> {
    let mut changes = Vec::new();
    let mut deletes = Vec::new();
    let mut notes = Vec::new();

    let have_tenants = by_id(c.list_all("/admin/tenants").await?);
    if let Some(tenants) = &d.tenants {
        let want: BTreeSet<&str> = tenants.iter().map(|t| t.id.as_str()).collect();
        for t in tenants {
            match have_tenants.get(&t.id) {
                None => changes.push(Change::CreateTenant(t.clone())),
                Some(h) if read_only(h) => notes.push(format!(
                    "tenant {} is defined in the gateway's config file (read-only); left as is",
                    t.id
                )),
                Some(h) => {
                    let name = t.name.as_deref().unwrap_or(&t.id);
                    if h.get("name").and_then(Value::as_str) != Some(name) {
                        notes.push(format!(
                            "tenant {}: the name differs ({} → {name}) but the admin API cannot rename a tenant; left as is",
                            t.id,
                            h.get("name").and_then(Value::as_str).unwrap_or("-")
                        ));
                    }
                }
            }
        }
        for (id, h) in &have_tenants {
            if !read_only(h) && !want.contains(id.as_str()) {
                deletes.push(Change::DeleteTenant(id.clone()));
            }
        }
    }

    if let Some(plans) = &d.plans {
        let have = by_id(c.list_all("/admin/plans").await?);
        let want: BTreeSet<&str> = plans.iter().map(|p| p.id.as_str()).collect();
        for p in plans {
            let Some(h) = have.get(&p.id) else {
                changes.push(Change::CreatePlan(p.clone()));
                continue;
            };
            if read_only(h) {
                notes.push(format!(
                    "plan {} is defined in the gateway's config file (read-only); left as is",
                    p.id
                ));
                continue;
            }
            let mut what = Vec::new();
            let rate = h.get("rate").and_then(Value::as_f64).unwrap_or(f64::NAN);
            if rate != p.rate {
                what.push(format!("rate {} → {}", num(rate), num(p.rate)));
            }
            let burst = h.get("burst").and_then(Value::as_u64);
            if burst != Some(u64::from(p.burst)) {
                let old = burst.map_or("-".into(), |b| b.to_string());
                what.push(format!("burst {old} → {}", p.burst));
            }
            let quota: Option<Quota> = h
                .get("quota")
                .filter(|q| !q.is_null())
                .and_then(|q| serde_json::from_value(q.clone()).ok());
            if quota != p.quota {
                what.push(format!(
                    "quota {} → {}",
                    quota_text(quota.as_ref()),
                    quota_text(p.quota.as_ref())
                ));
            }
            if !what.is_empty() {
                changes.push(Change::UpdatePlan(p.clone(), what));
            }
        }
        for (id, h) in &have {
            if !read_only(h) && !want.contains(id.as_str()) {
                deletes.push(Change::DeletePlan(id.clone()));
            }
        }
    }

    if let Some(consumers) = &d.consumers {
        let have = by_id(c.list_all("/admin/consumers").await?);
        let want: BTreeSet<&str> = consumers.iter().map(|c| c.id.as_str()).collect();
        for spec in consumers {
            let Some(h) = have.get(&spec.id) else {
                changes.push(Change::CreateConsumer(spec.clone()));
                continue;
            };
            if read_only(h) {
                notes.push(format!(
                    "consumer {} is defined in the gateway's config file (read-only); left as is",
                    spec.id
                ));
                continue;
            }
            let mut what = Vec::new();
            let plan = h.get("plan").and_then(Value::as_str);
            if let Some(p) = &spec.plan
                && plan != Some(p.as_str())
            {
                what.push(format!("plan {} → {p}", plan.unwrap_or("none")));
            }
            let scopes: Vec<String> = h
                .get("scopes")
                .and_then(|s| serde_json::from_value(s.clone()).ok())
                .unwrap_or_default();
            if scopes != spec.scopes {
                what.push(format!(
                    "scopes [{}] → [{}]",
                    scopes.join(", "),
                    spec.scopes.join(", ")
                ));
            }
            if !what.is_empty() {
                changes.push(Change::UpdateConsumer(spec.clone(), what));
            }
        }
        for (id, h) in &have {
            if !read_only(h) && !want.contains(id.as_str()) {
                deletes.push(Change::DeleteConsumer(id.clone()));
            }
        }
    }

    if let Some(apis) = &d.apis {
        let declared: BTreeSet<&str> = d.tenants.iter().flatten().map(|t| t.id.as_str()).collect();
        for a in apis {
            if !have_tenants.contains_key(&a.tenant) && !declared.contains(a.tenant.as_str()) {
                bail!(
                    "apis/{}/{}: no tenant `{}` on the gateway or in tenants.yaml",
                    a.tenant,
                    a.id,
                    a.tenant
                );
            }
        }
        // What each existing tenant has registered; tenants still to be created have nothing.
        let mut have: BTreeMap<(String, String), Value> = BTreeMap::new();
        for t in have_tenants.keys() {
            for v in c
                .list_all(&format!("/admin/tenants/{}/apis", seg(t)))
                .await?
            {
                if let Some(id) = v.get("id").and_then(Value::as_str) {
                    have.insert((t.clone(), id.to_owned()), v);
                }
            }
        }
        let mut want = BTreeSet::new();
        for a in apis {
            let key = (a.tenant.clone(), a.id.clone());
            want.insert(key.clone());
            match have.get(&key) {
                None => changes.push(Change::PutApi(a.clone(), true)),
                Some(h) if read_only(h) => notes.push(format!(
                    "api {}/{} is defined in the gateway's config file (read-only); left as is",
                    a.tenant, a.id
                )),
                Some(_) => {
                    let path = format!("/admin/tenants/{}/apis/{}", seg(&a.tenant), seg(&a.id));
                    let r = c.send(Method::GET, &path, None).await?;
                    let stored = parse_doc(&r.content_type, &r.body).ok();
                    if stored.as_ref() != Some(&a.doc) {
                        changes.push(Change::PutApi(a.clone(), false));
                    }
                }
            }
        }
        // APIs go before consumers, plans and tenants among the deletes.
        let mut api_deletes = Vec::new();
        for ((t, id), h) in &have {
            if !read_only(h) && !want.contains(&(t.clone(), id.clone())) {
                api_deletes.push(Change::DeleteApi(t.clone(), id.clone()));
            }
        }
        api_deletes.append(&mut deletes);
        deletes = api_deletes;
    }

    // Reverse dependency order for deletes: APIs, consumers, plans, tenants.
    deletes.sort_by_key(|ch| match ch {
        Change::DeleteApi(..) => 0,
        Change::DeleteConsumer(_) => 1,
        Change::DeletePlan(_) => 2,
        _ => 3,
    });
    changes.append(&mut deletes);
    Ok((changes, notes))
}

async fn make(c: &Client, ch: &Change) -> Result<()> {
    match ch {
        Change::CreateTenant(t) => {
            let mut body = json!({ "id": t.id });
            if let Some(n) = &t.name {
                body["name"] = json!(n);
            }
            c.json(Method::POST, "/admin/tenants", Some(&body)).await?;
        }
        Change::CreatePlan(p) => {
            c.json(Method::POST, "/admin/plans", Some(&plan_body(p, true)))
                .await?;
        }
        Change::UpdatePlan(p, _) => {
            let path = format!("/admin/plans/{}", seg(&p.id));
            c.json(Method::PUT, &path, Some(&plan_body(p, false)))
                .await?;
        }
        Change::CreateConsumer(spec) => {
            let mut body = json!({ "id": spec.id, "scopes": spec.scopes });
            if let Some(p) = &spec.plan {
                body["plan"] = json!(p);
            }
            c.json(Method::POST, "/admin/consumers", Some(&body))
                .await?;
        }
        Change::UpdateConsumer(spec, _) => {
            let mut body = json!({ "scopes": spec.scopes });
            if let Some(p) = &spec.plan {
                body["plan"] = json!(p);
            }
            let path = format!("/admin/consumers/{}", seg(&spec.id));
            c.json(Method::PATCH, &path, Some(&body)).await?;
        }
        Change::PutApi(a, _) => {
            let path = format!("/admin/tenants/{}/apis/{}", seg(&a.tenant), seg(&a.id));
            c.send(Method::PUT, &path, Some((a.content_type, a.body.clone())))
                .await?;
        }
        Change::DeleteApi(t, a) => {
            let path = format!("/admin/tenants/{}/apis/{}", seg(t), seg(a));
            c.send(Method::DELETE, &path, None).await?;
        }
        Change::DeleteConsumer(id) => {
            let path = format!("/admin/consumers/{}", seg(id));
            c.send(Method::DELETE, &path, None).await?;
        }
        Change::DeletePlan(id) => {
            let path = format!("/admin/plans/{}", seg(id));
            c.send(Method::DELETE, &path, None).await?;
        }
        Change::DeleteTenant(id) => {
            let path = format!("/admin/tenants/{}", seg(id));
            c.send(Method::DELETE, &path, None).await?;
        }
    }
    Ok(())
}

fn plan_body(p: &PlanSpec, with_id: bool) -> Value {
    let mut body = json!({ "rate": p.rate, "burst": p.burst });
    if with_id {
        body["id"] = json!(p.id);
    }
    if let Some(q) = &p.quota {
        body["quota"] = json!({ "limit": q.limit, "period": q.period });
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_like_the_file() {
        assert_eq!(num(10.0), "10");
        assert_eq!(num(0.5), "0.5");
    }

    #[test]
    fn delete_lines() {
        assert_eq!(
            Change::DeleteApi("acme".into(), "old".into()).line(),
            "- api acme/old"
        );
        let c = ConsumerSpec {
            id: "x".into(),
            plan: Some("gold".into()),
            scopes: vec![],
        };
        assert_eq!(
            Change::UpdateConsumer(c, vec!["plan silver → gold".into()]).line(),
            "~ consumer x: plan silver → gold"
        );
    }
}
