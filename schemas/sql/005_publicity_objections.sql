-- Publicity (公示): approved grades are published, and become final only when the publicity
-- period ends with no open objection. Rows approved before this migration were final at once.
ALTER TABLE grades ADD COLUMN final boolean NOT NULL DEFAULT true;
ALTER TABLE grades ALTER COLUMN final_at DROP NOT NULL;
ALTER TABLE grades ALTER COLUMN final_at DROP DEFAULT;

CREATE TABLE objections (
    workflow_id      text NOT NULL REFERENCES units (workflow_id),
    objection_id     text NOT NULL,
    raised_by        text NOT NULL,
    cadre_id         text,          -- NULL: against the team's grade
    reason           text NOT NULL,
    raised_at        timestamptz NOT NULL DEFAULT now(),
    decision         text CHECK (decision IN ('uphold', 'dismiss')),
    decision_reason  text,
    decided_by       text,
    decided_at       timestamptz,
    PRIMARY KEY (workflow_id, objection_id)
);
