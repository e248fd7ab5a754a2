use super::*;
use std::path::Path;

fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    parse_str(text, &EnvOverrides::default(), Path::new("."))
}

const GOOD: &str = "\
listeners:
  public:
    addr: 127.0.0.1:8080
upstreams:
  a:
    targets:
      - url: http://127.0.0.1:9101
tenants:
  retail:
    apis:
      accounts:
        upstream: a
        routes:
          - path: /v2/accounts/{id}
            methods: [GET]
";

#[test]
fn good_config_parses_with_defaults() {
    let cfg = parse(GOOD).expect("valid");
    assert_eq!(cfg.server.max_headers, 64);
    assert_eq!(cfg.upstreams["a"].connect_timeout, Duration::from_secs(1));
    assert_eq!(cfg.upstreams["a"].targets[0].weight, 1);
}

#[test]
fn unknown_key_names_path_and_line() {
    let text = GOOD.replace(
        "            methods: [GET]",
        "            methods: [GET]\n            metods: [POST]",
    );
    let errs = parse(&text).expect_err("unknown key");
    assert_eq!(errs.len(), 1);
    assert_eq!(
        errs[0].key_path,
        "tenants.retail.apis.accounts.routes[0].metods"
    );
    assert_eq!(errs[0].line, Some(16));
    assert!(
        errs[0].message.contains("unknown field `metods`"),
        "{}",
        errs[0].message
    );
}

#[test]
fn bad_value_type_names_line() {
    let text = GOOD.replace("addr: 127.0.0.1:8080", "addr: not-an-address");
    let errs = parse(&text).expect_err("bad addr");
    assert_eq!(errs[0].key_path, "listeners.public.addr");
    assert_eq!(errs[0].line, Some(3));
}

#[test]
fn semantic_errors_are_all_reported_with_lines() {
    let text = GOOD
        .replace("upstream: a", "upstream: nope")
        .replace("methods: [GET]", "methods: [GET, FETCH]");
    let errs = parse(&text).expect_err("two problems");
    let keys: Vec<_> = errs.iter().map(|p| (p.key_path.as_str(), p.line)).collect();
    assert!(
        keys.contains(&("tenants.retail.apis.accounts.upstream", Some(12))),
        "{keys:?}"
    );
    assert!(
        keys.contains(&("tenants.retail.apis.accounts.routes[0].methods", Some(15))),
        "{keys:?}"
    );
}

#[test]
fn path_templates_are_checked() {
    for bad in [
        "v1/x",
        "/a/{id",
        "/a/x{id}",
        "/a/{id}/{id}",
        "/a/../b",
        "/a/*",
    ] {
        assert!(validate::check_path_template(bad).is_err(), "{bad}");
    }
    for good in ["/", "/a/{id}", "/a/{id}/b/{other_id}"] {
        assert!(validate::check_path_template(good).is_ok(), "{good}");
    }
}

#[test]
fn request_slots_per_target_default_and_are_bounded() {
    let cfg = parse(GOOD).expect("valid");
    assert_eq!(cfg.upstreams["a"].max_requests_per_target, 1024);
    for (value, ok) in [
        ("1", true),
        ("1000000", true),
        ("0", false),
        ("1000001", false),
    ] {
        let text = GOOD.replace(
            "      - url: http://127.0.0.1:9101",
            &format!("      - url: http://127.0.0.1:9101\n    max_requests_per_target: {value}"),
        );
        match parse(&text) {
            Ok(cfg) => {
                assert!(ok, "{value} accepted");
                assert_eq!(
                    cfg.upstreams["a"].max_requests_per_target.to_string(),
                    value
                );
            }
            Err(errs) => {
                assert!(!ok, "{value} refused: {errs:?}");
                assert_eq!(errs[0].key_path, "upstreams.a.max_requests_per_target");
                assert_eq!(errs[0].line, Some(8));
            }
        }
    }
}

#[test]
fn target_urls_are_checked() {
    assert!(validate::check_target_url("http://127.0.0.1:9101").is_ok());
    assert!(validate::check_target_url("http://backend.internal").is_ok());
    assert!(validate::check_target_url("http://[::1]:8080/").is_ok());
    assert!(validate::check_target_url("http://[::1]").is_ok());
    for bad in [
        "127.0.0.1:9101",
        "http://h:1/path",
        "https://h",
        "http://",
        "http://u@h",
        "http://127.0.0.1:999999",
        "http://127.0.0.1:0",
        "http://[::1]:70000",
    ] {
        assert!(validate::check_target_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn env_overrides_replace_addresses() {
    let env = EnvOverrides {
        public_addr: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let cfg = parse_str(GOOD, &env, Path::new(".")).expect("valid");
    assert_eq!(cfg.listeners.public.expect("public").addr.0.port(), 0);
    let env = EnvOverrides {
        public_addr: Some("nonsense".into()),
        ..Default::default()
    };
    let errs = parse_str(GOOD, &env, Path::new(".")).expect_err("bad env");
    assert_eq!(errs[0].key_path, "$TOLLGATE_PUBLIC_ADDR");
}

#[test]
fn malformed_yaml_is_an_error_not_a_panic() {
    for text in [
        "",
        ":",
        "listeners: [",
        "\u{0}",
        "listeners:\n  public:\n    addr: [1,2",
    ] {
        assert!(parse(text).is_err(), "{text:?}");
    }
}

#[test]
fn durations_and_timestamps_parse() {
    let text = GOOD.replace(
        "      - url: http://127.0.0.1:9101",
        "      - url: http://127.0.0.1:9101\n    response_timeout: 1500ms",
    );
    let cfg = parse(&text).expect("valid");
    assert_eq!(
        cfg.upstreams["a"].response_timeout,
        Duration::from_millis(1500)
    );
    let text = GOOD.replace("    response_timeout", "x").replace(
        "      - url: http://127.0.0.1:9101",
        "      - url: http://127.0.0.1:9101\n    response_timeout: soon",
    );
    let errs = parse(&text).expect_err("bad duration");
    assert!(
        errs[0].message.contains("not a duration"),
        "{}",
        errs[0].message
    );
}

#[test]
fn hmac_jwt_algorithms_need_a_shared_secret_and_nothing_else() {
    let with = |jwt: &str| format!("{GOOD}identity:\n  jwt:\n{jwt}");
    let public_key_hs = with(
        "    - issuer: https://idp\n      audiences: [a]\n      jwks_url: http://127.0.0.1:1/jwks\n      algorithms: [RS256, HS256]\n",
    );
    let errs = parse(&public_key_hs).expect_err("HS with a JWKS");
    assert!(
        errs.iter()
            .any(|p| p.key_path == "identity.jwt[0].algorithms"),
        "{errs:?}"
    );
    let two_sources = with(
        "    - issuer: https://idp\n      audiences: [a]\n      jwks_url: http://127.0.0.1:1/jwks\n      jwks_file: jwks.json\n",
    );
    let errs = parse(&two_sources).expect_err("two sources");
    assert!(
        errs.iter().any(|p| p.key_path == "identity.jwt[0]"),
        "{errs:?}"
    );
}

#[test]
fn route_auth_needs_its_schemes_configured() {
    let text = GOOD.replace(
        "            methods: [GET]\n",
        "            methods: [GET]\n            auth:\n              any: [jwt, mtls]\n",
    );
    let errs = parse(&text).expect_err("no identity config");
    let msgs: Vec<_> = errs.iter().map(|p| p.message.as_str()).collect();
    assert!(msgs.iter().any(|m| m.contains("identity.jwt")), "{msgs:?}");
    assert!(msgs.iter().any(|m| m.contains("identity.mtls")), "{msgs:?}");
    assert!(
        msgs.iter().any(|m| m.contains("listeners: [tls]")),
        "{msgs:?}"
    );
}

#[test]
fn api_key_hashes_must_be_hmac_digests_and_need_a_secret() {
    let text = format!(
        "{GOOD}consumers:\n  alice:\n    api_keys:\n      - id: k1\n        hash: tg_plaintext_key\n"
    );
    let errs = parse(&text).expect_err("plaintext key");
    let keys: Vec<_> = errs.iter().map(|p| p.key_path.as_str()).collect();
    assert!(
        keys.contains(&"consumers.alice.api_keys[0].hash"),
        "{keys:?}"
    );
    assert!(keys.contains(&"identity.hash_secret_file"), "{keys:?}");
}

#[test]
fn plans_limits_and_edge_rules_are_checked() {
    let text = format!(
        "{GOOD}plans:\n  gold:\n    rate: 0\n    burst: 0\n    routes:\n      nope: {{rate: 1, burst: 1}}\nconsumers:\n  alice:\n    plan: platinum\nlimits:\n  quota_utc_offset: '+25:00'\nedge:\n  deny: [203.0.113.0/24]\n  ip_rules:\n    - {{max_requests: 0, window: 10s, block_for: 60s}}\n"
    );
    let errs = parse(&text).expect_err("bad limits");
    let keys: Vec<_> = errs.iter().map(|p| p.key_path.as_str()).collect();
    for k in [
        "plans.gold.rate",
        "plans.gold.burst",
        "plans.gold.routes.nope",
        "consumers.alice.plan",
        "limits.quota_utc_offset",
        "edge.ip_rules[0].max_requests",
    ] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    assert_eq!(parse_utc_offset("+02:00"), Some(7200));
    assert_eq!(parse_utc_offset("-05:30"), Some(-19800));
    assert_eq!(parse_utc_offset("Z"), Some(0));
    assert_eq!(parse_utc_offset("02:00"), None);
}

#[test]
fn limits_are_bounded_where_arithmetic_would_break() {
    let base = "listeners: { public: { addr: \"127.0.0.1:0\" } }\n";
    for (extra, key) in [
        (
            "server: { max_uri_bytes: 18446744073709551615 }",
            "server.max_uri_bytes",
        ),
        (
            "server: { max_connections: 18446744073709551615 }",
            "server.max_connections",
        ),
        ("plans: { p: { rate: 1e-300, burst: 1 } }", "plans.p.rate"),
        (
            "plans: { p: { rate: 1, burst: 1, quota: { limit: 18446744073709551615, period: day } } }",
            "plans.p.quota.limit",
        ),
    ] {
        let text = format!("{base}{extra}\n");
        let problems =
            parse_str(&text, &EnvOverrides::default(), std::path::Path::new(".")).expect_err(extra);
        assert!(
            problems.iter().any(|p| p.key_path == key),
            "{extra}: {problems:?}"
        );
    }
}

#[test]
fn deep_nesting_is_refused_before_the_parser_sees_it() {
    let deep = format!(
        "listeners: {{ public: {{ addr: \"127.0.0.1:0\" }} }}\nserver:\n  max_connections: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let problems = parse_str(&deep, &EnvOverrides::default(), std::path::Path::new("."))
        .expect_err("too deep");
    assert!(
        problems[0].message.contains("nested deeper"),
        "{problems:?}"
    );
    assert_eq!(problems[0].line, Some(3));
    // Brackets in quotes and comments are text; 64 levels are fine.
    let ok = format!(
        "listeners: {{ public: {{ addr: \"127.0.0.1:0\" }} }} # {}\nupstreams: {{ u: {{ targets: [{{ url: \"http://h/{}\" }}] }} }}\nx: '{}'\n",
        "[".repeat(100),
        "[".repeat(100),
        "{".repeat(100)
    );
    let e = parse_str(&ok, &EnvOverrides::default(), std::path::Path::new("."));
    assert!(
        e.as_ref()
            .err()
            .is_none_or(|p| !p.iter().any(|p| p.message.contains("nested"))),
        "{e:?}"
    );
}
