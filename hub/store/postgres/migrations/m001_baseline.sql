-- The PostgreSQL schema's baseline: SQLite's m001..m013 (hub/store/migrations/) folded
-- into one, since no PostgreSQL store shipped before it. Every later SQLite migration
-- gets a twin here named by its number (SQLite's m014_x: m014_x.sql). Times are integer milliseconds (BIGINT), bytes
-- BYTEA, JSON canonical text (TEXT: signed documents must read back byte for byte);
-- text compares and sorts by code point (COLLATE "C"), as in SQLite.

-- SQLite's JSON functions tolerate text that is not JSON; so does the translated SQL
-- (hub/store/postgres/translate.py): NULL for anything that does not parse.
CREATE FUNCTION edgefleet_json(doc text) RETURNS json
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN doc::json;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;

CREATE TABLE devices (
    id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    public_key TEXT COLLATE "C" NOT NULL,
    status TEXT COLLATE "C" NOT NULL,
    tags TEXT COLLATE "C" DEFAULT '{}',
    agent_version TEXT COLLATE "C",
    enrolled_at BIGINT,
    enrolled_by TEXT COLLATE "C",
    first_seen BIGINT NOT NULL,
    last_seen BIGINT,
    online BIGINT DEFAULT 0,
    up_window BYTEA,
    active_name TEXT COLLATE "C",
    active_version BIGINT,
    active_sha256 TEXT COLLATE "C",
    reported TEXT COLLATE "C",
    reported_at BIGINT,
    health TEXT COLLATE "C" DEFAULT 'unknown',
    stale BIGINT DEFAULT 0,
    refusal TEXT COLLATE "C",
    refusal_at BIGINT,
    pending_reason TEXT COLLATE "C",
    strikes BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE desired (
    device_id TEXT COLLATE "C" PRIMARY KEY,
    model_name TEXT COLLATE "C",
    model_version BIGINT,
    assignment_version BIGINT,
    config TEXT COLLATE "C",
    set_at BIGINT,
    set_by TEXT COLLATE "C",
    published_at BIGINT,
    nudged_at BIGINT,
    assignment_expires BIGINT,
    stuck_at BIGINT,
    shadow_version BIGINT,
    FOREIGN KEY (device_id) REFERENCES devices (id)
);
CREATE TABLE enrollment_tokens (
    id TEXT COLLATE "C" PRIMARY KEY,
    hash TEXT COLLATE "C" NOT NULL,
    kind TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT COLLATE "C",
    expires_at BIGINT,
    uses BIGINT DEFAULT 0,
    revoked BIGINT DEFAULT 0,
    tags TEXT COLLATE "C" DEFAULT '{}'
);
CREATE TABLE telemetry (
    device_id TEXT COLLATE "C",
    seq BIGINT,
    sent_at BIGINT,
    received_at BIGINT,
    body TEXT COLLATE "C",
    PRIMARY KEY (device_id, seq)
);
CREATE TABLE states (
    device_id TEXT COLLATE "C",
    seq BIGINT,
    sent_at BIGINT,
    received_at BIGINT,
    body TEXT COLLATE "C",
    PRIMARY KEY (device_id, seq)
);
CREATE TABLE device_acks (
    device_id TEXT COLLATE "C",
    seq BIGINT,
    sent_at BIGINT,
    received_at BIGINT,
    body TEXT COLLATE "C",
    PRIMARY KEY (device_id, seq)
);
CREATE TABLE data_windows (
    device_id TEXT COLLATE "C",
    seq BIGINT,
    sent_at BIGINT,
    received_at BIGINT,
    window_start BIGINT,
    window_end BIGINT,
    model_name TEXT COLLATE "C",
    model_version BIGINT,
    body TEXT COLLATE "C",
    PRIMARY KEY (device_id, seq)
);
CREATE TABLE deltas (
    device_id TEXT COLLATE "C",
    seq BIGINT,
    sent_at BIGINT,
    received_at BIGINT,
    base_name TEXT COLLATE "C",
    base_version BIGINT,
    base_sha256 TEXT COLLATE "C",
    round_id TEXT COLLATE "C",
    num_samples BIGINT,
    metric TEXT COLLATE "C",
    before DOUBLE PRECISION,
    after DOUBLE PRECISION,
    clip_norm DOUBLE PRECISION,
    tensors BYTEA,
    status TEXT COLLATE "C" DEFAULT 'received',
    PRIMARY KEY (device_id, seq)
);
CREATE TABLE models (
    name TEXT COLLATE "C" PRIMARY KEY,
    created_at BIGINT,
    created_by TEXT COLLATE "C",
    description TEXT COLLATE "C"
);
CREATE TABLE versions (
    name TEXT COLLATE "C",
    version BIGINT,
    sha256 TEXT COLLATE "C",
    length BIGINT,
    release_counter BIGINT,
    status TEXT COLLATE "C",
    manifest TEXT COLLATE "C",
    parent_version BIGINT,
    made_by TEXT COLLATE "C",
    lineage TEXT COLLATE "C",
    created_at BIGINT,
    created_by TEXT COLLATE "C",
    PRIMARY KEY (name, version),
    FOREIGN KEY (name) REFERENCES models (name)
);
CREATE TABLE artifacts (
    sha256 TEXT COLLATE "C" PRIMARY KEY,
    length BIGINT,
    kind TEXT COLLATE "C",
    created_at BIGINT
);
CREATE TABLE release_lists (
    version BIGINT PRIMARY KEY,
    document TEXT COLLATE "C",
    signed BIGINT,
    created_at BIGINT,
    created_by TEXT COLLATE "C"
);
CREATE TABLE roots (
    version BIGINT PRIMARY KEY,
    document TEXT COLLATE "C",
    created_at BIGINT
);
CREATE TABLE assignments (
    device_id TEXT COLLATE "C",
    version BIGINT,
    model_name TEXT COLLATE "C",
    model_version BIGINT,
    document TEXT COLLATE "C",
    created_at BIGINT,
    PRIMARY KEY (device_id, version)
);
CREATE TABLE api_tokens (
    id TEXT COLLATE "C" PRIMARY KEY,
    hash TEXT COLLATE "C" NOT NULL,
    role TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C",
    created_at BIGINT,
    created_by TEXT COLLATE "C",
    revoked BIGINT DEFAULT 0
);
CREATE TABLE audit (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT COLLATE "C" NOT NULL,
    action TEXT COLLATE "C" NOT NULL,
    target TEXT COLLATE "C",
    outcome TEXT COLLATE "C" NOT NULL,
    reason TEXT COLLATE "C",
    detail TEXT COLLATE "C"
);
CREATE TABLE meta (
    key TEXT COLLATE "C" PRIMARY KEY,
    value BIGINT
);
CREATE TABLE broker_credentials (
    device_id TEXT COLLATE "C" PRIMARY KEY,
    verifier TEXT COLLATE "C" NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE rounds (
    round_id TEXT COLLATE "C" PRIMARY KEY,
    model TEXT COLLATE "C" NOT NULL,
    base_version BIGINT NOT NULL,
    state TEXT COLLATE "C" NOT NULL,
    trigger TEXT COLLATE "C",
    opened_ms BIGINT NOT NULL,
    deadline_ms BIGINT NOT NULL,
    closed_ms BIGINT,
    ended_ms BIGINT,
    min_deltas BIGINT,
    target_deltas BIGINT,
    duration_ms BIGINT,
    strategy TEXT COLLATE "C",
    candidate_version BIGINT,
    reason TEXT COLLATE "C",
    created_by TEXT COLLATE "C",
    judgement TEXT COLLATE "C"
);
CREATE TABLE delta_verdicts (
    device_id TEXT COLLATE "C",
    seq BIGINT,
    model TEXT COLLATE "C",
    base_version BIGINT,
    slot TEXT COLLATE "C",
    status TEXT COLLATE "C",
    reason TEXT COLLATE "C",
    detail TEXT COLLATE "C",
    digest TEXT COLLATE "C",
    norm DOUBLE PRECISION,
    staleness BIGINT,
    num_samples BIGINT,
    received_at BIGINT,
    flush BIGINT,
    PRIMARY KEY (device_id, seq)
);
CREATE TABLE fl_policies (
    model TEXT COLLATE "C" PRIMARY KEY,
    policy TEXT COLLATE "C",
    updated_ms BIGINT,
    updated_by TEXT COLLATE "C"
);
CREATE TABLE fl_buffers (
    model TEXT COLLATE "C" PRIMARY KEY,
    current_version BIGINT,
    flushes BIGINT
);
CREATE TABLE validation_sets (
    model TEXT COLLATE "C" PRIMARY KEY,
    data BYTEA,
    rows BIGINT,
    created_ms BIGINT,
    created_by TEXT COLLATE "C"
);
CREATE TABLE drift_scopes (
    scope TEXT COLLATE "C" PRIMARY KEY,
    model_name TEXT COLLATE "C",
    model_version BIGINT,
    reference_accuracy DOUBLE PRECISION,
    created_at BIGINT
);
CREATE TABLE drift_device_buckets (
    device_id TEXT COLLATE "C",
    width_ms BIGINT,
    start_ms BIGINT,
    model_name TEXT COLLATE "C",
    model_version BIGINT,
    tags TEXT COLLATE "C",
    updated_at BIGINT,
    scope TEXT COLLATE "C",
    counts BYTEA,
    moments BYTEA,
    performance BYTEA,
    inferences BIGINT,
    errors BIGINT,
    windows BIGINT,
    parts TEXT COLLATE "C",
    PRIMARY KEY (scope, device_id, width_ms, start_ms)
);
CREATE TABLE drift_cohort_buckets (
    cohort TEXT COLLATE "C",
    width_ms BIGINT,
    start_ms BIGINT,
    view TEXT COLLATE "C",
    updated_at BIGINT,
    scope TEXT COLLATE "C",
    counts BYTEA,
    moments BYTEA,
    performance BYTEA,
    inferences BIGINT,
    errors BIGINT,
    windows BIGINT,
    parts TEXT COLLATE "C",
    PRIMARY KEY (scope, cohort, width_ms, start_ms)
);
CREATE TABLE drift_assessments (
    scope TEXT COLLATE "C",
    width_ms BIGINT,
    start_ms BIGINT,
    body TEXT COLLATE "C",
    scored_at BIGINT,
    dirty BIGINT DEFAULT 0,
    PRIMARY KEY (scope, width_ms, start_ms)
);
CREATE TABLE drift_alerts (
    id TEXT COLLATE "C" PRIMARY KEY,
    scope TEXT COLLATE "C",
    model_name TEXT COLLATE "C",
    kind TEXT COLLATE "C",
    state TEXT COLLATE "C",
    severity TEXT COLLATE "C",
    body TEXT COLLATE "C",
    opened_at BIGINT,
    updated_at BIGINT,
    resolved_at BIGINT,
    round_requested BIGINT DEFAULT 0
);
CREATE TABLE drift_policies (
    model_name TEXT COLLATE "C" PRIMARY KEY,
    body TEXT COLLATE "C",
    updated_at BIGINT
);
CREATE TABLE rollouts (
    id TEXT COLLATE "C" PRIMARY KEY,
    model_name TEXT COLLATE "C" NOT NULL,
    model_version BIGINT NOT NULL,
    spec TEXT COLLATE "C" NOT NULL,
    phase TEXT COLLATE "C" NOT NULL,
    stage BIGINT,
    stage_started_ms BIGINT,
    bake_started_ms BIGINT,
    paused_from TEXT COLLATE "C",
    override_stage BIGINT,
    reason TEXT COLLATE "C",
    changed_ms BIGINT,
    created_at BIGINT NOT NULL,
    created_by TEXT COLLATE "C",
    superseded_by TEXT COLLATE "C"
);
CREATE TABLE rollout_devices (
    rollout_id TEXT COLLATE "C",
    device_id TEXT COLLATE "C",
    state TEXT COLLATE "C",
    target_version BIGINT,
    previous_version BIGINT,
    stage BIGINT,
    attempts BIGINT,
    since_ms BIGINT,
    reason TEXT COLLATE "C",
    retryable BIGINT,
    back BIGINT,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE TABLE rollout_shadows (
    rollout_id TEXT COLLATE "C",
    device_id TEXT COLLATE "C",
    state TEXT COLLATE "C",
    since_ms BIGINT,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE TABLE rollout_verdicts (
    rollout_id TEXT COLLATE "C",
    stage BIGINT,
    metric TEXT COLLATE "C",
    at_ms BIGINT,
    outcome TEXT COLLATE "C",
    estimate DOUBLE PRECISION,
    lower DOUBLE PRECISION,
    upper DOUBLE PRECISION,
    tolerance DOUBLE PRECISION,
    effect DOUBLE PRECISION,
    alpha DOUBLE PRECISION,
    test TEXT COLLATE "C",
    canaries BIGINT,
    controls BIGINT,
    reason TEXT COLLATE "C",
    PRIMARY KEY (rollout_id, stage, metric)
);
CREATE TABLE rollout_timeline (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    rollout_id TEXT COLLATE "C",
    at_ms BIGINT,
    actor TEXT COLLATE "C",
    line TEXT COLLATE "C"
);
CREATE INDEX idx_devices_status
    ON devices (status);
CREATE INDEX idx_devices_active_name_active_version
    ON devices (active_name, active_version);
CREATE UNIQUE INDEX idx_enrollment_tokens_hash
    ON enrollment_tokens (hash);
CREATE INDEX idx_data_windows_window_end
    ON data_windows (window_end);
CREATE INDEX idx_deltas_base_name_base_version
    ON deltas (base_name, base_version);
CREATE INDEX idx_versions_sha256
    ON versions (sha256);
CREATE UNIQUE INDEX idx_versions_release_counter
    ON versions (release_counter);
CREATE UNIQUE INDEX idx_api_tokens_hash
    ON api_tokens (hash);
CREATE INDEX idx_audit_at
    ON audit (at);
CREATE INDEX idx_audit_actor
    ON audit (actor);
CREATE INDEX idx_audit_action
    ON audit (action);
CREATE INDEX idx_telemetry_received_at
    ON telemetry (received_at);
CREATE INDEX idx_states_received_at
    ON states (received_at);
CREATE INDEX idx_data_windows_received_at
    ON data_windows (received_at);
CREATE INDEX idx_deltas_received_at
    ON deltas (received_at);
CREATE INDEX idx_rounds_model_state
    ON rounds (model, state);
CREATE INDEX idx_delta_verdicts_model_digest
    ON delta_verdicts (model, digest);
CREATE INDEX idx_delta_verdicts_slot_status
    ON delta_verdicts (slot, status);
CREATE INDEX idx_drift_device_buckets_scope_width_ms_start_ms
    ON drift_device_buckets (scope, width_ms, start_ms);
CREATE INDEX idx_drift_device_buckets_device_id_width_ms_start_ms
    ON drift_device_buckets (device_id, width_ms, start_ms);
CREATE INDEX idx_drift_alerts_scope_kind_state
    ON drift_alerts (scope, kind, state);
CREATE INDEX idx_rollouts_model_name_phase
    ON rollouts (model_name, phase);
CREATE INDEX idx_rollout_devices_rollout_id_state
    ON rollout_devices (rollout_id, state);
CREATE INDEX idx_rollout_devices_device_id
    ON rollout_devices (device_id);
CREATE INDEX idx_rollout_timeline_rollout_id_at_ms
    ON rollout_timeline (rollout_id, at_ms);
