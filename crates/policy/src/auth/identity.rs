//! The identity runtime compiled from config: consumers and their credentials indexed for
//! one-lookup authentication, the keyed hash for API keys and client secrets, the JWT
//! verifier, the gateway's token issuer, SigV4 keys and external authorizers.
//!
//! One `Identity` belongs to one compiled snapshot and is shared by all of its routes.

use super::authorizer::Authorizer;
use super::jwt::{self, IssuerConfig, JwksSource, JwtVerifier, TokenIssuer, TokenIssuerConfig};
use super::sigv4::{SecretKey, SigV4Verifier};
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderName;
use sha2::Sha256;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tollgate_config::Config;
use tollgate_core::{Clock, Consumer};

/// A problem found while building the runtime: key path and message, like config problems.
pub type BuildProblem = (String, String);

/// HMAC-SHA256 under the server secret: API keys and client secrets are stored and looked up
/// by this digest, so a lookup is one hash and one map probe, and the config never holds a
/// usable credential.
#[derive(Clone)]
pub struct KeyHasher {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher(***)")
    }
}

impl KeyHasher {
    pub fn new(secret: &[u8]) -> Option<Self> {
        if secret.len() < 16 {
            return None;
        }
        Hmac::<Sha256>::new_from_slice(secret)
            .ok()
            .map(|mac| Self { mac })
    }

    /// Reads the secret file; surrounding whitespace is ignored so editors cannot break it.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let raw = tollgate_config::files::read(path, tollgate_config::files::MAX_SECRET_BYTES)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let secret = raw.trim_ascii();
        Self::new(secret)
            .ok_or_else(|| format!("{}: the secret must be at least 16 bytes", path.display()))
    }

    pub fn digest(&self, value: &[u8]) -> [u8; 32] {
        let mut m = self.mac.clone();
        m.update(value);
        m.finalize().into_bytes().into()
    }

    /// The config form: `hmac-sha256:<hex>`.
    pub fn encode(&self, value: &[u8]) -> String {
        let d = self.digest(value);
        let mut s = String::with_capacity(12 + 64);
        s.push_str("hmac-sha256:");
        for b in d {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// Parses `hmac-sha256:<64 hex>` (validated by the config crate).
pub fn parse_digest(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("hmac-sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// A consumer's API key entry.
#[derive(Debug)]
pub struct KeyEntry {
    pub consumer: Arc<Consumer>,
    pub key_id: Arc<str>,
}

pub struct Identity {
    pub hasher: Option<KeyHasher>,
    pub api_key_header: HeaderName,
    pub consumers: crate::ConfigMap<String, Arc<Consumer>>,
    pub by_key: crate::ConfigMap<[u8; 32], KeyEntry>,
    pub by_subject: crate::ConfigMap<String, Arc<Consumer>>,
    pub by_cert: crate::ConfigMap<String, Arc<Consumer>>,
    pub client_secrets: crate::ConfigMap<String, [u8; 32]>,
    pub jwt: Option<JwtVerifier>,
    pub token_issuer: Option<TokenIssuer>,
    pub sigv4: Option<SigV4Verifier>,
    pub authorizers: HashMap<String, Arc<Authorizer>>,
    pub cert_header: HeaderName,
    pub forward_tenant_and_plan: bool,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("consumers", &self.consumers.len())
            .field("api_keys", &self.by_key.len())
            .finish_non_exhaustive()
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn algorithms(names: &[String]) -> Vec<jwt::Algorithm> {
    names.iter().filter_map(|n| n.parse().ok()).collect()
}

impl Identity {
    /// An identity runtime with no consumers and no schemes (routes without auth need nothing).
    pub fn empty() -> Self {
        Self {
            hasher: None,
            api_key_header: HeaderName::from_static("x-api-key"),
            consumers: crate::ConfigMap::default(),
            by_key: crate::ConfigMap::default(),
            by_subject: crate::ConfigMap::default(),
            by_cert: crate::ConfigMap::default(),
            client_secrets: crate::ConfigMap::default(),
            jwt: None,
            token_issuer: None,
            sigv4: None,
            authorizers: HashMap::new(),
            cert_header: HeaderName::from_static("x-client-cert-subject"),
            forward_tenant_and_plan: false,
        }
    }

    /// Builds the runtime. File reads and key parsing happen here, once per config.
    /// `previous`: the identity of the snapshot this one replaces. Its JWT verifier is kept
    /// when the issuers are configured exactly as before (keys, cache and refreshes carry over).
    pub fn build(
        cfg: &Config,
        base_dir: &Path,
        clock: Arc<dyn Clock>,
        previous: Option<&Identity>,
    ) -> Result<Self, Vec<BuildProblem>> {
        let id = &cfg.identity;
        let mut problems: Vec<BuildProblem> = Vec::new();
        let mut out = Self::empty();
        out.forward_tenant_and_plan = id.forward_tenant_and_plan;
        match HeaderName::from_bytes(id.api_key_header.to_ascii_lowercase().as_bytes()) {
            Ok(h) => out.api_key_header = h,
            Err(_) => problems.push(("identity.api_key_header".into(), "not a header name".into())),
        }
        if let Some(m) = &id.mtls {
            match HeaderName::from_bytes(m.subject_header.to_ascii_lowercase().as_bytes()) {
                Ok(h) => out.cert_header = h,
                Err(_) => problems.push((
                    "identity.mtls.subject_header".into(),
                    "not a header name".into(),
                )),
            }
        }
        if let Some(p) = &id.hash_secret_file {
            match KeyHasher::from_file(&resolve(base_dir, p)) {
                Ok(h) => out.hasher = Some(h),
                Err(e) => problems.push(("identity.hash_secret_file".into(), e)),
            }
        }

        // Consumers and their credentials.
        let mut sigv4 = id.sigv4.as_ref().map(|s| {
            SigV4Verifier::new(&s.service, &s.region, clock.clone()).with_max_skew(s.max_skew.get())
        });
        for (index, (name, c)) in (0u32..).zip(&cfg.consumers) {
            let consumer = Arc::new(
                Consumer::forwarding(
                    name,
                    c.tenant.as_deref(),
                    c.plan.as_deref(),
                    c.scopes.clone(),
                    out.forward_tenant_and_plan,
                )
                .at_index(index),
            );
            out.consumers.insert(name.clone(), consumer.clone());
            for k in &c.api_keys {
                if let Some(d) = parse_digest(&k.hash) {
                    out.by_key.insert(
                        d,
                        KeyEntry {
                            consumer: consumer.clone(),
                            key_id: Arc::from(k.id.as_str()),
                        },
                    );
                }
            }
            if let Some(d) = c.client_secret_hash.as_deref().and_then(parse_digest) {
                out.client_secrets.insert(name.clone(), d);
            }
            match &c.jwt_subjects {
                Some(subjects) => {
                    for s in subjects {
                        out.by_subject.insert(s.clone(), consumer.clone());
                    }
                }
                None => {
                    out.by_subject.insert(name.clone(), consumer.clone());
                }
            }
            for s in &c.certificate_subjects {
                out.by_cert.insert(s.clone(), consumer.clone());
            }
            for (i, k) in c.sigv4_keys.iter().enumerate() {
                let key = format!("consumers.{name}.sigv4_keys[{i}]");
                let secret = match (&k.secret_file, &k.secret_env) {
                    (Some(f), None) => tollgate_config::files::read_to_string(
                        &resolve(base_dir, f),
                        tollgate_config::files::MAX_SECRET_BYTES,
                    )
                    .map(|s| s.trim().to_string())
                    .map_err(|e| format!("cannot read {}: {e}", f.display())),
                    (None, Some(var)) => std::env::var(var)
                        .map_err(|_| format!("environment variable {var} is not set")),
                    _ => Err("set exactly one of `secret_file` and `secret_env`".to_string()),
                };
                match (secret, sigv4.as_mut()) {
                    (Ok(s), Some(v)) if !s.is_empty() => {
                        v.insert_key(&k.access_key, SecretKey::new(s), name.as_str())
                    }
                    (Ok(_), Some(_)) => problems.push((key, "the secret is empty".into())),
                    (Ok(_), None) => {
                        problems.push((key, "SigV4 keys need `identity.sigv4`".into()))
                    }
                    (Err(e), _) => problems.push((key, e)),
                }
            }
        }
        out.sigv4 = sigv4;

        // Token issuer first: its public key joins the verifier's issuers.
        let mut issuers: Vec<IssuerConfig> = Vec::new();
        if let Some(t) = &id.token_issuer {
            let cfg_t = TokenIssuerConfig {
                issuer: t.issuer.clone(),
                audience: t.audience.clone(),
                private_key_pem: resolve(base_dir, &t.signing_key),
                key_id: None,
                ttl: t.ttl.get(),
            };
            match TokenIssuer::new(&cfg_t, clock.clone()) {
                Ok(issuer) => {
                    issuers.push(issuer.verifier_config());
                    out.token_issuer = Some(issuer);
                }
                Err(e) => problems.push(("identity.token_issuer".into(), e.to_string())),
            }
        }
        for (i, j) in id.jwt.iter().enumerate() {
            let source = match (&j.jwks_url, &j.jwks_file, &j.hmac_secret_file) {
                (Some(u), _, _) => JwksSource::Url(u.clone()),
                (None, Some(f), _) => JwksSource::File(resolve(base_dir, f)),
                (None, None, Some(f)) => {
                    let alg = algorithms(&j.algorithms).into_iter().next();
                    let read = tollgate_config::files::read(
                        &resolve(base_dir, f),
                        tollgate_config::files::MAX_SECRET_BYTES,
                    );
                    match (read, alg) {
                        (Ok(secret), Some(alg)) => {
                            JwksSource::SharedSecrets(vec![jwt::SharedSecret::new(
                                None,
                                alg,
                                secret.trim_ascii().to_vec(),
                            )])
                        }
                        (Err(e), _) => {
                            problems.push((
                                format!("identity.jwt[{i}].hmac_secret_file"),
                                format!("cannot read: {e}"),
                            ));
                            continue;
                        }
                        (_, None) => {
                            problems.push((
                                format!("identity.jwt[{i}].algorithms"),
                                "name the HMAC algorithm".into(),
                            ));
                            continue;
                        }
                    }
                }
                (None, None, None) => {
                    problems.push((format!("identity.jwt[{i}]"), "no JWKS source".into()));
                    continue;
                }
            };
            let mut ic = IssuerConfig::new(j.issuer.clone(), j.audiences.clone(), source);
            ic.algorithms = algorithms(&j.algorithms);
            ic.leeway = j.leeway.get();
            ic.refresh_interval = j.refresh_interval.get();
            ic.min_refetch_interval = j.min_refetch_interval.get();
            issuers.push(ic);
        }
        let kept = previous
            .and_then(|p| p.jwt.as_ref())
            .filter(|j| !issuers.is_empty() && j.serves(&issuers));
        if let Some(j) = kept {
            out.jwt = Some(j.clone());
        } else if !issuers.is_empty() {
            match JwtVerifier::new(issuers, clock.clone()) {
                Ok(v) => out.jwt = Some(v),
                Err(e) => problems.push(("identity.jwt".into(), e.to_string())),
            }
        }

        for (name, a) in &id.authorizers {
            match Authorizer::new(&a.url, a.timeout.get(), a.cache_ttl.get(), clock.clone()) {
                Ok(z) => {
                    out.authorizers.insert(name.clone(), Arc::new(z));
                }
                Err(e) => problems.push((format!("identity.authorizers.{name}"), e.to_string())),
            }
        }

        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// Starts background work (JWKS fetch and refresh). Needs a Tokio runtime; without one
    /// (`tollgate validate`) there is nothing to start.
    pub fn start(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.jwt.is_some() {
            let me = self.clone();
            handle.spawn(async move {
                if let Some(j) = &me.jwt {
                    j.start().await;
                }
            });
        }
    }

    /// A consumer named by a certificate or an authorizer rather than by config: no tenant,
    /// plan or scopes of its own.
    pub fn ad_hoc_consumer(&self, id: &str) -> Consumer {
        Consumer::forwarding(id, None, None, Vec::new(), self.forward_tenant_and_plan)
    }

    pub fn consumer(&self, id: &str) -> Option<&Arc<Consumer>> {
        self.consumers.get(id)
    }

    /// The consumer an API key belongs to.
    pub fn by_api_key(&self, key: &[u8]) -> Option<&KeyEntry> {
        let h = self.hasher.as_ref()?;
        self.by_key.get(&h.digest(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_round_trip_through_the_config_form() {
        let h = KeyHasher::new(b"0123456789abcdef0123").expect("hasher");
        let enc = h.encode(b"tg_gold_0123456789abcdef");
        assert_eq!(
            parse_digest(&enc),
            Some(h.digest(b"tg_gold_0123456789abcdef"))
        );
        assert_ne!(h.digest(b"a"), h.digest(b"b"));
        assert!(KeyHasher::new(b"short").is_none());
        assert_eq!(parse_digest("hmac-sha256:zz"), None);
        assert!(!format!("{h:?}").contains("0123"));
    }
}
