-- The group's comprehensive analysis (综合分析研判) as strengths and shortcomings of the team
-- and of each cadre it names ({"strengths", "shortcomings", "cadres": {id: {...}}}); NULL for a
-- proposal whose evaluation was plain text (kept in `evaluation` as before).
ALTER TABLE grade_proposals ADD COLUMN appraisal jsonb;

-- Who closed a follow-up: for a feedback (反馈), its signer (the cadre, the unit's contact, or
-- the department recording a signature on paper).
ALTER TABLE follow_ups ADD COLUMN closed_by text;
