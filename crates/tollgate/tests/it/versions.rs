//! API versions on the wire: `Deprecation` (RFC 9745), `Sunset` (RFC 8594) and the successor
//! `Link` on every response of a deprecated version, 410 problems for retired ones, and
//! negotiation by query, header and media type.

use crate::common::*;
use anyhow::Result;
use tollgate_testkit::{Gateway, Upstream, expect_problem};

const SINCE: &str = "@1780272000"; // 2026-06-01T00:00:00Z
const SUNSET: &str = "Sun, 15 Mar 2099 00:00:00 GMT";

async fn versioned() -> Result<(Upstream, Upstream, Gateway)> {
    let v1 = Upstream::echo("v1").await;
    let v2 = Upstream::echo("v2").await;
    let deprecation = "{ since: 2026-06-01T00:00:00Z, sunset: 2099-03-15T00:00:00Z, \
                       successor: /v2/accounts }";
    let yaml = format!(
        r#"
listeners:
  public: {{ addr: "127.0.0.1:0" }}
  admin: {{ addr: "127.0.0.1:0" }}
upstreams:
  v1: {{ targets: [{{ url: "{v1}" }}] }}
  v2: {{ targets: [{{ url: "{v2}" }}] }}
tenants:
  retail:
    apis:
      current:
        upstream: v2
        routes:
          - id: get-account
            path: /v2/accounts/{{id}}
            methods: [GET]
          - id: negotiated
            path: /accounts/{{id}}
            methods: [GET]
            versions:
              query: version
              header: Api-Version
              variants:
                - version: "1"
                  media_type: application/vnd.bank.v1+json
                  upstream: v1
                  deprecation: {deprecation}
      old:
        upstream: v1
        deprecation: {deprecation}
        routes:
          - id: get-account-v1
            path: /v1/accounts/{{id}}
            methods: [GET]
      ancient:
        upstream: v1
        deprecation: {{ since: 2019-01-01T00:00:00Z, sunset: 2020-01-01T00:00:00Z, successor: /v2/accounts }}
        routes:
          - id: get-account-v-1
            path: /v-1/accounts/{{id}}
            methods: [GET]
      retired:
        routes:
          - id: get-account-v0
            path: /v0/accounts/{{id}}
            methods: [GET]
            gone:
              successor: /v2/accounts/{{id}}
"#,
        v1 = v1.url(),
        v2 = v2.url()
    );
    let gw = Gateway::start(BIN, &yaml).await?;
    Ok((v1, v2, gw))
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

fn assert_notice(r: &reqwest::Response, what: &str) {
    assert_eq!(header(r, "deprecation"), Some(SINCE), "{what}");
    assert_eq!(header(r, "sunset"), Some(SUNSET), "{what}");
    assert_eq!(
        header(r, "link"),
        Some("</v2/accounts>; rel=\"successor-version\""),
        "{what}"
    );
}

#[tokio::test]
async fn every_response_of_a_deprecated_version_announces_it() -> Result<()> {
    let (v1, _v2, gw) = versioned().await?;
    let c = gw.client();

    let r = c.get(gw.url("/v1/accounts/7")).send().await?;
    assert_eq!(r.status(), 200);
    assert_notice(&r, "200");
    let echo: serde_json::Value = r.json().await?;
    assert_eq!(echo["service"], "v1");

    // A wrong method at the version's path is still that version's answer.
    let r = c.delete(gw.url("/v1/accounts/7")).send().await?;
    assert_eq!(r.status(), 405);
    assert_notice(&r, "405");
    expect_problem(r, 405).await;

    let r = c.head(gw.url("/v1/accounts/7")).send().await?;
    assert_eq!(r.status(), 200);
    assert_notice(&r, "HEAD");

    // The current version says nothing of the kind.
    let r = c.get(gw.url("/v2/accounts/7")).send().await?;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "deprecation").is_none() && header(&r, "sunset").is_none());
    let r = c.delete(gw.url("/v2/accounts/7")).send().await?;
    assert_eq!(r.status(), 405);
    assert!(header(&r, "deprecation").is_none());
    assert_eq!(v1.hits(), 2, "GET and HEAD");
    Ok(())
}

#[tokio::test]
async fn retired_and_sunset_versions_are_410_problems_naming_the_successor() -> Result<()> {
    let (v1, _v2, gw) = versioned().await?;
    let c = gw.client();

    let r = c.get(gw.url("/v0/accounts/42")).send().await?;
    // The header is a URI reference, so the successor's template is filled in.
    assert_eq!(
        header(&r, "link"),
        Some("</v2/accounts/42>; rel=\"successor-version\"")
    );
    let doc = expect_problem(r, 410).await;
    assert_eq!(doc["successor"], "/v2/accounts/{id}", "{doc}");
    assert!(
        doc["detail"]
            .as_str()
            .is_some_and(|d| d.contains("/v2/accounts/{id}")),
        "{doc}"
    );

    // Past its sunset, a deprecated version is gone too.
    let r = c.get(gw.url("/v-1/accounts/42")).send().await?;
    assert_eq!(header(&r, "sunset"), Some("Wed, 01 Jan 2020 00:00:00 GMT"));
    let doc = expect_problem(r, 410).await;
    assert_eq!(doc["successor"], "/v2/accounts", "{doc}");
    assert_eq!(v1.hits(), 0);
    Ok(())
}

#[tokio::test]
async fn versions_are_negotiated_by_query_header_and_weighted_media_type() -> Result<()> {
    let (_v1, _v2, gw) = versioned().await?;
    let c = gw.client();
    for (query, headers, want) in [
        ("", vec![], "v2"),
        ("?version=1", vec![], "v1"),
        ("?version=9", vec![], "v2"),
        ("", vec![("api-version", "1")], "v1"),
        ("", vec![("accept", "application/vnd.bank.v1+json")], "v1"),
        ("", vec![("accept", "application/json")], "v2"),
        (
            "",
            vec![(
                "accept",
                "application/json, application/vnd.bank.v1+json;q=0.9",
            )],
            "v2",
        ),
        (
            "",
            vec![(
                "accept",
                "application/json;q=0.4, application/vnd.bank.v1+json;q=0.8",
            )],
            "v1",
        ),
        (
            "",
            vec![("accept", "application/vnd.bank.v1+json;q=0")],
            "v2",
        ),
    ] {
        let mut req = c.get(gw.url(&format!("/accounts/5{query}")));
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await?;
        assert_eq!(r.status(), 200, "{query} {headers:?}");
        let vary = header(&r, "vary").unwrap_or("").to_ascii_lowercase();
        assert!(
            vary.contains("accept") && vary.contains("api-version"),
            "{vary}"
        );
        let announced = header(&r, "deprecation").is_some();
        let echo: serde_json::Value = r.json().await?;
        assert_eq!(echo["service"], want, "{query} {headers:?}");
        assert_eq!(announced, want == "v1", "{query} {headers:?}");
    }
    Ok(())
}
