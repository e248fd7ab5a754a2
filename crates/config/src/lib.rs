//! Tollgate's configuration file: the YAML format (serde structs that refuse unknown keys),
//! loading with environment overrides, and validation that names the offending key path and,
//! where the source has one, its line.
//!
//! This crate owns *what a config says*. Turning it into routers, upstream pools and policy
//! chains is the proxy's compile step; this crate guarantees that whatever reaches that step is
//! internally consistent (every reference resolves, every value is in range).

mod duration;
pub mod files;
mod locate;
pub use locate::line_of;
pub use validate::parse_utc_offset;
mod model;
pub mod openapi;
mod overlay;
mod validate;

pub use overlay::{Overlay, OverlayApi};

pub use duration::{Duration, Timestamp, parse_rfc3339};
pub use model::*;

use std::path::{Path, PathBuf};

/// A config that could not be used, with enough context for an operator to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The reason is part of the message, not a source: a report of the whole chain would
    // print it twice.
    #[error("cannot read {path}: {reason}")]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{}", format_problems(.path, .problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `tenants.retail.apis.accounts.routes[0].upstream`.
    pub key_path: String,
    /// 1-based line in the file, when the key could be located.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = if self.key_path.is_empty() {
            "(top level)"
        } else {
            &self.key_path
        };
        match self.line {
            Some(line) => write!(f, "line {line}: {key}: {}", self.message),
            None => write!(f, "{key}: {}", self.message),
        }
    }
}

fn format_problems(path: &Path, problems: &[Problem]) -> String {
    let mut out = format!("invalid config {}:", path.display());
    for p in problems {
        out.push_str("\n  - ");
        out.push_str(&p.to_string());
    }
    out
}

/// A parsed, validated config plus where it came from (relative paths resolve against `base_dir`).
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub source_path: PathBuf,
    /// The file's text, kept so problems found later (at compile) can still name a line.
    pub source_text: String,
    pub base_dir: PathBuf,
}

impl LoadedConfig {
    /// Resolves a path written in the config relative to the config file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// Environment overrides named by the scenario; read once by the binary and applied on every load
/// so a reload never loses them.
#[derive(Debug, Clone, Default)]
pub struct EnvOverrides {
    pub public_addr: Option<String>,
    pub tls_addr: Option<String>,
    pub admin_addr: Option<String>,
}

impl EnvOverrides {
    pub fn from_env() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Self {
            public_addr: get("TOLLGATE_PUBLIC_ADDR"),
            tls_addr: get("TOLLGATE_TLS_ADDR"),
            admin_addr: get("TOLLGATE_ADMIN_ADDR"),
        }
    }

    fn apply(&self, cfg: &mut Config) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut set = |slot: Option<&mut ListenAddr>, val: &Option<String>, var: &str| {
            let Some(v) = val else { return };
            match v.parse() {
                Ok(addr) => {
                    if let Some(slot) = slot {
                        *slot = ListenAddr(addr);
                    }
                }
                Err(_) => problems.push(Problem {
                    key_path: format!("${var}"),
                    line: None,
                    message: format!("`{v}` is not a socket address like 127.0.0.1:8080"),
                }),
            }
        };
        set(
            cfg.listeners.public.as_mut().map(|l| &mut l.addr),
            &self.public_addr,
            "TOLLGATE_PUBLIC_ADDR",
        );
        set(
            cfg.listeners.tls.as_mut().map(|l| &mut l.addr),
            &self.tls_addr,
            "TOLLGATE_TLS_ADDR",
        );
        set(
            cfg.listeners.admin.as_mut().map(|l| &mut l.addr),
            &self.admin_addr,
            "TOLLGATE_ADMIN_ADDR",
        );
        problems
    }
}

/// The `identity.hash_secret_file` a config names, resolved against the config's folder,
/// without validating the rest: `tollgate hash` makes the values a config is still missing.
pub fn hash_secret_path(path: &Path) -> Result<Option<PathBuf>, ConfigError> {
    #[derive(serde::Deserialize, Default)]
    struct Loose {
        #[serde(default)]
        identity: LooseIdentity,
    }
    #[derive(serde::Deserialize, Default)]
    struct LooseIdentity {
        #[serde(default)]
        hash_secret_file: Option<PathBuf>,
    }
    let text = files::read_to_string(path, files::MAX_CONFIG_BYTES).map_err(|reason| {
        ConfigError::Read {
            path: path.to_path_buf(),
            reason,
        }
    })?;
    let invalid = |message: String, line: Option<usize>| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems: vec![Problem {
            key_path: "identity.hash_secret_file".into(),
            line,
            message,
        }],
    };
    if let Some(line) = too_deep(&text) {
        return Err(invalid(
            format!("collections nested deeper than {MAX_DEPTH} levels"),
            Some(line),
        ));
    }
    let loose: Loose = yaml_serde::from_str(&text).map_err(|e| {
        invalid(
            strip_location(&e.to_string()),
            e.location().map(|l| l.line()),
        )
    })?;
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(loose
        .identity
        .hash_secret_file
        .map(|p| if p.is_absolute() { p } else { base_dir.join(p) }))
}

/// Reads, parses, applies overrides and validates a config file.
pub fn load(path: &Path, env: &EnvOverrides) -> Result<LoadedConfig, ConfigError> {
    let text = files::read_to_string(path, files::MAX_CONFIG_BYTES).map_err(|reason| {
        ConfigError::Read {
            path: path.to_path_buf(),
            reason,
        }
    })?;
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let config = parse_str(&text, env, &base_dir).map_err(|problems| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    })?;
    Ok(LoadedConfig {
        config,
        source_path: path.to_path_buf(),
        source_text: text,
        base_dir,
    })
}

/// Parses and validates config text. `base_dir` is where relative file paths are checked.
pub fn parse_str(text: &str, env: &EnvOverrides, base_dir: &Path) -> Result<Config, Vec<Problem>> {
    if let Some(line) = too_deep(text) {
        return Err(vec![Problem {
            key_path: String::new(),
            line: Some(line),
            message: format!("collections nested deeper than {MAX_DEPTH} levels"),
        }]);
    }
    let de = yaml_serde::Deserializer::from_str(text);
    let mut cfg: Config = match serde_path_to_error::deserialize(de) {
        Ok(c) => c,
        Err(e) => {
            let key_path = clean_path(&e.path().to_string());
            let inner = e.into_inner();
            let line = inner
                .location()
                .map(|l| l.line())
                .or_else(|| locate::line_of(text, &key_path));
            let message = strip_location(&inner.to_string());
            // The YAML error may name the path itself, or the part of it it had reached; the
            // problem names it once.
            let message = match message.split_once(": ") {
                Some((named, rest))
                    if !named.is_empty() && !named.contains(' ') && key_path.starts_with(named) =>
                {
                    rest.to_string()
                }
                _ => message,
            };
            return Err(vec![Problem {
                key_path,
                line,
                message,
            }]);
        }
    };
    let mut problems = env.apply(&mut cfg);
    problems.extend(validate::validate(&cfg, base_dir));
    if problems.is_empty() {
        Ok(cfg)
    } else {
        for p in &mut problems {
            if p.line.is_none() && !p.key_path.starts_with('$') {
                p.line = locate::line_of(text, &p.key_path);
            }
        }
        Err(problems)
    }
}

/// Deeper than any gateway config needs; the YAML parser's time grows with the square of the
/// nesting, so 100,000 levels of `[` took it 18 s.
const MAX_DEPTH: usize = 64;

/// The line where flow collections (`[`, `{`) first nest deeper than [`MAX_DEPTH`], outside
/// quoted scalars and comments. Block nesting needs an indent per level, so a file deep in
/// that way is long before it is slow; flow nesting costs one byte a level.
fn too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 1usize);
    let mut chars = text.chars().peekable();
    let mut prev = '\n';
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            '#' if prev.is_whitespace() => while chars.next_if(|&c| c != '\n').is_some() {},
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        '\n' => line += 1,
                        _ => {}
                    }
                }
            }
            '\'' if !prev.is_alphanumeric() => {
                for c in chars.by_ref() {
                    match c {
                        '\'' => break,
                        '\n' => line += 1,
                        _ => {}
                    }
                }
            }
            '[' | '{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(line);
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    None
}

/// serde_path_to_error prints `.` for the root and `?` for untracked segments.
fn clean_path(p: &str) -> String {
    if p == "." {
        String::new()
    } else {
        p.to_string()
    }
}

/// yaml errors end with " at line L column C"; the line is reported separately.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests;
