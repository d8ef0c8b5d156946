-- depends: 0002.replica
-- Of a row's prompt tokens, those the upstreams read from their prefix cache (priced cached).
ALTER TABLE requests ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
