-- Issue 20, the voting page's cost: pooling a sheet (activities/ballot_pool.py) took ten
-- statements and a transaction around them, each a round trip from kaohe's API. This function
-- does the same in one statement (so in one transaction of its own), under the same locks and
-- in the same order: the unit's rater group rows, an earlier answer to the same submission
-- key, the unit in its evaluation, the tokens spent (unused, not doubled, each group within
-- its plan), the pool open, the sheets pooled, the submission's receipts kept. It refuses
-- with SQLSTATE KH001 and no detail; kaohe then asks the same questions one by one in a
-- transaction it rolls back, to name every sheet's problem (ballot_pool._refusal). What it
-- writes is what those statements wrote, row for row: nothing here adds a time, a sequence
-- value or an order.
CREATE OR REPLACE FUNCTION ballot_pool_take(
    p_workflow_id    text,
    p_hashes         bytea[],   -- the sheets' token hashes, in the order sent
    p_marks          text[],    -- each sheet's marks, JSON [[kind, target_id, item, option]]
    p_ballots        integer[],
    p_receipts       text[],
    p_submission_key bytea,
    p_flush_at       integer    -- a group holding this many pooled sheets may be let go
) RETURNS TABLE (earlier jsonb, sheet_groups text[], may_flush boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $$
DECLARE
    n            integer := cardinality(p_hashes);
    taken_groups text[];
    beyond       boolean;
BEGIN
    -- Submissions of a unit one at a time (lock_rater_groups).
    PERFORM 1 FROM unit_rater_groups WHERE workflow_id = p_workflow_id
        ORDER BY group_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ballot_pool_take refused' USING ERRCODE = 'KH001';
    END IF;
    SELECT s.receipts INTO earlier FROM ballot_submissions s
        WHERE s.workflow_id = p_workflow_id AND s.submission_key = p_submission_key;
    IF FOUND THEN
        RETURN NEXT;
        RETURN;
    END IF;
    -- The unit's stage as its workflow recorded it (record_transition): no sheet before the
    -- evaluation opens; after it, ballot_pool_closed (below) has refused them already.
    IF NOT EXISTS (SELECT FROM units u WHERE u.workflow_id = p_workflow_id
                   AND u.stage = 'evaluation') THEN
        RAISE EXCEPTION 'ballot_pool_take refused' USING ERRCODE = 'KH001';
    END IF;
    IF n = 0 OR (SELECT count(DISTINCT h) FROM unnest(p_hashes) AS h) <> n
       OR cardinality(p_marks) <> n OR cardinality(p_ballots) <> n
       OR cardinality(p_receipts) <> n THEN
        RAISE EXCEPTION 'ballot_pool_take refused' USING ERRCODE = 'KH001';
    END IF;
    WITH spent AS (
        UPDATE ballot_tokens t SET used_at = date_trunc('day', now())
        WHERE t.workflow_id = p_workflow_id AND t.token_hash = ANY (p_hashes)
          AND t.used_at IS NULL
        RETURNING t.token_hash, t.rater_group
    )
    SELECT array_agg(spent.rater_group ORDER BY h.i) INTO taken_groups
        FROM unnest(p_hashes) WITH ORDINALITY AS h (hash, i)
        JOIN spent ON spent.token_hash = h.hash;
    IF coalesce(cardinality(taken_groups), 0) <> n THEN
        RAISE EXCEPTION 'ballot_pool_take refused' USING ERRCODE = 'KH001';
    END IF;
    WITH taken AS (
        SELECT g AS group_id, count(*) AS k FROM unnest(taken_groups) AS g GROUP BY g
    ), bumped AS (
        UPDATE unit_rater_groups r SET returned = r.returned + taken.k
        FROM taken WHERE r.workflow_id = p_workflow_id AND r.group_id = taken.group_id
        RETURNING r.returned > r.planned AS beyond_plan
    )
    SELECT coalesce(bool_or(beyond_plan), false) INTO beyond FROM bumped;
    IF beyond OR EXISTS (SELECT FROM ballot_pool_closed c WHERE c.workflow_id = p_workflow_id)
    THEN
        RAISE EXCEPTION 'ballot_pool_take refused' USING ERRCODE = 'KH001';
    END IF;
    INSERT INTO ballot_pool (workflow_id, rater_group, marks, ballots, receipt)
        SELECT p_workflow_id, x.g, x.m::jsonb, x.b, x.r
        FROM unnest(taken_groups, p_marks, p_ballots, p_receipts) AS x (g, m, b, r);
    INSERT INTO ballot_submissions (workflow_id, submission_key, receipts)
        VALUES (p_workflow_id, p_submission_key, to_jsonb(p_receipts));
    -- Whether a flush would let any of these groups go: most sheets wait, and the caller
    -- then spares itself the flush's transaction.
    SELECT coalesce(bool_or(p.k >= p_flush_at OR r.returned >= r.planned), false)
        INTO may_flush
        FROM (SELECT b.rater_group, count(*) AS k FROM ballot_pool b
              WHERE b.workflow_id = p_workflow_id AND b.rater_group = ANY (taken_groups)
              GROUP BY b.rater_group) p
        JOIN unit_rater_groups r
          ON r.workflow_id = p_workflow_id AND r.group_id = p.rater_group;
    sheet_groups := taken_groups;
    RETURN NEXT;
END
$$;
