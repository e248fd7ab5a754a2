//! Verification keys and compact-JWS signature checks, independent of JWT claims so they can be
//! tested against JOSE vectors whose payloads are not claim sets.
//!
//! Every key carries the algorithms it may be used with, fixed when the key is loaded (its JWK
//! `alg`, or what its `kty`/`crv` allows, intersected with the issuer's list). The token's own
//! `alg` header only selects among those, which is what makes `alg: none` and the RS256→HS256
//! confusion impossible: a public key never becomes an HMAC secret.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fmt;

use super::JwtError;

/// Longest token accepted at all; real access tokens are a few KiB at most, and the bound keeps
/// hashing and base64 work per request small.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

const RSA_MIN_BITS: usize = 2048;
/// aws-lc's verification parameters stop at 8192 bits; refusing larger keys at load time gives a
/// clear log line instead of every signature failing later.
const RSA_MAX_BITS: usize = 8192;

/// JWK members that only private or secret keys have. A published key set containing them is
/// a leaked key, so nothing in that document is trusted.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a key set document (or configured secrets) was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    #[error("the key set is not a JSON object with a \"keys\" array")]
    NotAKeySet,
    #[error("the key set contains private or secret key material")]
    PrivateKeyMaterial,
    #[error("the key set has no key usable for signature verification with the allowed algorithms")]
    NoUsableKeys,
    #[error("shared secret: {0}")]
    InvalidSecret(&'static str),
    #[error("shared secrets: key id {0:?} is used twice")]
    DuplicateSecretKid(String),
    #[error("shared secrets: every secret needs a key id when there are several")]
    SecretKidRequired,
}

/// An HMAC secret configured out of band for one issuer. HS256/384/512 are only ever verified
/// with these, never with a key from a JWKS.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedSecret {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub secret: Vec<u8>,
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSecret")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl SharedSecret {
    pub fn new(kid: Option<String>, algorithm: Algorithm, secret: impl Into<Vec<u8>>) -> Self {
        Self {
            kid,
            algorithm,
            secret: secret.into(),
        }
    }

    /// A secret given as an `oct` JWK (`{"kty":"oct","alg":"HS256","k":...}`), as some IdPs
    /// hand them out. The JWK must name an HMAC algorithm and allow signature verification.
    pub fn from_oct_jwk(jwk: &Jwk) -> Result<Self, JwksError> {
        let AlgorithmParameters::OctetKey(p) = &jwk.algorithm else {
            return Err(JwksError::InvalidSecret("not an oct key"));
        };
        if !use_allows_verify(jwk) {
            return Err(JwksError::InvalidSecret(
                "the key is not meant for signatures",
            ));
        }
        let algorithm = match jwk.common.key_algorithm {
            Some(KeyAlgorithm::HS256) => Algorithm::HS256,
            Some(KeyAlgorithm::HS384) => Algorithm::HS384,
            Some(KeyAlgorithm::HS512) => Algorithm::HS512,
            _ => {
                return Err(JwksError::InvalidSecret(
                    "alg must be HS256, HS384 or HS512",
                ));
            }
        };
        let secret = URL_SAFE_NO_PAD
            .decode(&p.value)
            .map_err(|_| JwksError::InvalidSecret("k is not base64url"))?;
        Ok(Self {
            kid: jwk.common.key_id.clone(),
            algorithm,
            secret,
        })
    }
}

/// One key usable for verification, with the algorithms pinned to it.
#[derive(Clone)]
struct VerifyingKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// The keys of one issuer, immutable once built; a refresh builds a new set.
#[derive(Clone)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
    digest: [u8; 32],
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field(
                "kids",
                &self
                    .keys
                    .iter()
                    .map(|k| k.kid.as_deref())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A compact JWS whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedJws {
    pub algorithm: Algorithm,
    pub kid: Option<String>,
    pub payload: Vec<u8>,
}

/// What went wrong looking a key up, kept apart from other failures because "unknown key" is the
/// one outcome a JWKS refetch can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SigFailure {
    UnknownKey,
    Invalid(JwtError),
}

impl From<JwtError> for SigFailure {
    fn from(e: JwtError) -> Self {
        SigFailure::Invalid(e)
    }
}

/// A compact serialization split and its header parsed; nothing verified yet.
pub(crate) struct Compact<'a> {
    signing_input: &'a str,
    payload_b64: &'a str,
    signature_b64: &'a str,
    alg: String,
    kid: Option<String>,
}

impl<'a> Compact<'a> {
    pub(crate) fn parse(token: &'a str) -> Result<Self, JwtError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed);
        }
        let (signing_input, signature_b64) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
        let (header_b64, payload_b64) = signing_input.split_once('.').ok_or(JwtError::Malformed)?;
        if payload_b64.contains('.') {
            return Err(JwtError::Malformed);
        }
        let header = decode_b64(header_b64)?;
        let header: Map<String, Value> =
            serde_json::from_slice(&header).map_err(|_| JwtError::Malformed)?;
        // Extensions we do not implement (RFC 7515 §4.1.11), e.g. RFC 7797's unencoded payload,
        // must make the token fail rather than be verified as if they were absent.
        if header.contains_key("crit") || header.contains_key("b64") {
            return Err(JwtError::Malformed);
        }
        let alg = match header.get("alg") {
            Some(Value::String(a)) => a.clone(),
            _ => return Err(JwtError::Malformed),
        };
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(JwtError::Malformed),
        };
        Ok(Self {
            signing_input,
            payload_b64,
            signature_b64,
            alg,
            kid,
        })
    }

    pub(crate) fn payload(&self) -> Result<Vec<u8>, JwtError> {
        decode_b64(self.payload_b64)
    }
}

/// Strict base64url: no padding, no foreign characters, no non-zero trailing bits, so that one
/// token has exactly one encoding (and one cache key).
fn decode_b64(s: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::Malformed)
}

impl KeySet {
    pub fn empty() -> Self {
        Self::build(Vec::new())
    }

    /// Parses a JWK Set document as served by an IdP. Keys that cannot be used for signature
    /// verification under `allowed` (encryption keys, unknown types, curves or algorithms,
    /// weak RSA keys, ambiguous key ids) are skipped; the document is refused when it holds
    /// private material or when no key is left.
    pub fn from_jwks_json(json: &[u8], allowed: &[Algorithm]) -> Result<Self, JwksError> {
        let doc: Value = serde_json::from_slice(json).map_err(|_| JwksError::NotAKeySet)?;
        let Some(Value::Array(raw_keys)) = doc.get("keys") else {
            return Err(JwksError::NotAKeySet);
        };
        let mut keys = Vec::with_capacity(raw_keys.len());
        for raw in raw_keys {
            let Value::Object(members) = raw else {
                return Err(JwksError::NotAKeySet);
            };
            if PRIVATE_MEMBERS.iter().any(|m| members.contains_key(*m)) {
                return Err(JwksError::PrivateKeyMaterial);
            }
            let jwk: Jwk = match serde_json::from_value(raw.clone()) {
                Ok(j) => j,
                Err(_) => {
                    tracing::debug!(kid = ?members.get("kid"), "JWKS: skipping unparsable key");
                    continue;
                }
            };
            match verifying_key(&jwk, allowed) {
                Ok(k) => keys.push(k),
                Err(why) => tracing::debug!(kid = ?jwk.common.key_id, why, "JWKS: skipping key"),
            }
        }
        Self::finish(keys)
    }

    /// Like [`KeySet::from_jwks_json`] for an already parsed set. Such a set cannot show private
    /// members (the `Jwk` type drops them), so only `oct` keys are refused as secret material.
    pub fn from_jwk_set(set: &JwkSet, allowed: &[Algorithm]) -> Result<Self, JwksError> {
        let mut keys = Vec::with_capacity(set.keys.len());
        for jwk in &set.keys {
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                return Err(JwksError::PrivateKeyMaterial);
            }
            match verifying_key(jwk, allowed) {
                Ok(k) => keys.push(k),
                Err(why) => tracing::debug!(kid = ?jwk.common.key_id, why, "JWKS: skipping key"),
            }
        }
        Self::finish(keys)
    }

    /// HMAC secrets: each pinned to its algorithm, at least as long as the hash output
    /// (RFC 7518 §3.2), with unique key ids.
    pub fn from_shared_secrets(
        secrets: &[SharedSecret],
        allowed: &[Algorithm],
    ) -> Result<Self, JwksError> {
        if secrets.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        if secrets.len() > 1 && secrets.iter().any(|s| s.kid.is_none()) {
            return Err(JwksError::SecretKidRequired);
        }
        let mut keys = Vec::with_capacity(secrets.len());
        for s in secrets {
            let min_len = match s.algorithm {
                Algorithm::HS256 => 32,
                Algorithm::HS384 => 48,
                Algorithm::HS512 => 64,
                _ => {
                    return Err(JwksError::InvalidSecret(
                        "alg must be HS256, HS384 or HS512",
                    ));
                }
            };
            if !allowed.contains(&s.algorithm) {
                return Err(JwksError::InvalidSecret(
                    "its algorithm is not in the allowed list",
                ));
            }
            if s.secret.len() < min_len {
                return Err(JwksError::InvalidSecret(
                    "shorter than the hash output of its algorithm (RFC 7518 §3.2)",
                ));
            }
            if let Some(kid) = &s.kid
                && keys
                    .iter()
                    .any(|k: &VerifyingKey| k.kid.as_ref() == Some(kid))
            {
                return Err(JwksError::DuplicateSecretKid(kid.clone()));
            }
            keys.push(VerifyingKey {
                kid: s.kid.clone(),
                algorithms: vec![s.algorithm],
                key: DecodingKey::from_secret(&s.secret),
            });
        }
        Ok(Self::build(keys))
    }

    /// Drops keys whose `kid` is not unique (which of them a token means is unknowable), then
    /// refuses an empty result.
    fn finish(mut keys: Vec<VerifyingKey>) -> Result<Self, JwksError> {
        let dup: Vec<String> = keys
            .iter()
            .filter_map(|k| k.kid.clone())
            .filter(|kid| keys.iter().filter(|k| k.kid.as_ref() == Some(kid)).count() > 1)
            .collect();
        if !dup.is_empty() {
            tracing::warn!(kids = ?dup, "JWKS: ignoring keys whose kid is not unique");
            keys.retain(|k| k.kid.as_ref().is_none_or(|kid| !dup.contains(kid)));
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        Ok(Self::build(keys))
    }

    fn build(keys: Vec<VerifyingKey>) -> Self {
        // Order-independent fingerprint so that a refresh returning the same keys is no change
        // (and does not throw away the verified-token cache).
        let mut parts: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| {
                let mut p = Vec::new();
                p.extend_from_slice(k.kid.as_deref().unwrap_or("").as_bytes());
                p.push(0);
                for a in &k.algorithms {
                    p.extend_from_slice(format!("{a:?},").as_bytes());
                }
                p.push(0);
                match k.key.kind() {
                    jsonwebtoken::DecodingKeyKind::SecretOrDer(b) => p.extend_from_slice(b),
                    jsonwebtoken::DecodingKeyKind::RsaModulusExponent { n, e } => {
                        p.extend_from_slice(n);
                        p.push(0);
                        p.extend_from_slice(e);
                    }
                }
                Sha256::digest(&p).to_vec()
            })
            .collect();
        parts.sort();
        let mut h = Sha256::new();
        for p in &parts {
            h.update(p);
        }
        Self {
            keys,
            digest: h.finalize().into(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> impl Iterator<Item = Option<&str>> {
        self.keys.iter().map(|k| k.kid.as_deref())
    }

    pub(crate) fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Verifies the signature of a compact JWS and returns its payload; nothing about the
    /// payload is interpreted.
    pub fn verify_jws(&self, token: &str) -> Result<VerifiedJws, JwtError> {
        let compact = Compact::parse(token)?;
        let algorithm = self.verify_compact(&compact).map_err(|f| match f {
            SigFailure::UnknownKey => JwtError::UnknownKey,
            SigFailure::Invalid(e) => e,
        })?;
        Ok(VerifiedJws {
            algorithm,
            kid: compact.kid.clone(),
            payload: compact.payload()?,
        })
    }

    pub(crate) fn verify_compact(&self, c: &Compact<'_>) -> Result<Algorithm, SigFailure> {
        // Set when the token's `kid` matched nothing and the set's one unnamed key is tried.
        let mut unnamed = false;
        let key = match &c.kid {
            Some(kid) => match self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid.as_str()))
            {
                Some(k) => k,
                // A `kid` is a hint (RFC 7515 §4.1.4): with one key that has no name of its
                // own, there is nothing to tell apart, and the signature decides.
                None => match self.keys.as_slice() {
                    [only] if only.kid.is_none() => {
                        unnamed = true;
                        only
                    }
                    _ => return Err(SigFailure::UnknownKey),
                },
            },
            None => match self.keys.as_slice() {
                [] => return Err(SigFailure::UnknownKey),
                [only] => only,
                _ => return Err(JwtError::KidRequired.into()),
            },
        };
        // Unknown names ("none", "ES512", "HS1") fail to parse and land here too.
        let alg: Algorithm = c.alg.parse().map_err(|_| JwtError::AlgorithmNotAllowed)?;
        if !key.algorithms.contains(&alg) {
            return Err(JwtError::AlgorithmNotAllowed.into());
        }
        if c.signature_b64.is_empty() {
            return Err(JwtError::BadSignature.into());
        }
        match jsonwebtoken::crypto::verify(
            c.signature_b64,
            c.signing_input.as_bytes(),
            &key.key,
            alg,
        ) {
            Ok(true) => Ok(alg),
            // Not that key: the `kid` may name one the issuer has rotated in since, so it
            // stays an unknown key, which lets a key set be fetched again.
            _ if unnamed => Err(SigFailure::UnknownKey),
            _ => Err(JwtError::BadSignature.into()),
        }
    }
}

fn use_allows_verify(jwk: &Jwk) -> bool {
    let use_ok = matches!(
        jwk.common.public_key_use,
        None | Some(PublicKeyUse::Signature)
    );
    let ops_ok = jwk
        .common
        .key_operations
        .as_ref()
        .is_none_or(|ops| ops.contains(&KeyOperations::Verify));
    use_ok && ops_ok
}

/// Turns one public JWK into a verification key, or says why it is not usable.
fn verifying_key(jwk: &Jwk, allowed: &[Algorithm]) -> Result<VerifyingKey, &'static str> {
    if !use_allows_verify(jwk) {
        return Err("not a signature key (use/key_ops)");
    }
    let pinned: Option<Algorithm> = match jwk.common.key_algorithm {
        None => None,
        Some(ka) => Some(Algorithm::try_from(ka).map_err(|_| "unsupported alg")?),
    };
    let (family, key): (&[Algorithm], DecodingKey) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = URL_SAFE_NO_PAD.decode(&p.n).map_err(|_| "bad n")?;
            let e = URL_SAFE_NO_PAD.decode(&p.e).map_err(|_| "bad e")?;
            check_rsa(&n, &e)?;
            (
                AlgorithmFamily::Rsa.algorithms(),
                DecodingKey::from_rsa_raw_components(&n, &e),
            )
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (family, len): (&[Algorithm], usize) = match p.curve {
                EllipticCurve::P256 => (&[Algorithm::ES256], 32),
                EllipticCurve::P384 => (&[Algorithm::ES384], 48),
                _ => return Err("unsupported curve"),
            };
            let x = URL_SAFE_NO_PAD.decode(&p.x).map_err(|_| "bad x")?;
            let y = URL_SAFE_NO_PAD.decode(&p.y).map_err(|_| "bad y")?;
            if x.len() != len || y.len() != len {
                return Err("coordinate length does not match the curve");
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (family, DecodingKey::from_ec_der(&point))
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err("unsupported OKP curve");
            }
            let x = URL_SAFE_NO_PAD.decode(&p.x).map_err(|_| "bad x")?;
            if x.len() != 32 {
                return Err("bad Ed25519 key length");
            }
            (&[Algorithm::EdDSA], DecodingKey::from_ed_der(&x))
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric keys are only accepted as configured shared secrets");
        }
        _ => return Err("unsupported key type"),
    };
    let mut algorithms: Vec<Algorithm> = match pinned {
        Some(a) if family.contains(&a) => vec![a],
        Some(_) => return Err("alg does not match the key type or curve"),
        None => family.to_vec(),
    };
    algorithms.retain(|a| allowed.contains(a));
    if algorithms.is_empty() {
        return Err("none of the key's algorithms is allowed for this issuer");
    }
    Ok(VerifyingKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

fn check_rsa(n: &[u8], e: &[u8]) -> Result<(), &'static str> {
    let n = strip_leading_zeros(n);
    let bits = match n.first() {
        Some(&top) => (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => 0,
    };
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        return Err("RSA modulus size outside 2048..8192 bits");
    }
    if n.last().is_none_or(|b| b & 1 == 0) {
        return Err("RSA modulus is even");
    }
    let e = strip_leading_zeros(e);
    if e.is_empty() || e.len() > 4 {
        return Err("RSA exponent out of range");
    }
    let e_val = e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    if e_val < 3 || e_val & 1 == 0 {
        return Err("RSA exponent must be odd and at least 3");
    }
    if roca_fingerprint(n) {
        return Err("RSA key has the ROCA (CVE-2017-15361) weakness");
    }
    Ok(())
}

/// The ROCA test of Nemec et al. (CCS 2017): keys from the affected Infineon library have
/// `n mod p` in the subgroup generated by 65537 for each of these small primes. A random
/// modulus passes all of them with negligible probability.
pub(crate) fn roca_fingerprint(n: &[u8]) -> bool {
    const PRIMES: [u32; 38] = [
        3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89,
        97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
    ];
    PRIMES.iter().all(|&p| {
        let r = n
            .iter()
            .fold(0u32, |acc, &b| (acc * 256 + u32::from(b)) % p);
        let g = 65537 % p;
        let mut x = 1u32;
        loop {
            if x == r {
                return true;
            }
            x = x * g % p;
            if x == 1 {
                return false;
            }
        }
    })
}
