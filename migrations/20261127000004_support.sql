-- Support investigation (issue #6): trace item/account and the findings console.

-- The postings and item moves of one journal position (a transaction's other legs:
-- what an item was traded for, an account's counterparties). Also lets journal pruning
-- find index rows by position.
CREATE INDEX journal_items_position ON journal_items (group_name, position);
CREATE INDEX journal_postings_position ON journal_postings (group_name, position);

-- The findings list pages newest first.
CREATE INDEX findings_detected ON findings (detected_at DESC, fingerprint);
