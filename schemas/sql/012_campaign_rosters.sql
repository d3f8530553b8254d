-- Rosters too large for a workflow input (Temporal refuses payloads over 2 MB; a 5,000-unit
-- roster is about 6.5 MB of JSON): `kaohe start` stores them here and the campaign reads its
-- units page by page. Keyed by the roster's digest, so a roster stored again with changes
-- never alters what a running campaign reads.
CREATE TABLE IF NOT EXISTS campaign_roster_units (
    campaign_id text    NOT NULL,
    digest      text    NOT NULL,
    unit_no     integer NOT NULL,
    unit_id     text    NOT NULL,
    -- {"unit": UnitSpec, "contacts": {recipient: Contact}}: schemas.workflow_io.RosterUnit
    spec        jsonb   NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, digest, unit_no),
    UNIQUE (campaign_id, digest, unit_id)
);
