-- Keys managed through the admin API (POST/GET/DELETE /admin/keys) as well as the CLI, one
-- implementation for both: when a key was last used, and an audit row for every change (who, what, when).
ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;

CREATE TABLE api_key_audit (
    id      bigserial PRIMARY KEY,
    key_id  bigint NOT NULL REFERENCES api_keys (id),
    action  text NOT NULL CHECK (action IN ('create', 'revoke', 'rotate')),
    actor   text NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_key_audit_key_idx ON api_key_audit (key_id, at);

-- The api now also creates and revokes keys (admin keys only), and notes when a key was used; it still
-- cannot change a key's user, tier or rights.
GRANT INSERT ON api_keys TO costwarden_api;
GRANT UPDATE (revoked_at, expires_at, last_used_at) ON api_keys TO costwarden_api;
GRANT SELECT, INSERT ON api_key_audit TO costwarden_api;
GRANT USAGE ON SEQUENCE api_keys_id_seq, api_key_audit_id_seq TO costwarden_api;
