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
        subject: rfc4514(cert.subject()),
    })
}

/// A distinguished name as RFC 4514 §2 writes it: the RDNs last to first, `,` between them,
/// `+` inside a multi-valued one, short attribute names where there are any. Values are
/// escaped (§2.4), so a subject cannot pose as another by holding `, CN=...` in one of its
/// values, and everything outside printable ASCII is written as `\XX` bytes of its UTF-8,
/// which keeps the string a valid header value. Values that are not strings are `#` and
/// the hex of their DER encoding.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    for (i, rdn) in name
        .iter_rdn()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match x509_parser::objects::oid2abbrev(attr.attr_type(), registry) {
                Ok(abbrev) => out.push_str(abbrev),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            match attribute_text(attr.attr_value()) {
                Some(text) => escape_value(&mut out, &text),
                None => der_hex(&mut out, attr.attr_value()),
            }
        }
    }
    out
}

/// The text of a directory string, whichever of its ASN.1 string types it uses.
fn attribute_text(v: &x509_parser::der_parser::asn1_rs::Any<'_>) -> Option<String> {
    use x509_parser::der_parser::asn1_rs::Tag;
    match v.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::NumericString | Tag::Ia5String => {
            std::str::from_utf8(v.data).ok().map(str::to_string)
        }
        // T.61 in practice holds Latin-1.
        Tag::TeletexString => Some(v.data.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString => {
            let units: Vec<u16> = v
                .data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            v.data
                .len()
                .is_multiple_of(2)
                .then(|| String::from_utf16(&units).ok())
                .flatten()
        }
        Tag::UniversalString => {
            if !v.data.len().is_multiple_of(4) {
                return None;
            }
            v.data
                .chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        _ => None,
    }
}

fn escape_value(out: &mut String, value: &str) {
    use std::fmt::Write;
    let last = value.len().saturating_sub(1);
    for (i, c) in value.char_indices() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            ' '..='~' => out.push(c),
            _ => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\{b:02X}");
                }
            }
        }
    }
}

/// `#` and the DER encoding of a value (RFC 4514 §2.4), its header rebuilt from the parsed one.
fn der_hex(out: &mut String, v: &x509_parser::der_parser::asn1_rs::Any<'_>) {
    use std::fmt::Write;
    let h = &v.header;
    let tag = h.tag().0;
    out.push('#');
    let first = ((h.class() as u8) << 6) | (u8::from(h.is_constructed()) << 5);
    if tag < 31 {
        let _ = write!(out, "{:02X}", first | tag as u8);
    } else {
        // High tag numbers: base-128, most significant group first.
        let _ = write!(out, "{:02X}", first | 31);
        let groups = (0..5).rev().map(|k| ((tag >> (7 * k)) & 0x7f) as u8);
        let mut started = false;
        for (k, g) in groups.enumerate() {
            if g == 0 && !started && k < 4 {
                continue;
            }
            started = true;
            let more = if k < 4 { 0x80 } else { 0 };
            let _ = write!(out, "{:02X}", g | more);
        }
    }
    let len = v.data.len();
    if len < 0x80 {
        let _ = write!(out, "{len:02X}");
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        let _ = write!(out, "{:02X}", 0x80 | (bytes.len() - skip) as u8);
        for b in &bytes[skip..] {
            let _ = write!(out, "{b:02X}");
        }
    }
    for b in v.data {
        let _ = write!(out, "{b:02X}");
    }
}

#[cfg(test)]
mod tests {
    use super::rfc4514;
    use x509_parser::prelude::FromDer;
    use x509_parser::x509::X509Name;

    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0a];
    const OU: &[u8] = &[0x55, 0x04, 0x0b];
    const UTF8: u8 = 0x0c;
    const PRINTABLE: u8 = 0x13;
    const BMP: u8 = 0x1e;

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        assert!(content.len() < 128, "short form only");
        let mut v = vec![tag, content.len() as u8];
        v.extend_from_slice(content);
        v
    }

    /// One attribute: its OID's content bytes, the value's ASN.1 tag, the value.
    type Attr<'a> = (&'a [u8], u8, &'a [u8]);

    /// A DER name: RDNs in certificate order, each a set of attributes.
    fn name(rdns: &[&[Attr<'_>]]) -> Vec<u8> {
        let mut seq = Vec::new();
        for rdn in rdns {
            let mut set = Vec::new();
            for (oid, tag, value) in *rdn {
                let mut atv = tlv(0x06, oid);
                atv.extend(tlv(*tag, value));
                set.extend(tlv(0x30, &atv));
            }
            seq.extend(tlv(0x31, &set));
        }
        tlv(0x30, &seq)
    }

    fn render(der: &[u8]) -> String {
        let (_, n) = X509Name::from_der(der).expect("a DER name");
        rfc4514(&n)
    }

    #[test]
    fn names_are_written_last_rdn_first_with_short_attribute_names() {
        let der = name(&[
            &[(O, UTF8, b"Tollgate Demo")],
            &[(CN, PRINTABLE, b"ledger-reader")],
        ]);
        assert_eq!(render(&der), "CN=ledger-reader,O=Tollgate Demo");
    }

    #[test]
    fn special_characters_are_escaped_so_no_value_can_pose_as_another_attribute() {
        let der = name(&[
            &[(O, UTF8, b"Evil, CN=ledger-reader")],
            &[(CN, UTF8, b"a+b;c<d>e\"f\\g")],
        ]);
        assert_eq!(
            render(&der),
            "CN=a\\+b\\;c\\<d\\>e\\\"f\\\\g,O=Evil\\, CN=ledger-reader"
        );
        let der = name(&[&[(CN, UTF8, b" #lead and trail ")]]);
        assert_eq!(render(&der), "CN=\\ #lead and trail\\ ");
        let der = name(&[&[(CN, UTF8, b"#x")]]);
        assert_eq!(render(&der), "CN=\\#x");
    }

    #[test]
    fn multi_valued_rdns_join_with_plus_and_non_ascii_is_hex_escaped() {
        let der = name(&[&[(OU, UTF8, b"ops"), (CN, UTF8, "Zoë\r\n".as_bytes())]]);
        assert_eq!(render(&der), "OU=ops+CN=Zo\\C3\\AB\\0D\\0A");
        // BMPString: UTF-16BE.
        let der = name(&[&[(CN, BMP, &[0x00, b'h', 0x00, b'i', 0x00, 0xe9])]]);
        assert_eq!(render(&der), "CN=hi\\C3\\A9");
    }

    #[test]
    fn unknown_attribute_types_use_the_dotted_oid_and_non_strings_their_der_in_hex() {
        // 1.2.3.4 with an OCTET STRING value.
        let der = name(&[&[(&[0x2a, 0x03, 0x04], 0x04, &[0xde, 0xad])]]);
        assert_eq!(render(&der), "1.2.3.4=#0402DEAD");
    }
}
