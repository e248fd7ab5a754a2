//! JWT verification with JWKS (fetched, cached, refreshed, refetched on unknown `kid`), a
//! verified-token cache, and the gateway's own token issuer for OAuth2 client credentials.
//!
//! [`JwtVerifier`] trusts a set of issuers. A token is matched to its issuer by `iss`, its key
//! by `kid`, and the algorithm is the one pinned to that key (see [`KeySet`]), so the token
//! cannot choose how it is checked. Claims are checked against the injected [`Clock`].
//!
//! Keys from a URL are fetched at [`JwtVerifier::start`] and refreshed in the background; a
//! token naming a `kid` we do not have triggers one refetch per issuer at a time, at most once
//! per `min_refetch_interval`, so a rotated key works on its first use while a flood of made-up
//! `kid`s cannot hammer the IdP. A failed or nonsensical fetch keeps the last good keys.
//!
//! Nothing here ever logs or displays a token.

mod cache;
mod claims;
mod fetch;
mod issuer;
mod keys;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;

pub use claims::Claims;
pub use fetch::{DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_JWKS_BYTES, MAX_CACHE_AGE};
pub use issuer::{MAX_TOKEN_TTL, TokenIssuer, TokenIssuerConfig, TokenIssuerError};
pub use jsonwebtoken::Algorithm;
pub use jsonwebtoken::jwk::JwkSet;
pub use keys::{JwksError, KeySet, MAX_TOKEN_LEN, SharedSecret, VerifiedJws};

use arc_swap::ArcSwap;
use http::Uri;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tollgate_core::Clock;

use cache::{Entry, TokenCache, cache_key};
use claims::Rules;
use fetch::HttpClient;
use keys::{Compact, SigFailure};

pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(10 * 60);
pub const DEFAULT_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;
/// Clock skew tolerated at most; more would make `exp` meaningless for short-lived tokens.
pub const MAX_LEEWAY: Duration = Duration::from_secs(5 * 60);

/// The asymmetric algorithms, allowed by default for key sets.
pub const ASYMMETRIC_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];
/// The HMAC algorithms, allowed by default (and only) for shared secrets.
pub const HMAC_ALGORITHMS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum JwksSource {
    /// A JWK Set URL. Plain `http://` only for now.
    Url(String),
    /// A JWK Set file, re-read every `refresh_interval`.
    File(PathBuf),
    /// A fixed JWK Set (public keys only).
    Static(JwkSet),
    /// HMAC secrets (HS256/384/512), the only way HMAC-signed tokens are accepted.
    SharedSecrets(Vec<SharedSecret>),
}

/// One trusted issuer.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerConfig {
    /// Compared exactly with the token's `iss`.
    pub issuer: String,
    /// The token's `aud` (string or array) must contain at least one of these.
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// Algorithms this issuer may use; each key is further pinned to its own.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Background refresh period when the JWKS response has no `max-age`.
    pub refresh_interval: Duration,
    /// Least time between two refetches caused by unknown `kid`s; also the first retry delay
    /// after a failed fetch.
    pub min_refetch_interval: Duration,
}

impl IssuerConfig {
    /// Defaults: the asymmetric algorithms (the HMAC ones for shared secrets), one minute of
    /// leeway, refresh every ten minutes, refetch at most every ten seconds.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>, jwks: JwksSource) -> Self {
        let algorithms = match &jwks {
            JwksSource::SharedSecrets(_) => HMAC_ALGORITHMS.to_vec(),
            _ => ASYMMETRIC_ALGORITHMS.to_vec(),
        };
        Self {
            issuer: issuer.into(),
            audiences,
            jwks,
            algorithms,
            leeway: DEFAULT_LEEWAY,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            min_refetch_interval: DEFAULT_MIN_REFETCH_INTERVAL,
        }
    }
}

/// Knobs that are not per issuer.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifierOptions {
    /// Verified tokens kept; 0 turns the cache off.
    pub cache_capacity: usize,
    /// Deadline for one JWKS fetch (connect, headers and body).
    pub fetch_timeout: Duration,
    pub max_jwks_bytes: usize,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        Self {
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            max_jwks_bytes: DEFAULT_MAX_JWKS_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtConfigError {
    #[error("jwt: no issuers configured")]
    NoIssuers,
    #[error("jwt: an issuer is empty")]
    EmptyIssuer,
    #[error("jwt: issuer {0:?} is configured twice")]
    DuplicateIssuer(String),
    #[error("jwt: issuer {issuer:?}: at least one audience is required")]
    NoAudience { issuer: String },
    #[error("jwt: issuer {issuer:?}: no algorithms allowed")]
    NoAlgorithms { issuer: String },
    #[error(
        "jwt: issuer {issuer:?}: {alg:?} is an HMAC algorithm; it is only allowed with shared secrets, never with public keys"
    )]
    HmacWithoutSecret { issuer: String, alg: Algorithm },
    #[error(
        "jwt: issuer {issuer:?}: shared secrets can only be used with HS256/HS384/HS512, not {alg:?}"
    )]
    AsymmetricWithSecret { issuer: String, alg: Algorithm },
    #[error(
        "jwt: issuer {issuer:?}: leeway {leeway:?} is more than {max:?}",
        max = MAX_LEEWAY
    )]
    LeewayTooLarge { issuer: String, leeway: Duration },
    #[error("jwt: issuer {issuer:?}: refresh_interval and min_refetch_interval must be positive")]
    BadInterval { issuer: String },
    #[error(
        "jwt: issuer {issuer:?}: JWKS URL {url:?}: https is not supported yet (it needs upstream TLS); use http:// or a file"
    )]
    HttpsUnsupported { issuer: String, url: String },
    #[error("jwt: issuer {issuer:?}: JWKS URL {url:?} is not an absolute http:// URL")]
    BadUrl { issuer: String, url: String },
    #[error("jwt: issuer {issuer:?}: cannot read JWKS file {path}: {source}")]
    ReadFile {
        issuer: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("jwt: issuer {issuer:?}: {source}")]
    Keys {
        issuer: String,
        #[source]
        source: JwksError,
    },
}

/// Why a token was refused. `Display` is the stable reason, never the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("key id required")]
    KidRequired,
    #[error("bad signature")]
    BadSignature,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("missing exp claim")]
    MissingExpiry,
}

impl JwtError {
    /// Short, stable, safe for `WWW-Authenticate: Bearer error="invalid_token",
    /// error_description="..."` (no quotes or backslashes).
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Malformed => "malformed token",
            JwtError::AlgorithmNotAllowed => "algorithm not allowed",
            JwtError::UnknownKey => "unknown signing key",
            JwtError::KidRequired => "key id required",
            JwtError::BadSignature => "bad signature",
            JwtError::WrongIssuer => "wrong issuer",
            JwtError::WrongAudience => "wrong audience",
            JwtError::Expired => "token expired",
            JwtError::NotYetValid => "token not yet valid",
            JwtError::IssuedInFuture => "token issued in the future",
            JwtError::MissingExpiry => "missing exp claim",
        }
    }
}

/// Outcome of the synchronous path.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Valid(Arc<Claims>),
    Invalid(JwtError),
    /// The token names a key its issuer's current set lacks: a refetch may help, so call
    /// [`JwtVerifier::verify`].
    UnknownKey,
}

/// The keys in use for one issuer, with a generation that changes when their content does.
struct Installed {
    set: KeySet,
    generation: u64,
}

enum Source {
    Url { uri: Uri, url: String },
    File(PathBuf),
    Fixed,
}

struct IssuerState {
    rules: Rules,
    algorithms: Vec<Algorithm>,
    refresh_interval: Duration,
    min_refetch_interval: Duration,
    source: Source,
    keys: ArcSwap<Installed>,
    /// Held while fetching: concurrent refetches wait for the one in flight.
    fetch: tokio::sync::Mutex<FetchState>,
    /// Completed fetch attempts, so a waiter can tell that a fetch happened while it waited.
    fetches: AtomicU64,
}

#[derive(Default)]
struct FetchState {
    last_on_demand: Option<Instant>,
}

struct Inner {
    /// What the verifier was made from, to tell whether a new config asks for the same.
    configs: Vec<IssuerConfig>,
    issuers: Vec<IssuerState>,
    by_name: HashMap<String, usize>,
    clock: Arc<dyn Clock>,
    cache: TokenCache,
    client: HttpClient,
    options: VerifierOptions,
    started: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self
            .tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

/// Verifies bearer JWTs for a set of trusted issuers. Cheap to clone; clones share keys,
/// cache and background refreshes, which stop when the last clone is dropped.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuers", &self.inner.by_name.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

enum Failure {
    Invalid(JwtError),
    UnknownKey(usize),
}

impl From<JwtError> for Failure {
    fn from(e: JwtError) -> Self {
        Failure::Invalid(e)
    }
}

impl JwtVerifier {
    /// Checks the configs and loads static and file key sets. URL key sets start empty until
    /// [`JwtVerifier::start`].
    pub fn new(configs: Vec<IssuerConfig>, clock: Arc<dyn Clock>) -> Result<Self, JwtConfigError> {
        Self::with_options(configs, clock, VerifierOptions::default())
    }

    pub fn with_options(
        configs: Vec<IssuerConfig>,
        clock: Arc<dyn Clock>,
        options: VerifierOptions,
    ) -> Result<Self, JwtConfigError> {
        if configs.is_empty() {
            return Err(JwtConfigError::NoIssuers);
        }
        let mut issuers = Vec::with_capacity(configs.len());
        let mut by_name = HashMap::new();
        for c in configs.iter().cloned() {
            let state = issuer_state(c, &options)?;
            let name = state.rules.issuer.clone();
            if by_name.insert(name.clone(), issuers.len()).is_some() {
                return Err(JwtConfigError::DuplicateIssuer(name));
            }
            issuers.push(state);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                configs,
                issuers,
                by_name,
                clock,
                cache: TokenCache::new(options.cache_capacity),
                client: fetch::http_client(options.fetch_timeout),
                options,
                started: AtomicBool::new(false),
                tasks: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Whether this verifier was made from exactly these issuers (and the default options),
    /// so that a new config snapshot can keep it: its fetched key sets, its cache of verified
    /// tokens and its refresh schedule then carry over, and a reload or an admin change while
    /// the IdP is unreachable does not leave the gateway without its keys.
    pub fn serves(&self, configs: &[IssuerConfig]) -> bool {
        self.inner.configs == configs && self.inner.options == VerifierOptions::default()
    }

    /// Fetches every URL key set once (waiting for those attempts, which never fail the
    /// call: an unreachable IdP leaves its set empty and is retried in the background) and
    /// starts the background refreshes. Later calls do nothing.
    pub async fn start(&self) {
        if self.inner.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut first_attempts = Vec::new();
        let mut handles = Vec::new();
        for (idx, state) in self.inner.issuers.iter().enumerate() {
            let fetch_first = match state.source {
                Source::Url { .. } => true,
                Source::File(_) => false,
                Source::Fixed => continue,
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            if fetch_first {
                first_attempts.push(rx);
            }
            let weak = Arc::downgrade(&self.inner);
            let task = tokio::spawn(refresh_loop(weak, idx, fetch_first, tx));
            handles.push(task.abort_handle());
        }
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(handles);
        for rx in first_attempts {
            let _ = rx.await;
        }
    }

    /// Fetches every URL and file key set now (joining a fetch already in flight rather than
    /// starting another). For an admin "reload keys" action.
    pub async fn refresh_now(&self) {
        for idx in 0..self.inner.issuers.len() {
            if matches!(self.inner.issuers[idx].source, Source::Fixed) {
                continue;
            }
            let state = &self.inner.issuers[idx];
            let seen = state.fetches.load(Ordering::Acquire);
            let _guard = state.fetch.lock().await;
            if state.fetches.load(Ordering::Acquire) == seen {
                let _ = self.inner.fetch_and_install(idx).await;
            }
        }
    }

    /// The synchronous path: cache, then full verification with the keys at hand.
    pub fn verify_cached(&self, token: &str) -> Verdict {
        match self.inner.check(token) {
            Ok(c) => Verdict::Valid(c),
            Err(Failure::Invalid(e)) => Verdict::Invalid(e),
            Err(Failure::UnknownKey(_)) => Verdict::UnknownKey,
        }
    }

    /// Full verification, refetching the issuer's key set once when the token names a key
    /// it does not have yet.
    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, JwtError> {
        let idx = match self.inner.check(token) {
            Ok(c) => return Ok(c),
            Err(Failure::Invalid(e)) => return Err(e),
            Err(Failure::UnknownKey(idx)) => idx,
        };
        // In a task of its own so that a caller that goes away (client disconnect, timeout)
        // does not abort a fetch that other requests are queued behind.
        let inner = self.inner.clone();
        let _ = tokio::spawn(async move { inner.refetch_for_unknown_key(idx).await }).await;
        match self.inner.check(token) {
            Ok(c) => Ok(c),
            Err(Failure::Invalid(e)) => Err(e),
            Err(Failure::UnknownKey(_)) => Err(JwtError::UnknownKey),
        }
    }

    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.inner.issuers.iter().map(|s| s.rules.issuer.as_str())
    }

    /// Number of keys currently in use for `issuer` (0 while its IdP has never answered).
    pub fn key_count(&self, issuer: &str) -> Option<usize> {
        let idx = *self.inner.by_name.get(issuer)?;
        Some(self.inner.issuers[idx].keys.load().set.len())
    }

    /// Tokens currently in the verified-token cache.
    pub fn cached_tokens(&self) -> usize {
        self.inner.cache.len()
    }
}

fn issuer_state(c: IssuerConfig, options: &VerifierOptions) -> Result<IssuerState, JwtConfigError> {
    let issuer = c.issuer;
    if issuer.is_empty() {
        return Err(JwtConfigError::EmptyIssuer);
    }
    if c.audiences.is_empty() || c.audiences.iter().any(String::is_empty) {
        return Err(JwtConfigError::NoAudience { issuer });
    }
    if c.algorithms.is_empty() {
        return Err(JwtConfigError::NoAlgorithms { issuer });
    }
    if c.leeway > MAX_LEEWAY {
        return Err(JwtConfigError::LeewayTooLarge {
            issuer,
            leeway: c.leeway,
        });
    }
    if c.refresh_interval.is_zero() || c.min_refetch_interval.is_zero() {
        return Err(JwtConfigError::BadInterval { issuer });
    }
    let secrets = matches!(c.jwks, JwksSource::SharedSecrets(_));
    for &alg in &c.algorithms {
        let hmac = HMAC_ALGORITHMS.contains(&alg);
        if hmac && !secrets {
            return Err(JwtConfigError::HmacWithoutSecret { issuer, alg });
        }
        if !hmac && secrets {
            return Err(JwtConfigError::AsymmetricWithSecret { issuer, alg });
        }
    }
    let keys_err = |issuer: &str| {
        let issuer = issuer.to_owned();
        move |source| JwtConfigError::Keys { issuer, source }
    };
    let (source, set) = match c.jwks {
        JwksSource::Url(url) => {
            if url
                .get(..8)
                .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
            {
                return Err(JwtConfigError::HttpsUnsupported { issuer, url });
            }
            let uri: Uri = match url.parse() {
                Ok(u) => u,
                Err(_) => return Err(JwtConfigError::BadUrl { issuer, url }),
            };
            if uri.scheme() != Some(&http::uri::Scheme::HTTP) || uri.host().is_none() {
                return Err(JwtConfigError::BadUrl { issuer, url });
            }
            (Source::Url { uri, url }, KeySet::empty())
        }
        JwksSource::File(path) => {
            let body =
                match tollgate_config::files::read(&path, tollgate_config::files::MAX_SECRET_BYTES)
                {
                    Ok(b) => b,
                    Err(source) => {
                        return Err(JwtConfigError::ReadFile {
                            issuer,
                            path,
                            source,
                        });
                    }
                };
            if body.len() > options.max_jwks_bytes {
                return Err(JwtConfigError::Keys {
                    issuer,
                    source: JwksError::NotAKeySet,
                });
            }
            let set = KeySet::from_jwks_json(&body, &c.algorithms).map_err(keys_err(&issuer))?;
            (Source::File(path), set)
        }
        JwksSource::Static(jwks) => {
            let set = KeySet::from_jwk_set(&jwks, &c.algorithms).map_err(keys_err(&issuer))?;
            (Source::Fixed, set)
        }
        JwksSource::SharedSecrets(secrets) => {
            let set =
                KeySet::from_shared_secrets(&secrets, &c.algorithms).map_err(keys_err(&issuer))?;
            (Source::Fixed, set)
        }
    };
    Ok(IssuerState {
        rules: Rules {
            issuer,
            audiences: c.audiences,
            leeway: c.leeway,
        },
        algorithms: c.algorithms,
        refresh_interval: c.refresh_interval,
        min_refetch_interval: c.min_refetch_interval,
        source,
        keys: ArcSwap::from_pointee(Installed { set, generation: 0 }),
        fetch: tokio::sync::Mutex::new(FetchState::default()),
        fetches: AtomicU64::new(0),
    })
}

impl Inner {
    fn check(&self, token: &str) -> Result<Arc<Claims>, Failure> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed.into());
        }
        let now = self.clock.now();
        let key = cache_key(token);
        if let Some(claims) = self
            .cache
            .get(&key, now, |i| self.issuers[i].keys.load().generation)
        {
            return Ok(claims);
        }

        let compact = Compact::parse(token)?;
        let payload: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&compact.payload()?).map_err(|_| JwtError::Malformed)?;
        // `iss` picks the key set before the signature is checked; validate() below insists it
        // is exactly that issuer, so an unverified `iss` can only select, never grant.
        let idx = match payload.get("iss") {
            Some(serde_json::Value::String(iss)) => *self
                .by_name
                .get(iss.as_str())
                .ok_or(JwtError::WrongIssuer)?,
            _ => return Err(JwtError::WrongIssuer.into()),
        };
        let state = &self.issuers[idx];
        let installed = state.keys.load();
        match installed.set.verify_compact(&compact) {
            Ok(_) => {}
            Err(SigFailure::UnknownKey) => {
                // A token that would fail anyway (typically an old one whose key was rotated
                // out, and which has expired) is not worth a refetch.
                return Err(match claims::validate(payload, &state.rules, now) {
                    Ok(_) => Failure::UnknownKey(idx),
                    Err(e) => Failure::Invalid(e),
                });
            }
            Err(SigFailure::Invalid(e)) => return Err(e.into()),
        }
        let claims = Arc::new(claims::validate(payload, &state.rules, now)?);
        self.cache.insert(
            key,
            Entry {
                claims: claims.clone(),
                issuer: idx,
                generation: installed.generation,
            },
            now,
        );
        Ok(claims)
    }

    async fn refetch_for_unknown_key(&self, idx: usize) {
        let state = &self.issuers[idx];
        if matches!(state.source, Source::Fixed) {
            return;
        }
        let seen = state.fetches.load(Ordering::Acquire);
        let mut guard = state.fetch.lock().await;
        if state.fetches.load(Ordering::Acquire) != seen {
            // Another request fetched while we waited; its result is what we would get.
            return;
        }
        if guard
            .last_on_demand
            .is_some_and(|t| t.elapsed() < state.min_refetch_interval)
        {
            return;
        }
        guard.last_on_demand = Some(Instant::now());
        let _ = self.fetch_and_install(idx).await;
    }

    /// One fetch; the caller holds the issuer's fetch lock. On failure the current keys stay.
    async fn fetch_and_install(&self, idx: usize) -> Result<Option<Duration>, ()> {
        let state = &self.issuers[idx];
        let fetched = match &state.source {
            Source::Url { uri, .. } => {
                fetch::fetch_url(
                    &self.client,
                    uri,
                    self.options.fetch_timeout,
                    self.options.max_jwks_bytes,
                )
                .await
            }
            Source::File(path) => fetch::read_file(path, self.options.max_jwks_bytes).await,
            Source::Fixed => return Ok(None),
        };
        let result = match fetched {
            Ok(f) => match KeySet::from_jwks_json(&f.body, &state.algorithms) {
                Ok(set) => {
                    self.install(idx, set);
                    Ok(f.max_age)
                }
                Err(e) => {
                    self.warn_kept(idx, &e.to_string());
                    Err(())
                }
            },
            Err(e) => {
                self.warn_kept(idx, &e.to_string());
                Err(())
            }
        };
        state.fetches.fetch_add(1, Ordering::AcqRel);
        result
    }

    fn warn_kept(&self, idx: usize, error: &str) {
        let state = &self.issuers[idx];
        let source = match &state.source {
            Source::Url { url, .. } => url.clone(),
            Source::File(p) => p.display().to_string(),
            Source::Fixed => String::new(),
        };
        tracing::warn!(
            issuer = %state.rules.issuer,
            jwks = %source,
            error,
            keys_kept = state.keys.load().set.len(),
            "JWKS fetch failed; keeping the last good key set"
        );
    }

    fn install(&self, idx: usize, set: KeySet) {
        let state = &self.issuers[idx];
        let current = state.keys.load();
        if current.set.digest() == set.digest() {
            return;
        }
        tracing::info!(
            issuer = %state.rules.issuer,
            kids = ?set.kids().collect::<Vec<_>>(),
            "JWKS updated"
        );
        // Only fetches (serialised by the fetch lock) store, so load-then-store cannot lose
        // an update.
        state.keys.store(Arc::new(Installed {
            set,
            generation: current.generation + 1,
        }));
    }
}

/// Background refresh of one issuer's key set; ends when the verifier is dropped.
async fn refresh_loop(
    weak: Weak<Inner>,
    idx: usize,
    fetch_first: bool,
    first_done: tokio::sync::oneshot::Sender<()>,
) {
    let mut first_done = Some(first_done);
    let mut failures = 0u32;
    let mut delay = match weak.upgrade() {
        Some(inner) if !fetch_first => inner.issuers[idx].refresh_interval,
        Some(_) => Duration::ZERO,
        None => return,
    };
    loop {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let Some(inner) = weak.upgrade() else { return };
        let state = &inner.issuers[idx];
        let outcome = {
            let _guard = state.fetch.lock().await;
            inner.fetch_and_install(idx).await
        };
        if let Some(tx) = first_done.take() {
            let _ = tx.send(());
        }
        delay = match outcome {
            Ok(max_age) => {
                failures = 0;
                fetch::next_refresh(max_age, state.refresh_interval, state.min_refetch_interval)
            }
            Err(()) => {
                failures = failures.saturating_add(1);
                fetch::retry_delay(failures, state.refresh_interval, state.min_refetch_interval)
            }
        };
    }
}
