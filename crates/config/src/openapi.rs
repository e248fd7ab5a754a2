//! Design-first API registration: a tenant submits an OpenAPI 3.0 or 3.1 document carrying
//! `x-tollgate` extensions, and this module checks it and compiles it into the same [`Api`] and
//! [`Upstream`] a config file would declare, so registered APIs go through the one validation
//! and compile path the file's APIs do.
//!
//! Problems are reported as RFC 6901 JSON pointers into the submitted document (not config key
//! paths): the submitter wrote the document, not our config, so that is where they must look.
//! Every problem is collected, so a tenant fixes a document in one round trip.
//!
//! The extension keys are documented in `docs/openapi-extensions.md`.

use crate::validate::{check_path_template, check_target_url};
use crate::{
    Api, AuthScheme, Duration, LimitScope, ListenerName, Route, RouteAuth, RouteLimit, RouteLimits,
    Upstream,
};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::sync::LazyLock;

/// One problem in a submitted document; `pointer` is an RFC 6901 JSON pointer into the document
/// (`""` = root).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct DocProblem {
    pub pointer: String,
    pub message: String,
}

impl std::fmt::Display for DocProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.pointer.is_empty() {
            "(document)"
        } else {
            &self.pointer
        };
        write!(f, "{at}: {}", self.message)
    }
}

/// A document compiled into config: the API (its routes name `upstream_name`) and the upstream
/// to register under that name.
#[derive(Clone, Debug)]
pub struct Imported {
    pub api: Api,
    pub upstream_name: String,
    pub upstream: Upstream,
}

/// Matches the scenario's upstream timeouts; a registered API rarely needs more.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Operation keys of a path item, in the order routes are emitted.
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

const TOP_KEYS: &[&str] = &[
    "upstream",
    "connect_timeout",
    "response_timeout",
    "listeners",
    "auth",
    "scopes",
    "limit",
    "max_body_bytes",
];
const OP_KEYS: &[&str] = &["auth", "scopes", "limit", "max_body_bytes"];
/// Scopes are checked against the caller's identity; with no scheme there is none.
const SCOPES_NEED_AUTH: &str =
    "scopes need authentication: set `auth` too (scopes are checked against the caller)";
const LIMIT_KEYS: &[&str] = &["rate", "burst", "per"];
/// `authorizer` is deliberately absent: it needs an authorizer name from the gateway's own
/// config, which a tenant's document has no business naming.
const AUTH_SCHEMES: &[(&str, AuthScheme)] = &[
    ("api_key", AuthScheme::ApiKey),
    ("jwt", AuthScheme::Jwt),
    ("mtls", AuthScheme::Mtls),
    ("sigv4", AuthScheme::Sigv4),
];

// The official schemas (see crates/config/schemas/README.md for provenance), embedded so that
// validation never fetches anything: remote `$ref` resolution in a gateway would be an SSRF.
const SCHEMA_30: &str = include_str!("../schemas/v3.0/schema.json");
const SCHEMA_31: &str = include_str!("../schemas/v3.1/schema.json");

// Compiled once per process: compiling takes milliseconds, validating microseconds. A failure
// is kept as a message (not a panic) so a broken vendored file degrades to a 422, not a crash.
static VALIDATOR_30: LazyLock<Result<jsonschema::Validator, String>> =
    LazyLock::new(|| compile_schema(SCHEMA_30));
static VALIDATOR_31: LazyLock<Result<jsonschema::Validator, String>> =
    LazyLock::new(|| compile_schema(SCHEMA_31));

fn compile_schema(text: &str) -> Result<jsonschema::Validator, String> {
    let schema: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    // No retriever is configured and the crate is built without `resolve-http`/`resolve-file`:
    // both schemas only use internal `$ref`s and the draft-04 / 2020-12 meta-schemas, which
    // jsonschema ships.
    jsonschema::options()
        .build(&schema)
        .map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V30,
    V31,
}

/// Collected problems; deduplicated and sorted only at the end.
#[derive(Default)]
struct Problems(Vec<DocProblem>);

impl Problems {
    fn push(&mut self, pointer: impl Into<String>, message: impl Into<String>) {
        self.0.push(DocProblem {
            pointer: pointer.into(),
            message: message.into(),
        });
    }

    /// Each problem once, sorted by pointer (then message, so output is deterministic).
    fn finish(self) -> Vec<DocProblem> {
        let set: BTreeSet<DocProblem> = self.0.into_iter().collect();
        set.into_iter().collect()
    }
}

/// RFC 6901: `~` → `~0`, `/` → `~1` (in that order, so a `~1` in a key is not misread).
pub fn escape_pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn child(pointer: &str, token: &str) -> String {
    format!("{pointer}/{}", escape_pointer_token(token))
}

/// Parse a submitted body: JSON, or YAML when `yaml` is true. A syntax error is one problem at
/// the root naming its line and column.
pub fn parse_document(body: &[u8], yaml: bool) -> Result<Value, Vec<DocProblem>> {
    if !yaml {
        return serde_json::from_slice(body).map_err(|e| {
            vec![DocProblem {
                pointer: String::new(),
                message: format!(
                    "not valid JSON at line {}, column {}: {}",
                    e.line(),
                    e.column(),
                    strip_location(&e.to_string())
                ),
            }]
        });
    }
    let mut value: yaml_serde::Value = yaml_serde::from_slice(body).map_err(|e| {
        let message = match e.location() {
            Some(l) => format!(
                "not valid YAML at line {}, column {}: {}",
                l.line(),
                l.column(),
                strip_location(&e.to_string())
            ),
            None => format!("not valid YAML: {e}"),
        };
        vec![DocProblem {
            pointer: String::new(),
            message,
        }]
    })?;
    // `<<` merge keys are common in hand-written YAML specs; resolve them as YAML 1.1 readers do.
    if let Err(e) = value.apply_merge() {
        return Err(vec![DocProblem {
            pointer: String::new(),
            message: format!("invalid YAML merge key: {e}"),
        }]);
    }
    let mut problems = Problems::default();
    let json = yaml_to_json(value, "", &mut problems);
    if problems.0.is_empty() {
        Ok(json)
    } else {
        Err(problems.finish())
    }
}

/// Both parsers put " at line L column C" in their messages (YAML's mid-sentence); the
/// location is reported up front instead.
fn strip_location(msg: &str) -> String {
    let Some(i) = msg.find(" at line ") else {
        return msg.to_string();
    };
    let rest = &msg[i + " at line ".len()..];
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = rest.strip_prefix(" column ").unwrap_or(rest);
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    format!("{}{rest}", &msg[..i])
}

/// YAML is a superset of JSON's data model: non-string keys (`200:` under `responses` is an
/// integer) become their JSON text, tags are dropped, and what JSON cannot hold (NaN, a mapping
/// as a key) is a problem.
fn yaml_to_json(v: yaml_serde::Value, pointer: &str, problems: &mut Problems) -> Value {
    use yaml_serde::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                match serde_json::Number::from_f64(f) {
                    Some(num) => Value::Number(num),
                    None => {
                        problems.push(pointer, format!("`{n}` cannot be represented in JSON"));
                        Value::Null
                    }
                }
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| yaml_to_json(item, &format!("{pointer}/{i}"), problems))
                .collect(),
        ),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    Y::Null => "null".to_string(),
                    _ => {
                        problems.push(pointer, "mapping keys must be scalars");
                        continue;
                    }
                };
                let p = child(pointer, &key);
                let converted = yaml_to_json(val, &p, problems);
                if out.insert(key.clone(), converted).is_some() {
                    problems.push(p, format!("duplicate key `{key}`"));
                }
            }
            Value::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(t.value, pointer, problems),
    }
}

/// Validate an OpenAPI 3.0.x or 3.1.x document carrying `x-tollgate` extensions and compile it
/// into an [`Api`] whose routes use the upstream named `upstream_name` (=
/// `format!("{tenant}/{api_id}")`). Returns every problem found, not just the first.
pub fn import(tenant: &str, api_id: &str, doc: &Value) -> Result<Imported, Vec<DocProblem>> {
    let mut p = Problems::default();
    let Some(root) = doc.as_object() else {
        return Err(vec![DocProblem {
            pointer: String::new(),
            message: "an OpenAPI document must be an object".into(),
        }]);
    };

    let version = check_version(root, &mut p);
    match version {
        Some(v) => schema_check(v, doc, &mut p),
        // Without a known version there is no schema to apply; still check the shape the rest
        // of the import relies on, so the submitter sees those problems in the same answer.
        None => basic_structure(root, &mut p),
    }

    let upstream_name = format!("{tenant}/{api_id}");
    let top = top_level(root, &mut p);
    let mut routes = routes(root, &top, &mut p);
    // Route ids name routes across the whole gateway (logs, metrics, limiter state, plans'
    // per-route rates), and operationIds are only unique within a document: scoped by tenant
    // and API, two tenants may both have a `getWidget`, and neither learns of the other's.
    for r in &mut routes {
        if let Some(op) = r.id.take() {
            r.id = Some(format!("{tenant}/{api_id}/{op}"));
        }
    }

    let upstream = top
        .upstream_url
        .as_deref()
        .and_then(|url| build_upstream(url, &top, &mut p));

    if !p.0.is_empty() {
        return Err(p.finish());
    }
    let Some(upstream) = upstream else {
        // Unreachable in practice: a missing upstream is always reported above.
        return Err(vec![DocProblem {
            pointer: "/x-tollgate/upstream".into(),
            message: "required".into(),
        }]);
    };
    Ok(Imported {
        api: Api {
            upstream: Some(upstream_name.clone()),
            deprecation: None,
            listeners: top.listeners,
            // Defaults are resolved into each route (see `routes`), so an operation can opt out
            // of the API's auth with `auth: []` without depending on how the proxy merges tiers.
            auth: None,
            limits: top.limit,
            routes,
        },
        upstream_name,
        upstream,
    })
}

fn check_version(root: &Map<String, Value>, p: &mut Problems) -> Option<Version> {
    const WANT: &str = "must be an OpenAPI version 3.0.x or 3.1.x, e.g. \"3.1.0\"";
    match root.get("openapi") {
        None => {
            p.push("/openapi", format!("required: {WANT}"));
            None
        }
        Some(Value::String(s)) => {
            // Same rule as the schemas' `^3\.[01]\.\d+(-.+)?$`.
            let parse = |prefix: &str| {
                let rest = s.strip_prefix(prefix)?;
                let (patch, suffix) = match rest.split_once('-') {
                    Some((a, b)) => (a, Some(b)),
                    None => (rest, None),
                };
                let ok = !patch.is_empty()
                    && patch.bytes().all(|b| b.is_ascii_digit())
                    && suffix.is_none_or(|x| !x.is_empty());
                ok.then_some(())
            };
            if parse("3.0.").is_some() {
                Some(Version::V30)
            } else if parse("3.1.").is_some() {
                Some(Version::V31)
            } else {
                p.push("/openapi", format!("`{s}` is not supported: {WANT}"));
                None
            }
        }
        Some(_) => {
            p.push("/openapi", format!("must be a string: {WANT}"));
            None
        }
    }
}

fn schema_check(version: Version, doc: &Value, p: &mut Problems) {
    let validator = match version {
        Version::V30 => &*VALIDATOR_30,
        Version::V31 => &*VALIDATOR_31,
    };
    let validator = match validator {
        Ok(v) => v,
        Err(e) => {
            p.push(
                "",
                format!("internal error: the OpenAPI schema failed to load: {e}"),
            );
            return;
        }
    };
    for err in validator.iter_errors(doc) {
        explain(&err, p);
    }
}

/// Turns a schema error into problems. `oneOf`/`anyOf` failures are where the schemas offer
/// "a Reference Object or the real thing"; jsonschema then only says "not valid under any of
/// the schemas", which names no key. When every alternative but one failed for lack of `$ref`,
/// the object was clearly meant as the other one, so report that alternative's own errors.
fn explain(err: &jsonschema::ValidationError<'_>, p: &mut Problems) {
    use jsonschema::error::ValidationErrorKind as K;
    let (context, keyword) = match err.kind() {
        K::OneOfNotValid { context } => (context, "oneOf"),
        K::AnyOf { context } => (context, "anyOf"),
        _ => {
            p.push(err.instance_path().to_string(), shorten(&err.to_string()));
            return;
        }
    };
    let here = err.instance_path().to_string();
    let wants_ref = |branch: &Vec<jsonschema::ValidationError<'static>>| {
        branch.iter().any(|e| {
            e.instance_path().to_string() == here
                && matches!(e.kind(), K::Required { property } if property == "$ref")
        })
    };
    let candidates: Vec<_> = context.iter().filter(|b| !wants_ref(b)).collect();
    match candidates.as_slice() {
        [only] if !only.is_empty() => {
            for e in only.iter() {
                explain(e, p);
            }
        }
        // The failing value is at `here`; quoting it (as jsonschema does) only adds noise.
        _ => p.push(
            here,
            format!("does not match any of the forms `{keyword}` allows here"),
        ),
    }
}

/// Schema errors quote the failing instance, which for `oneOf` on a path item is the whole
/// item; cap them so a 422 body stays readable.
fn shorten(msg: &str) -> String {
    const MAX: usize = 300;
    if msg.len() <= MAX {
        return msg.to_string();
    }
    let mut end = MAX;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &msg[..end])
}

/// The few shape checks the import relies on, for documents with no known schema.
fn basic_structure(root: &Map<String, Value>, p: &mut Problems) {
    match root.get("info") {
        None => p.push("/info", "required: an object with `title` and `version`"),
        Some(Value::Object(_)) => {}
        Some(_) => p.push("/info", "must be an object"),
    }
    match root.get("paths") {
        None | Some(Value::Object(_)) => {}
        Some(_) => p.push("/paths", "must be an object"),
    }
}

/// Settings from the top-level `x-tollgate`, with the defaults operations inherit.
#[derive(Default)]
struct Top {
    upstream_url: Option<String>,
    connect_timeout: Option<Duration>,
    response_timeout: Option<Duration>,
    listeners: Option<Vec<ListenerName>>,
    auth: Option<Vec<AuthScheme>>,
    scopes: Option<(Vec<String>, String)>,
    limit: Option<RouteLimits>,
    max_body_bytes: Option<u64>,
}

fn top_level(root: &Map<String, Value>, p: &mut Problems) -> Top {
    const PTR: &str = "/x-tollgate";
    let mut top = Top::default();
    let ext = match root.get("x-tollgate") {
        None => {
            p.push(
                PTR,
                "required: an object with at least `upstream`, e.g. \
                 {\"upstream\": \"http://127.0.0.1:9104\"}",
            );
            return top;
        }
        Some(Value::Object(m)) => m,
        Some(_) => {
            p.push(PTR, "must be an object");
            return top;
        }
    };
    unknown_keys(ext, PTR, TOP_KEYS, p);
    match ext.get("upstream") {
        None => p.push(
            child(PTR, "upstream"),
            "required: the backend's base URL, http://host:port",
        ),
        Some(v) => top.upstream_url = upstream_url(v, &child(PTR, "upstream"), p),
    }
    if let Some(v) = ext.get("connect_timeout") {
        top.connect_timeout = duration(v, &child(PTR, "connect_timeout"), p);
    }
    if let Some(v) = ext.get("response_timeout") {
        top.response_timeout = duration(v, &child(PTR, "response_timeout"), p);
    }
    if let Some(v) = ext.get("listeners") {
        top.listeners = listeners(v, &child(PTR, "listeners"), p);
    }
    if let Some(v) = ext.get("auth") {
        top.auth = auth(v, &child(PTR, "auth"), p);
    }
    if let Some(v) = ext.get("scopes") {
        let ptr = child(PTR, "scopes");
        top.scopes = scopes(v, &ptr, p).map(|s| (s, ptr));
    }
    if let Some(v) = ext.get("limit") {
        top.limit = limit(v, &child(PTR, "limit"), p);
    }
    if let Some(v) = ext.get("max_body_bytes") {
        top.max_body_bytes = max_body_bytes(v, &child(PTR, "max_body_bytes"), p);
    }
    if let Some((s, ptr)) = &top.scopes
        && !s.is_empty()
        && top.auth.as_ref().is_none_or(Vec::is_empty)
    {
        p.push(ptr, SCOPES_NEED_AUTH);
    }
    top
}

fn unknown_keys(m: &Map<String, Value>, pointer: &str, known: &[&str], p: &mut Problems) {
    for k in m.keys() {
        if !known.contains(&k.as_str()) {
            p.push(
                child(pointer, k),
                format!("unknown key `{k}`; expected one of: {}", known.join(", ")),
            );
        }
    }
}

fn upstream_url(v: &Value, ptr: &str, p: &mut Problems) -> Option<String> {
    let Some(s) = v.as_str() else {
        p.push(ptr, "must be a string: http://host:port");
        return None;
    };
    // The same rule as a config file's `upstreams.*.targets[].url`, so the result validates.
    match check_target_url(s) {
        Ok(()) => Some(s.to_string()),
        Err(msg) => {
            p.push(ptr, msg);
            None
        }
    }
}

fn duration(v: &Value, ptr: &str, p: &mut Problems) -> Option<Duration> {
    let Some(s) = v.as_str() else {
        p.push(ptr, "must be a string duration like \"500ms\" or \"3s\"");
        return None;
    };
    match humantime::parse_duration(s.trim()) {
        Ok(d) if d.is_zero() => {
            p.push(ptr, "must be greater than 0");
            None
        }
        Ok(d) => Some(Duration(d)),
        Err(e) => {
            p.push(
                ptr,
                format!("`{s}` is not a duration like \"500ms\" or \"3s\" ({e})"),
            );
            None
        }
    }
}

fn string_list<'a>(v: &'a Value, ptr: &str, what: &str, p: &mut Problems) -> Option<Vec<&'a str>> {
    let Some(items) = v.as_array() else {
        p.push(ptr, format!("must be a list of {what}"));
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(s) => out.push(s),
            None => {
                p.push(format!("{ptr}/{i}"), format!("must be a string ({what})"));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn listeners(v: &Value, ptr: &str, p: &mut Problems) -> Option<Vec<ListenerName>> {
    let names = string_list(v, ptr, "listener names (`public`, `tls`)", p)?;
    if names.is_empty() {
        p.push(ptr, "name at least one listener: `public`, `tls`");
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, n) in names.iter().enumerate() {
        let l = match *n {
            "public" => ListenerName::Public,
            "tls" => ListenerName::Tls,
            other => {
                p.push(
                    format!("{ptr}/{i}"),
                    format!("unknown listener `{other}`; expected `public` or `tls`"),
                );
                ok = false;
                continue;
            }
        };
        if out.contains(&l) {
            p.push(format!("{ptr}/{i}"), format!("`{n}` is listed twice"));
            ok = false;
        }
        out.push(l);
    }
    ok.then_some(out)
}

fn auth(v: &Value, ptr: &str, p: &mut Problems) -> Option<Vec<AuthScheme>> {
    let names = string_list(v, ptr, "auth schemes", p)?;
    let mut out = Vec::new();
    let mut ok = true;
    for (i, n) in names.iter().enumerate() {
        let Some((_, scheme)) = AUTH_SCHEMES.iter().find(|(name, _)| name == n) else {
            let known: Vec<_> = AUTH_SCHEMES.iter().map(|(n, _)| *n).collect();
            p.push(
                format!("{ptr}/{i}"),
                format!(
                    "unknown auth scheme `{n}`; expected one of: {}",
                    known.join(", ")
                ),
            );
            ok = false;
            continue;
        };
        if out.contains(scheme) {
            p.push(format!("{ptr}/{i}"), format!("`{n}` is listed twice"));
            ok = false;
        }
        out.push(*scheme);
    }
    ok.then_some(out)
}

fn scopes(v: &Value, ptr: &str, p: &mut Problems) -> Option<Vec<String>> {
    let names = string_list(v, ptr, "scope names", p)?;
    let mut ok = true;
    for (i, s) in names.iter().enumerate() {
        // OAuth 2 scope tokens (RFC 6749 §3.3) are non-empty and contain no spaces.
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            p.push(
                format!("{ptr}/{i}"),
                "a scope is a non-empty word without spaces",
            );
            ok = false;
        }
    }
    ok.then(|| names.into_iter().map(str::to_string).collect())
}

fn limit(v: &Value, ptr: &str, p: &mut Problems) -> Option<RouteLimits> {
    let Some(m) = v.as_object() else {
        p.push(ptr, "must be an object like {\"rate\": 10, \"burst\": 20}");
        return None;
    };
    unknown_keys(m, ptr, LIMIT_KEYS, p);
    let rate = match m.get("rate") {
        None => {
            p.push(
                child(ptr, "rate"),
                "required: requests per second sustained",
            );
            None
        }
        Some(r) => match r.as_f64() {
            Some(x) if (crate::validate::MIN_RATE..=crate::validate::MAX_RATE).contains(&x) => {
                Some(x)
            }
            _ => {
                p.push(
                    child(ptr, "rate"),
                    "must be a number of requests per second between 0.00001 and 1e9",
                );
                None
            }
        },
    };
    let burst = match m.get("burst") {
        None => {
            p.push(child(ptr, "burst"), "required: requests admitted at once");
            None
        }
        Some(b) => match b.as_u64().and_then(|x| u32::try_from(x).ok()) {
            Some(x) if x >= 1 => Some(x),
            _ => {
                p.push(
                    child(ptr, "burst"),
                    "must be a whole number from 1 to 4294967295",
                );
                None
            }
        },
    };
    let per = match m.get("per").map(Value::as_str) {
        None | Some(Some("all")) => Some(LimitScope::All),
        Some(Some("consumer")) => Some(LimitScope::Consumer),
        Some(_) => {
            p.push(child(ptr, "per"), "must be `all` or `consumer`");
            None
        }
    };
    Some(RouteLimits {
        rate: Some(RouteLimit {
            rate: rate?,
            burst: burst?,
            per: per?,
        }),
        ..RouteLimits::default()
    })
}

fn max_body_bytes(v: &Value, ptr: &str, p: &mut Problems) -> Option<u64> {
    match v.as_u64() {
        Some(n) if n > 0 => Some(n),
        _ => {
            p.push(ptr, "must be a whole number of bytes greater than 0");
            None
        }
    }
}

fn build_upstream(url: &str, top: &Top, p: &mut Problems) -> Option<Upstream> {
    // Built through the model's own deserializer so pool settings keep the config file's
    // defaults without this module copying them.
    let json = serde_json::json!({ "targets": [{ "url": url }] });
    match serde_json::from_value::<Upstream>(json) {
        Ok(mut u) => {
            u.connect_timeout = top.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
            u.response_timeout = top.response_timeout.unwrap_or(DEFAULT_RESPONSE_TIMEOUT);
            Some(u)
        }
        Err(e) => {
            p.push("/x-tollgate/upstream", format!("internal error: {e}"));
            None
        }
    }
}

/// Route ids share the config's rule for ids (they appear in metrics, logs and plans).
fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn routes(root: &Map<String, Value>, top: &Top, p: &mut Problems) -> Vec<Route> {
    let mut out = Vec::new();
    let Some(paths) = root.get("paths").and_then(Value::as_object) else {
        if !root.contains_key("paths") {
            p.push(
                "/paths",
                "required: the API's paths and operations become its routes",
            );
        }
        return out;
    };
    let mut ids = BTreeSet::new();
    for (path, item) in paths {
        // `x-` keys here are specification extensions, not paths.
        if path.starts_with("x-") {
            continue;
        }
        let pptr = child("/paths", path);
        if let Err(msg) = check_path_template(path) {
            p.push(&pptr, msg);
        }
        let Some(item) = item.as_object() else {
            continue; // the schema reports it
        };
        if item.contains_key("$ref") {
            p.push(
                child(&pptr, "$ref"),
                "path item references are not supported: write the operations inline",
            );
        }
        if item.contains_key("x-tollgate") {
            p.push(
                child(&pptr, "x-tollgate"),
                "x-tollgate is read at the top level and on operations, not on path items",
            );
        }
        for method in METHODS {
            let Some(op) = item.get(*method).and_then(Value::as_object) else {
                continue;
            };
            let optr = child(&pptr, method);
            if let Some(route) = operation(path, method, op, &optr, top, &mut ids, p) {
                out.push(route);
            }
        }
    }
    if out.is_empty() && p.0.is_empty() {
        p.push("/paths", "no operations: an API needs at least one route");
    }
    out
}

fn operation(
    path: &str,
    method: &str,
    op: &Map<String, Value>,
    optr: &str,
    top: &Top,
    ids: &mut BTreeSet<String>,
    p: &mut Problems,
) -> Option<Route> {
    let mut ok = true;
    // Without an operationId the route keeps `id: None`, which the config model names
    // `METHOD path`: that name is not a valid explicit id (it has spaces and slashes).
    let id = match op.get("operationId") {
        None => None,
        Some(Value::String(s)) => {
            let iptr = child(optr, "operationId");
            if !is_ident(s) {
                p.push(
                    &iptr,
                    format!(
                        "`{s}`: route ids may contain only letters, digits, `-` and `_` \
                         (at most 64)"
                    ),
                );
                ok = false;
            } else if !ids.insert(s.clone()) {
                p.push(&iptr, format!("operationId `{s}` is used twice"));
                ok = false;
            }
            Some(s.clone())
        }
        Some(_) => None, // the schema reports a non-string operationId
    };

    let ext = match op.get("x-tollgate") {
        None => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => {
            p.push(child(optr, "x-tollgate"), "must be an object");
            return None;
        }
    };
    let xptr = child(optr, "x-tollgate");
    if let Some(m) = ext {
        unknown_keys(m, &xptr, OP_KEYS, p);
    }
    let get = |k: &str| ext.and_then(|m| m.get(k));

    // An operation that sets `auth` replaces the API default entirely (scopes included);
    // one that does not inherits both, and may still narrow the scopes.
    let (schemes, scope_list) = match get("auth") {
        Some(v) => {
            let schemes = auth(v, &child(&xptr, "auth"), p);
            ok &= schemes.is_some();
            let sptr = child(&xptr, "scopes");
            let s = match get("scopes") {
                Some(v) => scopes(v, &sptr, p).map(|s| (s, sptr)),
                None => Some((Vec::new(), sptr)),
            };
            (schemes.unwrap_or_default(), s)
        }
        None => {
            // Fail closed: who may call an operation is always written down, on it or as the
            // API's default; `[]` is how a public operation says so.
            if top.auth.is_none() {
                p.push(
                    child(&xptr, "auth"),
                    "required (here or at the top-level x-tollgate): the schemes that may call \
                     this operation, e.g. [\"api_key\", \"jwt\"]; [] makes it public",
                );
                ok = false;
            }
            let s = match get("scopes") {
                Some(v) => {
                    let sptr = child(&xptr, "scopes");
                    scopes(v, &sptr, p).map(|s| (s, sptr))
                }
                // An invalid top-level list was reported there; treat it as empty here.
                None => Some(
                    top.scopes
                        .clone()
                        .unwrap_or_else(|| (Vec::new(), child(&xptr, "scopes"))),
                ),
            };
            (top.auth.clone().unwrap_or_default(), s)
        }
    };
    let scope_list = match scope_list {
        Some((s, sptr)) => {
            if !s.is_empty() && schemes.is_empty() {
                p.push(sptr, SCOPES_NEED_AUTH);
                ok = false;
            }
            s
        }
        None => {
            ok = false;
            Vec::new()
        }
    };
    let limits = match get("limit") {
        Some(v) => {
            let l = limit(v, &child(&xptr, "limit"), p);
            ok &= l.is_some();
            l
        }
        None => None,
    };
    let max_body = match get("max_body_bytes") {
        Some(v) => {
            let n = max_body_bytes(v, &child(&xptr, "max_body_bytes"), p);
            ok &= n.is_some();
            n
        }
        None => top.max_body_bytes,
    };
    let route_auth = (!schemes.is_empty()).then(|| RouteAuth {
        any: schemes,
        all: Vec::new(),
        scopes: scope_list,
        certificate_subjects: Vec::new(),
        authorizer: None,
    });
    ok.then(|| Route {
        id,
        path: path.to_string(),
        methods: vec![method.to_ascii_uppercase()],
        // The API's upstream applies; naming it per route would only duplicate it.
        upstream: None,
        listeners: None,
        max_body_bytes: max_body,
        deprecation: None,
        gone: None,
        versions: None,
        auth: route_auth,
        limits,
    })
}

#[cfg(test)]
mod tests;
