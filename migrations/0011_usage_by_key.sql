-- Spend per API key, not only per user: every call records the key it was made with (NULL for
-- anonymous callers and for upstream services that do not say), and the rollups keep a 'key'
-- dimension (key = the key's id), so that the console shows each key's usage without reading the ledger.
ALTER TABLE llm_usage ADD COLUMN api_key_id bigint;

ALTER TABLE llm_cost_rollups DROP CONSTRAINT llm_cost_rollups_dimension_check;
ALTER TABLE llm_cost_rollups ADD CONSTRAINT llm_cost_rollups_dimension_check
    CHECK (dimension IN ('all', 'user', 'model', 'endpoint', 'tag', 'key'));
