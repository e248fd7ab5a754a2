//! Connection URLs as logs and errors may show them: without their passwords.

/// `scheme://user:secret@host/db?password=x` → `scheme://user:***@host/db?password=***`.
/// Covers the forms Redis and PostgreSQL clients read a password from: the user info, and the
/// `password`/`pass` query parameters (`redis+unix:///sock?pass=...`, libpq's `?password=`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(unparsable URL)".into();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{user}:***@{host}")
        }
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _))
                        if k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("pass") =>
                    {
                        format!("{k}=***")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_the_logs() {
        for (url, shown) in [
            (
                "redis://:hunter2@10.0.0.5:6379/0",
                "redis://:***@10.0.0.5:6379/0",
            ),
            (
                "rediss://app:p@ss:w@rd@cache.internal:6380",
                "rediss://app:***@cache.internal:6380",
            ),
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=hunter2",
                "redis+unix:///run/redis.sock?db=1&pass=***",
            ),
            (
                "postgres://app:hunter2@db/tollgate?sslmode=require&Password=x",
                "postgres://app:***@db/tollgate?sslmode=require&Password=***",
            ),
            (
                "sqlite:///var/lib/tollgate.db",
                "sqlite:///var/lib/tollgate.db",
            ),
            ("nonsense", "(unparsable URL)"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
