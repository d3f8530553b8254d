-- Issue 6: notification channels. A notification (one row per idempotency key, as before)
-- has a delivery per recipient and channel; each is tried until sent, or dead-lettered after
-- the maximum attempts (KAOHE_NOTIFY_MAX_ATTEMPTS) with its last error.
CREATE TABLE notification_deliveries (
    idempotency_key  text NOT NULL REFERENCES notifications (idempotency_key),
    recipient        text NOT NULL,
    channel          text NOT NULL CHECK (channel IN ('log', 'webhook', 'email')),
    address          text NOT NULL DEFAULT '',
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text,
    sent_at          timestamptz,
    PRIMARY KEY (idempotency_key, recipient, channel)
);
