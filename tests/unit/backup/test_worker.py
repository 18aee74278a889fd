"""The backup use case with in-memory fakes of its ports: what a run records, announces and keeps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest

from services.backup.retention import StoredBackup
from services.backup.worker import BackupBusy, BackupError, BackupWorker, Manifest, Uploaded
from shared.events import Alert, BackupCompleted, BackupRequested

NOW = datetime(2026, 11, 28, 2, tzinfo=UTC)


class FakeLog:
    def __init__(self, busy: bool = False) -> None:
        self.busy = busy
        self.rows: dict[int, dict] = {}
        self.slots: set[str] = set()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[bool]:
        yield not self.busy

    async def start(self, trigger: str, slot: str | None, request_id: str | None) -> int | None:
        if slot in self.slots:
            return None
        if slot:
            self.slots.add(slot)
        self.rows[len(self.rows) + 1] = {"trigger": trigger, "request_id": request_id, "status": "running"}
        return len(self.rows)

    async def handled(self, request_id: str) -> bool:
        return any(r["request_id"] == request_id and r["status"] in ("success", "expired") for r in self.rows.values())

    async def expire(self, request_id: str, reason: str) -> None:
        self.rows[len(self.rows) + 1] = {"request_id": request_id, "status": "expired", "error": reason}

    async def fail(self, log_id: int, reason: str, object_key: str) -> None:
        self.rows[log_id].update(status="failed", error=reason)

    async def succeed(self, log_id: int, object_key: str, size_bytes: int, sha256: str) -> None:
        self.rows[log_id].update(status="success", key=object_key, sha256=sha256)


class FakeStore:
    def __init__(self, stored: list[StoredBackup] | None = None) -> None:
        self.stored = list(stored or [])
        self.manifests: list[Manifest] = []
        self.deleted: list[str] = []

    def check_bucket(self) -> None: ...

    def new_name(self, at: datetime) -> str:
        return f"backup-{at:%H%M%S}"

    def key(self, name: str) -> str:
        return f"prefix/{name}"

    def set_metadata(self, name: str, metadata: dict[str, str]) -> None: ...

    def write_manifest(self, manifest: Manifest) -> None:
        self.manifests.append(manifest)
        self.stored.append(StoredBackup(manifest.name, NOW, True))

    def list_backups(self) -> list[StoredBackup]:
        return list(self.stored)

    def delete(self, name: str) -> None:
        self.deleted.append(name)


class FakePipeline:
    database = "costwarden"

    def __init__(self, failure: str | None = None) -> None:
        self.failure = failure

    def dump_and_upload(self, name: str) -> Uploaded:
        if self.failure:
            raise BackupError(self.failure)
        return Uploaded("ab" * 32, 1234)

    def verify(self, name: str, uploaded: Uploaded) -> int:
        return 42

    async def restore_test(self, name: str, sha256: str) -> dict[str, int]:
        return {"public.api_keys": 3}


class Announced:
    def __init__(self) -> None:
        self.completed: list[BackupCompleted] = []
        self.alerts: list[Alert] = []

    async def on_completed(self, event: BackupCompleted) -> None:
        self.completed.append(event)

    async def on_alert(self, alert: Alert) -> None:
        self.alerts.append(alert)


def worker(log: FakeLog, store: FakeStore, pipeline: FakePipeline, announced: Announced) -> BackupWorker:
    return BackupWorker(log, store, pipeline, 90, 1, announced.on_completed, announced.on_alert, clock=lambda: NOW)


async def test_a_good_run_writes_its_manifest_last_records_success_announces_and_keeps_retention():
    old = StoredBackup("backup-old", NOW - timedelta(days=200), True)
    log, store, announced = FakeLog(), FakeStore([old]), Announced()
    assert await worker(log, store, FakePipeline(), announced).run("manual", restore_test=True) == "success"
    [manifest] = store.manifests
    assert (manifest.name, manifest.sha256, manifest.tables) == ("backup-020000", "ab" * 32, {"public.api_keys": 3})
    assert log.rows[1] == {"trigger": "manual", "request_id": None, "status": "success",
                           "key": "prefix/backup-020000", "sha256": "ab" * 32}
    assert [e.name for e in announced.completed] == ["backup-020000"] and announced.alerts == []
    assert store.deleted == ["backup-old"]


async def test_a_failed_run_is_recorded_alerted_and_writes_no_manifest():
    log, store, announced = FakeLog(), FakeStore(), Announced()
    assert await worker(log, store, FakePipeline("pg_dump failed (exit 1): no such database"),
                        announced).run("schedule", slot="s1") == "failed"
    assert log.rows[1]["status"] == "failed" and "no such database" in log.rows[1]["error"]
    assert store.manifests == [] and announced.completed == []
    assert [a.severity for a in announced.alerts] == ["critical"] and "no such database" in announced.alerts[0].text


async def test_one_run_at_a_time_and_one_run_per_slot():
    with pytest.raises(BackupBusy):
        await worker(FakeLog(busy=True), FakeStore(), FakePipeline(), Announced()).run("schedule", slot="s1")
    log = FakeLog()
    assert await worker(log, FakeStore(), FakePipeline(), Announced()).run("schedule", slot="s1") == "success"
    assert await worker(log, FakeStore(), FakePipeline(), Announced()).run("schedule", slot="s1") is None


async def test_a_stale_request_expires_and_a_handled_one_is_not_run_again():
    log, store = FakeLog(), FakeStore()
    stale = BackupRequested(occurred_at=NOW - timedelta(hours=2))
    assert await worker(log, store, FakePipeline(), Announced()).run_request(stale, timedelta(hours=1)) == "expired"
    assert await worker(log, store, FakePipeline(), Announced()).run_request(stale, timedelta(hours=1)) is None
    fresh = BackupRequested(occurred_at=NOW - timedelta(minutes=5))
    assert await worker(log, store, FakePipeline(), Announced()).run_request(fresh, timedelta(hours=1)) == "success"
    assert await worker(log, store, FakePipeline(), Announced()).run_request(fresh, timedelta(hours=1)) is None
    assert [r["status"] for r in log.rows.values()] == ["expired", "success"]
