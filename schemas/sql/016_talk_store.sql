-- Issue 20: talk content never passes through a workflow's history. kaohe's API stores each
-- talk here, AES-256-GCM under the talk key (the associated data "WORKFLOW_ID/TALK_REF" binds
-- the ciphertext to its unit and reference), and sends the unit only the reference, the
-- content's sha256 and the metadata; the unit's activity checks them against this row before
-- it counts the talk in `talks`. A stored talk the unit refused (wrong stage, a duplicate
-- talk_id) stays here, never counted.
CREATE TABLE talk_store (
    talk_ref          text PRIMARY KEY,
    workflow_id       text NOT NULL REFERENCES units (workflow_id),
    idempotency_key   text NOT NULL,
    talk_id           text NOT NULL,
    interviewer       text NOT NULL,
    interviewee_role  text NOT NULL,
    talk_date         date NOT NULL,
    digest            text NOT NULL,   -- sha256 (hex) of the content's UTF-8 bytes
    key_id            text NOT NULL,
    nonce             bytea NOT NULL,
    ciphertext        bytea NOT NULL,
    stored_by         text NOT NULL,   -- the principal that sent it
    stored_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workflow_id, idempotency_key)
);

-- A talk the unit counted points at its stored content; rows from before keep their own.
ALTER TABLE talks ADD COLUMN talk_ref text UNIQUE REFERENCES talk_store (talk_ref);
ALTER TABLE talks ALTER COLUMN key_id DROP NOT NULL,
                  ALTER COLUMN nonce DROP NOT NULL,
                  ALTER COLUMN ciphertext DROP NOT NULL;
ALTER TABLE talks ADD CONSTRAINT talks_content_or_ref
    CHECK (talk_ref IS NOT NULL OR (nonce IS NOT NULL AND ciphertext IS NOT NULL));
