-- Issue 21: an audit trail that holds against whoever runs kaohe. Migrations run as the owner
-- of kaohe's tables; the worker, the API and the CLI connect as a LOGIN role that is a member
-- of kaohe_app (`kaohe migrate` and `kaohe dev` make it: activities/db.py). kaohe_app reads and
-- writes the working tables, but the append-only ones (audit_log, access_log) it may only
-- INSERT into and SELECT from: no UPDATE, DELETE, TRUNCATE or TRIGGER, and as it owns nothing
-- it can neither disable their triggers nor replace their functions, nor set
-- session_replication_role (a superuser's). The owner still can: that is caught outside the
-- database, by `kaohe audit verify` recomputing the chain in Python against chain heads signed
-- with a key PostgreSQL never sees (kaohe/audit.py, docs/threat-model.md).
--
-- Idempotent beyond the runner's once per file: a role belongs to the cluster, so another
-- database of it (or a concurrent migrate of one) may have made kaohe_app already.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kaohe_app') THEN
        BEGIN
            CREATE ROLE kaohe_app NOLOGIN;
        EXCEPTION WHEN duplicate_object THEN
            NULL;
        END;
    END IF;
END
$$;

-- Nobody but the owner makes objects here (PostgreSQL 15 and later already say so), so no
-- role can shadow a function or operator the triggers use.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO kaohe_app;

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO kaohe_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO kaohe_app;
-- Tables and sequences of later migrations (made by the role that runs them) get the same;
-- a later append-only table revokes what it must, as below.
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO kaohe_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO kaohe_app;

-- Append-only for kaohe_app whatever the triggers say.
REVOKE UPDATE, DELETE, TRUNCATE, TRIGGER, REFERENCES ON audit_log, access_log FROM kaohe_app;
-- An audit row's chain columns are the trigger's and its time is the database's: the app
-- names only the row's content.
REVOKE INSERT ON audit_log FROM kaohe_app;
GRANT INSERT (workflow_id, campaign_id, unit_id, event_key, kind, stage, actor_id, actor_role,
              detail) ON audit_log TO kaohe_app;
-- Which migrations ran is the owner's to write.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON schema_migrations FROM kaohe_app;

-- The triggers' functions resolve names in the schema alone, not in a caller's search_path.
ALTER FUNCTION audit_log_chain() SET search_path = pg_catalog, public;
ALTER FUNCTION audit_log_is_append_only() SET search_path = pg_catalog, public;
ALTER FUNCTION access_log_is_append_only() SET search_path = pg_catalog, public;
