-- api keys: only a SHA-256 of each key is stored; the prefix helps an operator tell keys apart.
CREATE TABLE api_keys (
    id          bigserial PRIMARY KEY,
    key_hash    text NOT NULL UNIQUE,
    key_prefix  text NOT NULL,
    user_id     text NOT NULL,
    tier        text NOT NULL CHECK (tier IN ('anonymous', 'free', 'pro', 'enterprise')),
    is_admin    boolean NOT NULL DEFAULT false,
    label       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id);

-- One row per denial, written in batches by the limiter; id is the limit.violation event id.
CREATE TABLE rate_limit_violations (
    id           text PRIMARY KEY,
    request_id   text NOT NULL,
    user_id      text,
    ip_address   text,
    tier         text NOT NULL,
    endpoint     text NOT NULL,
    policy       text NOT NULL,
    limited_by   text NOT NULL,
    limit_value  integer NOT NULL,
    window_ms    bigint NOT NULL,
    created_at   timestamptz NOT NULL
);
CREATE INDEX rate_limit_violations_created_idx ON rate_limit_violations (created_at);
CREATE INDEX rate_limit_violations_user_idx ON rate_limit_violations (user_id, created_at);
