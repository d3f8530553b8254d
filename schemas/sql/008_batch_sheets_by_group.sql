-- A batch's sheets per rater group, written with the batch: verifying an imported batch (and
-- answering a repeated one) then reads one row instead of counting its marks again. NULL on
-- batches stored before this migration: those are still counted from ballot_marks.
ALTER TABLE ballot_batches ADD COLUMN sheets_by_group jsonb;
