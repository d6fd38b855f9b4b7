-- Uploaded tracks (the part of the platform's table the media jobs need).
-- Only jobs/src/tracks/state.rs writes `status`.
CREATE TABLE tracks (
    id             BIGSERIAL PRIMARY KEY,
    status         TEXT   NOT NULL CHECK (status IN ('processing', 'ready', 'failed')),
    status_message TEXT,
    file_path      TEXT   NOT NULL,           -- relative to MEDIA_ROOT
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX tracks_status_created ON tracks (status, created_at);
