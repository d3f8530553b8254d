-- Issue 7: a tamper-evident audit log. Each unit's rows form a hash chain: chain_seq counts
-- them, prev_hash is the previous row's row_hash (empty for the first) and row_hash is
-- sha256(prev_hash || the row's fields), set by the trigger below under a per-unit advisory
-- lock so concurrent writers of one unit chain in order. `kaohe audit verify` recomputes
-- every link: an edited row no longer matches its hash, a deleted one leaves a gap. Rows
-- written before this migration have no chain_seq and are reported as unchained.
ALTER TABLE audit_log
    ADD COLUMN chain_seq bigint,
    ADD COLUMN prev_hash bytea,
    ADD COLUMN row_hash  bytea;
CREATE UNIQUE INDEX audit_log_chain ON audit_log (workflow_id, chain_seq);

CREATE FUNCTION audit_row_digest(prev bytea, seq bigint, r audit_log) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256(prev || convert_to(concat_ws(E'\x1f',
        r.workflow_id, seq::text, r.campaign_id, r.unit_id, r.event_key, r.kind, r.stage,
        coalesce(r.actor_id, ''), coalesce(r.actor_role, ''), r.detail::text,
        to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')), 'UTF8'))
$$;

CREATE FUNCTION audit_log_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last_seq  bigint;
    last_hash bytea;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('kaohe-audit:' || NEW.workflow_id, 0));
    SELECT chain_seq, row_hash INTO last_seq, last_hash FROM audit_log
    WHERE workflow_id = NEW.workflow_id AND chain_seq IS NOT NULL
    ORDER BY chain_seq DESC LIMIT 1;
    NEW.chain_seq := coalesce(last_seq, 0) + 1;
    NEW.prev_hash := coalesce(last_hash, ''::bytea);
    NEW.row_hash := audit_row_digest(NEW.prev_hash, NEW.chain_seq, NEW);
    RETURN NEW;
END;
$$;

CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_chain();
