"""Backup benchmark: wall time and peak memory of the streamed backup (pg_dump → gzip → SHA-256 →
multipart upload to an S3-compatible server on loopback) beside `pg_dump | gzip > /dev/null` of the
same database, measured in the same run. Run by `make bench` (or `python -m bench backup`)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

import asyncpg
import boto3
from moto.server import ThreadedMotoServer

from tests.servers import free_port

TARGET_BYTES = 500 * 1024 * 1024

CHILD = """
import json, resource, sys, time
from services.backup.pg_dump_pipeline import dump_and_upload, verify
from services.backup.s3_backup_store import S3BackupStore
store = S3BackupStore(sys.argv[2], "bench", "us-east-1", "AES256", None, "STANDARD_IA", 16 * 1024 * 1024)
started = time.perf_counter()
uploaded = dump_and_upload(sys.argv[1], store, "costwarden_backup_20260101_000000.dump.gz")
upload_s = time.perf_counter() - started
store.set_metadata("costwarden_backup_20260101_000000.dump.gz", {"sha256": uploaded.sha256})
started = time.perf_counter()
verify(store, "costwarden_backup_20260101_000000.dump.gz", uploaded)
verify_s = time.perf_counter() - started
print(json.dumps({"upload_s": upload_s, "verify_s": verify_s, "size": uploaded.size_bytes,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


async def make_database(admin_url: str, name: str) -> str:
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    conn = await asyncpg.connect(url)
    await conn.execute("CREATE TABLE usage_like (id bigint, user_id text, model text, payload text, at timestamptz)")
    rows = 0
    while await conn.fetchval("SELECT pg_database_size(current_database())") < TARGET_BYTES:
        await conn.execute("""INSERT INTO usage_like SELECT i, 'user-' || (i % 5000), 'model-' || (i % 7),
                              repeat(md5(i::text), 6) || md5(random()::text), now() - i * interval '1 second'
                              FROM generate_series($1::bigint, $1::bigint + 199999) AS i""", rows)
        rows += 200_000
    await conn.close()
    return url


def baseline(database_url: str) -> float:
    started = time.perf_counter()
    subprocess.run(f"pg_dump --format=custom --compress=0 --no-owner --dbname '{database_url}' | gzip > /dev/null",
                   shell=True, check=True)
    return time.perf_counter() - started


async def bench_backup(lines: list[str]) -> None:
    admin_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres").rsplit("/", 1)[0] + "/postgres"
    name = f"costwarden_bench_backup_{uuid.uuid4().hex[:8]}"
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
    os.environ.update({k: env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="bench")
    try:
        url = await make_database(admin_url, name)
        conn = await asyncpg.connect(url)
        size = await conn.fetchval("SELECT pg_database_size(current_database())")
        await conn.close()
        base_s = await asyncio.to_thread(baseline, url)
        child = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", CHILD, url, "bench"], env=env,
                                        capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        admin = await asyncpg.connect(admin_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        server.stop()
    lines += [
        f"backup of a {size / 1024 / 1024:.0f} MB database ({result['size'] / 1024 / 1024:.0f} MB compressed):",
        f"  pg_dump | gzip > /dev/null       {base_s:7.1f} s",
        f"  streamed backup to S3 (moto)     {result['upload_s']:7.1f} s   ratio {result['upload_s'] / base_s:.2f}x"
        f"   peak memory of the backup process {result['peak_rss_mb']:.0f} MB",
        f"  verification (read back, SHA-256, gunzip, pg_restore --list)  {result['verify_s']:.1f} s",
    ]
