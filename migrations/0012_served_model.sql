-- A call is billed for the model that answered it, not only the one that was asked for: a call to a
-- public model that fell back to another provider is priced at that provider's model. The ledger keeps
-- both: `model` (what the caller asked for) and `served_model` (the provider's own model id). Rows
-- recorded before were priced at `model`, which is then what they were billed for.
ALTER TABLE llm_usage ADD COLUMN served_model text;
UPDATE llm_usage SET served_model = model WHERE served_model IS NULL;
ALTER TABLE llm_usage ALTER COLUMN served_model SET NOT NULL;

ALTER TABLE llm_cost_rollups DROP CONSTRAINT llm_cost_rollups_dimension_check;
ALTER TABLE llm_cost_rollups ADD CONSTRAINT llm_cost_rollups_dimension_check
    CHECK (dimension IN ('all', 'user', 'model', 'served_model', 'endpoint', 'tag', 'key'));

-- The served-model rollups of what was recorded before are its model rollups.
INSERT INTO llm_cost_rollups (period, bucket, dimension, key, requests, successes, prompt_tokens, completion_tokens,
                              cost, latency_ms_sum, estimated_requests, estimated_cost)
SELECT period, bucket, 'served_model', key, requests, successes, prompt_tokens, completion_tokens, cost,
       latency_ms_sum, estimated_requests, estimated_cost
FROM llm_cost_rollups WHERE dimension = 'model'
ON CONFLICT (period, bucket, dimension, key) DO NOTHING;
