-- Issue 20: ballots nobody can link to a rater. A sheet no longer reaches its marks in the
-- transaction that spends its token (there the two share an xmin): it waits in ballot_pool,
-- and a later transaction moves a rater group's pooled sheets into ballot_marks together, in
-- shuffled order, once there are enough of them (or the group's tokens are all spent, or the
-- evaluation closes). activities/ballot_pool.py; docs/threat-model.md says what is left.
--
-- No column here holds a time, a sequence value or anything a token has: pool_id is random,
-- and the pool row is deleted when its sheet is counted.
CREATE TABLE ballot_pool (
    workflow_id  text NOT NULL REFERENCES units (workflow_id),
    pool_id      uuid NOT NULL DEFAULT gen_random_uuid(),
    rater_group  text NOT NULL,
    marks        jsonb NOT NULL,  -- [[kind, target_id, item, option], ...]
    ballots      integer NOT NULL CHECK (ballots >= 0),
    receipt      text NOT NULL,
    PRIMARY KEY (workflow_id, pool_id)
);
CREATE INDEX ballot_pool_by_group ON ballot_pool (workflow_id, rater_group);

-- Receipts of counted sheets, written with the batch they were counted in (shuffled), so a
-- receipt tells its holder "counted" and nobody anything about the sheet or the token.
CREATE TABLE ballot_receipts (
    workflow_id  text NOT NULL REFERENCES units (workflow_id),
    receipt      text NOT NULL,
    PRIMARY KEY (workflow_id, receipt)
);

-- A submission's answer, by a key only its sender can make (sha256 of who sent it and their
-- idempotency key, or of the rater's token): a retry gets its receipts again instead of
-- "token already used". It names no sheet.
CREATE TABLE ballot_submissions (
    workflow_id     text NOT NULL REFERENCES units (workflow_id),
    submission_key  bytea NOT NULL CHECK (length(submission_key) = 32),
    receipts        jsonb NOT NULL,
    PRIMARY KEY (workflow_id, submission_key)
);

-- The evaluation's close as the pool sees it: no sheet is taken after it.
CREATE TABLE ballot_pool_closed (
    workflow_id  text PRIMARY KEY REFERENCES units (workflow_id)
);

ALTER TABLE ballot_batches DROP CONSTRAINT IF EXISTS ballot_batches_source_check;
ALTER TABLE ballot_batches ADD CONSTRAINT ballot_batches_source_check
    CHECK (source IN ('update', 'import', 'pool'));

-- Times of ballots and tokens to the day at most (a minute would order a unit's sheets).
ALTER TABLE ballot_tokens ALTER COLUMN issued_at SET DEFAULT date_trunc('day', now());
UPDATE ballot_tokens SET issued_at = date_trunc('day', issued_at)
    WHERE issued_at <> date_trunc('day', issued_at);
ALTER TABLE ballot_batches ALTER COLUMN received_at SET DEFAULT date_trunc('day', now()),
                           ALTER COLUMN registered_at SET DEFAULT date_trunc('day', now());
UPDATE ballot_batches SET received_at = date_trunc('day', received_at),
                          registered_at = date_trunc('day', registered_at)
    WHERE received_at <> date_trunc('day', received_at)
       OR registered_at <> date_trunc('day', registered_at);
