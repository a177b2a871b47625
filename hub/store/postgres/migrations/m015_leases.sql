-- Twin of SQLite's m015_leases (hub/store/migrations/): the lease that names the one hub
-- replica running the scheduled jobs (hub/leader.py, docs/scale-out.md); the generation
-- grows each time it changes hands.
CREATE TABLE leases (
    name TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    holder TEXT COLLATE "C" NOT NULL,
    generation BIGINT NOT NULL,
    acquired_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
