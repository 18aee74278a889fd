-- Notifier: one claim per alert key and channel (so a notification goes out once per repeat interval,
-- across replicas and restarts), and one row per delivery attempt and outcome.
CREATE TABLE alert_claims (
    alert_key   text NOT NULL,
    channel     text NOT NULL,
    status      text NOT NULL CHECK (status IN ('sending', 'sent', 'failed')),
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (alert_key, channel)
);

CREATE TABLE alert_deliveries (
    id          bigserial PRIMARY KEY,
    alert_key   text NOT NULL,
    alert_id    text NOT NULL,
    channel     text NOT NULL,
    attempt     integer NOT NULL,
    status      text NOT NULL CHECK (status IN ('sent', 'retrying', 'failed')),
    error       text,
    digest_size integer NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_deliveries_key_idx ON alert_deliveries (alert_key);
CREATE INDEX alert_deliveries_created_idx ON alert_deliveries (created_at);
