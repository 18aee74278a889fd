-- Where a call's token counts came from: 'provider' (its own usage object) or 'estimated' (counted by
-- the sender because the provider sent none: a stream abandoned or broken, usage omitted). Rollups
-- count estimated calls and their cost, so that a team sees how much of its spend is estimated.
ALTER TABLE llm_usage
    ADD COLUMN usage_source text NOT NULL DEFAULT 'provider' CHECK (usage_source IN ('provider', 'estimated'));

ALTER TABLE llm_cost_rollups
    ADD COLUMN estimated_requests bigint NOT NULL DEFAULT 0,
    ADD COLUMN estimated_cost numeric(24, 10) NOT NULL DEFAULT 0;
