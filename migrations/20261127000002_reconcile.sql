-- Reconciliation runs (issue #4): one row per `assayer reconcile` / scheduled run. The
-- deploy gate reads the newest rows of a group; keep these columns stable.
CREATE TABLE recon_runs (
    id                 BIGSERIAL   PRIMARY KEY,
    group_name         TEXT        NOT NULL,
    started_at         TIMESTAMPTZ NOT NULL,
    finished_at        TIMESTAMPTZ,
    -- the stream `ts` the stores were compared at
    watermark_ts       TIMESTAMPTZ,
    -- the journal position compared at (NULL for an offline --events run)
    watermark_position BIGINT,
    systems            TEXT[]      NOT NULL,
    outcome            TEXT        NOT NULL CHECK (outcome IN ('clean', 'divergent', 'failed')),
    rows_compared      BIGINT      NOT NULL DEFAULT 0,
    divergent_keys     BIGINT      NOT NULL DEFAULT 0,
    bytes_read         BIGINT      NOT NULL DEFAULT 0,
    queries            BIGINT      NOT NULL DEFAULT 0,
    error              TEXT,
    summary            JSONB       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX recon_runs_group ON recon_runs (group_name, started_at DESC);
