-- Issue 4: ballot sheets with one-time anonymous tokens, two ingestion paths (the
-- record_ballots update and `kaohe ballots import`), tallies in SQL.

-- A unit's rater groups (票类) as its workflow started with them: planned participants
-- (= tokens issued) and the exact weight numerator/denominator.
CREATE TABLE unit_rater_groups (
    workflow_id  text NOT NULL REFERENCES units (workflow_id),
    group_id     text NOT NULL,
    label        text NOT NULL,
    planned      integer NOT NULL CHECK (planned >= 1),
    weight_num   integer NOT NULL CHECK (weight_num >= 0),
    weight_den   integer NOT NULL CHECK (weight_den >= 1),
    PRIMARY KEY (workflow_id, group_id)
);

-- One-time tokens: only their sha256 is stored, and nothing links a token to the sheet,
-- batch or marks it was used for (anonymity: 无记名).
CREATE TABLE ballot_tokens (
    workflow_id  text NOT NULL REFERENCES units (workflow_id),
    token_hash   bytea NOT NULL CHECK (length(token_hash) = 32),
    rater_group  text NOT NULL,
    issued_at    timestamptz NOT NULL DEFAULT now(),
    used_at      timestamptz,
    PRIMARY KEY (workflow_id, token_hash),
    FOREIGN KEY (workflow_id, rater_group) REFERENCES unit_rater_groups (workflow_id, group_id)
);

-- How a batch came in, and whether the workflow has taken it: an imported batch is stored
-- first and counts only once `register_ballot_batch` verified it (registered_at set).
ALTER TABLE ballot_batches
    ADD COLUMN sheets integer NOT NULL DEFAULT 0,
    ADD COLUMN source text NOT NULL DEFAULT 'update' CHECK (source IN ('update', 'import')),
    ADD COLUMN registered_at timestamptz DEFAULT now();

-- The marks of ballot sheets: one row per rated item. sheet_no is the sheet's position in
-- its batch, not an identity; there is no voter or token column. Marks are written only in
-- the transaction that inserts their ballot_batches row (no foreign key: it would cost a
-- trigger per row on the bulk path).
CREATE TABLE ballot_marks (
    workflow_id  text NOT NULL,
    batch_id     text NOT NULL,
    sheet_no     integer NOT NULL,
    rater_group  text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('team', 'cadre', 'selection_work', 'new_cadre')),
    target_id    text NOT NULL,  -- '' for the team; the question for selection work
    item         text NOT NULL,  -- 'overall' or a dimension
    option       text NOT NULL
);
-- Tallies read only the overall marks: count_ballots and a batch's sheets per group are
-- index-only scans of this partial index.
CREATE INDEX ballot_marks_overall ON ballot_marks (workflow_id, batch_id, rater_group, sheet_no)
    INCLUDE (kind, target_id, option) WHERE item = 'overall';

-- Counts per workflow, target, item, rater group and option, over registered batches only.
CREATE VIEW ballot_tallies AS
SELECT m.workflow_id, m.kind, m.target_id, m.item, m.rater_group, m.option, count(*) AS n
FROM ballot_marks m
JOIN ballot_batches b USING (workflow_id, batch_id)
WHERE b.registered_at IS NOT NULL
GROUP BY m.workflow_id, m.kind, m.target_id, m.item, m.rater_group, m.option;
