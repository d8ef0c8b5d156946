-- depends: 0001.requests-and-feedback
-- Which gateway replica served the row (routegate serve --replica; default host:port).
ALTER TABLE requests ADD COLUMN replica TEXT;
