-- Keys may expire (keys create --expires-in, and the old key of keys rotate after its grace period).
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
