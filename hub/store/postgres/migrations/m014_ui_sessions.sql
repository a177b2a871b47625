-- SQLite's m014_ui_sessions (hub/store/migrations/): a dashboard sign-in, kept by the
-- sha256 of its id (never the id), with the API token it signed in with and its lifetime.
CREATE TABLE ui_sessions (
    digest TEXT COLLATE "C" PRIMARY KEY,
    token_id TEXT COLLATE "C" NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX idx_ui_sessions_expires_ms ON ui_sessions (expires_ms);
CREATE INDEX idx_ui_sessions_created_ms ON ui_sessions (created_ms);
