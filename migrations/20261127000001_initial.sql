-- assayer's own state: the journal of accepted events, engine checkpoints, findings.
-- One database can serve several daemons: each daemon's `group_name` (its queue) owns
-- its journal and checkpoint; findings are shared (unique by fingerprint).

-- Every input that changed the engine's state, in arrival order. Replaying the rows
-- after a checkpoint's position, on top of its snapshot, rebuilds the engine exactly.
CREATE TABLE journal (
    position     BIGINT      NOT NULL,
    group_name   TEXT        NOT NULL,
    -- 'event' (accepted) or 'malformed' (set aside; its seq is accounted for)
    entry_kind   TEXT        NOT NULL CHECK (entry_kind IN ('event', 'malformed')),
    tx_id        TEXT,
    realm        TEXT,
    system       TEXT,
    seq          BIGINT,
    ts           TIMESTAMPTZ,
    kind         TEXT,
    actor        TEXT,
    body         BYTEA       NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, position)
);
CREATE INDEX journal_tx_id ON journal (tx_id);

-- The journal indexed by item and by account, for support tooling (trace item/account).
CREATE TABLE journal_items (
    group_name TEXT   NOT NULL,
    position   BIGINT NOT NULL,
    realm      TEXT   NOT NULL,
    item       TEXT   NOT NULL,
    from_loc   TEXT   NOT NULL,
    to_loc     TEXT   NOT NULL,
    ord        INT    NOT NULL
);
CREATE INDEX journal_items_item ON journal_items (realm, item, position);

CREATE TABLE journal_postings (
    group_name TEXT   NOT NULL,
    position   BIGINT NOT NULL,
    realm      TEXT   NOT NULL,
    account    TEXT   NOT NULL,
    asset      TEXT   NOT NULL,
    delta      BIGINT NOT NULL,
    ord        INT    NOT NULL
);
CREATE INDEX journal_postings_account ON journal_postings (realm, account, asset, position);

-- The engine's state at a journal position (postcard snapshot of core::engine::Engine).
CREATE TABLE checkpoints (
    group_name       TEXT        PRIMARY KEY,
    journal_position BIGINT      NOT NULL,
    snapshot_format  INT         NOT NULL,
    snapshot         BYTEA       NOT NULL,
    events_accepted  BIGINT      NOT NULL,
    taken_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Snapshots are already compact binary: skip TOAST compression (pglz on 100 MB
-- costs seconds per checkpoint and saves little).
ALTER TABLE checkpoints ALTER COLUMN snapshot SET STORAGE EXTERNAL;

-- The position the journal has reached for a group (updated with every batch).
CREATE TABLE journal_heads (
    group_name TEXT        PRIMARY KEY,
    position   BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE findings (
    fingerprint   TEXT        PRIMARY KEY,
    invariant     TEXT        NOT NULL,
    severity      TEXT        NOT NULL CHECK (severity IN ('critical', 'major', 'minor', 'info')),
    realm         TEXT        NOT NULL,
    system        TEXT,
    tx_id         TEXT,
    seq           BIGINT,
    subject       TEXT,
    message       TEXT        NOT NULL,
    evidence      JSONB       NOT NULL,
    detected_at   TIMESTAMPTZ NOT NULL,
    first_seen    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen     TIMESTAMPTZ NOT NULL DEFAULT now(),
    occurrences   BIGINT      NOT NULL DEFAULT 1,
    status        TEXT        NOT NULL DEFAULT 'open'
                  CHECK (status IN ('open', 'acknowledged', 'resolved')),
    status_by     TEXT,
    status_reason TEXT,
    status_at     TIMESTAMPTZ,
    -- Outbox: set once the finding was published to the findings exchange.
    published_at  TIMESTAMPTZ
);
CREATE INDEX findings_open ON findings (status, severity);
CREATE INDEX findings_tx ON findings (tx_id);
CREATE INDEX findings_subject ON findings (realm, subject);
CREATE INDEX findings_unpublished ON findings (first_seen) WHERE published_at IS NULL;
