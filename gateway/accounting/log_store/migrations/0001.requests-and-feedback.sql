-- The request log's first schema: the SQLite log's columns (gateway/accounting/request_log.py).
-- JSON columns stay text, so a row reads back exactly as SQLite's does.
CREATE TABLE requests (
    request_id TEXT PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    api_key_id TEXT,
    endpoint_kind TEXT NOT NULL,
    route TEXT,
    model TEXT,
    endpoint TEXT,
    stream INTEGER NOT NULL,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    usage_exact INTEGER NOT NULL DEFAULT 1,
    cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    latency_ms DOUBLE PRECISION,
    ttft_ms DOUBLE PRECISION,
    status INTEGER NOT NULL,
    error TEXT,
    fallbacks TEXT NOT NULL DEFAULT '[]',
    extra TEXT NOT NULL DEFAULT '{}',
    team TEXT,
    prompt TEXT,
    api TEXT
);
CREATE INDEX requests_ts ON requests (ts);

CREATE TABLE feedback (
    request_id TEXT NOT NULL,
    source TEXT NOT NULL,
    model TEXT NOT NULL DEFAULT '',
    score DOUBLE PRECISION NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    api_key_id TEXT,
    comment TEXT,
    PRIMARY KEY (request_id, source, model)
);
CREATE INDEX feedback_ts ON feedback (ts);
