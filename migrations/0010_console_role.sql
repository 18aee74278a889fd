-- The console reads what the other services record and changes nothing itself (key actions go through
-- the api's admin API, backup requests through the bus): the rollups, the ledger, alerts and their
-- deliveries, denials, backups, and the keys (their hash to sign a person in; not the audit trail).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'costwarden_console') THEN
        BEGIN
            CREATE ROLE costwarden_console NOLOGIN;
        EXCEPTION WHEN duplicate_object THEN
            NULL;  -- another database's migration created it at the same moment
        END;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO costwarden_console', current_database());
END $$;
GRANT USAGE ON SCHEMA public TO costwarden_console;
GRANT SELECT ON llm_cost_rollups, llm_usage, cost_alerts, alert_deliveries, rate_limit_violations, backup_logs
    TO costwarden_console;
GRANT SELECT ON api_keys TO costwarden_console;
