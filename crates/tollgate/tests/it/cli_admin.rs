//! The operator CLI against a real gateway: `tollgate admin ...` for each resource (tables,
//! `--json`, every page of a list, problems on stderr with exit 1, usage errors with exit 2, the
//! token never shown) and `tollgate apply -f DIR` (dry run, apply, idempotence, `--prune`).

use crate::common::*;
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tollgate_testkit::{ADMIN_TOKEN, Gateway, TempDir, Upstream};

/// A gateway that can store keys (hash secret), with a config-file plan and consumer, which
/// must stay untouched.
fn config(dir: &TempDir) -> String {
    let secret = dir.path().join("hash-secret");
    std::fs::write(&secret, "cli-admin-secret-0123456789").expect("write secret");
    format!(
        r#"
listeners:
  public: {{ addr: "127.0.0.1:0" }}
  admin: {{ addr: "127.0.0.1:0" }}
identity:
  hash_secret_file: "{secret}"
plans:
  file-plan: {{ rate: 1000, burst: 1000 }}
consumers:
  file-consumer: {{ plan: file-plan }}
"#,
        secret = secret.display(),
    )
}

fn widgets_yaml(up: &Upstream, path: &str) -> String {
    format!(
        r#"openapi: 3.1.0
info: {{ title: Widgets, version: 1.0.0 }}
x-tollgate: {{ upstream: "{url}" }}
paths:
  "{path}":
    get:
      operationId: getWidget
      x-tollgate: {{ auth: [api_key] }}
      parameters:
        - {{ name: id, in: path, required: true, schema: {{ type: string }} }}
      responses:
        "200": {{ description: a widget }}
"#,
        url = up.url()
    )
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `tollgate <args>` against `gw`'s admin listener, the token from the environment.
fn tollgate(gw: &Gateway, args: &[&str]) -> Result<Run> {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("TOLLGATE_ADMIN_URL", gw.admin_url())
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn");
    let out: Output = cmd.output()?;
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stdout.contains(ADMIN_TOKEN) && !run.stderr.contains(ADMIN_TOKEN),
        "the admin token is never printed: {args:?}"
    );
    Ok(run)
}

/// Runs and expects exit 0.
fn ok(gw: &Gateway, args: &[&str]) -> Result<String> {
    let r = tollgate(gw, args)?;
    assert_eq!(
        r.code,
        Some(0),
        "{args:?}\nstdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    Ok(r.stdout)
}

fn ok_json(gw: &Gateway, args: &[&str]) -> Result<Value> {
    let mut all = vec!["admin", "--json"];
    all.extend_from_slice(args);
    let out = ok(gw, &all)?;
    serde_json::from_str(&out).with_context(|| format!("{args:?}: {out}"))
}

fn ids(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["id"].as_str().map(str::to_owned))
        .collect()
}

async fn status_with_key(gw: &Gateway, path: &str, key: &str) -> Result<u16> {
    Ok(gw
        .client()
        .get(gw.url(path))
        .header("x-api-key", key)
        .send()
        .await?
        .status()
        .as_u16())
}

/// Polls until `path` answers `want`: changes are live "within 2 s".
async fn wait_status(gw: &Gateway, path: &str, key: &str, want: u16) -> Result<()> {
    let start = Instant::now();
    loop {
        let got = status_with_key(gw, path, key).await?;
        if got == want {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(3),
            "{path} still answers {got}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn admin_commands_drive_the_management_api() -> Result<()> {
    let up = Upstream::echo("widgets").await;
    let dir = TempDir::new("cli-admin")?;
    let gw = Gateway::start(BIN, &config(&dir)).await?;

    // Tenants: create, list (every page, even one item per page), get, token.
    let out = ok(
        &gw,
        &["admin", "tenants", "create", "acme", "--name", "Acme"],
    )?;
    assert!(out.contains("acme") && out.contains("Acme"), "{out}");
    ok(&gw, &["admin", "tenants", "create", "globex"])?;
    ok(&gw, &["admin", "tenants", "create", "initech"])?;
    let out = ok(&gw, &["admin", "tenants", "list"])?;
    assert!(out.starts_with("ID"), "a table with a header: {out}");
    assert!(out.contains("Acme") && out.contains("globex"), "{out}");
    let list = ok_json(&gw, &["--page-size", "1", "tenants", "list"])?;
    assert_eq!(ids(&list), ["acme", "globex", "initech"], "{list}");
    let t = ok_json(&gw, &["tenants", "get", "acme"])?;
    assert_eq!(t["name"], "Acme");
    let tok = ok_json(&gw, &["tenants", "token", "acme"])?;
    assert!(
        tok["token"].as_str().is_some_and(|t| t.starts_with("tgt_")),
        "{tok}"
    );
    let out = ok(&gw, &["admin", "tenants", "delete", "initech"])?;
    assert!(out.contains("deleted tenant initech"), "{out}");

    // APIs from a YAML document (sent as application/yaml).
    let doc = dir.path().join("widgets.yaml");
    std::fs::write(&doc, widgets_yaml(&up, "/widgets/{id}"))?;
    let doc_arg = doc.display().to_string();
    let out = ok(
        &gw,
        &["admin", "apis", "apply", "acme", "widgets", "-f", &doc_arg],
    )?;
    assert!(out.contains("widgets"), "{out}");
    let out = ok(&gw, &["admin", "apis", "list", "acme"])?;
    assert!(out.contains("widgets") && out.contains("no"), "{out}");
    let out = ok(&gw, &["admin", "apis", "get", "acme", "widgets"])?;
    assert!(
        out.contains("operationId: getWidget"),
        "stored as sent: {out}"
    );

    // Plans, consumers, keys.
    ok(
        &gw,
        &[
            "admin", "plans", "create", "gold", "--rate", "1000", "--burst", "1000", "--quota",
            "100000", "--period", "day",
        ],
    )?;
    ok(
        &gw,
        &[
            "admin", "plans", "create", "tiny", "--rate", "0.01", "--burst", "1",
        ],
    )?;
    let out = ok(&gw, &["admin", "plans", "list"])?;
    assert!(out.contains("100000/day"), "{out}");
    assert!(out.contains("file-plan"), "config-file plans listed: {out}");
    ok(
        &gw,
        &[
            "admin",
            "consumers",
            "create",
            "app",
            "--plan",
            "gold",
            "--scope",
            "widgets:read",
        ],
    )?;
    let key = ok_json(&gw, &["keys", "issue", "app"])?;
    let (key_id, secret) = (
        key["id"].as_str().context("id")?.to_owned(),
        key["key"].as_str().context("key")?.to_owned(),
    );
    wait_status(&gw, "/widgets/1", &secret, 200).await?;
    let table = ok(&gw, &["admin", "keys", "issue", "app"])?;
    assert!(
        table.contains("key") && table.contains("prefix") && table.contains("tg_"),
        "{table}"
    );
    let out = ok(&gw, &["admin", "consumers", "get", "app"])?;
    assert!(
        out.contains("gold") && out.contains("widgets:read"),
        "{out}"
    );
    assert!(!out.contains(&secret), "the key is shown once only");

    // Plan changes and overrides.
    ok(&gw, &["admin", "consumers", "set-plan", "app", "tiny"])?;
    ok(
        &gw,
        &[
            "admin",
            "consumers",
            "override",
            "app",
            "--rate",
            "1000",
            "--burst",
            "1000",
            "--expires",
            "2099-01-01T00:00:00Z",
        ],
    )?;
    let out = ok(&gw, &["admin", "consumers", "list"])?;
    assert!(out.contains("until 2099-01-01T00:00:00Z"), "{out}");
    wait_status(&gw, "/widgets/2", &secret, 200).await?;
    ok(&gw, &["admin", "consumers", "clear-override", "app"])?;
    ok(&gw, &["admin", "consumers", "set-plan", "app", "gold"])?;

    // Usage and top consumers.
    let usage = ok_json(
        &gw,
        &["usage", "--consumer", "app", "--granularity", "minute"],
    )?;
    assert!(usage_requests(&usage)? >= 2, "{usage}");
    let out = ok(&gw, &["admin", "usage", "--api", "widgets"])?;
    assert!(out.contains("REQUESTS") && out.contains("app"), "{out}");
    let out = ok(&gw, &["admin", "top", "--window", "60s"])?;
    assert!(out.contains("app"), "{out}");

    // Revocation: the key stops working.
    let out = ok(&gw, &["admin", "keys", "revoke", "app", &key_id])?;
    assert!(out.contains(&key_id), "{out}");
    wait_status(&gw, "/widgets/3", &secret, 401).await?;

    // Deletes.
    ok(&gw, &["admin", "apis", "delete", "acme", "widgets"])?;
    ok(&gw, &["admin", "consumers", "delete", "app"])?;
    ok(&gw, &["admin", "plans", "delete", "tiny"])?;
    let list = ok_json(&gw, &["plans", "list"])?;
    assert_eq!(ids(&list), ["file-plan", "gold"], "{list}");
    Ok(())
}

#[tokio::test]
async fn cli_errors_show_the_problem_and_exit_1_or_2() -> Result<()> {
    let up = Upstream::echo("widgets").await;
    let dir = TempDir::new("cli-admin-err")?;
    let gw = Gateway::start(BIN, &config(&dir)).await?;

    // 422: title, detail and every errors[] entry as `pointer: message`.
    let r = tollgate(
        &gw,
        &["admin", "consumers", "create", "ghost", "--plan", "nope"],
    )?;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("422"), "{}", r.stderr);
    assert!(r.stderr.contains("/plan: no plan `nope`"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);

    ok(&gw, &["admin", "tenants", "create", "acme"])?;
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        json!({"openapi": "2.0", "x-tollgate": {"upstream": up.url()},
               "paths": {"/x": {"get": {"x-tollgate": {"auth": ["magic"]}}}}})
        .to_string(),
    )?;
    let r = tollgate(
        &gw,
        &[
            "admin",
            "apis",
            "apply",
            "acme",
            "broken",
            "-f",
            &bad.display().to_string(),
        ],
    )?;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let listed = r.stderr.lines().filter(|l| l.starts_with("  /")).count();
    assert!(listed >= 2, "each error on its own line: {}", r.stderr);

    // 404, 409 (config-file entities are read-only), 401.
    let r = tollgate(&gw, &["admin", "plans", "get", "missing"])?;
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("404"), "{}", r.stderr);
    let r = tollgate(&gw, &["admin", "plans", "delete", "file-plan"])?;
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("409"), "{}", r.stderr);
    let r = tollgate(
        &gw,
        &["admin", "--token", "s3cret-but-wrong", "tenants", "list"],
    )?;
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("401"), "{}", r.stderr);
    assert!(!r.stderr.contains("s3cret-but-wrong"), "{}", r.stderr);

    // Usage errors come from the command line parser: exit 2.
    let r = tollgate(&gw, &["admin", "plans", "create", "x", "--rate", "1"])?;
    assert_eq!(r.code, Some(2), "missing --burst: {}", r.stderr);
    let r = tollgate(&gw, &["admin", "usage", "--granularity", "week"])?;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    let r = tollgate(&gw, &["admin", "tenants", "frobnicate"])?;
    assert_eq!(r.code, Some(2), "{}", r.stderr);

    // Nobody listening: a clear message, exit 1.
    let r = tollgate(
        &gw,
        &["admin", "--url", "http://127.0.0.1:1", "tenants", "list"],
    )?;
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("cannot reach"), "{}", r.stderr);
    Ok(())
}

fn write(dir: &Path, rel: &str, text: &str) -> Result<()> {
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(p, text)?;
    Ok(())
}

#[tokio::test]
async fn apply_syncs_a_directory_declaratively() -> Result<()> {
    let up = Upstream::echo("widgets").await;
    let dir = TempDir::new("cli-apply")?;
    let gw = Gateway::start(BIN, &config(&dir)).await?;
    let repo = dir.path().join("repo");
    write(&repo, "tenants.yaml", "- { id: acme, name: Acme }\n")?;
    write(
        &repo,
        "plans.yaml",
        "- { id: silver, rate: 100, burst: 100 }\n\
         - { id: gold, rate: 1000, burst: 1000, quota: { limit: 100000, period: day } }\n",
    )?;
    write(
        &repo,
        "consumers.yaml",
        "- { id: app, plan: silver, scopes: [widgets:read] }\n",
    )?;
    write(
        &repo,
        "apis/acme/widgets.yaml",
        &widgets_yaml(&up, "/widgets/{id}"),
    )?;
    let old = json!({
        "openapi": "3.1.0", "info": {"title": "Old", "version": "1"},
        "x-tollgate": {"upstream": up.url()},
        "paths": {"/old/{id}": {"get": {"x-tollgate": {"auth": ["api_key"]},
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "ok"}}}}}
    });
    write(&repo, "apis/acme/old.json", &old.to_string())?;
    let repo_arg = repo.display().to_string();

    // Dry run: the whole diff, nothing changes.
    let out = ok(&gw, &["apply", "-f", &repo_arg, "--dry-run"])?;
    for line in [
        "+ tenant acme",
        "+ plan silver",
        "+ plan gold",
        "+ consumer app",
        "+ api acme/widgets",
        "+ api acme/old",
        "dry run",
    ] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
    assert!(
        !out.contains("file-plan"),
        "config-file entities are left alone:\n{out}"
    );
    assert_eq!(
        ids(&ok_json(&gw, &["tenants", "list"])?),
        Vec::<String>::new()
    );
    assert_eq!(ids(&ok_json(&gw, &["plans", "list"])?), ["file-plan"]);

    // Apply: live. Tenants before APIs, plans before consumers.
    let out = ok(&gw, &["apply", "-f", &repo_arg])?;
    assert!(out.contains("applied 6 change(s)"), "{out}");
    assert_eq!(
        ids(&ok_json(&gw, &["apis", "list", "acme"])?),
        ["old", "widgets"]
    );
    let c = ok_json(&gw, &["consumers", "get", "app"])?;
    assert_eq!(
        (c["plan"].as_str(), &c["scopes"]),
        (Some("silver"), &json!(["widgets:read"]))
    );
    wait_status(&gw, "/widgets/1", "", 401).await?;
    let key = ok_json(&gw, &["keys", "issue", "app"])?;
    wait_status(&gw, "/widgets/1", key["key"].as_str().context("key")?, 200).await?;

    // Again: in sync.
    let out = ok(&gw, &["apply", "-f", &repo_arg])?;
    assert!(out.contains("no changes"), "{out}");
    assert!(
        !out.contains("+ ") && !out.contains("~ ") && !out.contains("- "),
        "{out}"
    );

    // Change a plan and a consumer, drop an API: without --prune the API stays, and the
    // output says it would be pruned.
    write(
        &repo,
        "consumers.yaml",
        "- { id: app, plan: gold, scopes: [widgets:read] }\n",
    )?;
    write(
        &repo,
        "plans.yaml",
        "- { id: silver, rate: 200, burst: 100 }\n\
         - { id: gold, rate: 1000, burst: 1000, quota: { limit: 100000, period: day } }\n",
    )?;
    std::fs::remove_file(repo.join("apis/acme/old.json"))?;
    let out = ok(&gw, &["apply", "-f", &repo_arg, "--dry-run"])?;
    assert!(out.contains("~ consumer app: plan silver → gold"), "{out}");
    assert!(out.contains("~ plan silver: rate 100 → 200"), "{out}");
    assert!(
        out.contains("- api acme/old") && out.contains("--prune"),
        "{out}"
    );
    let out = ok(&gw, &["apply", "-f", &repo_arg])?;
    assert!(out.contains("applied 2 change(s)"), "{out}");
    assert_eq!(ok_json(&gw, &["consumers", "get", "app"])?["plan"], "gold");
    assert_eq!(ok_json(&gw, &["plans", "get", "silver"])?["rate"], 200.0);
    assert_eq!(
        ids(&ok_json(&gw, &["apis", "list", "acme"])?),
        ["old", "widgets"]
    );

    // --prune deletes what is no longer declared, and never a config-file entity.
    write(
        &repo,
        "plans.yaml",
        "- { id: gold, rate: 1000, burst: 1000, quota: { limit: 100000, period: day } }\n",
    )?;
    let out = ok(&gw, &["apply", "-f", &repo_arg, "--prune"])?;
    assert!(
        out.contains("- api acme/old") && out.contains("- plan silver"),
        "{out}"
    );
    assert!(
        !out.contains("file-plan") && !out.contains("file-consumer"),
        "{out}"
    );
    assert_eq!(ids(&ok_json(&gw, &["apis", "list", "acme"])?), ["widgets"]);
    assert_eq!(
        ids(&ok_json(&gw, &["plans", "list"])?),
        ["file-plan", "gold"]
    );
    assert_eq!(
        ids(&ok_json(&gw, &["consumers", "list"])?),
        ["app", "file-consumer"]
    );
    let out = ok(&gw, &["apply", "-f", &repo_arg, "--prune"])?;
    assert!(out.contains("no changes"), "{out}");
    Ok(())
}
