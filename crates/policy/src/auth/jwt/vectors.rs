//! Published JOSE test vectors: Wycheproof (C2SP) JWS and JWK-set cases and the RFC 7520
//! cookbook signatures, read from the shared test-data folder beside the repository.
//!
//! Valid vectors we reject on purpose (each asserted to be rejected, not skipped):
//! - json_web_signature 346, 350: header `alg` PS384 but the JWK pins `alg: PS256`. The key's
//!   `alg` is binding here (that pinning is what stops algorithm confusion), so a token using
//!   the key with another algorithm is refused even though the signature itself is PS384-valid.
//! - json_web_signature 347, 351: ES512 on P-521 (the JWK even says `ES521`): jsonwebtoken has
//!   no ES512, so P-521 keys are skipped and the token finds no key.
//! - json_web_signature 372, 373: a `?` inserted in the header or payload segment, "valid" only
//!   for decoders that skip foreign characters. We decode base64url strictly so that a token has
//!   exactly one spelling (it is also the cache key).
//! - RFC 7520 4.3 (ES512, P-521): as above.
//!
//! Defective vectors: json_web_signature 367 ("invalidBase64Padding") and 370
//! ("invalidBase64PaddingInPayload") are byte-for-byte the valid 357 (the padding they are
//! about was lost upstream), so they are accepted like 357; the test checks that they still
//! equal 357 and that the padded spellings they meant are refused.

use super::*;
use jsonwebtoken::jwk::Jwk;
use serde_json::{Value, json};
use std::collections::BTreeSet;

const WYCHEPROOF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/testdata/wycheproof/testvectors_v1/"
);
const COOKBOOK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/testdata/jose-cookbook-rfc7520/"
);

/// Valid Wycheproof JWS vectors rejected by design; see the module comment.
const REJECTED_BY_DESIGN: [u64; 6] = [346, 347, 350, 351, 372, 373];
/// Invalid Wycheproof JWS vectors identical to the valid 357; see the module comment.
const SAME_AS_357: [u64; 2] = [367, 370];

fn load(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The keys as a deployment would hold them: `oct` JWKs become configured shared secrets,
/// everything else is a served JWK Set (private members and all, to be refused if present).
fn key_set(keys: &[Value]) -> Result<KeySet, String> {
    if !keys.is_empty() && keys.iter().all(|k| k["kty"] == "oct") {
        let secrets = keys
            .iter()
            .map(|k| {
                let jwk: Jwk = serde_json::from_value(k.clone()).map_err(|e| e.to_string())?;
                SharedSecret::from_oct_jwk(&jwk).map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()?;
        KeySet::from_shared_secrets(&secrets, &HMAC_ALGORITHMS).map_err(|e| e.to_string())
    } else {
        let doc = json!({ "keys": keys }).to_string();
        KeySet::from_jwks_json(doc.as_bytes(), &ASYMMETRIC_ALGORITHMS).map_err(|e| e.to_string())
    }
}

/// Signature verification of one vector: `Ok` means accepted.
fn verify(keys: &[Value], jws: &Value) -> Result<(), String> {
    let set = key_set(keys)?;
    let Some(compact) = jws.as_str() else {
        return Err("JSON serialization".into());
    };
    set.verify_jws(compact)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

struct Tally {
    accepted: usize,
    rejected: usize,
    by_design: BTreeSet<u64>,
    failures: Vec<String>,
}

fn run(
    file: &str,
    keys_of: impl Fn(&Value) -> Vec<Value>,
    by_design: &[u64],
    defective: &[u64],
) -> Tally {
    let doc = load(&format!("{WYCHEPROOF}{file}"));
    let mut t = Tally {
        accepted: 0,
        rejected: 0,
        by_design: BTreeSet::new(),
        failures: vec![],
    };
    let mut seen = 0;
    for group in doc["testGroups"].as_array().expect("testGroups") {
        let keys = keys_of(group);
        for case in group["tests"].as_array().expect("tests") {
            seen += 1;
            let id = case["tcId"].as_u64().expect("tcId");
            let expected = case["result"].as_str().expect("result");
            let outcome = verify(&keys, &case["jws"]);
            match &outcome {
                Ok(()) => t.accepted += 1,
                Err(_) => t.rejected += 1,
            }
            let want_accept =
                (expected == "valid" && !by_design.contains(&id)) || defective.contains(&id);
            match (expected, &outcome) {
                ("acceptable", _) => {}
                ("valid", Err(_)) if by_design.contains(&id) => {
                    t.by_design.insert(id);
                }
                (_, Ok(())) if !want_accept => t.failures.push(format!(
                    "tcId {id} ({}) is {expected} but was accepted",
                    case["comment"]
                )),
                (_, Err(e)) if want_accept => t.failures.push(format!(
                    "tcId {id} ({}) is valid but was rejected: {e}",
                    case["comment"]
                )),
                _ => {}
            }
        }
    }
    assert_eq!(
        seen as u64,
        doc["numberOfTests"].as_u64().expect("numberOfTests"),
        "{file}"
    );
    t
}

#[test]
fn wycheproof_json_web_signature() {
    let t = run(
        "json_web_signature_test.json",
        |g| {
            vec![if g.get("public").is_some() {
                g["public"].clone()
            } else {
                g["private"].clone()
            }]
        },
        &REJECTED_BY_DESIGN,
        &SAME_AS_357,
    );
    assert!(t.failures.is_empty(), "{:#?}", t.failures);
    assert_eq!(
        t.by_design,
        REJECTED_BY_DESIGN.into_iter().collect(),
        "rejected by design"
    );
    eprintln!(
        "json_web_signature: {} accepted, {} rejected ({} valid ones by design)",
        t.accepted,
        t.rejected,
        t.by_design.len()
    );
    assert!(
        t.accepted >= 40,
        "the valid vectors really ran: {}",
        t.accepted
    );
}

#[test]
fn wycheproof_json_web_key() {
    let t = run(
        "json_web_key_test.json",
        |g| {
            let set = if g.get("public").is_some() {
                &g["public"]
            } else {
                &g["private"]
            };
            set["keys"].as_array().expect("keys").clone()
        },
        &[],
        &[],
    );
    assert!(t.failures.is_empty(), "{:#?}", t.failures);
    eprintln!(
        "json_web_key: {} accepted, {} rejected",
        t.accepted, t.rejected
    );
    assert_eq!(t.accepted, 5, "tcIds 2, 5, 13, 14, 15");
}

#[test]
fn wycheproof_defective_padding_vectors() {
    let doc = load(&format!("{WYCHEPROOF}json_web_signature_test.json"));
    let mut jws_of = std::collections::HashMap::new();
    let mut key = None;
    for group in doc["testGroups"].as_array().expect("groups") {
        for case in group["tests"].as_array().expect("tests") {
            let id = case["tcId"].as_u64().expect("tcId");
            if id == 357 {
                key = Some(group["private"].clone());
            }
            jws_of.insert(id, case["jws"].as_str().unwrap_or_default().to_owned());
        }
    }
    for id in SAME_AS_357 {
        assert_eq!(
            jws_of[&id], jws_of[&357],
            "tcId {id} differs from 357 now: expect it rejected"
        );
    }
    let keys = vec![key.expect("group of 357")];
    let valid = &jws_of[&357];
    let (header, rest) = valid.split_once('.').expect("dot");
    let (payload, mac) = rest.split_once('.').expect("dot");
    for padded in [
        format!("{header}=.{payload}.{mac}"),
        format!("{header}.{payload}==.{mac}"),
        format!("{header}.{payload}.{mac}="),
    ] {
        assert!(verify(&keys, &json!(padded)).is_err(), "{padded}");
    }
    assert_eq!(verify(&keys, &json!(valid)), Ok(()));
}

#[test]
fn wycheproof_invalid_signatures_refused_end_to_end() {
    // The same vectors as bearer tokens through a full verifier: none may pass.
    let doc = load(&format!("{WYCHEPROOF}json_web_signature_test.json"));
    let clock: Arc<dyn Clock> = Arc::new(tollgate_core::ManualClock::new(std::time::UNIX_EPOCH));
    for group in doc["testGroups"].as_array().expect("groups") {
        let Some(public) = group.get("public") else {
            continue;
        };
        let Ok(set) = serde_json::from_value::<JwkSet>(json!({ "keys": [public] })) else {
            continue;
        };
        let cfg = IssuerConfig::new("wycheproof", vec!["any".into()], JwksSource::Static(set));
        let Ok(v) = JwtVerifier::new(vec![cfg], clock.clone()) else {
            continue;
        };
        for case in group["tests"].as_array().expect("tests") {
            if let Some(jws) = case["jws"].as_str() {
                assert!(
                    !matches!(v.verify_cached(jws), Verdict::Valid(_)),
                    "tcId {}",
                    case["tcId"]
                );
            }
        }
    }
}

#[test]
fn roca_keys_detected() {
    use base64::Engine;
    let doc = load(&format!("{WYCHEPROOF}json_web_key_test.json"));
    let mut roca = 0;
    let mut clean = 0;
    for group in doc["testGroups"].as_array().expect("groups") {
        let Some(keys) = group["public"]["keys"].as_array() else {
            continue;
        };
        for n in keys
            .iter()
            .filter(|k| k["kty"] == "RSA")
            .filter_map(|k| k["n"].as_str())
        {
            let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(n)
                .expect("b64");
            if group["comment"] == "jws_rsa_roca_key" {
                assert!(keys::roca_fingerprint(&n));
                roca += 1;
            } else {
                assert!(!keys::roca_fingerprint(&n), "{}", group["comment"]);
                clean += 1;
            }
        }
    }
    assert_eq!(roca, 1);
    assert!(clean >= 3);
}

fn cookbook(path: &str) -> Value {
    load(&format!("{COOKBOOK}{path}"))
}

fn public_only(jwk: &Value) -> Value {
    let mut k = jwk.clone();
    for m in ["d", "p", "q", "dp", "dq", "qi"] {
        k.as_object_mut().expect("object").remove(m);
    }
    k
}

/// Verifies an example's compact output with the given key and returns the payload.
fn cookbook_verify(example: &str, key: &Value) -> Result<Vec<u8>, String> {
    let ex = cookbook(example);
    let compact = ex["output"]["compact"].as_str().expect("compact");
    let set = key_set(std::slice::from_ref(key))?;
    set.verify_jws(compact)
        .map(|j| j.payload)
        .map_err(|e| e.to_string())
}

#[test]
fn rfc7520_signatures() {
    let rsa = cookbook("jwk/3_3.rsa_public_key.json");
    let payload = cookbook("jws/4_1.rsa_v15_signature.json")["input"]["payload"]
        .as_str()
        .expect("payload")
        .as_bytes()
        .to_vec();

    // 4.1 RS256 and 4.2 PS384 with the public key of 3.3 (no `alg`: the RSA family is allowed).
    assert_eq!(
        cookbook_verify("jws/4_1.rsa_v15_signature.json", &rsa),
        Ok(payload.clone())
    );
    assert_eq!(
        cookbook_verify("jws/4_2.rsa-pss_signature.json", &rsa),
        Ok(payload.clone())
    );
    // 4.4 HS256 with the 3.5 MAC key as a configured shared secret.
    let mac = cookbook("jwk/3_5.symmetric_key_mac_computation.json");
    assert_eq!(
        cookbook_verify("jws/4_4.hmac-sha2_integrity_protection.json", &mac),
        Ok(payload.clone())
    );
    // RFC 8037 A.4 EdDSA.
    let ed = cookbook("curve25519/jws.json");
    let ed_key = public_only(&ed["input"]["key"]);
    assert_eq!(
        cookbook_verify("curve25519/jws.json", &ed_key),
        Ok(b"Example of Ed25519 signing".to_vec())
    );

    // 4.3 ES512 (P-521): unsupported by design, so the key set has no usable key.
    let p521 = cookbook("jwk/3_1.ec_public_key.json");
    let err = cookbook_verify("jws/4_3.ecdsa_signature.json", &p521).expect_err("ES512");
    assert!(err.contains("no key usable"), "{err}");

    // 4.5 detached content: the compact form has an empty payload, which the signature does
    // not cover.
    assert_eq!(
        cookbook_verify("jws/4_5.signature_with_detached_content.json", &mac),
        Err("bad signature".into())
    );
    // RFC 7797 unencoded payload (`b64: false`): refused, as RFC 7797 §7 asks of JWTs.
    let b64_false = cookbook("rfc7797/hmac-sha2_b64_false.json");
    let secret = b64_false["input"]["key"].clone();
    assert_eq!(
        cookbook_verify("rfc7797/hmac-sha2_b64_false.json", &secret),
        Err("malformed token".into())
    );

    // Cross-checks: a signature only verifies under its own key and algorithm.
    let rs256 = cookbook("jws/4_1.rsa_v15_signature.json")["output"]["compact"]
        .as_str()
        .expect("compact")
        .to_owned();
    let (input, _) = rs256.rsplit_once('.').expect("dot");
    let ps384_sig = cookbook("jws/4_2.rsa-pss_signature.json")["output"]["compact"]
        .as_str()
        .expect("compact")
        .rsplit_once('.')
        .expect("dot")
        .1
        .to_owned();
    let set = key_set(std::slice::from_ref(&rsa)).expect("rsa set");
    assert_eq!(
        set.verify_jws(&format!("{input}.{ps384_sig}")),
        Err(JwtError::BadSignature)
    );
    let hmac_set = key_set(std::slice::from_ref(&mac)).expect("mac set");
    assert!(hmac_set.verify_jws(&rs256).is_err());
    // The RSA key with `alg` pinned to RS256 refuses the PS384 example.
    let mut pinned = rsa.clone();
    pinned["alg"] = json!("RS256");
    assert_eq!(
        cookbook_verify("jws/4_2.rsa-pss_signature.json", &pinned),
        Err("algorithm not allowed".into())
    );
    // Private keys are never accepted as published key sets.
    let private = cookbook("jwk/3_4.rsa_private_key.json");
    let err = cookbook_verify("jws/4_1.rsa_v15_signature.json", &private).expect_err("private");
    assert!(err.contains("private"), "{err}");
}
