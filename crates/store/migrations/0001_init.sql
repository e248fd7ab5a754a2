-- One schema for SQLite and PostgreSQL alike: only portable DDL. Ids are text chosen by the
-- application, times are BIGINT unix milliseconds, JSON documents are TEXT.

-- Global change version: bumped by every management mutation, polled by gateway nodes.
CREATE TABLE meta (
    k TEXT PRIMARY KEY,
    v BIGINT NOT NULL
);
INSERT INTO meta (k, v) VALUES ('version', 0);

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE tenant_tokens (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE INDEX tenant_tokens_tenant ON tenant_tokens (tenant);

CREATE TABLE apis (
    tenant TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    document TEXT NOT NULL,
    content_type TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);

CREATE TABLE plans (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE consumers (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Revoked keys are kept (revoked_at set) so the audit trail can still name them.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    consumer TEXT NOT NULL REFERENCES consumers (id) ON DELETE CASCADE,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX api_keys_consumer ON api_keys (consumer);

-- id is the change version zero-padded to 20 digits: unique, and sorts in commit order.
CREATE TABLE audit (
    id TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);

-- Usage counters per minute, added to by every gateway node (upsert-add).
CREATE TABLE usage_minute (
    minute_ms BIGINT NOT NULL,
    consumer TEXT NOT NULL,
    api TEXT NOT NULL,
    requests BIGINT NOT NULL,
    status_2xx BIGINT NOT NULL,
    status_4xx BIGINT NOT NULL,
    status_5xx BIGINT NOT NULL,
    throttled BIGINT NOT NULL,
    PRIMARY KEY (minute_ms, consumer, api)
);
CREATE INDEX usage_minute_consumer ON usage_minute (consumer, minute_ms);

-- Latency histogram per minute: one row per non-zero bucket, so buckets add up in SQL.
CREATE TABLE usage_latency (
    minute_ms BIGINT NOT NULL,
    consumer TEXT NOT NULL,
    api TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (minute_ms, consumer, api, bucket)
);
