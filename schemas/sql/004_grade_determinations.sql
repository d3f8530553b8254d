-- The group's written determinations (认定意见) for cadres flagged by 不称职票率 whom it
-- proposes 称职 or better.
ALTER TABLE grade_proposals ADD COLUMN determinations jsonb NOT NULL DEFAULT '{}'::jsonb;
