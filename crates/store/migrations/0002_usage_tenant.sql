-- Usage is counted per tenant too: API ids are unique within a tenant only, and a tenant
-- admin must see its own APIs' rows, never another tenant's API of the same id. Rows counted
-- before this migration keep tenant '' (unknown): platform admins still see them, tenant
-- admins do not.
CREATE TABLE usage_minute_new (
    minute_ms BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    consumer TEXT NOT NULL,
    api TEXT NOT NULL,
    requests BIGINT NOT NULL,
    status_2xx BIGINT NOT NULL,
    status_4xx BIGINT NOT NULL,
    status_5xx BIGINT NOT NULL,
    throttled BIGINT NOT NULL,
    PRIMARY KEY (minute_ms, tenant, consumer, api)
);
INSERT INTO usage_minute_new
    SELECT minute_ms, '', consumer, api, requests, status_2xx, status_4xx, status_5xx, throttled
    FROM usage_minute;
DROP TABLE usage_minute;
ALTER TABLE usage_minute_new RENAME TO usage_minute;
CREATE INDEX usage_minute_consumer ON usage_minute (consumer, minute_ms);

CREATE TABLE usage_latency_new (
    minute_ms BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    consumer TEXT NOT NULL,
    api TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (minute_ms, tenant, consumer, api, bucket)
);
INSERT INTO usage_latency_new
    SELECT minute_ms, '', consumer, api, bucket, n FROM usage_latency;
DROP TABLE usage_latency;
ALTER TABLE usage_latency_new RENAME TO usage_latency;
