//! Behaviour of the verifier and the issuer: claims against a manual clock, forged headers,
//! the token cache, and JWKS fetching against a tiny in-test IdP.

use super::*;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::KeyPair as _;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::time::{SystemTime, UNIX_EPOCH};
use tollgate_core::ManualClock;

const ISS: &str = "https://idp.bank.test";
const AUD: &str = "bank-api";
const T0: u64 = 1_800_000_000;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(at(T0)))
}

fn pem(tag: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {tag}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {tag}-----\n"));
    out
}

struct TestKey {
    kid: String,
    alg: Algorithm,
    enc: EncodingKey,
    /// Public JWK with `kid`, as an IdP would publish it.
    jwk: Jwk,
    private_pem: String,
    /// SubjectPublicKeyInfo DER (RSA only), for the key-confusion tests.
    public_der: Vec<u8>,
}

impl TestKey {
    fn finish(
        kid: &str,
        alg: Algorithm,
        enc: EncodingKey,
        pem: String,
        public_der: Vec<u8>,
    ) -> Self {
        let mut jwk = Jwk::from_encoding_key(&enc, alg).expect("public jwk");
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            alg,
            enc,
            jwk,
            private_pem: pem,
            public_der,
        }
    }

    fn ec(kid: &str) -> Self {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("ec keygen");
        let der = doc.as_ref();
        Self::finish(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_der(der),
            pem("PRIVATE KEY", der),
            vec![],
        )
    }

    fn rsa(kid: &str) -> Self {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("rsa keygen");
        let der = kp.as_der().expect("pkcs8");
        let private_pem = pem("PRIVATE KEY", der.as_ref());
        let public_der = kp.public_key().as_der().expect("spki").as_ref().to_vec();
        let enc = EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("rsa pem");
        Self::finish(kid, Algorithm::RS256, enc, private_pem, public_der)
    }

    fn ed(kid: &str) -> Self {
        let doc = Ed25519KeyPair::generate_pkcs8v1(&SystemRandom::new()).expect("ed keygen");
        let der = doc.as_ref();
        Self::finish(
            kid,
            Algorithm::EdDSA,
            EncodingKey::from_ed_der(der),
            pem("PRIVATE KEY", der),
            vec![],
        )
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.enc).expect("sign")
    }

    fn sign_without_kid(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(self.alg), claims, &self.enc).expect("sign")
    }
}

fn jwks_of(keys: &[&TestKey]) -> JwkSet {
    JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    }
}

fn jwks_json(keys: &[&TestKey]) -> Bytes {
    Bytes::from(serde_json::to_vec(&jwks_of(keys)).expect("jwks json"))
}

fn good_claims() -> Value {
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": "partner-gold",
        "client_id": "partner-gold",
        "scope": "accounts:read payments:write",
        "iat": T0,
        "nbf": T0,
        "exp": T0 + 300,
        "jti": "abc",
    })
}

fn with(claims: &Value, f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut c = claims.clone();
    f(c.as_object_mut().expect("object"));
    c
}

fn config(keys: &[&TestKey]) -> IssuerConfig {
    IssuerConfig::new(ISS, vec![AUD.to_owned()], JwksSource::Static(jwks_of(keys)))
}

fn verifier(configs: Vec<IssuerConfig>, clock: &Arc<ManualClock>) -> JwtVerifier {
    JwtVerifier::new(configs, clock.clone()).expect("verifier")
}

fn invalid(v: &JwtVerifier, token: &str) -> JwtError {
    match v.verify_cached(token) {
        Verdict::Invalid(e) => e,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn valid(v: &JwtVerifier, token: &str) -> Arc<Claims> {
    match v.verify_cached(token) {
        Verdict::Valid(c) => c,
        other => panic!("expected Valid, got {other:?}"),
    }
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"))
}

/// A token with any header, signed (or not) by hand.
fn forged(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let sig = sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn hmac(alg: aws_lc_rs::hmac::Algorithm, secret: &[u8], msg: &[u8]) -> Vec<u8> {
    aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(alg, secret), msg)
        .as_ref()
        .to_vec()
}

// ---------------------------------------------------------------------------------------------
// Claims

#[test]
fn valid_token_yields_claims() {
    let k = TestKey::ec("k1");
    let clock = clock();
    let v = verifier(vec![config(&[&k])], &clock);
    let c = valid(&v, &k.sign(&good_claims()));
    assert_eq!(c.issuer, ISS);
    assert_eq!(c.subject.as_deref(), Some("partner-gold"));
    assert_eq!(c.client_id.as_deref(), Some("partner-gold"));
    assert_eq!(c.scopes, vec!["accounts:read", "payments:write"]);
    assert!(c.has_scope("payments:write") && !c.has_scope("payments:read"));
    assert!(c.has_all_scopes(&["accounts:read", "payments:write"]));
    assert_eq!(c.audiences, vec![AUD]);
    assert_eq!(c.expires_at, at(T0 + 300));
    assert_eq!(c.issued_at, Some(at(T0)));
    assert_eq!(c.token_id.as_deref(), Some("abc"));
    assert_eq!(c.raw.get("jti"), Some(&json!("abc")));
}

#[test]
fn scp_array_azp_and_audience_array() {
    let k = TestKey::ec("k1");
    let clock = clock();
    let v = verifier(vec![config(&[&k])], &clock);
    let claims = with(&good_claims(), |m| {
        m.remove("scope");
        m.remove("client_id");
        m.insert("scp".into(), json!(["a", "b"]));
        m.insert("azp".into(), json!("cli"));
        m.insert("aud".into(), json!(["other", AUD]));
    });
    let c = valid(&v, &k.sign(&claims));
    assert_eq!(c.scopes, vec!["a", "b"]);
    assert_eq!(c.client_id.as_deref(), Some("cli"));
    assert_eq!(c.audiences, vec!["other", AUD]);

    let no_scope = with(&good_claims(), |m| {
        m.remove("scope");
    });
    assert!(valid(&v, &k.sign(&no_scope)).scopes.is_empty());
    let bad_scope = with(&good_claims(), |m| {
        m.insert("scope".into(), json!(42));
    });
    assert_eq!(invalid(&v, &k.sign(&bad_scope)), JwtError::Malformed);
}

#[test]
fn wrong_issuer_and_audience() {
    let k = TestKey::ec("k1");
    let clock = clock();
    let v = verifier(vec![config(&[&k])], &clock);
    let other_iss = with(&good_claims(), |m| {
        m.insert("iss".into(), json!("https://evil.test"));
    });
    assert_eq!(invalid(&v, &k.sign(&other_iss)), JwtError::WrongIssuer);
    let no_iss = with(&good_claims(), |m| {
        m.remove("iss");
    });
    assert_eq!(invalid(&v, &k.sign(&no_iss)), JwtError::WrongIssuer);
    let other_aud = with(&good_claims(), |m| {
        m.insert("aud".into(), json!(["a", "b"]));
    });
    assert_eq!(invalid(&v, &k.sign(&other_aud)), JwtError::WrongAudience);
    let no_aud = with(&good_claims(), |m| {
        m.remove("aud");
    });
    assert_eq!(invalid(&v, &k.sign(&no_aud)), JwtError::WrongAudience);
}

#[test]
fn expiry_and_leeway() {
    let k = TestKey::ec("k1");
    let clock = clock();
    let mut cfg = config(&[&k]);
    cfg.leeway = Duration::from_secs(60);
    let v = JwtVerifier::with_options(
        vec![cfg],
        clock.clone(),
        VerifierOptions {
            cache_capacity: 0,
            ..Default::default()
        },
    )
    .expect("verifier");
    let token = k.sign(&good_claims());
    clock.set(at(T0 + 300 + 59));
    valid(&v, &token);
    clock.set(at(T0 + 300 + 60));
    assert_eq!(invalid(&v, &token), JwtError::Expired);
    clock.set(at(T0 + 100_000));
    assert_eq!(invalid(&v, &token), JwtError::Expired);

    let no_exp = with(&good_claims(), |m| {
        m.remove("exp");
    });
    clock.set(at(T0));
    assert_eq!(invalid(&v, &k.sign(&no_exp)), JwtError::MissingExpiry);
    for bad in [json!("soon"), json!(-1), json!(1e300), json!(null)] {
        let c = with(&good_claims(), |m| {
            m.insert("exp".into(), bad.clone());
        });
        assert_eq!(invalid(&v, &k.sign(&c)), JwtError::Malformed, "exp = {bad}");
    }
    let fractional = with(&good_claims(), |m| {
        m.insert("exp".into(), json!(T0 as f64 + 300.5));
    });
    valid(&v, &k.sign(&fractional));
}

#[test]
fn not_before_and_issued_at_with_skew() {
    let k = TestKey::ec("k1");
    let clock = clock();
    let mut cfg = config(&[&k]);
    cfg.leeway = Duration::from_secs(30);
    let v = JwtVerifier::with_options(
        vec![cfg],
        clock.clone(),
        VerifierOptions {
            cache_capacity: 0,
            ..Default::default()
        },
    )
    .expect("verifier");
    // The IdP's clock runs 100 s ahead of ours.
    let ahead = with(&good_claims(), |m| {
        m.insert("nbf".into(), json!(T0 + 100));
        m.insert("iat".into(), json!(T0 + 100));
    });
    let token = k.sign(&ahead);
    assert_eq!(invalid(&v, &token), JwtError::NotYetValid);
    clock.set(at(T0 + 69));
    assert_eq!(invalid(&v, &token), JwtError::NotYetValid);
    clock.set(at(T0 + 70));
    valid(&v, &token);

    let iat_only = with(&good_claims(), |m| {
        m.remove("nbf");
        m.insert("iat".into(), json!(T0 + 100));
    });
    let token = k.sign(&iat_only);
    clock.set(at(T0));
    assert_eq!(invalid(&v, &token), JwtError::IssuedInFuture);
    clock.set(at(T0 + 70));
    valid(&v, &token);
}

// ---------------------------------------------------------------------------------------------
// Signatures, keys, forged headers

#[test]
fn tampered_token_rejected() {
    let k = TestKey::ec("k1");
    let clock = clock();
    let v = verifier(vec![config(&[&k])], &clock);
    let token = k.sign(&good_claims());
    let parts: Vec<&str> = token.split('.').collect();
    let promoted = with(&good_claims(), |m| {
        m.insert("scope".into(), json!("accounts:read payments:write admin"));
    });
    let tampered = format!("{}.{}.{}", parts[0], b64(&promoted), parts[2]);
    assert_eq!(invalid(&v, &tampered), JwtError::BadSignature);
    let other_sig = k.sign(&promoted);
    let spliced = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        other_sig.split('.').nth(2).expect("sig")
    );
    assert_eq!(invalid(&v, &spliced), JwtError::BadSignature);
    let no_sig = format!("{}.{}.", parts[0], parts[1]);
    assert_eq!(invalid(&v, &no_sig), JwtError::BadSignature);
    let other_key = TestKey::ec("k1");
    assert_eq!(
        invalid(&v, &other_key.sign(&good_claims())),
        JwtError::BadSignature
    );
}

#[test]
fn alg_none_rejected() {
    let k = TestKey::ec("k1");
    let clock = clock();
    let v = verifier(vec![config(&[&k])], &clock);
    for header in [
        json!({"alg": "none"}),
        json!({"alg": "none", "kid": "k1"}),
        json!({"alg": "None", "kid": "k1"}),
        json!({"alg": "NONE"}),
        json!({"alg": "", "kid": "k1"}),
    ] {
        let unsigned = forged(&header, &good_claims(), |_| Vec::new());
        assert_eq!(
            invalid(&v, &unsigned),
            JwtError::AlgorithmNotAllowed,
            "{header}"
        );
        let junk = forged(&header, &good_claims(), |_| vec![1, 2, 3]);
        assert_eq!(
            invalid(&v, &junk),
            JwtError::AlgorithmNotAllowed,
            "{header}"
        );
    }
    let no_alg = forged(&json!({"kid": "k1"}), &good_claims(), |_| vec![1]);
    assert_eq!(invalid(&v, &no_alg), JwtError::Malformed);
}

#[test]
fn rsa_public_key_as_hmac_secret_rejected() {
    let k = TestKey::rsa("rsa1");
    let clock = clock();
    let v = verifier(vec![config(&[&k])], &clock);
    valid(&v, &k.sign(&good_claims()));
    let spki_pem = pem("PUBLIC KEY", &k.public_der);
    let jsonwebtoken::jwk::AlgorithmParameters::RSA(p) = &k.jwk.algorithm else {
        panic!("rsa jwk")
    };
    let n = URL_SAFE_NO_PAD.decode(&p.n).expect("n");
    let header = json!({"alg": "HS256", "kid": "rsa1", "typ": "JWT"});
    for secret in [spki_pem.as_bytes(), k.public_der.as_slice(), n.as_slice()] {
        let t = forged(&header, &good_claims(), |m| {
            hmac(aws_lc_rs::hmac::HMAC_SHA256, secret, m)
        });
        assert_eq!(invalid(&v, &t), JwtError::AlgorithmNotAllowed);
    }
    // An EC-signed token relabelled as another family.
    let ec = TestKey::ec("rsa1");
    let ec_token = ec.sign(&good_claims());
    let (_, rest) = ec_token.split_once('.').expect("dot");
    let relabelled = format!("{}.{rest}", b64(&json!({"alg": "RS256", "kid": "rsa1"})));
    assert_eq!(invalid(&v, &relabelled), JwtError::BadSignature);
    let relabelled = format!("{}.{rest}", b64(&json!({"alg": "ES256", "kid": "rsa1"})));
    assert_eq!(invalid(&v, &relabelled), JwtError::AlgorithmNotAllowed);
}

#[test]
fn key_pinned_to_its_jwk_alg() {
    let k = TestKey::rsa("rsa1");
    let pinned = pinned_again(&k);
    let clock = clock();
    let v = verifier(
        vec![IssuerConfig::new(
            ISS,
            vec![AUD.into()],
            JwksSource::Static(JwkSet { keys: vec![pinned] }),
        )],
        &clock,
    );
    // RS256 is in the issuer's list but not the key's.
    assert_eq!(
        invalid(&v, &k.sign(&good_claims())),
        JwtError::AlgorithmNotAllowed
    );
    let mut h = Header::new(Algorithm::PS256);
    h.kid = Some("rsa1".into());
    let ps = jsonwebtoken::encode(&h, &good_claims(), &k.enc).expect("ps256");
    valid(&v, &ps);
    // And an issuer that does not allow PS256 has no usable key at all.
    let mut cfg = IssuerConfig::new(
        ISS,
        vec![AUD.into()],
        JwksSource::Static(JwkSet {
            keys: vec![pinned_again(&k)],
        }),
    );
    cfg.algorithms = vec![Algorithm::RS256];
    assert!(matches!(
        JwtVerifier::new(vec![cfg], clock.clone()),
        Err(JwtConfigError::Keys {
            source: JwksError::NoUsableKeys,
            ..
        })
    ));
}

fn pinned_again(k: &TestKey) -> Jwk {
    let mut j = k.jwk.clone();
    j.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::PS256);
    j
}

#[test]
fn kid_required_with_several_keys() {
    let a = TestKey::ec("a");
    let b = TestKey::ec("b");
    let clock = clock();
    let two = verifier(vec![config(&[&a, &b])], &clock);
    assert_eq!(
        invalid(&two, &a.sign_without_kid(&good_claims())),
        JwtError::KidRequired
    );
    valid(&two, &a.sign(&good_claims()));
    valid(&two, &b.sign(&good_claims()));
    let one = verifier(vec![config(&[&a])], &clock);
    valid(&one, &a.sign_without_kid(&good_claims()));
}

#[tokio::test]
async fn unknown_kid_with_static_keys() {
    let a = TestKey::ec("a");
    let stranger = TestKey::ec("zzz");
    let clock = clock();
    let v = verifier(vec![config(&[&a])], &clock);
    let token = stranger.sign(&good_claims());
    assert_eq!(v.verify_cached(&token), Verdict::UnknownKey);
    assert_eq!(v.verify(&token).await, Err(JwtError::UnknownKey));
}

#[test]
fn crit_and_b64_headers_rejected() {
    let k = TestKey::ec("k1");
    let clock = clock();
    let v = verifier(vec![config(&[&k])], &clock);
    for header in [
        json!({"alg": "ES256", "kid": "k1", "crit": ["exp"], "exp": 1}),
        json!({"alg": "ES256", "kid": "k1", "b64": false, "crit": ["b64"]}),
        json!({"alg": "ES256", "kid": 7}),
    ] {
        let input = format!("{}.{}", b64(&header), b64(&good_claims()));
        let sig =
            jsonwebtoken::crypto::sign(input.as_bytes(), &k.enc, Algorithm::ES256).expect("sign");
        assert_eq!(
            invalid(&v, &format!("{input}.{sig}")),
            JwtError::Malformed,
            "{header}"
        );
    }
}

#[test]
fn eddsa_and_rsa_and_multiple_issuers() {
    let ed = TestKey::ed("ed");
    let rsa = TestKey::rsa("rsa");
    let clock = clock();
    let other = IssuerConfig::new(
        "http://127.0.0.1:8080",
        vec!["gateway".into()],
        JwksSource::Static(jwks_of(&[&rsa])),
    );
    let v = verifier(vec![config(&[&ed]), other], &clock);
    valid(&v, &ed.sign(&good_claims()));
    let gw = with(&good_claims(), |m| {
        m.insert("iss".into(), json!("http://127.0.0.1:8080"));
        m.insert("aud".into(), json!("gateway"));
    });
    let c = valid(&v, &rsa.sign(&gw));
    assert_eq!(c.issuer, "http://127.0.0.1:8080");
    // A key of one issuer does not vouch for another's `iss`: it is not in that issuer's set.
    assert_eq!(
        v.verify_cached(&rsa.sign(&good_claims())),
        Verdict::UnknownKey
    );
}

#[test]
fn garbage_never_validates() {
    let k = TestKey::ec("k1");
    let clock = clock();
    let v = verifier(vec![config(&[&k])], &clock);
    let token = k.sign(&good_claims());
    valid(&v, &token);
    for cut in 0..token.len() {
        assert!(
            !matches!(v.verify_cached(&token[..cut]), Verdict::Valid(_)),
            "prefix {cut}"
        );
    }
    let bytes = token.as_bytes();
    for i in 0..bytes.len() {
        for repl in [b'A', b'_', b'.', b'=', b' '] {
            if bytes[i] == repl {
                continue;
            }
            let mut m = bytes.to_vec();
            m[i] = repl;
            let m = String::from_utf8(m).expect("ascii");
            assert!(
                !matches!(v.verify_cached(&m), Verdict::Valid(_)),
                "byte {i} -> {repl}"
            );
        }
    }
    for junk in [
        "",
        ".",
        "..",
        "...",
        "a.b.c",
        "Bearer x",
        "{\"alg\":\"none\"}",
    ] {
        assert!(
            matches!(v.verify_cached(junk), Verdict::Invalid(_)),
            "{junk:?}"
        );
    }
    assert_eq!(
        invalid(&v, &"a".repeat(MAX_TOKEN_LEN + 1)),
        JwtError::Malformed
    );
}

/// A verifier for one issuer with one HS256 secret, named `kid` or not.
fn hs256_issuer(kid: Option<&str>, secret: &[u8]) -> JwtVerifier {
    let source = JwksSource::SharedSecrets(vec![SharedSecret::new(
        kid.map(str::to_string),
        Algorithm::HS256,
        secret.to_vec(),
    )]);
    verifier(
        vec![IssuerConfig::new(ISS, vec![AUD.into()], source)],
        &clock(),
    )
}

#[test]
fn shared_secret_issuer() {
    let secret = b"0123456789abcdef0123456789abcdef".to_vec();
    let v = hs256_issuer(Some("s1"), &secret);
    let header = json!({"alg": "HS256", "kid": "s1"});
    let good = forged(&header, &good_claims(), |m| {
        hmac(aws_lc_rs::hmac::HMAC_SHA256, &secret, m)
    });
    valid(&v, &good);
    let wrong = forged(&header, &good_claims(), |m| {
        hmac(
            aws_lc_rs::hmac::HMAC_SHA256,
            b"0123456789abcdef0123456789abcdeX",
            m,
        )
    });
    assert_eq!(invalid(&v, &wrong), JwtError::BadSignature);
    let hs512 = forged(&json!({"alg": "HS512", "kid": "s1"}), &good_claims(), |m| {
        hmac(aws_lc_rs::hmac::HMAC_SHA512, &secret, m)
    });
    assert_eq!(invalid(&v, &hs512), JwtError::AlgorithmNotAllowed);
    // Debug output never shows the secret.
    let dbg = format!(
        "{:?}",
        SharedSecret::new(None, Algorithm::HS256, secret.clone())
    );
    assert!(!dbg.contains("0123456789"), "{dbg}");
}

#[test]
fn a_kid_in_the_token_does_not_matter_for_a_single_unnamed_secret() {
    let secret = b"0123456789abcdef0123456789abcdef".to_vec();
    let v = hs256_issuer(None, &secret);
    let sign = |header: &Value, key: &[u8]| {
        forged(header, &good_claims(), |m| {
            hmac(aws_lc_rs::hmac::HMAC_SHA256, key, m)
        })
    };
    valid(&v, &sign(&json!({"alg": "HS256"}), &secret));
    valid(
        &v,
        &sign(&json!({"alg": "HS256", "kid": "anything"}), &secret),
    );
    let wrong = sign(
        &json!({"alg": "HS256", "kid": "anything"}),
        b"0123456789abcdef0123456789abcdeX",
    );
    // Not the key's signature: the `kid` may name a key rotated in since, so it counts as
    // an unknown key (which a key set URL would be fetched again for).
    assert_eq!(v.verify_cached(&wrong), Verdict::UnknownKey);
}

#[test]
fn config_errors() {
    let k = TestKey::ec("k1");
    let clock = clock();
    let new = |c: IssuerConfig| JwtVerifier::new(vec![c], clock.clone()).map(|_| ());
    let url = |u: &str| IssuerConfig::new(ISS, vec![AUD.into()], JwksSource::Url(u.into()));

    assert!(matches!(
        new(url("https://idp.bank.test/jwks")),
        Err(JwtConfigError::HttpsUnsupported { .. })
    ));
    let msg = new(url("HTTPS://idp/jwks")).expect_err("https").to_string();
    assert!(msg.contains("https is not supported"), "{msg}");
    for bad in ["ftp://x/y", "not a url", "/relative/path", "http://"] {
        assert!(
            matches!(new(url(bad)), Err(JwtConfigError::BadUrl { .. })),
            "{bad}"
        );
    }
    new(url("http://127.0.0.1:9190/.well-known/jwks.json")).expect("plain http is fine");

    let mut hs = config(&[&k]);
    hs.algorithms.push(Algorithm::HS256);
    assert!(matches!(
        new(hs),
        Err(JwtConfigError::HmacWithoutSecret { .. })
    ));

    let mut secret_rs = IssuerConfig::new(
        ISS,
        vec![AUD.into()],
        JwksSource::SharedSecrets(vec![SharedSecret::new(None, Algorithm::HS256, vec![7; 32])]),
    );
    secret_rs.algorithms.push(Algorithm::RS256);
    assert!(matches!(
        new(secret_rs),
        Err(JwtConfigError::AsymmetricWithSecret { .. })
    ));

    let short = IssuerConfig::new(
        ISS,
        vec![AUD.into()],
        JwksSource::SharedSecrets(vec![SharedSecret::new(None, Algorithm::HS256, vec![7; 31])]),
    );
    assert!(matches!(
        new(short),
        Err(JwtConfigError::Keys {
            source: JwksError::InvalidSecret(_),
            ..
        })
    ));

    let mut no_aud = config(&[&k]);
    no_aud.audiences.clear();
    assert!(matches!(
        new(no_aud),
        Err(JwtConfigError::NoAudience { .. })
    ));
    let mut leeway = config(&[&k]);
    leeway.leeway = Duration::from_secs(3600);
    assert!(matches!(
        new(leeway),
        Err(JwtConfigError::LeewayTooLarge { .. })
    ));
    let mut zero = config(&[&k]);
    zero.min_refetch_interval = Duration::ZERO;
    assert!(matches!(new(zero), Err(JwtConfigError::BadInterval { .. })));
    assert!(matches!(
        new(IssuerConfig::new(
            ISS,
            vec![AUD.into()],
            JwksSource::Static(JwkSet { keys: vec![] })
        )),
        Err(JwtConfigError::Keys {
            source: JwksError::NoUsableKeys,
            ..
        })
    ));
    let oct: Jwk = serde_json::from_value(json!({"kty": "oct", "alg": "HS256", "k": "AAAA"}))
        .expect("oct jwk");
    assert!(matches!(
        new(IssuerConfig::new(
            ISS,
            vec![AUD.into()],
            JwksSource::Static(JwkSet { keys: vec![oct] })
        )),
        Err(JwtConfigError::Keys {
            source: JwksError::PrivateKeyMaterial,
            ..
        })
    ));
    assert!(matches!(
        JwtVerifier::new(vec![config(&[&k]), config(&[&k])], clock.clone()),
        Err(JwtConfigError::DuplicateIssuer(_))
    ));
    assert!(matches!(
        JwtVerifier::new(vec![], clock.clone()),
        Err(JwtConfigError::NoIssuers)
    ));
    let missing = IssuerConfig::new(
        ISS,
        vec![AUD.into()],
        JwksSource::File("/nonexistent/tollgate/jwks.json".into()),
    );
    assert!(matches!(new(missing), Err(JwtConfigError::ReadFile { .. })));
}

#[test]
fn error_reasons_are_stable_and_header_safe() {
    let all = [
        (JwtError::Malformed, "malformed token"),
        (JwtError::AlgorithmNotAllowed, "algorithm not allowed"),
        (JwtError::UnknownKey, "unknown signing key"),
        (JwtError::KidRequired, "key id required"),
        (JwtError::BadSignature, "bad signature"),
        (JwtError::WrongIssuer, "wrong issuer"),
        (JwtError::WrongAudience, "wrong audience"),
        (JwtError::Expired, "token expired"),
        (JwtError::NotYetValid, "token not yet valid"),
        (JwtError::IssuedInFuture, "token issued in the future"),
        (JwtError::MissingExpiry, "missing exp claim"),
    ];
    for (e, reason) in all {
        assert_eq!(e.reason(), reason);
        assert_eq!(e.to_string(), reason);
        assert!(reason.bytes().all(|b| b.is_ascii_graphic() || b == b' ') && !reason.contains('"'));
    }
}

#[test]
fn file_source() {
    let k = TestKey::rsa("filekey");
    let path = std::env::temp_dir().join(format!("tollgate-jwt-{}-jwks.json", std::process::id()));
    std::fs::write(&path, jwks_json(&[&k])).expect("write jwks");
    let clock = clock();
    let v = verifier(
        vec![IssuerConfig::new(
            ISS,
            vec![AUD.into()],
            JwksSource::File(path.clone()),
        )],
        &clock,
    );
    valid(&v, &k.sign(&good_claims()));
    std::fs::write(&path, b"{\"keys\": \"nope\"}").expect("write garbage");
    let err = JwtVerifier::new(
        vec![IssuerConfig::new(
            ISS,
            vec![AUD.into()],
            JwksSource::File(path.clone()),
        )],
        clock.clone(),
    )
    .expect_err("garbage file");
    assert!(
        matches!(
            err,
            JwtConfigError::Keys {
                source: JwksError::NotAKeySet,
                ..
            }
        ),
        "{err}"
    );
    let _ = std::fs::remove_file(&path);
}

// ---------------------------------------------------------------------------------------------
// Token cache

#[test]
fn token_cache_hit_and_expiry_at_exp() {
    let k = TestKey::ec("k1");
    let clock = clock();
    let mut cfg = config(&[&k]);
    cfg.leeway = Duration::ZERO;
    let v = verifier(vec![cfg], &clock);
    let token = k.sign(&good_claims());
    assert_eq!(v.cached_tokens(), 0);
    let first = valid(&v, &token);
    assert_eq!(v.cached_tokens(), 1);
    let second = valid(&v, &token);
    assert!(
        Arc::ptr_eq(&first, &second),
        "second answer comes from the cache"
    );
    clock.set(at(T0 + 299));
    assert!(Arc::ptr_eq(&first, &valid(&v, &token)));
    clock.set(at(T0 + 300));
    assert_eq!(invalid(&v, &token), JwtError::Expired);
    assert_eq!(v.cached_tokens(), 0);
}

#[test]
fn cache_is_consulted_before_parsing() {
    // Proves a hit skips verification: an entry planted for a string that is not even a JWT.
    let k = TestKey::ec("k1");
    let clock = clock();
    let v = verifier(vec![config(&[&k])], &clock);
    let real = valid(&v, &k.sign(&good_claims()));
    v.inner.cache.insert(
        cache_key("not-a-jwt"),
        Entry {
            claims: real.clone(),
            issuer: 0,
            generation: 0,
        },
        clock.now(),
    );
    assert!(Arc::ptr_eq(&real, &valid(&v, "not-a-jwt")));
    // A stale generation (keys changed since) is not trusted.
    v.inner.cache.insert(
        cache_key("stale"),
        Entry {
            claims: real,
            issuer: 0,
            generation: 41,
        },
        clock.now(),
    );
    assert_eq!(invalid(&v, "stale"), JwtError::Malformed);
}

#[test]
fn cache_is_bounded() {
    let k = TestKey::ec("k1");
    let clock = clock();
    let v = JwtVerifier::with_options(
        vec![config(&[&k])],
        clock.clone(),
        VerifierOptions {
            cache_capacity: 32,
            ..Default::default()
        },
    )
    .expect("verifier");
    for i in 0..300 {
        let c = with(&good_claims(), |m| {
            m.insert("jti".into(), json!(i));
        });
        valid(&v, &k.sign(&c));
        assert!(v.cached_tokens() <= 32, "{} entries", v.cached_tokens());
    }
    assert!(v.cached_tokens() > 0);

    let off = JwtVerifier::with_options(
        vec![config(&[&k])],
        clock.clone(),
        VerifierOptions {
            cache_capacity: 0,
            ..Default::default()
        },
    )
    .expect("verifier");
    valid(&off, &k.sign(&good_claims()));
    assert_eq!(off.cached_tokens(), 0);
}

// ---------------------------------------------------------------------------------------------
// JWKS over HTTP

struct Idp {
    addr: SocketAddr,
    state: Arc<IdpState>,
    task: tokio::task::JoinHandle<()>,
}

struct IdpState {
    body: std::sync::Mutex<Bytes>,
    status: std::sync::Mutex<u16>,
    cache_control: std::sync::Mutex<Option<String>>,
    delay: std::sync::Mutex<Duration>,
    hits: AtomicUsize,
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Idp {
    async fn start(body: Bytes) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(IdpState {
            body: std::sync::Mutex::new(body),
            status: std::sync::Mutex::new(200),
            cache_control: std::sync::Mutex::new(None),
            delay: std::sync::Mutex::new(Duration::ZERO),
            hits: AtomicUsize::new(0),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            // Connections live in the set, so aborting this task also cuts kept-alive ones:
            // a stopped IdP really is unreachable.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let st = st.clone();
                        async move {
                            st.hits.fetch_add(1, Ordering::SeqCst);
                            let delay = *st.delay.lock().expect("lock");
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let mut resp = http::Response::builder()
                                .status(*st.status.lock().expect("lock"))
                                .header("content-type", "application/json");
                            if let Some(cc) = st.cache_control.lock().expect("lock").clone() {
                                resp = resp.header("cache-control", cc);
                            }
                            let body = st.body.lock().expect("lock").clone();
                            Ok::<_, Infallible>(resp.body(Full::new(body)).expect("response"))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn serve(&self, body: Bytes) {
        *self.state.body.lock().expect("lock") = body;
    }

    fn set_status(&self, status: u16) {
        *self.state.status.lock().expect("lock") = status;
    }

    fn set_delay(&self, d: Duration) {
        *self.state.delay.lock().expect("lock") = d;
    }

    fn set_cache_control(&self, v: Option<&str>) {
        *self.state.cache_control.lock().expect("lock") = v.map(str::to_owned);
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

fn url_config(idp: &Idp, min_refetch: Duration) -> IssuerConfig {
    let mut c = IssuerConfig::new(ISS, vec![AUD.into()], JwksSource::Url(idp.url()));
    c.min_refetch_interval = min_refetch;
    c.refresh_interval = Duration::from_secs(3600);
    c
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rotation_first_token_with_new_kid_verifies() {
    let a = TestKey::ec("a");
    let b = TestKey::ec("b");
    let idp = Idp::start(jwks_json(&[&a])).await;
    let clock = clock();
    let v = verifier(vec![url_config(&idp, Duration::from_secs(60))], &clock);
    assert_eq!(v.key_count(ISS), Some(0), "nothing before start");
    v.start().await;
    assert_eq!(idp.hits(), 1);
    assert_eq!(v.key_count(ISS), Some(1));
    v.verify(&a.sign(&good_claims())).await.expect("key a");

    idp.serve(jwks_json(&[&b]));
    let token_b = b.sign(&good_claims());
    assert_eq!(
        v.verify_cached(&token_b),
        Verdict::UnknownKey,
        "sync path never fetches"
    );
    assert_eq!(idp.hits(), 1);
    let c = v
        .verify(&token_b)
        .await
        .expect("rotated key works on first use");
    assert_eq!(c.subject.as_deref(), Some("partner-gold"));
    assert_eq!(idp.hits(), 2);
    // The old key is gone with the old set.
    let fresh_a = a.sign(&with(&good_claims(), |m| {
        m.insert("jti".into(), json!("fresh"));
    }));
    assert_eq!(v.verify_cached(&fresh_a), Verdict::UnknownKey);
}

#[tokio::test]
async fn single_flight_refetch() {
    let a = TestKey::ec("a");
    let b = TestKey::ec("b");
    let idp = Idp::start(jwks_json(&[&a])).await;
    let clock = clock();
    let v = verifier(vec![url_config(&idp, Duration::from_millis(1))], &clock);
    v.start().await;
    assert_eq!(idp.hits(), 1);
    idp.serve(jwks_json(&[&a, &b]));
    idp.set_delay(Duration::from_millis(300));
    let token = b.sign(&good_claims());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let v = v.clone();
        let token = token.clone();
        set.spawn(async move { v.verify(&token).await });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task").expect("verified after the shared refetch");
    }
    assert_eq!(
        idp.hits(),
        2,
        "16 concurrent unknown-kid requests, one fetch"
    );
}

#[tokio::test]
async fn refetch_is_rate_limited() {
    let a = TestKey::ec("a");
    let stranger = TestKey::ec("nobody-knows-me");
    let idp = Idp::start(jwks_json(&[&a])).await;
    let clock = clock();
    let v = verifier(vec![url_config(&idp, Duration::from_millis(400))], &clock);
    v.start().await;
    assert_eq!(idp.hits(), 1);
    let token = stranger.sign(&good_claims());
    assert_eq!(v.verify(&token).await, Err(JwtError::UnknownKey));
    assert_eq!(idp.hits(), 2);
    for _ in 0..20 {
        assert_eq!(v.verify(&token).await, Err(JwtError::UnknownKey));
    }
    assert_eq!(idp.hits(), 2, "no refetch within min_refetch_interval");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(v.verify(&token).await, Err(JwtError::UnknownKey));
    assert_eq!(idp.hits(), 3);
}

#[tokio::test]
async fn expired_token_with_unknown_kid_does_not_refetch() {
    let a = TestKey::ec("a");
    let gone = TestKey::ec("rotated-out");
    let idp = Idp::start(jwks_json(&[&a])).await;
    let clock = clock();
    let v = verifier(vec![url_config(&idp, Duration::from_millis(1))], &clock);
    v.start().await;
    let old = with(&good_claims(), |m| {
        m.insert("exp".into(), json!(T0 - 3600));
    });
    assert_eq!(v.verify(&gone.sign(&old)).await, Err(JwtError::Expired));
    assert_eq!(idp.hits(), 1);
}

#[tokio::test]
async fn cancelled_caller_does_not_abort_the_shared_refetch() {
    let a = TestKey::ec("a");
    let b = TestKey::ec("b");
    let idp = Idp::start(jwks_json(&[&a])).await;
    let clock = clock();
    let v = verifier(vec![url_config(&idp, Duration::from_secs(60))], &clock);
    v.start().await;
    idp.serve(jwks_json(&[&a, &b]));
    idp.set_delay(Duration::from_millis(300));
    let token = b.sign(&good_claims());
    let first = {
        let (v, token) = (v.clone(), token.clone());
        tokio::spawn(async move { v.verify(&token).await })
    };
    wait_until("the first refetch to reach the IdP", || idp.hits() == 2).await;
    first.abort();
    // Rate-limited, so this one can only succeed through the first caller's fetch.
    v.verify(&token)
        .await
        .expect("the abandoned fetch still completed");
    assert_eq!(idp.hits(), 2);
}

#[tokio::test]
async fn idp_failures_keep_last_good_set() {
    let a = TestKey::ec("a");
    let idp = Idp::start(jwks_json(&[&a])).await;
    let clock = clock();
    let v = verifier(vec![url_config(&idp, Duration::from_millis(1))], &clock);
    v.start().await;
    let mut n = 0;
    let mut fresh = || {
        n += 1;
        a.sign(&with(&good_claims(), |m| {
            m.insert("jti".into(), json!(n));
        }))
    };
    valid(&v, &fresh());

    let private_leak = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "x",
        "x": "04N0xi21hshyvBp7I167sbE_bXqyqkAPfefdklMO7wY",
        "y": "UI8exy-C06a7DUnjIdENkxeFtHM4-l_41LqEw9nVgmw",
        "d": "yy49oPcINGK2ps0LmtxpB6UTEOiITghHBif6wDqmJ3c"}]});
    let bad_bodies: [(u16, Bytes); 5] = [
        (500, jwks_json(&[&a])),
        (200, Bytes::from_static(b"<html>maintenance</html>")),
        (200, Bytes::from_static(b"{\"keys\": []}")),
        (
            200,
            Bytes::from_static(
                b"{\"keys\": [{\"kty\": \"RSA\", \"n\": \"AQAB\", \"e\": \"AQAB\"}]}",
            ),
        ),
        (200, Bytes::from(private_leak.to_string())),
    ];
    for (status, body) in bad_bodies {
        idp.set_status(status);
        idp.serve(body);
        let before = idp.hits();
        v.refresh_now().await;
        assert_eq!(idp.hits(), before + 1);
        assert_eq!(v.key_count(ISS), Some(1), "status {status}");
        valid(&v, &fresh());
    }

    let url = idp.url();
    drop(idp);
    v.refresh_now().await;
    assert_eq!(v.key_count(ISS), Some(1), "{url} is down");
    valid(&v, &fresh());
}

#[tokio::test]
async fn idp_down_at_start_then_recovers() {
    let a = TestKey::ec("a");
    let idp = Idp::start(jwks_json(&[&a])).await;
    idp.set_status(503);
    let clock = clock();
    let v = verifier(vec![url_config(&idp, Duration::from_millis(50))], &clock);
    v.start().await;
    assert_eq!(v.key_count(ISS), Some(0));
    let token = a.sign(&good_claims());
    assert_eq!(v.verify(&token).await, Err(JwtError::UnknownKey));
    idp.set_status(200);
    // The background task keeps retrying on its own.
    wait_until("background retry", || v.key_count(ISS) == Some(1)).await;
    valid(&v, &token);
}

#[tokio::test]
async fn refetch_recovers_from_empty_start() {
    let a = TestKey::ec("a");
    let idp = Idp::start(jwks_json(&[&a])).await;
    idp.set_status(503);
    let clock = clock();
    let mut cfg = url_config(&idp, Duration::from_millis(50));
    // Slow background retries, so the on-demand refetch is what recovers.
    cfg.refresh_interval = Duration::from_secs(3600);
    let v = verifier(vec![cfg], &clock);
    v.start().await;
    idp.set_status(200);
    tokio::time::sleep(Duration::from_millis(60)).await;
    v.verify(&a.sign(&good_claims()))
        .await
        .expect("refetched on unknown kid");
}

#[tokio::test]
async fn cache_dropped_when_keys_change() {
    let a = TestKey::ec("a");
    let b = TestKey::ec("b");
    let idp = Idp::start(jwks_json(&[&a])).await;
    let clock = clock();
    let v = verifier(vec![url_config(&idp, Duration::from_millis(1))], &clock);
    v.start().await;
    let token = a.sign(&good_claims());
    valid(&v, &token);
    assert_eq!(v.cached_tokens(), 1);
    // Same keys again: no change, cache kept.
    v.refresh_now().await;
    valid(&v, &token);
    assert_eq!(v.cached_tokens(), 1);
    // Key a revoked: its cached tokens stop working at once.
    idp.serve(jwks_json(&[&b]));
    v.refresh_now().await;
    assert_eq!(v.verify_cached(&token), Verdict::UnknownKey);
}

#[tokio::test]
async fn max_age_drives_background_refresh() {
    let a = TestKey::ec("a");
    let idp = Idp::start(jwks_json(&[&a])).await;
    idp.set_cache_control(Some("public, max-age=1"));
    let clock = clock();
    let v = verifier(vec![url_config(&idp, Duration::from_millis(100))], &clock);
    v.start().await;
    assert_eq!(idp.hits(), 1);
    wait_until("refresh after max-age", || idp.hits() >= 2).await;
}

#[test]
fn refresh_scheduling() {
    use fetch::{max_age, next_refresh, retry_delay};
    let hm = |v: &[&str]| {
        let mut h = http::HeaderMap::new();
        for x in v {
            h.append(http::header::CACHE_CONTROL, x.parse().expect("header"));
        }
        h
    };
    let s = Duration::from_secs;
    assert_eq!(max_age(&hm(&[])), None);
    assert_eq!(max_age(&hm(&["public, max-age=300"])), Some(s(300)));
    assert_eq!(max_age(&hm(&["public", "Max-Age=\"60\""])), Some(s(60)));
    assert_eq!(max_age(&hm(&["max-age=60, no-cache"])), Some(s(0)));
    assert_eq!(max_age(&hm(&["max-age=soon"])), None);
    let (refresh, min) = (s(600), s(10));
    assert_eq!(next_refresh(None, refresh, min), refresh);
    assert_eq!(next_refresh(Some(s(3)), refresh, min), min);
    assert_eq!(next_refresh(Some(s(3000)), refresh, min), s(3000));
    assert_eq!(
        next_refresh(Some(s(10_000_000)), refresh, min),
        MAX_CACHE_AGE
    );
    assert_eq!(retry_delay(1, refresh, min), s(10));
    assert_eq!(retry_delay(2, refresh, min), s(20));
    assert_eq!(retry_delay(5, refresh, min), s(160));
    assert_eq!(retry_delay(40, refresh, min), refresh);
}

#[tokio::test]
async fn fetch_size_cap_and_timeout() {
    let idp = Idp::start(Bytes::from(vec![b' '; 2 * 1024 * 1024])).await;
    let client = fetch::http_client(Duration::from_secs(1));
    let uri: Uri = idp.url().parse().expect("uri");
    let err = fetch::fetch_url(&client, &uri, Duration::from_secs(2), 1024 * 1024)
        .await
        .expect_err("too large");
    assert!(matches!(err, fetch::FetchError::TooLarge(_)), "{err}");
    idp.serve(Bytes::from_static(b"{}"));
    idp.set_delay(Duration::from_millis(800));
    let started = std::time::Instant::now();
    let err = fetch::fetch_url(&client, &uri, Duration::from_millis(100), 1024)
        .await
        .expect_err("too slow");
    assert!(matches!(err, fetch::FetchError::Timeout(_)), "{err}");
    assert!(started.elapsed() < Duration::from_millis(600));
    idp.set_delay(Duration::ZERO);
    idp.set_status(404);
    let err = fetch::fetch_url(&client, &uri, Duration::from_secs(2), 1024)
        .await
        .expect_err("404");
    assert!(matches!(err, fetch::FetchError::Status(_)), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The gateway's own issuer

fn issuer_config(path: std::path::PathBuf) -> TokenIssuerConfig {
    TokenIssuerConfig {
        issuer: "http://127.0.0.1:8080".into(),
        audience: AUD.into(),
        private_key_pem: path,
        key_id: None,
        ttl: Duration::from_secs(600),
    }
}

fn decode_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).expect("part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("b64")).expect("json")
}

#[test]
fn token_issuer_es256_round_trip() {
    let key = TestKey::ec("unused");
    let path = std::env::temp_dir().join(format!("tollgate-jwt-{}-issuer.pem", std::process::id()));
    std::fs::write(&path, &key.private_pem).expect("write pem");
    let clock = clock();
    let issuer = TokenIssuer::new(&issuer_config(path.clone()), clock.clone()).expect("issuer");
    let _ = std::fs::remove_file(&path);
    assert_eq!(issuer.algorithm(), Algorithm::ES256);
    let scopes = vec!["accounts:read".to_owned(), "payments:read".to_owned()];
    let (token, ttl) = issuer
        .issue("partner-gold", "partner-gold", &scopes)
        .expect("issue");
    assert_eq!(ttl, Duration::from_secs(600));

    let header = decode_part(&token, 0);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["kid"], issuer.key_id());
    let thumbprint = key
        .jwk
        .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
        .expect("tp");
    assert_eq!(
        issuer.key_id(),
        thumbprint,
        "default kid is the RFC 7638 thumbprint"
    );
    let claims = decode_part(&token, 1);
    assert_eq!(claims["iss"], "http://127.0.0.1:8080");
    assert_eq!(claims["aud"], AUD);
    assert_eq!(claims["scope"], "accounts:read payments:read");
    assert_eq!(claims["iat"], T0);
    assert_eq!(claims["nbf"], T0);
    assert_eq!(claims["exp"], T0 + 600);
    let (other, _) = issuer
        .issue("partner-gold", "partner-gold", &scopes)
        .expect("issue");
    assert_ne!(
        decode_part(&other, 1)["jti"],
        claims["jti"],
        "jti is random"
    );

    let v = verifier(vec![issuer.verifier_config()], &clock);
    let c = valid(&v, &token);
    assert_eq!(c.subject.as_deref(), Some("partner-gold"));
    assert_eq!(c.client_id.as_deref(), Some("partner-gold"));
    assert_eq!(c.scopes, scopes);
    clock.set(at(T0 + 600 + 61));
    assert_eq!(invalid(&v, &other), JwtError::Expired);

    let jwks: Value = serde_json::from_slice(&issuer.jwks_json()).expect("jwks json");
    let keys = jwks["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert_eq!(k["kty"], "EC");
    assert_eq!(k["crv"], "P-256");
    assert_eq!(k["alg"], "ES256");
    assert_eq!(k["use"], "sig");
    assert_eq!(k["kid"], issuer.key_id());
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(k["x"].as_str().expect("x"))
            .expect("x")
            .len(),
        32
    );
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(k["y"].as_str().expect("y"))
            .expect("y")
            .len(),
        32
    );
    assert!(k.get("d").is_none(), "no private material published");
    let set = KeySet::from_jwks_json(&issuer.jwks_json(), &[Algorithm::ES256]).expect("key set");
    let jws = set
        .verify_jws(&token)
        .expect("published key verifies issued tokens");
    assert_eq!(jws.algorithm, Algorithm::ES256);
}

#[tokio::test]
async fn gateway_tokens_accepted_like_idp_tokens() {
    let idp_key = TestKey::rsa("idp-1");
    let gw_key = TestKey::ec("ignored");
    let clock = clock();
    let issuer = TokenIssuer::from_pem(
        &issuer_config("unused".into()),
        gw_key.private_pem.as_bytes(),
        clock.clone(),
    )
    .expect("issuer");
    // The gateway's JWKS served over HTTP, next to an IdP's.
    let gw_jwks = Idp::start(issuer.jwks_json()).await;
    let idp = Idp::start(jwks_json(&[&idp_key])).await;
    let mut gw_cfg = IssuerConfig::new(
        issuer.issuer(),
        vec![AUD.into()],
        JwksSource::Url(gw_jwks.url()),
    );
    gw_cfg.algorithms = vec![Algorithm::ES256];
    let v = verifier(
        vec![url_config(&idp, Duration::from_secs(1)), gw_cfg],
        &clock,
    );
    v.start().await;
    let (token, _) = issuer
        .issue("partner-trial", "partner-trial", &["accounts:read".into()])
        .expect("issue");
    let c = v.verify(&token).await.expect("gateway token");
    assert_eq!(c.issuer, "http://127.0.0.1:8080");
    assert_eq!(c.scopes, vec!["accounts:read"]);
    v.verify(&idp_key.sign(&good_claims()))
        .await
        .expect("idp token");
    // Static config from the issuer itself works the same.
    let v2 = verifier(vec![issuer.verifier_config()], &clock);
    valid(&v2, &token);
}

#[test]
fn token_issuer_rsa_and_ed25519_keys() {
    let clock = clock();
    for (key, alg) in [
        (TestKey::rsa("x"), Algorithm::RS256),
        (TestKey::ed("x"), Algorithm::EdDSA),
    ] {
        let mut cfg = issuer_config("unused".into());
        cfg.key_id = Some("gw-1".into());
        let issuer =
            TokenIssuer::from_pem(&cfg, key.private_pem.as_bytes(), clock.clone()).expect("issuer");
        assert_eq!(issuer.algorithm(), alg);
        assert_eq!(issuer.key_id(), "gw-1");
        let (token, _) = issuer.issue("s", "c", &[]).expect("issue");
        let v = verifier(vec![issuer.verifier_config()], &clock);
        let c = valid(&v, &token);
        assert!(c.scopes.is_empty());
        let set = KeySet::from_jwks_json(&issuer.jwks_json(), &ASYMMETRIC_ALGORITHMS).expect("set");
        set.verify_jws(&token).expect("published key verifies");
    }
}

#[test]
fn token_issuer_config_errors() {
    let key = TestKey::ec("x");
    let clock = clock();
    let pem = key.private_pem.as_bytes();
    let mut long = issuer_config("unused".into());
    long.ttl = Duration::from_secs(16 * 60);
    assert!(matches!(
        TokenIssuer::from_pem(&long, pem, clock.clone()),
        Err(TokenIssuerError::BadTtl { .. })
    ));
    let mut empty = issuer_config("unused".into());
    empty.audience.clear();
    assert!(matches!(
        TokenIssuer::from_pem(&empty, pem, clock.clone()),
        Err(TokenIssuerError::EmptyAudience)
    ));
    assert!(matches!(
        TokenIssuer::from_pem(&issuer_config("unused".into()), b"not a pem", clock.clone()),
        Err(TokenIssuerError::UnsupportedKey)
    ));
    assert!(matches!(
        TokenIssuer::new(
            &issuer_config("/nonexistent/tollgate.pem".into()),
            clock.clone()
        ),
        Err(TokenIssuerError::ReadKey { .. })
    ));
    let issuer =
        TokenIssuer::from_pem(&issuer_config("unused".into()), pem, clock.clone()).expect("issuer");
    assert!(matches!(
        issuer.issue("s", "c", &["a b".into()]),
        Err(TokenIssuerError::BadScope(_))
    ));
    let dbg = format!("{issuer:?}");
    assert!(!dbg.contains("PRIVATE"), "{dbg}");
}
