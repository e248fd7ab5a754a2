//! AWS Signature Version 4 verification: recompute the signature from the stored secret and
//! compare, so any AWS SDK or aws-sigv4 signer works unchanged.
//!
//! Canonicalisation is delegated to the `aws-sigv4` crate: the verifier rebuilds the request as
//! the client saw it (method, path and query as received, only the headers named in
//! `SignedHeaders` with their received values, the received `X-Amz-Date`, the client's payload
//! hash) and signs it again with the stored secret. Any canonicalisation of our own would drift
//! from what SDKs do in some corner (header trimming, query sorting, path encoding), and each drift
//! is either a false reject or a signature that covers less than the client meant.
//!
//! Signing settings are those of every non-S3 AWS service, `execute-api` included: the path is
//! normalised (RFC 3986 dot segments) and percent-encoded a second time. That is what the AWS
//! SDKs, botocore and aws-sigv4's defaults do for API Gateway clients.
//!
//! Both the `Authorization` header form and the presigned query form are accepted.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    self, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
    SignatureLocation, SigningSettings, UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderName, TRANSFER_ENCODING};
use http::request::Parts;
use subtle::ConstantTimeEq;
use tollgate_core::Clock;

/// The only algorithm accepted; also the scheme to name in a `WWW-Authenticate` challenge.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// AWS's own tolerance between the signer's clock and the service's.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(5 * 60);

/// AWS refuses presigned requests valid for longer than seven days; so do we, so that a leaked
/// URL cannot be made to live forever.
pub const MAX_PRESIGN_EXPIRES: Duration = Duration::from_secs(7 * 24 * 60 * 60);

const X_AMZ_DATE: &str = "x-amz-date";
const X_AMZ_CONTENT_SHA256: &str = "x-amz-content-sha256";
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
const SCOPE_TERMINATOR: &str = "aws4_request";

// Bounds on attacker-controlled input, well above what any SDK sends, so that a hostile header
// cannot make us allocate or hash without limit.
const MAX_ACCESS_KEY_LEN: usize = 128;
const MAX_SIGNED_HEADERS: usize = 64;
const MAX_HEADER_NAME_LEN: usize = 128;

const CANNOT_CANONICALISE: SigV4Error = SigV4Error::Malformed("request cannot be canonicalised");

// The query parameters of the presigned form that are not part of the signed query itself:
// aws-sigv4 adds them back (all but the signature) from the values we hand it.
const Q_ALGORITHM: &str = "X-Amz-Algorithm";
const Q_CREDENTIAL: &str = "X-Amz-Credential";
const Q_DATE: &str = "X-Amz-Date";
const Q_EXPIRES: &str = "X-Amz-Expires";
const Q_SIGNED_HEADERS: &str = "X-Amz-SignedHeaders";
const Q_SIGNATURE: &str = "X-Amz-Signature";

/// A secret access key. Its `Debug` never shows the key, so a verifier or config struct holding
/// one can be logged.
#[derive(Clone)]
pub struct SecretKey(String);

impl SecretKey {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }
}

impl From<String> for SecretKey {
    fn from(secret: String) -> Self {
        Self(secret)
    }
}

impl From<&str> for SecretKey {
    fn from(secret: &str) -> Self {
        Self(secret.to_owned())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

struct KeyEntry {
    access_key: Arc<str>,
    consumer: Arc<str>,
    // Built once: aws-sigv4 signs with an `Identity`, and building one per request would copy
    // the secret every time. `Credentials` zeroes the secret when dropped.
    identity: Identity,
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEntry")
            .field("consumer", &self.consumer)
            .field("secret", &"***")
            .finish()
    }
}

/// What the signature says about the request body. The verifier sees only the head of the
/// request; whoever forwards the body must hold it to this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedPayload {
    /// The signature covers an empty body: a request that carries one anyway must be refused.
    Empty,
    /// The signature covers a body with this SHA-256 digest (from `x-amz-content-sha256`): check
    /// the body against it, e.g. while streaming it, and fail the request on a mismatch.
    Sha256([u8; 32]),
    /// `UNSIGNED-PAYLOAD`: the client chose not to sign the body.
    Unsigned,
    /// [`SigV4Verifier::verify_with_body`] checked the body it was given.
    Checked,
}

/// A request whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub consumer: Arc<str>,
    pub access_key: Arc<str>,
    pub payload: SignedPayload,
}

/// Which way the request's clock is off from ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skew {
    Past,
    Future,
}

impl fmt::Display for Skew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Skew::Past => "past",
            Skew::Future => "future",
        })
    }
}

/// Why a request was refused. `Display` is safe for clients and logs: it never carries the
/// secret, the signature, or unbounded request text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SigV4Error {
    #[error("no AWS Signature V4 credentials in the request")]
    Missing,
    #[error("both an Authorization header and presigned query parameters carry a signature")]
    Ambiguous,
    #[error("unsupported signing algorithm: only {ALGORITHM} is accepted")]
    UnsupportedAlgorithm,
    #[error("malformed signature: {0}")]
    Malformed(&'static str),
    #[error("the signature lacks its {0} component")]
    MissingComponent(&'static str),
    #[error("the credential scope names the wrong {0}")]
    ScopeMismatch(&'static str),
    #[error("the {0} header must be signed")]
    UnsignedRequiredHeader(&'static str),
    #[error("signed header {0} is not in the request")]
    SignedHeaderAbsent(String),
    #[error("unknown access key {0}")]
    UnknownAccessKey(String),
    #[error("the request time is too far in the {0}")]
    ClockSkew(Skew),
    #[error("the presigned request has expired")]
    Expired,
    #[error("the request has a body but no x-amz-content-sha256 header")]
    PayloadHashRequired,
    #[error("unsupported x-amz-content-sha256 value")]
    UnsupportedPayload,
    #[error("the signature does not match")]
    SignatureMismatch,
}

impl SigV4Error {
    /// A stable token per kind of failure, for `WWW-Authenticate: AWS4-HMAC-SHA256
    /// error="..."`, metrics labels and tests: these never change once released.
    pub fn reason(&self) -> &'static str {
        match self {
            SigV4Error::Missing => "missing_credentials",
            SigV4Error::Ambiguous => "ambiguous_credentials",
            SigV4Error::UnsupportedAlgorithm => "unsupported_algorithm",
            SigV4Error::Malformed(_) => "malformed",
            SigV4Error::MissingComponent(_) => "incomplete",
            SigV4Error::ScopeMismatch(_) => "invalid_scope",
            SigV4Error::UnsignedRequiredHeader(_) => "unsigned_required_header",
            SigV4Error::SignedHeaderAbsent(_) => "missing_signed_header",
            SigV4Error::UnknownAccessKey(_) => "unknown_access_key",
            SigV4Error::ClockSkew(_) => "request_time_skewed",
            SigV4Error::Expired => "expired",
            SigV4Error::PayloadHashRequired => "payload_hash_required",
            SigV4Error::UnsupportedPayload => "unsupported_payload",
            SigV4Error::SignatureMismatch => "signature_mismatch",
        }
    }
}

/// Cheap test for whether a request carries SigV4 credentials at all, so an `any`-of-schemes
/// policy knows whether to hand it to this verifier. `AWS4-` rather than the full algorithm so
/// that SigV4a requests get a clear "unsupported algorithm" instead of falling through.
pub fn is_sigv4(parts: &Parts) -> bool {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().starts_with(b"AWS4-"));
    header || parts.uri.query().is_some_and(has_presign_params)
}

fn has_presign_params(query: &str) -> bool {
    query.split('&').any(|pair| {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        key == Q_ALGORITHM || key == Q_CREDENTIAL || key == Q_SIGNATURE
    })
}

/// Verifies SigV4-signed requests for one service and region against a set of static keys.
#[derive(Debug)]
pub struct SigV4Verifier {
    service: Box<str>,
    region: Box<str>,
    max_skew: Duration,
    clock: Arc<dyn Clock>,
    keys: HashMap<Arc<str>, KeyEntry>,
}

impl SigV4Verifier {
    pub fn new(service: &str, region: &str, clock: Arc<dyn Clock>) -> Self {
        Self {
            service: service.into(),
            region: region.into(),
            max_skew: DEFAULT_MAX_SKEW,
            clock,
            keys: HashMap::new(),
        }
    }

    pub fn with_max_skew(mut self, max_skew: Duration) -> Self {
        self.max_skew = max_skew;
        self
    }

    pub fn with_key(
        mut self,
        access_key: &str,
        secret: SecretKey,
        consumer: impl Into<Arc<str>>,
    ) -> Self {
        self.insert_key(access_key, secret, consumer);
        self
    }

    /// Adds or replaces a key. Access key ids are ASCII letters and digits, as AWS issues
    /// them; a request naming any other id is refused as malformed before lookup.
    pub fn insert_key(
        &mut self,
        access_key: &str,
        secret: SecretKey,
        consumer: impl Into<Arc<str>>,
    ) {
        let access_key: Arc<str> = access_key.into();
        let credentials =
            Credentials::new(access_key.as_ref(), secret.0, None, None, "tollgate-sigv4");
        let entry = KeyEntry {
            access_key: access_key.clone(),
            consumer: consumer.into(),
            identity: credentials.into(),
        };
        self.keys.insert(access_key, entry);
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Verifies a request from its head alone. A body the client signed by digest is reported in
    /// [`Verified::payload`] for the caller to check; a body signed without the
    /// `x-amz-content-sha256` header cannot be checked from the head and is refused with
    /// [`SigV4Error::PayloadHashRequired`] (use [`Self::verify_with_body`] for those).
    pub fn verify(&self, parts: &Parts) -> Result<Verified, SigV4Error> {
        self.verify_inner(parts, None)
    }

    /// Verifies a request whose body has been buffered, binding the body into the check.
    pub fn verify_with_body(&self, parts: &Parts, body: &[u8]) -> Result<Verified, SigV4Error> {
        self.verify_inner(parts, Some(body))
    }

    fn verify_inner(&self, parts: &Parts, body: Option<&[u8]>) -> Result<Verified, SigV4Error> {
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let auth = single_header(parts, AUTHORIZATION.as_str())?
            .filter(|v| v.as_bytes().starts_with(b"AWS4-"));
        let presigned = parts.uri.query().is_some_and(has_presign_params);
        let storage;
        let request = match (auth, presigned) {
            (Some(_), true) => return Err(SigV4Error::Ambiguous),
            (Some(auth), false) => Request::from_header(parts, auth, path_and_query)?,
            (None, true) => {
                storage = Presigned::parse(parts)?;
                storage.request()?
            }
            (None, false) => return Err(SigV4Error::Missing),
        };
        let scope = &request.scope;

        // Scope before key lookup: a request meant for another service or region is refused the
        // same way whether or not its key happens to be ours.
        if scope.terminator != SCOPE_TERMINATOR {
            return Err(SigV4Error::ScopeMismatch("terminator"));
        }
        if scope.service != &*self.service {
            return Err(SigV4Error::ScopeMismatch("service"));
        }
        if scope.region != &*self.region {
            return Err(SigV4Error::ScopeMismatch("region"));
        }
        if !request.amz_date.starts_with(scope.date) {
            return Err(SigV4Error::ScopeMismatch("date"));
        }

        let entry = self
            .keys
            .get(scope.access_key)
            .ok_or_else(|| SigV4Error::UnknownAccessKey(scope.access_key.to_owned()))?;

        self.check_time(request.time, request.expires)?;

        let headers = request.signed_header_values(parts)?;
        let candidates = payload_candidates(parts, body, request.expires.is_some())?;

        // Spelled out although they are aws-sigv4's defaults today: they must stay what clients
        // of a non-S3 service sign with, whatever the crate's defaults become.
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Double;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Enabled;
        settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
        // The client decided what to sign; excluding anything here (aws-sigv4 leaves out
        // user-agent by default) would break clients that did sign it.
        settings.excluded_headers = None;
        if let Some(expires) = request.expires {
            settings.signature_location = SignatureLocation::QueryParams;
            settings.expires_in = Some(expires);
        }

        for (signable_body, payload) in candidates {
            let signable = SignableRequest::new(
                parts.method.as_str(),
                request.path_and_query,
                headers.iter().copied(),
                signable_body,
            )
            .map_err(|_| CANNOT_CANONICALISE)?;
            let params = v4::SigningParams::builder()
                .identity(&entry.identity)
                .region(&self.region)
                .name(&self.service)
                .time(request.time)
                .settings(settings.clone())
                .build()
                .map_err(|_| CANNOT_CANONICALISE)?
                .into();
            let output = http_request::sign(signable, &params).map_err(|_| CANNOT_CANONICALISE)?;
            let expected = decode_hex32(output.signature()).ok_or(CANNOT_CANONICALISE)?;
            if bool::from(expected.ct_eq(&request.signature)) {
                return Ok(Verified {
                    consumer: entry.consumer.clone(),
                    access_key: entry.access_key.clone(),
                    payload,
                });
            }
        }
        Err(SigV4Error::SignatureMismatch)
    }

    fn check_time(
        &self,
        signed_at: SystemTime,
        expires: Option<Duration>,
    ) -> Result<(), SigV4Error> {
        let now = self.clock.now();
        match now.duration_since(signed_at) {
            // Signed in the past: a header-signed request is a replay risk after the skew window;
            // a presigned one lives for exactly its X-Amz-Expires.
            Ok(age) => match expires {
                Some(expires) if age > expires => Err(SigV4Error::Expired),
                Some(_) => Ok(()),
                None if age > self.max_skew => Err(SigV4Error::ClockSkew(Skew::Past)),
                None => Ok(()),
            },
            Err(ahead) if ahead.duration() > self.max_skew => {
                Err(SigV4Error::ClockSkew(Skew::Future))
            }
            Err(_) => Ok(()),
        }
    }
}

/// The parts of the credential scope `AKID/20261128/bank-1/execute-api/aws4_request`.
struct Scope<'a> {
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    terminator: &'a str,
}

impl<'a> Scope<'a> {
    fn parse(credential: &'a str) -> Result<Self, SigV4Error> {
        let mut it = credential.split('/');
        let mut next = || {
            it.next()
                .ok_or(SigV4Error::Malformed("credential scope is incomplete"))
        };
        let scope = Scope {
            access_key: next()?,
            date: next()?,
            region: next()?,
            service: next()?,
            terminator: next()?,
        };
        if it.next().is_some() {
            return Err(SigV4Error::Malformed("credential scope has extra parts"));
        }
        let key = scope.access_key;
        if key.is_empty()
            || key.len() > MAX_ACCESS_KEY_LEN
            || !key.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(SigV4Error::Malformed("invalid access key id"));
        }
        if scope.date.len() != 8 || !scope.date.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SigV4Error::Malformed("invalid credential scope date"));
        }
        Ok(scope)
    }
}

/// A request's SigV4 claims, parsed and validated for shape but not yet checked.
struct Request<'a> {
    scope: Scope<'a>,
    signed_headers: Vec<&'a str>,
    signature: [u8; 32],
    amz_date: &'a str,
    time: SystemTime,
    /// Present for the presigned form only.
    expires: Option<Duration>,
    /// For the presigned form, without the parameters aws-sigv4 adds itself.
    path_and_query: &'a str,
}

/// Decoded presigned parameters; owned because they come percent-decoded from the query.
#[derive(Default)]
struct PresignParams {
    algorithm: Option<String>,
    credential: Option<String>,
    date: Option<String>,
    expires: Option<String>,
    signed_headers: Option<String>,
    signature: Option<String>,
}

impl<'a> Request<'a> {
    fn from_header(
        parts: &'a Parts,
        auth: &'a str,
        path_and_query: &'a str,
    ) -> Result<Request<'a>, SigV4Error> {
        let rest = auth
            .strip_prefix(ALGORITHM)
            .ok_or(SigV4Error::UnsupportedAlgorithm)?;
        let rest = rest
            .strip_prefix(' ')
            .ok_or(SigV4Error::UnsupportedAlgorithm)?;
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for component in rest.split(',') {
            let component = component.trim_matches(' ');
            let (key, value) = component
                .split_once('=')
                .ok_or(SigV4Error::Malformed("authorization component without '='"))?;
            let slot = match key {
                "Credential" => &mut credential,
                "SignedHeaders" => &mut signed_headers,
                "Signature" => &mut signature,
                _ => return Err(SigV4Error::Malformed("unknown authorization component")),
            };
            if slot.replace(value).is_some() {
                return Err(SigV4Error::Malformed("repeated authorization component"));
            }
        }
        let credential = credential.ok_or(SigV4Error::MissingComponent("Credential"))?;
        let signed_headers = signed_headers.ok_or(SigV4Error::MissingComponent("SignedHeaders"))?;
        let signature = signature.ok_or(SigV4Error::MissingComponent("Signature"))?;

        let amz_date =
            single_header(parts, X_AMZ_DATE)?.ok_or(SigV4Error::MissingComponent("X-Amz-Date"))?;
        let signed_headers = parse_signed_headers(signed_headers)?;
        for required in ["host", X_AMZ_DATE] {
            if !signed_headers.contains(&required) {
                return Err(SigV4Error::UnsignedRequiredHeader(required));
            }
        }
        Ok(Request {
            scope: Scope::parse(credential)?,
            signed_headers,
            signature: decode_hex32(signature)
                .ok_or(SigV4Error::Malformed("signature is not 64 hex digits"))?,
            time: parse_amz_date(amz_date)?,
            amz_date,
            expires: None,
            path_and_query,
        })
    }

    /// The received values of the signed headers, in the order aws-sigv4 wants them.
    fn signed_header_values(
        &self,
        parts: &'a Parts,
    ) -> Result<Vec<(&'a str, &'a str)>, SigV4Error> {
        let mut out = Vec::with_capacity(self.signed_headers.len() + 2);
        for &name in &self.signed_headers {
            let before = out.len();
            for value in parts.headers.get_all(name) {
                let value = value.to_str().map_err(|_| {
                    SigV4Error::Malformed("signed header value is not visible ASCII")
                })?;
                out.push((name, value));
            }
            if out.len() == before {
                // HTTP/2 carries the host as :authority, which hyper puts in the URI.
                match parts.uri.authority() {
                    Some(authority) if name == "host" => out.push((name, authority.as_str())),
                    _ => return Err(SigV4Error::SignedHeaderAbsent(name.to_owned())),
                }
            }
        }
        Ok(out)
    }
}

/// The presigned form borrows from decoded strings, so it is parsed into this owner first and
/// then viewed as a [`Request`].
struct Presigned {
    params: PresignParams,
    stripped: String,
}

impl Presigned {
    fn parse(parts: &Parts) -> Result<Self, SigV4Error> {
        let query = parts.uri.query().unwrap_or_default();
        let mut params = PresignParams::default();
        let mut kept: Vec<&str> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let Some((key, value)) = form_urlencoded::parse(pair.as_bytes()).next() else {
                continue;
            };
            let slot = match key.as_ref() {
                Q_ALGORITHM => &mut params.algorithm,
                Q_CREDENTIAL => &mut params.credential,
                Q_DATE => &mut params.date,
                Q_EXPIRES => &mut params.expires,
                Q_SIGNED_HEADERS => &mut params.signed_headers,
                Q_SIGNATURE => &mut params.signature,
                _ => {
                    kept.push(pair);
                    continue;
                }
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(SigV4Error::Malformed("repeated presigned parameter"));
            }
        }
        let mut stripped = String::from(parts.uri.path());
        if !kept.is_empty() {
            stripped.push('?');
            stripped.push_str(&kept.join("&"));
        }
        Ok(Self { params, stripped })
    }

    fn request(&self) -> Result<Request<'_>, SigV4Error> {
        let p = &self.params;
        let algorithm = p
            .algorithm
            .as_deref()
            .ok_or(SigV4Error::MissingComponent(Q_ALGORITHM))?;
        if algorithm != ALGORITHM {
            return Err(SigV4Error::UnsupportedAlgorithm);
        }
        let credential = p
            .credential
            .as_deref()
            .ok_or(SigV4Error::MissingComponent(Q_CREDENTIAL))?;
        let amz_date = p
            .date
            .as_deref()
            .ok_or(SigV4Error::MissingComponent(Q_DATE))?;
        let expires = p
            .expires
            .as_deref()
            .ok_or(SigV4Error::MissingComponent(Q_EXPIRES))?;
        let signed_headers = p
            .signed_headers
            .as_deref()
            .ok_or(SigV4Error::MissingComponent(Q_SIGNED_HEADERS))?;
        let signature = p
            .signature
            .as_deref()
            .ok_or(SigV4Error::MissingComponent(Q_SIGNATURE))?;

        // aws-sigv4 re-renders the value from the number, so only the canonical spelling can
        // match; refusing others here gives a clearer error than a signature mismatch.
        let expires_secs: u64 = expires
            .parse()
            .ok()
            .filter(|n: &u64| *n > 0 && n.to_string() == expires)
            .ok_or(SigV4Error::Malformed("invalid X-Amz-Expires"))?;
        let expires = Duration::from_secs(expires_secs);
        if expires > MAX_PRESIGN_EXPIRES {
            return Err(SigV4Error::Malformed("X-Amz-Expires exceeds seven days"));
        }

        let signed_headers = parse_signed_headers(signed_headers)?;
        if !signed_headers.contains(&"host") {
            return Err(SigV4Error::UnsignedRequiredHeader("host"));
        }
        Ok(Request {
            scope: Scope::parse(credential)?,
            signed_headers,
            signature: decode_hex32(signature)
                .ok_or(SigV4Error::Malformed("signature is not 64 hex digits"))?,
            time: parse_amz_date(amz_date)?,
            amz_date,
            expires: Some(expires),
            path_and_query: &self.stripped,
        })
    }
}

fn single_header<'a>(parts: &'a Parts, name: &str) -> Result<Option<&'a str>, SigV4Error> {
    let mut values = parts.headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(SigV4Error::Malformed("repeated authentication header"));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| SigV4Error::Malformed("authentication header is not visible ASCII"))
}

/// `host;x-amz-date`: lowercase, sorted, unique names, as every signer writes them. An unsorted
/// list would only ever fail the signature, so it is refused as malformed up front.
fn parse_signed_headers(list: &str) -> Result<Vec<&str>, SigV4Error> {
    let names: Vec<&str> = list.split(';').collect();
    if names.len() > MAX_SIGNED_HEADERS {
        return Err(SigV4Error::Malformed("too many signed headers"));
    }
    for name in &names {
        let valid = name.len() <= MAX_HEADER_NAME_LEN
            && HeaderName::from_bytes(name.as_bytes()).is_ok_and(|n| n.as_str() == *name);
        if !valid {
            return Err(SigV4Error::Malformed("invalid signed header name"));
        }
    }
    if !names.windows(2).all(|w| w[0] < w[1]) {
        return Err(SigV4Error::Malformed(
            "signed headers are not sorted and unique",
        ));
    }
    Ok(names)
}

/// Which payload hashes to try, each with what it means for the body. More than one only for a
/// presigned request without `x-amz-content-sha256`: general presigners hash the (empty) body,
/// S3-style ones sign `UNSIGNED-PAYLOAD`, and the URL does not say which.
fn payload_candidates<'b>(
    parts: &Parts,
    body: Option<&'b [u8]>,
    presigned: bool,
) -> Result<Vec<(SignableBody<'b>, SignedPayload)>, SigV4Error> {
    let declared = single_header(parts, X_AMZ_CONTENT_SHA256)?;
    let candidate = match (declared, body) {
        (Some(UNSIGNED_PAYLOAD), _) => (SignableBody::UnsignedPayload, SignedPayload::Unsigned),
        (Some(digest), None) => (
            SignableBody::Precomputed(digest.to_owned()),
            SignedPayload::Sha256(content_digest(digest)?),
        ),
        // Signing over the actual body makes the signature hold only if the body hashes to the
        // value the client declared (and signed), so no separate digest check is needed.
        (Some(digest), Some(body)) => {
            content_digest(digest)?;
            (SignableBody::Bytes(body), SignedPayload::Checked)
        }
        (None, Some(body)) => (SignableBody::Bytes(body), SignedPayload::Checked),
        (None, None) if declares_body(parts) => return Err(SigV4Error::PayloadHashRequired),
        (None, None) => (SignableBody::empty(), SignedPayload::Empty),
    };
    let mut candidates = vec![candidate];
    if presigned && declared.is_none() {
        candidates.push((SignableBody::UnsignedPayload, SignedPayload::Unsigned));
    }
    Ok(candidates)
}

/// Lowercase hex only: that is what signers put in the canonical request, and what we would
/// compare a body's digest against. Anything else (streaming chunk signatures included) we cannot
/// honour.
fn content_digest(value: &str) -> Result<[u8; 32], SigV4Error> {
    if value.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(SigV4Error::UnsupportedPayload);
    }
    decode_hex32(value).ok_or(SigV4Error::UnsupportedPayload)
}

fn declares_body(parts: &Parts) -> bool {
    parts.headers.contains_key(TRANSFER_ENCODING)
        || parts
            .headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0")
}

/// `20261128T093000Z`, strictly: aws-sigv4 re-renders the time it signs at, so any other
/// spelling would not round-trip.
fn parse_amz_date(s: &str) -> Result<SystemTime, SigV4Error> {
    const INVALID: SigV4Error = SigV4Error::Malformed("invalid X-Amz-Date");
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return Err(INVALID);
    }
    let num = |from: usize, to: usize| -> Result<u32, SigV4Error> {
        b[from..to].iter().try_fold(0u32, |acc, &c| {
            if c.is_ascii_digit() {
                Ok(acc * 10 + u32::from(c - b'0'))
            } else {
                Err(INVALID)
            }
        })
    };
    let small = |v: u32| u8::try_from(v).map_err(|_| INVALID);
    let year = i32::try_from(num(0, 4)?).map_err(|_| INVALID)?;
    let month = time::Month::try_from(small(num(4, 6)?)?).map_err(|_| INVALID)?;
    let date =
        time::Date::from_calendar_date(year, month, small(num(6, 8)?)?).map_err(|_| INVALID)?;
    let clock = time::Time::from_hms(
        small(num(9, 11)?)?,
        small(num(11, 13)?)?,
        small(num(13, 15)?)?,
    )
    .map_err(|_| INVALID)?;
    Ok(time::PrimitiveDateTime::new(date, clock)
        .assume_utc()
        .into())
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
