-- Issue 19: who may act on a campaign and its units. A binding gives a principal (a person's
-- token subject, or an integrating system's id) one role on a campaign, or on one unit of it;
-- an action's actor comes from the authenticated principal and its binding, never from the
-- request body.
CREATE TABLE role_bindings (
    campaign_id text NOT NULL,
    unit_id     text NOT NULL DEFAULT '',   -- '' = every unit of the campaign
    principal   text NOT NULL,
    role        text NOT NULL,
    cadre_id    text NOT NULL DEFAULT '',   -- role cadre: the cadre this person is
    granted_by  text NOT NULL,
    granted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, unit_id, principal, role, cadre_id)
);
CREATE INDEX role_bindings_principal ON role_bindings (principal, campaign_id);

-- Integrating systems authenticate with an API key: only its sha256 is kept.
CREATE TABLE api_keys (
    key_id     text PRIMARY KEY,
    principal  text NOT NULL,
    key_hash   bytea NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- Every change of bindings and keys, append-only (as audit_log).
CREATE TABLE access_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    changed_by  text NOT NULL,
    change      text NOT NULL,   -- granted, revoked, key_created, key_revoked
    principal   text NOT NULL,
    role        text,
    campaign_id text,
    unit_id     text,
    detail      jsonb NOT NULL DEFAULT '{}'
);

CREATE FUNCTION access_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'access_log is append-only (% refused)', TG_OP;
END;
$$;

CREATE TRIGGER access_log_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON access_log
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_is_append_only();
