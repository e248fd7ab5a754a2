//! Property-based conformance of the admin API to its own OpenAPI document: `schemathesis`
//! generates valid and invalid requests for every operation from `/admin/openapi.json` and
//! checks that none gets a 5xx and every answer matches the documented status codes, content
//! types and schemas. `scripts/test` installs schemathesis into a venv under `target/`.

use crate::common::BIN;
use anyhow::{Context, Result};
use std::path::PathBuf;
use tollgate_testkit::{ADMIN_TOKEN, Gateway, TempDir, Upstream, workspace_root};

fn schemathesis() -> Result<PathBuf> {
    let path = std::env::var_os("TOLLGATE_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/schemathesis/bin/st"));
    anyhow::ensure!(
        path.exists(),
        "schemathesis not found at {}: run scripts/test (it installs it) or set TOLLGATE_SCHEMATHESIS",
        path.display()
    );
    Ok(path)
}

#[tokio::test]
async fn the_admin_api_conforms_to_its_openapi_document() -> Result<()> {
    let st = schemathesis()?;
    let up = Upstream::echo("widgets").await;
    let dir = TempDir::new("schemathesis")?;
    let gw = Gateway::start(BIN, &crate::admin::config(&dir, &up)).await?;
    // A tenant to aim the tenant-scoped operations at, so they reach more than the 404 path.
    let created = gw
        .client()
        .post(format!("{}/admin/tenants", gw.admin_url()))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"id": "acme", "name": "Acme"}))
        .send()
        .await?;
    anyhow::ensure!(created.status() == 201, "tenant: {}", created.status());
    let toml = dir.path().join("schemathesis.toml");
    std::fs::write(&toml, "[parameters]\n\"path.tenant\" = \"acme\"\n")?;

    let st_dir = dir.path().to_path_buf();
    let url = format!("{}/admin/openapi.json", gw.admin_url());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(st)
            .current_dir(&st_dir)
            .arg("--config-file")
            .arg(&toml)
            .args(["run", &url])
            .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "25",
                "--workers",
                "1",
                "--seed",
                "20261128",
                "--generation-database",
                "none",
                "--request-timeout",
                "10",
                "--no-color",
            ])
            .output()
    })
    .await?
    .context("run schemathesis")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("passed"), "{stdout}");
    Ok(())
}
