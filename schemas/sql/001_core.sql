-- Core tables of the walking skeleton. Applied once, in a transaction, by activities/db.py.

CREATE TABLE campaigns (
    campaign_id  text PRIMARY KEY,
    year         integer NOT NULL,
    title        text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE units (
    workflow_id  text PRIMARY KEY,
    campaign_id  text NOT NULL REFERENCES campaigns (campaign_id),
    unit_id      text NOT NULL,
    name         text NOT NULL,
    category     text NOT NULL,
    -- A projection of the workflow's stage, for reports and for a restarted campaign.
    stage        text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (campaign_id, unit_id)
);

CREATE TABLE cadres (
    workflow_id     text NOT NULL REFERENCES units (workflow_id),
    cadre_id        text NOT NULL,
    name            text NOT NULL,
    position        text NOT NULL,
    principal       boolean NOT NULL,
    newly_promoted  boolean NOT NULL,
    PRIMARY KEY (workflow_id, cadre_id)
);

CREATE TABLE acknowledgements (
    workflow_id      text NOT NULL REFERENCES units (workflow_id),
    idempotency_key  text NOT NULL,
    actor_id         text NOT NULL,
    note             text,
    received_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, idempotency_key)
);

CREATE TABLE reports (
    workflow_id      text NOT NULL REFERENCES units (workflow_id),
    idempotency_key  text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('team', 'cadre')),
    cadre_id         text,
    revision         integer NOT NULL,
    revision_reason  text,
    title            text NOT NULL,
    body             text NOT NULL,
    submitted_by     text NOT NULL,
    submitted_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, idempotency_key)
);

-- Ballots are anonymous: there is deliberately no voter column anywhere.
CREATE TABLE ballot_batches (
    workflow_id  text NOT NULL REFERENCES units (workflow_id),
    batch_id     text NOT NULL,
    ballots      integer NOT NULL,
    checksum     text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, batch_id)
);

CREATE TABLE ballots (
    workflow_id  text NOT NULL,
    batch_id     text NOT NULL,
    target_kind  text NOT NULL CHECK (target_kind IN ('team', 'cadre')),
    target_id    text,
    rater_group  text NOT NULL,
    overall      text NOT NULL,
    FOREIGN KEY (workflow_id, batch_id) REFERENCES ballot_batches (workflow_id, batch_id)
);
CREATE INDEX ballots_by_target ON ballots (workflow_id, target_kind, target_id);

-- Talk content is AES-256-GCM ciphertext; key_id names the key that sealed it.
CREATE TABLE talks (
    workflow_id       text NOT NULL REFERENCES units (workflow_id),
    talk_id           text NOT NULL,
    interviewer       text NOT NULL,
    interviewee_role  text NOT NULL,
    talk_date         date NOT NULL,
    key_id            text NOT NULL,
    nonce             bytea NOT NULL,
    ciphertext        bytea NOT NULL,
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, talk_id)
);

CREATE TABLE grade_proposals (
    workflow_id   text NOT NULL REFERENCES units (workflow_id),
    proposal_no   integer NOT NULL,
    proposer_id   text NOT NULL,
    evaluation    text NOT NULL,
    team_grade    text NOT NULL,
    cadre_grades  jsonb NOT NULL,
    decision      text CHECK (decision IN ('approve', 'return')),
    decided_by    text,
    comment       text,
    proposed_at   timestamptz NOT NULL DEFAULT now(),
    decided_at    timestamptz,
    PRIMARY KEY (workflow_id, proposal_no)
);

-- Final grades, one row per cadre and one (cadre_id '') for the team; kept across years.
CREATE TABLE grades (
    workflow_id  text NOT NULL REFERENCES units (workflow_id),
    year         integer NOT NULL,
    unit_id      text NOT NULL,
    cadre_id     text NOT NULL,
    grade        text NOT NULL,
    final_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, cadre_id)
);

CREATE TABLE follow_ups (
    workflow_id   text NOT NULL REFERENCES units (workflow_id),
    follow_up_id  text NOT NULL,
    kind          text NOT NULL,
    cadre_id      text,
    owner         text NOT NULL,
    due_date      date,
    description   text NOT NULL,
    outcome       text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    closed_at     timestamptz,
    PRIMARY KEY (workflow_id, follow_up_id)
);

-- The outbox: one row per notification, keyed so a retry or replay never sends twice.
CREATE TABLE notifications (
    idempotency_key  text PRIMARY KEY,
    workflow_id      text NOT NULL,
    channel          text NOT NULL,
    recipients       text[] NOT NULL,
    subject          text NOT NULL,
    status           text NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz
);

-- Every state change, append-only: the trigger below refuses UPDATE and DELETE.
CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    workflow_id  text NOT NULL,
    campaign_id  text NOT NULL,
    unit_id      text NOT NULL,
    event_key    text NOT NULL,
    kind         text NOT NULL,
    stage        text NOT NULL,
    actor_id     text,
    actor_role   text,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb,
    at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workflow_id, event_key)
);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP;
END;
$$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();
