-- The cost ledger: one row per request id in llm_usage (partitioned by month), rollups kept current
-- as events arrive, and claimed alerts.

-- One row per request id ever recorded: the guard that makes the ledger idempotent across
-- redeliveries, replicas and re-publications. (A unique key on the partitioned llm_usage would have to
-- include the partition key.)
CREATE TABLE llm_usage_ids (
    request_id  text PRIMARY KEY,
    created_at  timestamptz NOT NULL
);
CREATE INDEX llm_usage_ids_created_idx ON llm_usage_ids (created_at);

CREATE TABLE llm_usage (
    request_id            text NOT NULL,
    user_id               text,
    session_id            text,
    ip_address            text,
    tier                  text,
    provider              text NOT NULL,
    model                 text NOT NULL,
    prompt_tokens         integer NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens     integer NOT NULL CHECK (completion_tokens >= 0),
    cached_prompt_tokens  integer NOT NULL DEFAULT 0,
    total_tokens          integer GENERATED ALWAYS AS (prompt_tokens + completion_tokens) STORED,
    cost                  numeric(20, 10) NOT NULL,
    priced                boolean NOT NULL,
    endpoint              text NOT NULL,
    success               boolean NOT NULL,
    error_message         text,
    latency_ms            integer NOT NULL,
    tags                  jsonb NOT NULL DEFAULT '{}',
    created_at            timestamptz NOT NULL
) PARTITION BY RANGE (created_at);
CREATE INDEX llm_usage_created_idx ON llm_usage (created_at);
CREATE INDEX llm_usage_user_idx ON llm_usage (user_id, created_at);
CREATE INDEX llm_usage_request_idx ON llm_usage (request_id);

-- Creates the month's partition of llm_usage if it is missing; returns its name. Call it outside a
-- long transaction: several replicas may race to create the same month, and the loser carries on.
CREATE FUNCTION ensure_llm_usage_partition(p_at timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz := date_trunc('month', p_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    name text := 'llm_usage_' || to_char(month_start AT TIME ZONE 'UTC', 'YYYY_MM');
BEGIN
    IF to_regclass(name) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF llm_usage FOR VALUES FROM (%L) TO (%L)',
                       name, month_start, month_start + interval '1 month');
    END IF;
    RETURN name;
EXCEPTION WHEN duplicate_table OR unique_violation THEN
    RETURN name;
END $$;

-- Spend and volume per period bucket (UTC hour, day, month), overall ('all', key '') and by user,
-- model, endpoint and tag ('tag', key 'name=value').
CREATE TABLE llm_cost_rollups (
    period             text NOT NULL CHECK (period IN ('hour', 'day', 'month')),
    bucket             timestamptz NOT NULL,
    dimension          text NOT NULL CHECK (dimension IN ('all', 'user', 'model', 'endpoint', 'tag')),
    key                text NOT NULL,
    requests           bigint NOT NULL,
    successes          bigint NOT NULL,
    prompt_tokens      bigint NOT NULL,
    completion_tokens  bigint NOT NULL,
    cost               numeric(24, 10) NOT NULL,
    latency_ms_sum     bigint NOT NULL,
    PRIMARY KEY (period, bucket, dimension, key)
);

-- Alerts claimed by the cost service: the unique key makes each alert fire once per scope, period,
-- level and window, whatever the replicas and redeliveries; published_at is the outbox mark.
CREATE TABLE cost_alerts (
    id            bigserial PRIMARY KEY,
    alert_key     text NOT NULL UNIQUE,
    alert_type    text NOT NULL,
    severity      text NOT NULL CHECK (severity IN ('warning', 'critical')),
    scope         text NOT NULL,
    period        text NOT NULL,
    window_start  timestamptz NOT NULL,
    threshold     numeric(24, 10),
    actual_cost   numeric(24, 10) NOT NULL,
    message       text NOT NULL,
    event         jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX cost_alerts_unpublished_idx ON cost_alerts (created_at) WHERE published_at IS NULL;

CREATE FUNCTION get_hourly_llm_cost() RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(cost), 0) FROM llm_cost_rollups
    WHERE period = 'hour' AND dimension = 'all' AND bucket = date_trunc('hour', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
$$;

CREATE FUNCTION get_daily_llm_cost(p_user_id text DEFAULT NULL) RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(cost), 0) FROM llm_cost_rollups
    WHERE period = 'day' AND bucket = date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
      AND ((p_user_id IS NULL AND dimension = 'all') OR (dimension = 'user' AND key = p_user_id))
$$;

CREATE FUNCTION get_monthly_llm_cost() RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(cost), 0) FROM llm_cost_rollups
    WHERE period = 'month' AND dimension = 'all' AND bucket = date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
$$;

-- Statistics of the raw calls in [p_start, p_end), one row per model.
CREATE FUNCTION get_llm_usage_stats(p_start timestamptz, p_end timestamptz)
RETURNS TABLE (
    model text, total_requests bigint, successful_requests bigint, success_rate numeric,
    total_prompt_tokens bigint, total_completion_tokens bigint, total_tokens bigint, total_cost numeric,
    avg_latency_ms numeric, p50_latency_ms double precision, p95_latency_ms double precision,
    p99_latency_ms double precision
)
LANGUAGE sql STABLE AS $$
    SELECT u.model,
           count(*),
           count(*) FILTER (WHERE u.success),
           round(100.0 * count(*) FILTER (WHERE u.success) / count(*), 2),
           sum(u.prompt_tokens)::bigint,
           sum(u.completion_tokens)::bigint,
           sum(u.total_tokens)::bigint,
           sum(u.cost),
           round(avg(u.latency_ms), 2),
           percentile_cont(0.50) WITHIN GROUP (ORDER BY u.latency_ms),
           percentile_cont(0.95) WITHIN GROUP (ORDER BY u.latency_ms),
           percentile_cont(0.99) WITHIN GROUP (ORDER BY u.latency_ms)
    FROM llm_usage u
    WHERE u.created_at >= p_start AND u.created_at < p_end
    GROUP BY u.model
    ORDER BY sum(u.cost) DESC
$$;

-- Retention: drops every monthly partition that ends before now() - p_retention (whole partitions, no
-- row-by-row delete) and forgets the request ids of that time. Returns the partitions dropped.
CREATE FUNCTION cleanup_old_llm_usage(p_retention interval DEFAULT interval '90 days') RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    cutoff timestamptz := now() - p_retention;
BEGIN
    FOR part IN
        SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'llm_usage'::regclass
    LOOP
        IF (regexp_match(part.bound, 'TO \(''([^'']+)''\)'))[1]::timestamptz <= cutoff THEN
            EXECUTE format('DROP TABLE %I', part.name);
            RETURN NEXT part.name;
        END IF;
    END LOOP;
    DELETE FROM llm_usage_ids WHERE created_at < date_trunc('month', cutoff AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
END $$;
