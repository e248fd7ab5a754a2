//! Entities managed at runtime through the admin API (and kept in the store) rather than in the
//! config file. They are merged over the file's config before every compile, so one validated,
//! compiled snapshot always describes everything the gateway serves.
//!
//! Precedence: the file wins. An overlay entity whose id the file already defines is refused
//! here (the admin API refuses such changes earlier with 409), so a file edit can never be
//! silently shadowed by a database row.

use crate::{Api, Config, Consumer, LoadedConfig, Plan, Problem, Upstream};
use std::collections::BTreeMap;

/// One registered API: its tenant, id, compiled model and its own upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct OverlayApi {
    pub tenant: String,
    pub id: String,
    pub api: Api,
    pub upstream_name: String,
    pub upstream: Upstream,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overlay {
    /// Tenant id → display name, for tenants created at runtime.
    pub tenants: BTreeMap<String, String>,
    pub apis: Vec<OverlayApi>,
    pub plans: BTreeMap<String, Plan>,
    pub consumers: BTreeMap<String, Consumer>,
}

impl Overlay {
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
            && self.apis.is_empty()
            && self.plans.is_empty()
            && self.consumers.is_empty()
    }

    /// The file's config with this overlay merged in and the whole validated again.
    pub fn apply(&self, file: &LoadedConfig) -> Result<LoadedConfig, Vec<Problem>> {
        let mut cfg = file.config.clone();
        let mut problems = self.merge_into(&mut cfg);
        problems.extend(crate::validate::validate(&cfg, &file.base_dir));
        if !problems.is_empty() {
            for p in &mut problems {
                if p.line.is_none() {
                    p.line = crate::line_of(&file.source_text, &p.key_path);
                }
            }
            return Err(problems);
        }
        Ok(LoadedConfig {
            config: cfg,
            source_path: file.source_path.clone(),
            source_text: file.source_text.clone(),
            base_dir: file.base_dir.clone(),
        })
    }

    fn merge_into(&self, cfg: &mut Config) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut clash = |key_path: String, what: &str| {
            problems.push(Problem {
                key_path,
                line: None,
                message: format!("{what} is defined in the config file, which takes precedence"),
            })
        };
        for (id, name) in &self.tenants {
            let t = cfg.tenants.entry(id.clone()).or_default();
            if t.name.is_none() {
                t.name = Some(name.clone());
            }
        }
        for a in &self.apis {
            if cfg.upstreams.contains_key(&a.upstream_name) {
                clash(format!("upstreams.{}", a.upstream_name), "this upstream");
                continue;
            }
            let tenant = cfg.tenants.entry(a.tenant.clone()).or_default();
            if tenant.apis.contains_key(&a.id) {
                clash(format!("tenants.{}.apis.{}", a.tenant, a.id), "this API");
                continue;
            }
            tenant.apis.insert(a.id.clone(), a.api.clone());
            cfg.upstreams
                .insert(a.upstream_name.clone(), a.upstream.clone());
        }
        for (id, plan) in &self.plans {
            if cfg.plans.contains_key(id) {
                clash(format!("plans.{id}"), "this plan");
                continue;
            }
            cfg.plans.insert(id.clone(), plan.clone());
        }
        for (id, c) in &self.consumers {
            if cfg.consumers.contains_key(id) {
                clash(format!("consumers.{id}"), "this consumer");
                continue;
            }
            cfg.consumers.insert(id.clone(), c.clone());
        }
        problems
    }
}
