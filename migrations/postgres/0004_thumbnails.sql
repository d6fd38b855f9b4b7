-- Thumbnails of a track's cover image, written by the `thumbnail` job (never its status):
-- a JSON list of {"size": 64, "jpg": "thumbnails/42/64.jpg", "webp": "thumbnails/42/64.webp"}
-- with paths relative to MEDIA_ROOT, the source image they were made from (relative to
-- MEDIA_ROOT) and when (ms since the epoch). NULL until the first job succeeds.
ALTER TABLE tracks ADD COLUMN thumbnails TEXT;
ALTER TABLE tracks ADD COLUMN thumbnail_source TEXT;
ALTER TABLE tracks ADD COLUMN thumbnails_updated_at BIGINT;
