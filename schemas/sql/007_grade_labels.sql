-- How the campaign's policy shows each grade ({"team": {"好": "优秀"}, "cadre": {...}}; a
-- grade not listed shows as itself): reports print these labels. Written by the first unit
-- registered, as the campaign row is.
ALTER TABLE campaigns ADD COLUMN grade_labels jsonb NOT NULL DEFAULT '{}'::jsonb;
