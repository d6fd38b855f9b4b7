-- GDPR: the platform's users and the personal data they own (profiles, playlists,
-- messages, playback history), data exports, and erasure receipts; tracks gain an owner and
-- a public flag. Same logical schema as ../postgres/0005_gdpr.sql.
-- Times are INTEGER milliseconds since the epoch; flags are INTEGER 0/1.
-- Only jobs/src/users/state.rs writes users.status; only jobs/src/exports/state.rs writes
-- data_exports.status.

-- Lifecycle (jobs/src/users/state.rs):
--   active → deletion_requested (recovery_deadline = now + ACCOUNT_RECOVERY_DAYS)
--   deletion_requested → active (cancelled before the deadline) | erased (hard_delete)
CREATE TABLE users (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    email                 TEXT,                            -- NULL once erased
    username              TEXT,                            -- NULL once erased
    display_name          TEXT,                            -- NULL once erased
    status                TEXT    NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'deletion_requested', 'erased')),
    deletion_requested_at INTEGER,
    recovery_deadline     INTEGER,                          -- cancel allowed before, hard delete after
    keep_public_tracks    INTEGER NOT NULL DEFAULT 0          -- 1: on erasure, keep public tracks, credited anonymously
        CHECK (keep_public_tracks IN (0, 1)),
    erased_at             INTEGER,
    created_at            INTEGER  NOT NULL,
    updated_at            INTEGER  NOT NULL,
    CONSTRAINT users_erased_without_identity
        CHECK (status <> 'erased' OR (email IS NULL AND username IS NULL AND display_name IS NULL)),
    CONSTRAINT users_deletion_has_deadline
        CHECK (status <> 'deletion_requested' OR recovery_deadline IS NOT NULL)
);
CREATE UNIQUE INDEX users_email ON users (email) WHERE email IS NOT NULL;
CREATE UNIQUE INDEX users_username ON users (username) WHERE username IS NOT NULL;
-- The daily hard_delete pass: accounts past their recovery deadline.
CREATE INDEX users_deletion_due ON users (status, recovery_deadline, id);

CREATE TABLE user_profiles (
    user_id     INTEGER PRIMARY KEY REFERENCES users (id),
    bio         TEXT,
    avatar_path TEXT,                                     -- relative to MEDIA_ROOT
    location    TEXT,
    website     TEXT,
    links       TEXT,                                     -- JSON array of {"label": …, "url": …}
    updated_at  INTEGER NOT NULL
);

-- Tracks get an owner and a public flag; `artist_name` is the credit shown with the track
-- (the owner's display name at upload, "Anonymous artist" after an erasure that keeps it).
ALTER TABLE tracks ADD COLUMN owner_id INTEGER REFERENCES users (id);
ALTER TABLE tracks ADD COLUMN is_public INTEGER NOT NULL DEFAULT 0 CHECK (is_public IN (0, 1));
ALTER TABLE tracks ADD COLUMN title TEXT;
ALTER TABLE tracks ADD COLUMN artist_name TEXT;
CREATE INDEX tracks_owner ON tracks (owner_id, id);

CREATE TABLE playlists (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id    INTEGER  NOT NULL REFERENCES users (id),
    name        TEXT    NOT NULL,
    description TEXT,
    is_public   INTEGER NOT NULL DEFAULT 0 CHECK (is_public IN (0, 1)),
    created_at  INTEGER  NOT NULL,
    updated_at  INTEGER  NOT NULL
);
CREATE INDEX playlists_owner ON playlists (owner_id, id);

CREATE TABLE playlist_items (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    playlist_id INTEGER NOT NULL REFERENCES playlists (id),
    track_id    INTEGER NOT NULL REFERENCES tracks (id),
    position    INTEGER NOT NULL,
    added_at    INTEGER NOT NULL
);
CREATE INDEX playlist_items_playlist ON playlist_items (playlist_id, id);
CREATE INDEX playlist_items_track ON playlist_items (track_id);

CREATE TABLE messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    sender_id    INTEGER NOT NULL REFERENCES users (id),
    recipient_id INTEGER NOT NULL REFERENCES users (id),
    body         TEXT   NOT NULL,
    created_at   INTEGER NOT NULL,
    read_at      INTEGER
);
CREATE INDEX messages_sender ON messages (sender_id, id);
CREATE INDEX messages_recipient ON messages (recipient_id, id);

CREATE TABLE playback_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     INTEGER NOT NULL REFERENCES users (id),
    track_id    INTEGER REFERENCES tracks (id),            -- NULL once the track is deleted
    played_at   INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    client      TEXT                                     -- "web", "ios", …
);
CREATE INDEX playback_history_user ON playback_history (user_id, id);
CREATE INDEX playback_history_track ON playback_history (track_id);

-- Data exports (ZIP of a user's data). Lifecycle (jobs/src/exports/state.rs):
--   pending → running → ready → expired;  pending | running → failed
-- The file is EXPORT_DIR/{id}.zip; written as EXPORT_DIR/.{id}.zip.part and renamed.
CREATE TABLE data_exports (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id         INTEGER NOT NULL REFERENCES users (id),
    status          TEXT   NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'ready', 'failed', 'expired')),
    requested_at    INTEGER NOT NULL,                     -- the daily limit counts these
    job_id          INTEGER,
    started_at      INTEGER,
    ready_at        INTEGER,
    rows_done       INTEGER NOT NULL DEFAULT 0,           -- progress: rows written …
    rows_total      INTEGER,                              -- … of rows to write
    size_bytes      INTEGER,
    sha256          TEXT,                                -- hex of the ZIP file
    link_expires_at INTEGER,                              -- download links stop working after
    expires_at      INTEGER,                              -- export_cleanup deletes the file after
    error           TEXT,                                -- the last failure, for the user and admins
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX data_exports_user ON data_exports (user_id, requested_at);
CREATE INDEX data_exports_expiry ON data_exports (status, expires_at, id);

-- What an erasure did, per store, with no personal data: counts, what was skipped and why,
-- start and end. Each step's time is set when that step is done, so a retried hard_delete
-- job resumes the unfinished steps only. `collected` holds the ids of the tracks and
-- playlists read before anything changed (the search-index step needs them afterwards).
CREATE TABLE erasure_receipts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       INTEGER NOT NULL UNIQUE REFERENCES users (id),
    job_id        INTEGER,
    started_at    INTEGER NOT NULL,
    collected_at  INTEGER,
    database_at   INTEGER,
    redis_at      INTEGER,
    opensearch_at INTEGER,
    finished_at   INTEGER,
    collected     TEXT,                                  -- JSON
    report        TEXT   NOT NULL,                       -- JSON, see jobs/src/hard_delete/receipt.rs
    updated_at    INTEGER NOT NULL
);
CREATE INDEX erasure_receipts_unfinished ON erasure_receipts (finished_at, user_id);
