//! TLS for the public TLS listener: certificates chosen by SNI, ALPN `h2` and `http/1.1`.
//!
//! The certificate set is part of the compiled snapshot and read through an `ArcSwap` at each
//! handshake, so a reload that changes certificates applies to the next handshake without
//! touching open connections.

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Certificates by server name. Names come from each certificate's SANs (DNS names), so the
/// config only lists files.
#[derive(Debug)]
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("no certificates configured")]
    Empty,
    #[error("TLS setup: {0}")]
    Config(String),
}

fn file_err(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Loads one PEM certificate chain and key and returns it with the DNS names it is valid for.
pub fn load_cert(cert: &Path, key: &Path) -> Result<(Arc<CertifiedKey>, Vec<String>), TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, format!("invalid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(file_err(cert, "contains no certificate"));
    }
    // The certificate first: a broken one is the certificate file's problem, not the key's.
    let names = dns_names(&chain[0]).map_err(|m| file_err(cert, m))?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_err(key, format!("cannot read a private key: {e}")))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let ck = CertifiedKey::from_der(chain, key_der, &provider)
        .map_err(|e| file_err(key, format!("key does not fit the certificate: {e}")))?;
    Ok((Arc::new(ck), names))
}

/// The names the leaf certificate is valid for; a certificate authority's own certificate is
/// refused, as no client accepts it for a server.
fn dns_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("not a valid certificate: {e}"))?;
    if let Ok(Some(bc)) = cert.basic_constraints()
        && bc.value.ca
    {
        return Err(
            "is a certificate authority's certificate (CA:TRUE), not a server's: list the \
             server certificate first"
                .into(),
        );
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        // Legacy certificates name the host only in the subject CN.
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

impl CertSet {
    pub fn new(certs: Vec<(Arc<CertifiedKey>, Vec<String>)>) -> Result<Self, TlsError> {
        let default = certs
            .first()
            .map(|(c, _)| c.clone())
            .ok_or(TlsError::Empty)?;
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (ck, names) in certs {
            for n in names {
                // The first certificate listed for a name wins, as operators would expect.
                match n.strip_prefix("*.") {
                    Some(base) => wildcard
                        .entry(base.to_string())
                        .or_insert_with(|| ck.clone()),
                    None => exact.entry(n).or_insert_with(|| ck.clone()),
                };
            }
        }
        Ok(Self {
            exact,
            wildcard,
            default,
        })
    }

    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(c) = self.exact.get(&name) {
            return c.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(c) = self.wildcard.get(parent)
        {
            return c.clone();
        }
        self.default.clone()
    }
}

/// The rustls resolver of one compiled snapshot.
#[derive(Debug)]
pub struct SniResolver(pub Arc<CertSet>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.pick(hello.server_name()))
    }
}

/// Loads the CA bundle that client certificates must chain to.
pub fn client_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, format!("invalid PEM: {e}")))?;
    for c in certs {
        roots
            .add(c)
            .map_err(|e| file_err(path, format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(file_err(path, "contains no certificate"));
    }
    Ok(roots)
}

/// A server config offering h2 and HTTP/1.1 by ALPN, certificates by SNI and, with `client_ca`,
/// optional client certificates: clients without one still connect (routes that need one
/// answer 401), clients with one that does not chain to the CA fail the handshake.
pub fn server_config(
    certs: Arc<CertSet>,
    client_ca: Option<rustls::RootCertStore>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(roots) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(SniResolver(certs)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The identity in a (verified) client certificate.
pub fn client_identity(der: &CertificateDer<'_>) -> Option<tollgate_core::ClientCert> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                dns_names.push(d.to_ascii_lowercase());
            }
        }
    }
    Some(tollgate_core::ClientCert {
        common_name,
        dns_names,
        subject: cert.subject().to_string(),
    })
}
