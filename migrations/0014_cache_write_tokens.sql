-- Prompt tokens a provider wrote to its prompt cache (Anthropic's cache creation tokens), part of
-- prompt_tokens like cached_prompt_tokens (those read from it), and priced at the model's cache-write
-- price where it has one. Rows recorded before wrote none.
ALTER TABLE llm_usage ADD COLUMN cache_write_prompt_tokens integer NOT NULL DEFAULT 0;
