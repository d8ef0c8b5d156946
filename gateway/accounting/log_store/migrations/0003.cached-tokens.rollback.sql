ALTER TABLE requests DROP COLUMN cached_tokens;
