-- One row per backup run. A scheduled run's slot is unique, so two triggers of one slot run once.
CREATE TABLE backup_logs (
    id           bigserial PRIMARY KEY,
    trigger      text NOT NULL CHECK (trigger IN ('schedule', 'manual')),
    slot         text UNIQUE,
    request_id   text,
    status       text NOT NULL CHECK (status IN ('running', 'success', 'failed')),
    object_key   text,
    size_bytes   bigint,
    sha256       text,
    error        text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX backup_logs_started_idx ON backup_logs (started_at);
