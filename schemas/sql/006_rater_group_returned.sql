-- Sheets returned per rater group, kept with the planned count: checking a batch against
-- the plan then reads one locked row per group instead of counting every used token of the
-- unit (which grew with each batch). Both ingestion paths add to it in the transaction that
-- marks their tokens used.
ALTER TABLE unit_rater_groups ADD COLUMN returned integer NOT NULL DEFAULT 0
    CHECK (returned >= 0);

UPDATE unit_rater_groups g
SET returned = (
    SELECT count(*) FROM ballot_tokens t
    WHERE t.workflow_id = g.workflow_id AND t.rater_group = g.group_id
      AND t.used_at IS NOT NULL
);
