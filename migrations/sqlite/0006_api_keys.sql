-- API keys of the HTTP front. Same logical schema as ../postgres/0006_api_keys.sql.
-- Only the SHA-256 of a key is stored (hex); the key itself is shown once, at creation.
-- `prefix` (the first characters, e.g. `vz_1a2b3c4d`) lets people tell keys apart.

CREATE TABLE api_keys (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL,
    scope        TEXT    NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    prefix       TEXT    NOT NULL,
    key_hash     TEXT    NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);
