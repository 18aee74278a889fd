-- Calls the gateway answered from its response cache (issue 33): no provider was called, so they cost
-- nothing; `saved_usd` is what the provider would have been paid for the cached answer's usage, at the
-- price of the model that gave it. Rows recorded before were never hits.
ALTER TABLE llm_usage ADD COLUMN cache_hit boolean NOT NULL DEFAULT false;
ALTER TABLE llm_usage ADD COLUMN saved_usd numeric(24, 10) NOT NULL DEFAULT 0;

-- The rollups count the hits and sum the savings beside the spend.
ALTER TABLE llm_cost_rollups ADD COLUMN cache_hits bigint NOT NULL DEFAULT 0;
ALTER TABLE llm_cost_rollups ADD COLUMN saved_usd numeric(24, 10) NOT NULL DEFAULT 0;
