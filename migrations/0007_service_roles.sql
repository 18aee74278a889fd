-- One role per service, each with only the privileges its work needs (README, "Security"). The roles
-- cannot log in: give each service a login role that is a member of its role, e.g.
--   CREATE ROLE cw_cost_login LOGIN PASSWORD '...' IN ROLE costwarden_cost;
-- and that login in the service's DATABASE_URL. Roles belong to the whole PostgreSQL cluster, so they
-- are created only where missing; the grants are made in this database. Creating roles and granting
-- pg_read_all_data needs a superuser (or CREATEROLE plus that role's admin option).
DO $$
DECLARE
    role text;
BEGIN
    FOREACH role IN ARRAY ARRAY['costwarden_api', 'costwarden_limiter', 'costwarden_cost', 'costwarden_notifier',
                                'costwarden_health', 'costwarden_backup'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role);
            EXCEPTION WHEN duplicate_object THEN
                NULL;  -- another database's migration created it at the same moment
            END;
        END IF;
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), role);
        EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', role);
    END LOOP;
END $$;

-- api: authenticates callers; writes nothing.
GRANT SELECT ON api_keys TO costwarden_api;

-- limiter: records denials (ON CONFLICT (id) DO NOTHING reads the id to find a duplicate).
GRANT INSERT, SELECT (id) ON rate_limit_violations TO costwarden_limiter;

-- cost: owns the ledger, the rollups and its alerts; answers cost.query from them. Creating and
-- dropping monthly partitions goes through two functions that run with their owner's rights, so the
-- role needs no CREATE on the schema and owns no table.
GRANT SELECT, INSERT ON llm_usage_ids, llm_usage TO costwarden_cost;
GRANT SELECT, INSERT, UPDATE ON llm_cost_rollups, cost_alerts TO costwarden_cost;
GRANT USAGE ON SEQUENCE cost_alerts_id_seq TO costwarden_cost;
ALTER FUNCTION ensure_llm_usage_partition(timestamptz) SECURITY DEFINER SET search_path = public;
ALTER FUNCTION cleanup_old_llm_usage(interval) SECURITY DEFINER SET search_path = public;
REVOKE EXECUTE ON FUNCTION ensure_llm_usage_partition(timestamptz), cleanup_old_llm_usage(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ensure_llm_usage_partition(timestamptz), cleanup_old_llm_usage(interval) TO costwarden_cost;

-- notifier: its claims and delivery records.
GRANT SELECT, INSERT, UPDATE ON alert_claims, alert_deliveries TO costwarden_notifier;
GRANT USAGE ON SEQUENCE alert_deliveries_id_seq TO costwarden_notifier;

-- health: connects, and reads which migrations were applied (its readiness reports pending ones).
GRANT SELECT ON schema_migrations TO costwarden_health;

-- backup: reads everything it dumps, and keeps its own log.
GRANT pg_read_all_data TO costwarden_backup;
GRANT SELECT, INSERT, UPDATE ON backup_logs TO costwarden_backup;
GRANT USAGE ON SEQUENCE backup_logs_id_seq TO costwarden_backup;
