"""The backup worker against a real Postgres and an S3-compatible server on loopback (moto)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import asyncpg
import boto3
import pytest
from moto.server import ThreadedMotoServer

from services.backup.pg_backup_log import PgBackupLog
from services.backup.pg_dump_pipeline import PgDumpPipeline
from services.backup.retention import StoredBackup, to_delete
from services.backup.s3_backup_store import S3BackupStore, backup_name
from services.backup.worker import BackupBusy, BackupError, BackupExists, BackupWorker, Manifest
from tests.conftest import _with_database, start_service
from tests.integration.service_tests import all_acked, start_all, stop_all
from tests.servers import free_port, nats_server
from tests.support.polling import eventually

BUCKET = "costwarden-test-backups"


@pytest.fixture(scope="module")
def s3_env():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


def store(prefix: str = "database-backups", part_size: int = 5 * 1024 * 1024, bucket: str = BUCKET) -> S3BackupStore:
    return S3BackupStore(bucket, prefix, "us-east-1", "AES256", None, "STANDARD_IA", part_size)


async def fill(database_url: str, rows: int = 20_000) -> None:
    conn = await asyncpg.connect(database_url)
    await conn.execute("""CREATE TABLE sample (id int PRIMARY KEY, name text, amount numeric(12,4),
                          at timestamptz, payload jsonb)""")
    await conn.execute("""INSERT INTO sample SELECT i, md5(i::text), i * 1.2345, timestamptz '2024-01-01' + i * interval '1 minute',
                          jsonb_build_object('i', i, 'r', md5((i * 7)::text)) FROM generate_series(1, $1) AS i""", rows)
    await conn.execute("""INSERT INTO api_keys (key_hash, key_prefix, user_id, tier) VALUES ('h1', 'cw_1', 'alice', 'pro')""")
    await conn.close()


async def fingerprint(database_url: str) -> dict[str, str]:
    conn = await asyncpg.connect(database_url)
    try:
        return {
            "sample": await conn.fetchval("SELECT md5(string_agg(s::text, ',' ORDER BY id)) FROM sample s"),
            "api_keys": await conn.fetchval("SELECT md5(string_agg(k::text, ',' ORDER BY id)) FROM api_keys k"),
            "migrations": await conn.fetchval("SELECT string_agg(name, ',' ORDER BY name) FROM schema_migrations"),
        }
    finally:
        await conn.close()


class Captured:
    def __init__(self) -> None:
        self.completed, self.alerts = [], []

    async def on_completed(self, event) -> None:
        self.completed.append(event)

    async def on_alert(self, alert) -> None:
        self.alerts.append(alert)


@pytest.fixture
async def source(fresh_database):
    await fill(fresh_database)
    pool = await asyncpg.create_pool(fresh_database, min_size=1, max_size=4)
    yield fresh_database, pool
    await pool.close()


def worker(pool, database_url, s3: S3BackupStore, captured: Captured, pg_dump: str = "pg_dump",
           clock=lambda: datetime.now(UTC)) -> BackupWorker:
    return BackupWorker(PgBackupLog(pool), s3, PgDumpPipeline(database_url, s3, pg_dump, "pg_restore"), 90, 2,
                        captured.on_completed, captured.on_alert, clock=clock)


async def one_backup(pool, database_url, s3: S3BackupStore) -> str:
    """Run one manual backup that must succeed; its object's name."""
    captured = Captured()
    assert await worker(pool, database_url, s3, captured).run("manual") == "success"
    return captured.completed[0].name


@pytest.fixture
async def empty_database(pg_server_url):
    name = f"costwarden_restore_{os.urandom(4).hex()}"
    admin = await asyncpg.connect(_with_database(pg_server_url, "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    yield _with_database(pg_server_url, name)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


async def clis(*commands: tuple[str, ...], env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """Commands that do not depend on one another, run at the same time (each is a fresh interpreter)."""
    return list(await asyncio.gather(*(asyncio.to_thread(cli, *command, env=env) for command in commands)))


@pytest.mark.adapter
async def test_backup_list_restore_gives_identical_data(s3_env, source, empty_database, pg_server_url):
    database_url, pool = source
    captured = Captured()
    s3 = store(prefix="roundtrip", part_size=5 * 1024 * 1024)
    assert await worker(pool, database_url, s3, captured).run("manual", request_id="r1", restore_test=True) == "success"

    [log] = await pool.fetch("SELECT * FROM backup_logs")
    assert log["status"] == "success" and log["size_bytes"] > 0 and len(log["sha256"]) == 64
    [event] = captured.completed
    assert event.tables["public.sample"] == 20_000 and event.tables["public.api_keys"] == 1
    head = s3.head(event.name)
    assert head["Metadata"]["sha256"] == log["sha256"] and head["ContentLength"] == log["size_bytes"]
    assert head["ServerSideEncryption"] == "AES256" and head.get("StorageClass") == "STANDARD_IA"
    assert s3.manifest(event.name).sha256 == log["sha256"]

    env = {"S3_BACKUP_BUCKET": BUCKET, "S3_BACKUP_PREFIX": "roundtrip", **s3_env}
    listing, restored = await clis(("backup", "list"), ("restore", "--latest", "--target", empty_database), env=env)
    assert listing.returncode == 0 and event.name in listing.stdout and "complete" in listing.stdout
    assert restored.returncode == 0, restored.stderr
    assert "restored" in restored.stdout and "100%" in restored.stderr
    assert await fingerprint(empty_database) == await fingerprint(database_url)
    again = cli("restore", "--latest", "--target", empty_database, env=env)
    assert again.returncode == 1 and "--force" in again.stderr
    forced = cli("restore", "--file", event.name, "--target", empty_database, "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert await fingerprint(empty_database) == await fingerprint(database_url)


@pytest.mark.adapter
async def test_a_flipped_byte_makes_restore_refuse(s3_env, source, empty_database):
    database_url, pool = source
    s3 = store(prefix="flipped")
    name = await one_backup(pool, database_url, s3)
    client = boto3.client("s3")
    data = bytearray(client.get_object(Bucket=BUCKET, Key=s3.key(name))["Body"].read())
    data[len(data) // 2] ^= 0xFF
    client.put_object(Bucket=BUCKET, Key=s3.key(name), Body=bytes(data))
    result = cli("restore", "--file", name, "--target", empty_database,
                 env={"S3_BACKUP_BUCKET": BUCKET, "S3_BACKUP_PREFIX": "flipped", **s3_env})
    assert result.returncode == 1
    assert "does not match its recorded SHA-256" in result.stderr and "nothing restored" in result.stderr
    conn = await asyncpg.connect(empty_database)
    assert await conn.fetchval("SELECT count(*) FROM pg_stat_user_tables") == 0
    await conn.close()


@pytest.mark.adapter
async def test_a_missing_manifest_is_refused(s3_env, source, empty_database):
    database_url, pool = source
    s3 = store(prefix="nomanifest")
    name = await one_backup(pool, database_url, s3)
    boto3.client("s3").delete_object(Bucket=BUCKET, Key=s3.manifest_key(name))
    env = {"S3_BACKUP_BUCKET": BUCKET, "S3_BACKUP_PREFIX": "nomanifest", **s3_env}
    listing, result, latest = await clis(("backup", "list"), ("restore", "--file", name, "--target", empty_database),
                                         ("restore", "--latest", "--target", empty_database), env=env)
    assert "INCOMPLETE" in listing.stdout
    assert result.returncode == 1 and "has no manifest" in result.stderr
    assert latest.returncode == 1


@pytest.mark.adapter
async def test_a_dump_killed_midway_leaves_no_complete_looking_backup(s3_env, source, tmp_path):
    database_url, pool = source
    script = tmp_path / "pg_dump_dies"
    script.write_text("#!/bin/sh\npg_dump \"$@\" | head -c 20000\necho 'pg_dump: killed' >&2\nexit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    s3 = store(prefix="killed")
    captured = Captured()
    assert await worker(pool, database_url, s3, captured, pg_dump=str(script)).run("manual") == "failed"
    assert s3.list_backups() == []
    uploads = boto3.client("s3").list_multipart_uploads(Bucket=BUCKET, Prefix="killed/").get("Uploads", [])
    assert uploads == []  # aborted, nothing left to complete later
    [log] = await pool.fetch("SELECT status, error FROM backup_logs")
    assert log["status"] == "failed" and "pg_dump failed (exit 1)" in log["error"]
    [alert] = captured.alerts
    assert alert.severity == "critical" and alert.source == "backup" and "pg_dump failed" in alert.text
    assert captured.completed == []


@pytest.mark.adapter
async def test_wrong_bucket_is_a_clear_failure(s3_env, source):
    database_url, pool = source
    captured = Captured()
    result = await worker(pool, database_url, store(bucket="no-such-bucket"), captured).run("manual")
    assert result == "failed"
    error = await pool.fetchval("SELECT error FROM backup_logs")
    assert error.startswith("S3 HeadBucket failed: 404")
    assert "no-such-bucket" in captured.alerts[0].text or "404" in captured.alerts[0].text


@pytest.mark.adapter
async def test_backups_in_the_same_second_never_overwrite_each_other(s3_env, source):
    database_url, pool = source
    s3 = store(prefix="same-second")
    frozen = datetime(2026, 11, 28, 2, 28, 28, tzinfo=UTC)  # every run starts in the very same millisecond
    captured = Captured()
    for _ in range(3):
        assert await worker(pool, database_url, s3, captured, clock=lambda: frozen).run("manual") == "success"
    names = [event.name for event in captured.completed]
    assert len(set(names)) == 3 and all(name.startswith("costwarden_backup_20261128_022828_000_") for name in names)
    rows = await pool.fetch("SELECT object_key, sha256 FROM backup_logs WHERE status = 'success'")
    assert len(rows) == 3
    for row in rows:
        name = row["object_key"].rsplit("/", 1)[1]
        stored = b"".join(s3.read(name))
        assert hashlib.sha256(stored).hexdigest() == row["sha256"] == s3.manifest(name).sha256


@pytest.mark.adapter
async def test_an_existing_backup_is_never_replaced(s3_env, source):
    database_url, pool = source
    s3 = store(prefix="no-overwrite")
    name = await one_backup(pool, database_url, s3)
    before = b"".join(s3.read(name))
    with pytest.raises(BackupExists, match="refusing to overwrite"):
        s3.begin_upload(name)
    upload_id = s3.s3.create_multipart_upload(Bucket=BUCKET, Key=s3.key(name))["UploadId"]
    part = s3.upload_part(name, upload_id, 1, b"not a backup")
    with pytest.raises(BackupError, match="PreconditionFailed"):  # the conditional write, should a race pass the check
        s3.finish_upload(name, upload_id, [part])
    with pytest.raises(BackupError, match="PreconditionFailed"):
        s3.write_manifest(s3.manifest(name))
    assert b"".join(s3.read(name)) == before


@pytest.mark.adapter
async def test_one_backup_at_a_time_and_one_run_per_slot(s3_env, source):
    database_url, pool = source
    s3 = store(prefix="slots")
    first, second = Captured(), Captured()
    results = await asyncio.gather(worker(pool, database_url, s3, first).run("schedule", slot="2026-11-27T02:00"),
                                   worker(pool, database_url, s3, second).run("schedule", slot="2026-11-27T02:00"),
                                   return_exceptions=True)
    # one ran; the other found it running (BackupBusy: its trigger is retried) or found the slot done
    assert results.count("success") == 1
    assert all(r == "success" or r is None or isinstance(r, BackupBusy) for r in results)
    assert await worker(pool, database_url, s3, Captured()).run("schedule", slot="2026-11-27T02:00") is None
    assert await pool.fetchval("SELECT count(*) FROM backup_logs WHERE slot = '2026-11-27T02:00'") == 1


@pytest.mark.adapter
def test_retention_keeps_the_newest_and_the_minimum(s3_env):
    s3 = store(prefix="retention")
    client = boto3.client("s3")
    now = datetime(2026, 11, 27, 3, tzinfo=UTC)
    ages = [200, 150, 120, 95, 91, 30, 1]
    names = {days: backup_name(now - timedelta(days=days)) for days in ages}
    for days in ages:
        name = names[days]
        client.put_object(Bucket=BUCKET, Key=s3.key(name), Body=b"x")
        s3.write_manifest(Manifest(name=name, key=s3.key(name), sha256="0" * 64, size_bytes=1,
                                   started_at="", finished_at="", database="d"))
    orphan = backup_name(now - timedelta(days=3))
    client.put_object(Bucket=BUCKET, Key=s3.key(orphan), Body=b"partial")
    client.put_object(Bucket=BUCKET, Key="other-team/costwarden_backup_20200101_000000.dump.gz", Body=b"keep")
    backups = s3.list_backups()
    doomed = to_delete(backups, now, timedelta(days=90), keep_last=3)
    # older than 90 days: 200, 150, 120, 95 and 91; the 3 newest (1, 30, 91) are kept whatever their age
    assert doomed == sorted([names[d] for d in (200, 150, 120, 95)] + [orphan])
    for name in doomed:
        s3.delete(name)
    left = {b.name for b in s3.list_backups()}
    assert left == {names[d] for d in (91, 30, 1)}
    assert client.get_object(Bucket=BUCKET, Key="other-team/costwarden_backup_20200101_000000.dump.gz")
    # however old, the newest complete backup stays
    only_old = [StoredBackup("a", now - timedelta(days=400), True), StoredBackup("b", now - timedelta(days=300), True)]
    assert to_delete(only_old, now, timedelta(days=90), keep_last=1) == ["a"]


@pytest.mark.service
async def test_the_worker_process_runs_requests_and_dedups_schedule_ticks(s3_env, base_env, source):
    database_url, pool = source
    nats_srv, nats_url = nats_server()
    env = {**base_env, **s3_env, "NATS_URL": nats_url, "DATABASE_URL": database_url,
           "S3_BACKUP_BUCKET": BUCKET, "S3_BACKUP_PREFIX": "service"}
    service = start_service("backup", env, "BACKUP_PORT")
    try:
        result = await asyncio.to_thread(cli, "backup", "run", "--wait", "--timeout", "60", env=env)
        assert result.returncode == 0, result.stderr
        assert "service/costwarden_backup_" in result.stdout
        import nats

        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        tick = b'{"slot": "2026-11-28T02:00:00+00:00"}'
        for msg_id in ("backup:2026-11-28T02:00:00+00:00", "backup:2026-11-28T02:00:00+00:00", "another-id"):
            await js.publish("schedule.backup", tick, headers={"Nats-Msg-Id": msg_id})
        for _ in range(200):
            row = await pool.fetchrow("SELECT status FROM backup_logs WHERE slot = '2026-11-28T02:00:00+00:00'")
            if row and row["status"] != "running":
                break
            await asyncio.sleep(0.2)
        # the tick under another message id handled too, so that it had every chance to run the slot again
        assert await eventually(lambda: all_acked(js, "SCHEDULE", "backup-schedule"))
        assert row["status"] == "success"
        assert await pool.fetchval("SELECT count(*) FROM backup_logs WHERE slot IS NOT NULL") == 1
        completed = await js.pull_subscribe("backup.completed", stream="BACKUP")
        messages = await completed.fetch(10, timeout=2)
        assert len(messages) == 2
        await nc.close()
    finally:
        service.stop()
        nats_srv.stop()


@pytest.mark.service
async def test_requests_with_no_worker_are_refused_or_queued_and_stale_ones_expire(s3_env, base_env, source):
    database_url, pool = source
    nats_srv, nats_url = nats_server()
    env = {**base_env, **s3_env, "NATS_URL": nats_url, "DATABASE_URL": database_url,
           "S3_BACKUP_BUCKET": BUCKET, "S3_BACKUP_PREFIX": "stale"}
    service = None
    try:
        refused, queued = await clis(("backup", "run"), ("backup", "run", "--queue"), env=env)
        assert refused.returncode == 2 and "no backup worker is running" in refused.stderr
        assert "--queue" in refused.stderr
        assert queued.returncode == 0 and "queued" in queued.stdout
        import nats

        from shared.events import BackupRequested

        nc = await nats.connect(nats_url)
        stale = BackupRequested(occurred_at=datetime.now(UTC) - timedelta(hours=2))
        await nc.jetstream().publish("backup.requested", stale.model_dump_json().encode(),
                                     headers={"Nats-Msg-Id": stale.id})
        await nc.close()
        assert await pool.fetchval("SELECT count(*) FROM backup_logs") == 0  # the refused run published nothing

        service = start_service("backup", env, "BACKUP_PORT")
        async def both_handled():
            rows = await pool.fetch("SELECT request_id, status, error FROM backup_logs"
                                    " WHERE status IN ('success', 'expired')")
            return rows if len(rows) == 2 else None

        rows = await eventually(both_handled, 60) or []
        by_status = {row["status"]: row for row in rows}
        assert set(by_status) == {"success", "expired"}
        assert by_status["expired"]["request_id"] == stale.id
        assert "request expired: it waited 72" in by_status["expired"]["error"]  # 7200 s and a little
        assert "BACKUP_REQUEST_TTL_S (3600 s)" in by_status["expired"]["error"]
        assert f"backup request {stale.id} not run: request expired" in service.logs()

        taken = await asyncio.to_thread(cli, "backup", "run", env=env)
        assert taken.returncode == 0 and "a backup worker is taking it" in taken.stdout
    finally:
        if service:
            service.stop()
        nats_srv.stop()


@pytest.mark.service
async def test_two_scheduler_replicas_trigger_each_slot_once(s3_env, base_env, source):
    """Both replicas publish a tick for every slot (here every 3 seconds); each slot runs once."""
    database_url, pool = source
    nats_srv, nats_url = nats_server()
    env = {**base_env, **s3_env, "NATS_URL": nats_url, "DATABASE_URL": database_url, "S3_BACKUP_BUCKET": BUCKET,
           "S3_BACKUP_PREFIX": "scheduled", "BACKUP_SCHEDULE": "* * * * * */3"}
    replicas = await start_all("backup", "BACKUP_PORT", [env] * 2)
    try:
        for _ in range(150):
            done = await pool.fetchval("SELECT count(*) FROM backup_logs WHERE status = 'success'")
            if done >= 3:
                break
            await asyncio.sleep(0.1)
    finally:
        await stop_all(replicas)
    import nats

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    state = (await js.stream_info("SCHEDULE")).state
    ticked = [json.loads((await js.get_msg("SCHEDULE", seq)).data or b"{}")["slot"]
              for seq in range(state.first_seq, state.last_seq + 1)]
    await nc.close()
    nats_srv.stop()
    slots = [r["slot"] for r in await pool.fetch("SELECT slot FROM backup_logs ORDER BY slot")]
    assert len(slots) >= 3 and len(slots) == len(set(slots))
    # one tick per slot from the two replicas; a slot still waiting for the running backup has no row yet
    assert len(ticked) == len(set(ticked)) and set(slots) <= set(ticked), (ticked, slots)


@pytest.mark.adapter
async def test_kms_encryption_when_configured(s3_env, source):
    database_url, pool = source
    key_id = boto3.client("kms").create_key(Description="costwarden backups")["KeyMetadata"]["KeyId"]
    s3 = S3BackupStore(BUCKET, "kms", "us-east-1", "aws:kms", key_id, "STANDARD_IA", 5 * 1024 * 1024)
    head = s3.head(await one_backup(pool, database_url, s3))
    assert head["ServerSideEncryption"] == "aws:kms" and key_id in head["SSEKMSKeyId"]
