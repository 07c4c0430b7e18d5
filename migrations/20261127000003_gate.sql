-- The deploy gate: what each daemon last reported about itself, deploy markers, and
-- the rollback hooks fired for a deploy.

-- One row per daemon process (active or standby), rewritten every few seconds while it
-- runs. The gate judges coverage from the freshest row of each group: when every row of
-- a group stops moving, nobody is auditing it.
CREATE TABLE daemon_status (
    group_name        TEXT        NOT NULL,
    instance          TEXT        NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at        TIMESTAMPTZ NOT NULL,
    host              TEXT        NOT NULL,
    processing_lag_ms BIGINT      NOT NULL,
    reorder_depth     BIGINT      NOT NULL,
    broker_connected  BOOLEAN     NOT NULL,
    journal_position  BIGINT      NOT NULL,
    -- [{"realm", "system", "last_ts"}]: the newest event ts of every stream.
    streams           JSONB       NOT NULL,
    PRIMARY KEY (group_name, instance)
);

-- `assayer deploy begin` records where the stream stood when a deploy began; verify and
-- watch judge what came after.
CREATE TABLE deploys (
    id                 BIGSERIAL   PRIMARY KEY,
    version            TEXT        NOT NULL,
    group_name         TEXT        NOT NULL,
    begun_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    begun_by           TEXT,
    watermark_position BIGINT,
    watermark_ts       TIMESTAMPTZ,
    pre_recon_run      BIGINT,
    verified_at        TIMESTAMPTZ,
    verify_decision    TEXT,
    verify_report      JSONB,
    state              TEXT        NOT NULL DEFAULT 'begun'
                       CHECK (state IN ('begun', 'verified', 'rolled_back'))
);
CREATE INDEX deploys_latest ON deploys (group_name, begun_at DESC);

-- Rollback hooks fired for a deploy: the row is claimed before the hook runs, so a hook
-- fires at most once per deploy (and once more for real after a dry run).
CREATE TABLE rollback_actions (
    deploy_id           BIGINT      NOT NULL REFERENCES deploys (id),
    hook                TEXT        NOT NULL,
    dry_run             BOOLEAN     NOT NULL,
    kind                TEXT        NOT NULL,
    trigger_fingerprint TEXT        NOT NULL,
    fired_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    outcome             TEXT        NOT NULL CHECK (outcome IN ('firing', 'ok', 'failed', 'dry-run')),
    detail              TEXT        NOT NULL DEFAULT '',
    elapsed_ms          BIGINT,
    PRIMARY KEY (deploy_id, hook, dry_run)
);
