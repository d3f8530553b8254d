-- Issue 19: requests a caller sent with `Prefer: respond-async` (202): kept until the unit
-- answers, so an API restart or a Temporal outage loses none. The payload holds the actor
-- the caller's binding gave; the update id is the idempotency key, so a retry is harmless.
CREATE TABLE api_requests (
    request_id  text PRIMARY KEY,
    principal   text NOT NULL,
    workflow_id text NOT NULL,
    action      text NOT NULL,
    payload     jsonb NOT NULL,
    state       text NOT NULL DEFAULT 'queued',   -- queued, accepted, rejected
    answer      jsonb,
    attempts    int NOT NULL DEFAULT 0,
    next_at     timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_requests_due ON api_requests (next_at) WHERE state = 'queued';
