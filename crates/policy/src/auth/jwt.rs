//! JWT verification with JWKS (fetched, cached, refreshed, refetched on unknown `kid`), a
//! verified-token cache, and the gateway's own token issuer for OAuth2 client credentials.
