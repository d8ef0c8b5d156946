ALTER TABLE requests DROP COLUMN replica;
