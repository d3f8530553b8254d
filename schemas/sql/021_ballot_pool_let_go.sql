-- Issue 20, the voting page's cost: letting a rater group's pooled sheets go
-- (activities/ballot_pool.py flush_pool) took them to kaohe's API and back, mark by mark. This
-- does it where they are, in one statement: the group's pool rows deleted, their sheets
-- numbered in an order drawn by gen_random_uuid() (pg_strong_random, as secrets draws in
-- Python), their marks inserted in that order, their receipts in another such order, and the
-- batch row with its ballots, sheets and checksum. The checksum is domain.ballots.
-- marks_checksum's, byte for byte: per mark `sheet_no US kind US target US item US option RS`,
-- sheet by sheet and in each sheet in the order it was sent (tests/test_ballot_pool.py
-- recomputes it in Python).
CREATE OR REPLACE FUNCTION ballot_pool_let_go(p_workflow_id text, p_group text, p_batch_id text)
RETURNS TABLE (ballots integer, sheets integer, checksum text)
LANGUAGE sql
SET search_path = pg_catalog, public
AS $$
    WITH taken AS (
        DELETE FROM ballot_pool p WHERE p.workflow_id = p_workflow_id AND p.rater_group = p_group
        RETURNING p.marks, p.ballots, p.receipt
    ), drawn AS MATERIALIZED (
        SELECT (row_number() OVER (ORDER BY gen_random_uuid()) - 1)::integer AS sheet_no,
               t.marks, t.ballots
        FROM taken t
    ), marks AS MATERIALIZED (
        SELECT d.sheet_no, e.i, e.m ->> 0 AS kind, e.m ->> 1 AS target_id, e.m ->> 2 AS item,
               e.m ->> 3 AS option
        FROM drawn d, jsonb_array_elements(d.marks) WITH ORDINALITY AS e (m, i)
    ), stored AS (
        INSERT INTO ballot_marks
            (workflow_id, batch_id, sheet_no, rater_group, kind, target_id, item, option)
        SELECT p_workflow_id, p_batch_id, m.sheet_no, p_group, m.kind, m.target_id, m.item,
               m.option
        FROM marks m ORDER BY m.sheet_no, m.i
    ), counted AS (
        INSERT INTO ballot_receipts (workflow_id, receipt)
        SELECT p_workflow_id, t.receipt FROM taken t ORDER BY gen_random_uuid()
    ), figures AS MATERIALIZED (
        SELECT (SELECT coalesce(sum(d.ballots), 0) FROM drawn d)::integer AS ballots,
               (SELECT count(*) FROM drawn d)::integer AS sheets,
               encode(sha256(convert_to(coalesce(string_agg(
                   m.sheet_no || E'\x1f' || m.kind || E'\x1f' || m.target_id || E'\x1f'
                   || m.item || E'\x1f' || m.option || E'\x1e',
                   '' ORDER BY m.sheet_no, m.i), ''), 'UTF8')), 'hex') AS checksum
        FROM marks m
    ), batch AS (
        INSERT INTO ballot_batches (workflow_id, batch_id, ballots, sheets, checksum, source,
                                    registered_at, sheets_by_group)
        SELECT p_workflow_id, p_batch_id, f.ballots, f.sheets, f.checksum, 'pool', NULL,
               jsonb_build_object(p_group, f.sheets)
        FROM figures f
    )
    SELECT f.ballots, f.sheets, f.checksum FROM figures f;
$$;
