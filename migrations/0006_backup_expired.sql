-- A backup request that waited longer than BACKUP_REQUEST_TTL_S is not run: it is recorded as expired.
ALTER TABLE backup_logs DROP CONSTRAINT backup_logs_status_check;
ALTER TABLE backup_logs ADD CONSTRAINT backup_logs_status_check
    CHECK (status IN ('running', 'success', 'failed', 'expired'));
CREATE INDEX backup_logs_request_idx ON backup_logs (request_id) WHERE request_id IS NOT NULL;
