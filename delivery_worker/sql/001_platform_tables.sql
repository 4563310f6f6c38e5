-- The platform's tables, as listed in shared/schema-contract.md, for a database that has none yet.
-- On a production database these already exist and every statement here is a no-op.

CREATE TABLE IF NOT EXISTS notification_channels (
    channel_id   SERIAL PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    name         TEXT NOT NULL,
    channel_type TEXT NOT NULL,
    config       JSONB NOT NULL DEFAULT '{}',
    is_enabled   BOOLEAN NOT NULL DEFAULT TRUE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS notification_routing_rules (
    rule_id    SERIAL PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    channel_id INTEGER NOT NULL REFERENCES notification_channels (channel_id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS notification_jobs (
    job_id           BIGSERIAL PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    alert_id         BIGINT NOT NULL,
    channel_id       INTEGER NOT NULL REFERENCES notification_channels (channel_id) ON DELETE CASCADE,
    rule_id          INTEGER NULL,
    deliver_on_event TEXT NOT NULL DEFAULT 'OPEN',
    status           TEXT NOT NULL DEFAULT 'PENDING',
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_run_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error       TEXT,
    payload_json     JSONB NOT NULL DEFAULT '{}',
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, alert_id, channel_id, deliver_on_event)
);

CREATE TABLE IF NOT EXISTS notification_log (
    log_id     BIGSERIAL PRIMARY KEY,
    channel_id INTEGER NOT NULL,
    alert_id   BIGINT NOT NULL,
    sent_at    TIMESTAMPTZ DEFAULT now(),
    job_id     BIGINT NULL REFERENCES notification_jobs (job_id) ON DELETE SET NULL,
    success    BOOLEAN DEFAULT TRUE,
    error_msg  TEXT
);

CREATE TABLE IF NOT EXISTS integrations (
    tenant_id       TEXT NOT NULL,
    integration_id  UUID NOT NULL,
    name            TEXT,
    type            TEXT NOT NULL,
    enabled         BOOLEAN NOT NULL DEFAULT TRUE,
    config_json     JSONB NOT NULL DEFAULT '{}',
    snmp_host       TEXT,
    snmp_port       INTEGER DEFAULT 162,
    snmp_config     JSONB,
    snmp_oid_prefix TEXT DEFAULT '1.3.6.1.4.1.99999',
    email_config    JSONB,
    email_recipients JSONB,
    email_template  JSONB,
    mqtt_topic      TEXT,
    mqtt_qos        INTEGER DEFAULT 1,
    mqtt_retain     BOOLEAN DEFAULT FALSE,
    mqtt_config     JSONB,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, integration_id)
);

CREATE TABLE IF NOT EXISTS integration_routes (
    tenant_id      TEXT NOT NULL,
    route_id       UUID NOT NULL,
    integration_id UUID NOT NULL,
    name           TEXT,
    enabled        BOOLEAN NOT NULL DEFAULT TRUE,
    min_severity   INTEGER,
    alert_types    TEXT[],
    deliver_on     TEXT[] NOT NULL DEFAULT ARRAY['OPEN'],
    priority       INTEGER NOT NULL DEFAULT 100,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, route_id),
    FOREIGN KEY (tenant_id, integration_id) REFERENCES integrations (tenant_id, integration_id) ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS delivery_jobs (
    job_id           BIGSERIAL PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    alert_id         BIGINT NOT NULL,
    integration_id   UUID NOT NULL,
    route_id         UUID NOT NULL,
    deliver_on_event TEXT NOT NULL DEFAULT 'OPEN',
    status           TEXT NOT NULL DEFAULT 'PENDING',
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_run_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error       TEXT,
    payload_json     JSONB NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, alert_id, route_id, deliver_on_event),
    FOREIGN KEY (tenant_id, integration_id) REFERENCES integrations (tenant_id, integration_id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, route_id) REFERENCES integration_routes (tenant_id, route_id) ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS delivery_attempts (
    attempt_id  BIGSERIAL PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    job_id      BIGINT NOT NULL REFERENCES delivery_jobs (job_id) ON DELETE CASCADE,
    attempt_no  INTEGER NOT NULL,
    ok          BOOLEAN NOT NULL,
    http_status INTEGER NULL,
    latency_ms  INTEGER NULL,
    error       TEXT NULL,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
