-- Sessions of the admin dashboard (/admin). Same logical schema as
-- ../postgres/0007_admin_sessions.sql.
-- An admin signs in with an admin API key and gets a random session token in a cookie; only
-- the SHA-256 of that token is stored (hex). A session is valid until `expires_at` and only
-- while its key is an unrevoked admin key (checked at every request), so revoking the key
-- ends every session it opened, in every API process.

CREATE TABLE admin_sessions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash  TEXT    NOT NULL UNIQUE,
    api_key_id  INTEGER NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);

CREATE INDEX admin_sessions_expires_at ON admin_sessions (expires_at);
