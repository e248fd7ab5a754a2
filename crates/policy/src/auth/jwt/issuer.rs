//! The gateway as an OAuth2 token issuer (client credentials): it signs short-lived access
//! tokens with its own key and publishes the public half as a JWK Set, and its verifier config
//! trusts that key exactly as it trusts an IdP's.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tollgate_core::Clock;

use super::{IssuerConfig, JwksSource};

/// Longest lifetime of a token the gateway issues.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIssuerConfig {
    /// The `iss` of issued tokens, e.g. `http://127.0.0.1:8080`.
    pub issuer: String,
    /// The `aud` of issued tokens.
    pub audience: String,
    /// PEM private key: PKCS#8 EC P-256 (ES256) or P-384 (ES384), RSA ≥ 2048 bits in PKCS#8 or
    /// PKCS#1 (RS256), or PKCS#8 Ed25519 (EdDSA).
    pub private_key_pem: PathBuf,
    /// Defaults to the RFC 7638 SHA-256 thumbprint of the public key, so it changes with the key.
    pub key_id: Option<String>,
    /// At most [`MAX_TOKEN_TTL`].
    pub ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenIssuerError {
    #[error("token issuer: the issuer must not be empty")]
    EmptyIssuer,
    #[error("token issuer: the audience must not be empty")]
    EmptyAudience,
    #[error("token issuer: ttl must be between 1 s and {max:?}, not {ttl:?}", max = MAX_TOKEN_TTL)]
    BadTtl { ttl: Duration },
    #[error("token issuer: cannot read private key {path}: {source}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "token issuer: the private key is not a PEM EC P-256/P-384 (PKCS#8), RSA or Ed25519 key"
    )]
    UnsupportedKey,
    #[error("token issuer: RSA keys must have at least 2048 bits")]
    WeakRsaKey,
    #[error("token issuer: scope {0:?} contains whitespace")]
    BadScope(String),
    #[error("token issuer: signing failed")]
    Sign,
}

pub struct TokenIssuer {
    issuer: String,
    audience: String,
    ttl: Duration,
    algorithm: Algorithm,
    kid: String,
    key: EncodingKey,
    public_jwk: Jwk,
    jwks_json: Bytes,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// Reads the private key file named in the config.
    pub fn new(
        config: &TokenIssuerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, TokenIssuerError> {
        let pem = tollgate_config::files::read(
            &config.private_key_pem,
            tollgate_config::files::MAX_SECRET_BYTES,
        )
        .map_err(|source| TokenIssuerError::ReadKey {
            path: config.private_key_pem.clone(),
            source,
        })?;
        Self::from_pem(config, &pem, clock)
    }

    /// Like [`TokenIssuer::new`] with the PEM given directly (`private_key_pem` is ignored).
    pub fn from_pem(
        config: &TokenIssuerConfig,
        pem: &[u8],
        clock: Arc<dyn Clock>,
    ) -> Result<Self, TokenIssuerError> {
        if config.issuer.is_empty() {
            return Err(TokenIssuerError::EmptyIssuer);
        }
        if config.audience.is_empty() {
            return Err(TokenIssuerError::EmptyAudience);
        }
        if config.ttl < Duration::from_secs(1) || config.ttl > MAX_TOKEN_TTL {
            return Err(TokenIssuerError::BadTtl { ttl: config.ttl });
        }
        let (key, algorithm, mut public_jwk) = load_private_key(pem)?;
        let kid = match &config.key_id {
            Some(k) => k.clone(),
            None => public_jwk
                .thumbprint(ThumbprintHash::SHA256)
                .map_err(|_| TokenIssuerError::UnsupportedKey)?,
        };
        public_jwk.common.key_id = Some(kid.clone());
        public_jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let set = JwkSet {
            keys: vec![public_jwk.clone()],
        };
        let jwks_json = serde_json::to_vec(&set).map_err(|_| TokenIssuerError::UnsupportedKey)?;
        Ok(Self {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            ttl: Duration::from_secs(config.ttl.as_secs()),
            algorithm,
            kid,
            key,
            public_jwk,
            jwks_json: Bytes::from(jwks_json),
            clock,
        })
    }

    /// A signed access token and its lifetime (`expires_in`).
    pub fn issue(
        &self,
        subject: &str,
        client_id: &str,
        scopes: &[String],
    ) -> Result<(String, Duration), TokenIssuerError> {
        if let Some(bad) = scopes
            .iter()
            .find(|s| s.is_empty() || s.contains(char::is_whitespace))
        {
            return Err(TokenIssuerError::BadScope(bad.clone()));
        }
        let iat = self
            .clock
            .now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| TokenIssuerError::Sign)?;
        let claims = json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "client_id": client_id,
            "scope": scopes.join(" "),
            "iat": iat,
            "nbf": iat,
            "exp": iat + self.ttl.as_secs(),
            "jti": URL_SAFE_NO_PAD.encode(jti),
        });
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        // RFC 9068 media type for JWT access tokens.
        header.typ = Some("at+jwt".to_owned());
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|_| TokenIssuerError::Sign)?;
        Ok((token, self.ttl))
    }

    /// The public JWK Set to serve at `/.well-known/jwks.json`.
    pub fn jwks_json(&self) -> Bytes {
        self.jwks_json.clone()
    }

    /// An issuer entry for [`super::JwtVerifier`] that trusts exactly this issuer's key.
    pub fn verifier_config(&self) -> IssuerConfig {
        let mut c = IssuerConfig::new(
            self.issuer.clone(),
            vec![self.audience.clone()],
            JwksSource::Static(JwkSet {
                keys: vec![self.public_jwk.clone()],
            }),
        );
        c.algorithms = vec![self.algorithm];
        c
    }

    pub fn key_id(&self) -> &str {
        &self.kid
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

fn load_private_key(pem: &[u8]) -> Result<(EncodingKey, Algorithm, Jwk), TokenIssuerError> {
    if let Ok(key) = EncodingKey::from_ec_pem(pem) {
        // The PEM does not say which curve; the signer for the wrong one refuses the key.
        for alg in [Algorithm::ES256, Algorithm::ES384] {
            if let Ok(jwk) = Jwk::from_encoding_key(&key, alg) {
                return Ok((key, alg, jwk));
            }
        }
        return Err(TokenIssuerError::UnsupportedKey);
    }
    if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
        let jwk = Jwk::from_encoding_key(&key, Algorithm::RS256)
            .map_err(|_| TokenIssuerError::UnsupportedKey)?;
        let AlgorithmParameters::RSA(p) = &jwk.algorithm else {
            return Err(TokenIssuerError::UnsupportedKey);
        };
        let n = URL_SAFE_NO_PAD
            .decode(&p.n)
            .map_err(|_| TokenIssuerError::UnsupportedKey)?;
        let n = &n[n.iter().position(|&b| b != 0).unwrap_or(n.len())..];
        if n.len() < 256 {
            return Err(TokenIssuerError::WeakRsaKey);
        }
        return Ok((key, Algorithm::RS256, jwk));
    }
    if let Ok(key) = EncodingKey::from_ed_pem(pem) {
        let jwk = Jwk::from_encoding_key(&key, Algorithm::EdDSA)
            .map_err(|_| TokenIssuerError::UnsupportedKey)?;
        return Ok((key, Algorithm::EdDSA, jwk));
    }
    Err(TokenIssuerError::UnsupportedKey)
}
