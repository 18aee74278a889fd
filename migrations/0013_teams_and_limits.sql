-- Teams, and limits per key, user and team (budgets on calendar periods or rolling windows, soft
-- thresholds, request windows, tokens per minute, a model allow-list), set through the admin API while
-- the system runs. Tier limits stay in the YAML file.

CREATE TABLE teams (
    team_id     text PRIMARY KEY CHECK (team_id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A user belongs to at most one team (the primary key): the limiter keeps a call's key, user and team
-- counters under the team's Redis hash tag, so that one script decides them all, on Redis Cluster too.
CREATE TABLE team_members (
    user_id   text PRIMARY KEY,
    team_id   text NOT NULL REFERENCES teams (team_id) ON DELETE CASCADE,
    added_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, team_id)
);
CREATE INDEX team_members_team_idx ON team_members (team_id);

-- A key's team is its user's team: (user_id, team_id) must be a membership. A user who moves to another
-- team takes their keys along; one who leaves takes them out of the team.
ALTER TABLE api_keys ADD COLUMN team_id text;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_team_member_fk FOREIGN KEY (user_id, team_id)
    REFERENCES team_members (user_id, team_id) ON UPDATE CASCADE ON DELETE SET NULL (team_id);
CREATE INDEX api_keys_team_idx ON api_keys (team_id) WHERE team_id IS NOT NULL;

-- One row per scope that has limits of its own (shared/limits.py, ScopeLimits, as JSON).
CREATE TABLE scope_limits (
    scope       text NOT NULL CHECK (scope IN ('key', 'user', 'team')),
    scope_id    text NOT NULL CHECK (length(scope_id) BETWEEN 1 AND 256),
    limits      jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL,
    PRIMARY KEY (scope, scope_id)
);

-- Every change an administrator makes to teams and limits: who, what, when, and the change itself.
CREATE TABLE admin_audit (
    id       bigserial PRIMARY KEY,
    subject  text NOT NULL,
    action   text NOT NULL CHECK (action IN ('create_team', 'rename_team', 'delete_team', 'add_member',
                                             'remove_member', 'set_limits', 'delete_limits')),
    actor    text NOT NULL,
    detail   jsonb NOT NULL DEFAULT '{}',
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_audit_subject_idx ON admin_audit (subject, at);

-- The team a call was counted for, in the ledger and as a rollup dimension.
ALTER TABLE llm_usage ADD COLUMN team_id text;
ALTER TABLE llm_cost_rollups DROP CONSTRAINT llm_cost_rollups_dimension_check;
ALTER TABLE llm_cost_rollups ADD CONSTRAINT llm_cost_rollups_dimension_check
    CHECK (dimension IN ('all', 'user', 'model', 'served_model', 'endpoint', 'tag', 'key', 'team'));

-- Spend per key, user and team in 15-minute UTC buckets, kept by the cost service with the ledger. Every
-- timezone's offset is a whole number of quarter hours, so a budget's day, week or month in any timezone
-- is a whole number of buckets, and its spend is their sum; rolling windows are summed to the quarter
-- hour. Kept 100 days (the longest rolling window is 90).
CREATE TABLE scope_spend (
    scope     text NOT NULL CHECK (scope IN ('key', 'user', 'team')),
    scope_id  text NOT NULL,
    bucket    timestamptz NOT NULL,
    requests  bigint NOT NULL,
    cost      numeric(24, 10) NOT NULL,
    PRIMARY KEY (scope, scope_id, bucket)
);
CREATE INDEX scope_spend_bucket_idx ON scope_spend (bucket);

-- api: the admin API changes teams and limits (and a key's team), and audits every change.
GRANT SELECT, INSERT, UPDATE, DELETE ON teams, team_members, scope_limits TO costwarden_api;
GRANT SELECT, INSERT ON admin_audit TO costwarden_api;
GRANT USAGE ON SEQUENCE admin_audit_id_seq TO costwarden_api;
GRANT UPDATE (team_id) ON api_keys TO costwarden_api;

-- limiter: reads the limits, who is in which team, the user of a key with limits, and the spend a new
-- budget starts from.
GRANT SELECT ON scope_limits, team_members, scope_spend TO costwarden_limiter;
GRANT SELECT (id, user_id) ON api_keys TO costwarden_limiter;

-- cost: keeps the spend per scope (and drops what is past retention); reads the limits for soft alerts.
GRANT SELECT, INSERT, UPDATE, DELETE ON scope_spend TO costwarden_cost;
GRANT SELECT ON scope_limits TO costwarden_cost;

-- console: shows teams, limits and spend.
GRANT SELECT ON teams, team_members, scope_limits, scope_spend TO costwarden_console;
