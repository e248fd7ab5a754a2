//! Registered-claim checks against the injected clock (jsonwebtoken's own time checks read the
//! system clock, which would make expiry untestable without sleeping).

use serde_json::{Map, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::JwtError;

/// 9999-12-31T23:59:59Z: anything later is not a date a real IdP writes, and refusing it keeps
/// `SystemTime` arithmetic far from overflow.
const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

/// The verified claims of a token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub issuer: String,
    pub subject: Option<String>,
    /// `client_id` (RFC 9068), or else `azp` (OpenID Connect), which IdPs use for the same.
    pub client_id: Option<String>,
    /// From the space-separated `scope` claim, or else the `scp` array.
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub expires_at: SystemTime,
    pub issued_at: Option<SystemTime>,
    pub not_before: Option<SystemTime>,
    pub token_id: Option<String>,
    /// Every claim as sent, for policies that look at custom claims.
    pub raw: Map<String, Value>,
}

impl Claims {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    pub fn has_all_scopes<S: AsRef<str>>(&self, required: &[S]) -> bool {
        required.iter().all(|r| self.has_scope(r.as_ref()))
    }
}

/// What one issuer requires of a token's claims.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) issuer: String,
    pub(crate) audiences: Vec<String>,
    pub(crate) leeway: Duration,
}

pub(crate) fn validate(
    raw: Map<String, Value>,
    rules: &Rules,
    now: SystemTime,
) -> Result<Claims, JwtError> {
    match raw.get("iss") {
        Some(Value::String(iss)) if *iss == rules.issuer => {}
        _ => return Err(JwtError::WrongIssuer),
    }

    let expires_at = match raw.get("exp") {
        Some(v) => numeric_date(v)?,
        None => return Err(JwtError::MissingExpiry),
    };
    if now >= expires_at + rules.leeway {
        return Err(JwtError::Expired);
    }
    let not_before = raw.get("nbf").map(numeric_date).transpose()?;
    if let Some(nbf) = not_before
        && now + rules.leeway < nbf
    {
        return Err(JwtError::NotYetValid);
    }
    let issued_at = raw.get("iat").map(numeric_date).transpose()?;
    if let Some(iat) = issued_at
        && iat > now + rules.leeway
    {
        return Err(JwtError::IssuedInFuture);
    }

    let audiences = match raw.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or(JwtError::Malformed))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(JwtError::Malformed),
        None => return Err(JwtError::WrongAudience),
    };
    if !audiences.iter().any(|a| rules.audiences.contains(a)) {
        return Err(JwtError::WrongAudience);
    }

    let subject = opt_string(&raw, "sub")?;
    let client_id = match opt_string(&raw, "client_id")? {
        Some(c) => Some(c),
        None => opt_string(&raw, "azp")?,
    };
    // Only informational here, so an odd type is ignored rather than refused.
    let token_id = raw.get("jti").and_then(Value::as_str).map(str::to_owned);
    let scopes = match (raw.get("scope"), raw.get("scp")) {
        (Some(Value::String(s)), _) => s.split_whitespace().map(str::to_owned).collect(),
        (Some(_), _) => return Err(JwtError::Malformed),
        (None, Some(Value::Array(list))) => list
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or(JwtError::Malformed))
            .collect::<Result<Vec<_>, _>>()?,
        (None, Some(Value::String(s))) => s.split_whitespace().map(str::to_owned).collect(),
        (None, Some(_)) => return Err(JwtError::Malformed),
        (None, None) => Vec::new(),
    };

    Ok(Claims {
        issuer: rules.issuer.clone(),
        subject,
        client_id,
        scopes,
        audiences,
        expires_at,
        issued_at,
        not_before,
        token_id,
        raw,
    })
}

fn opt_string(raw: &Map<String, Value>, name: &str) -> Result<Option<String>, JwtError> {
    match raw.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(JwtError::Malformed),
    }
}

/// RFC 7519 NumericDate: seconds since the epoch, possibly fractional.
fn numeric_date(v: &Value) -> Result<SystemTime, JwtError> {
    let secs = v.as_f64().ok_or(JwtError::Malformed)?;
    if !secs.is_finite() || !(0.0..=MAX_NUMERIC_DATE).contains(&secs) {
        return Err(JwtError::Malformed);
    }
    Ok(UNIX_EPOCH + Duration::from_secs_f64(secs))
}

impl tollgate_core::Scopes for Claims {
    fn list(&self) -> &[String] {
        &self.scopes
    }
}
