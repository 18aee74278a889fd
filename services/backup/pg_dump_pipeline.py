"""The backup and restore pipelines: pg_dump → gzip → SHA-256 → S3 multipart upload, streamed with no
temporary file and at most two parts in memory; and the way back. Blocking code, run in a worker thread."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import threading
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from services.backup.s3_backup_store import S3BackupStore
from services.backup.worker import BackupError, Uploaded

READ_CHUNK = 1 << 20
GZIP = 31  # zlib window bits for a gzip container


def libpq_target(database_url: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and the environment that carries the password instead (so that it
    never shows in a process list or an error)."""
    parts = urlsplit(database_url)
    env = dict(os.environ)
    if parts.password:
        env["PGPASSWORD"] = parts.password
        netloc = parts.netloc.replace(f":{parts.password}@", "@", 1)
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts), env


class _Drain(threading.Thread):
    """Reads a pipe to the end so the child never blocks on it; keeps the last lines and a count."""

    def __init__(self, pipe) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.tail: deque[bytes] = deque(maxlen=20)
        self.lines = 0
        self.start()

    def run(self) -> None:
        for line in self.pipe:
            self.lines += 1
            self.tail.append(line)

    def text(self) -> str:
        self.join(5)
        return b"".join(self.tail).decode(errors="replace").strip()[-1000:]


def dump_and_upload(database_url: str, store: S3BackupStore, name: str, pg_dump: str = "pg_dump",
                    compress_level: int = 6) -> Uploaded:
    """Stream a dump into a multipart upload; on any failure abort the upload, so that no partial object
    is left (and no manifest is written: the backup is not complete). One part uploads while the next
    is being compressed: at most two parts are in memory."""
    dsn, env = libpq_target(database_url)
    upload_id = store.begin_upload(name)
    uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backup-upload")
    in_flight: Future | None = None
    try:
        process = subprocess.Popen([pg_dump, "--format=custom", "--compress=0", "--no-owner", "--dbname", dsn],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        errors = _Drain(process.stderr)
        compressor = zlib.compressobj(compress_level, zlib.DEFLATED, GZIP)
        digest, size, buffer, parts = hashlib.sha256(), 0, bytearray(), []

        def upload(part: bytes) -> None:
            """Hand the part to the uploader thread and go on compressing; at most one part waits."""
            nonlocal in_flight
            if in_flight is not None:
                parts.append(in_flight.result())
            in_flight = uploader.submit(store.upload_part, name, upload_id, len(parts) + 1, part)

        def emit(data: bytes) -> None:
            nonlocal size
            digest.update(data)
            size += len(data)
            buffer.extend(data)
            while len(buffer) >= store.part_size:
                upload(bytes(buffer[:store.part_size]))
                del buffer[:store.part_size]

        assert process.stdout is not None  # started with stdout=PIPE
        while chunk := process.stdout.read(READ_CHUNK):
            emit(compressor.compress(chunk))
        code = process.wait()
        if code != 0:
            raise BackupError(f"pg_dump failed (exit {code}): {errors.text()}")
        emit(compressor.flush())
        if buffer or (not parts and in_flight is None):
            upload(bytes(buffer))
        assert in_flight is not None  # at least one part was handed to the uploader
        parts.append(in_flight.result())
        store.finish_upload(name, upload_id, parts)
    except BaseException:
        if in_flight is not None:
            in_flight.cancel()
        store.abort_upload(name, upload_id)
        raise
    finally:
        uploader.shutdown(wait=True)
    return Uploaded(digest.hexdigest(), size)


def _feed(argv: list[str], chunks: Iterable[bytes], env: dict[str, str],
          on_bytes: Callable[[int], None] | None = None) -> tuple[int, str, int]:
    """Gunzip `chunks` into a child's stdin; return its exit code, error text and stdout line count.

    The whole stream is always read and decompressed, even after the child stops reading
    (`pg_restore --list` needs only the table of contents): that checks every byte of the gzip
    stream, its CRC included, and lets the caller hash all of it."""
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, errors = _Drain(process.stdout), _Drain(process.stderr)
    decompressor = zlib.decompressobj(GZIP)
    listening = True

    stdin = process.stdin
    assert stdin is not None  # started with stdin=PIPE

    def write(data: bytes) -> None:
        nonlocal listening
        if listening and data:
            try:
                stdin.write(data)
            except BrokenPipeError:
                listening = False

    try:
        for chunk in chunks:
            write(decompressor.decompress(chunk))
            if on_bytes:
                on_bytes(len(chunk))
        write(decompressor.flush())
        if not decompressor.eof:
            raise BackupError("the stored dump is truncated: the gzip stream does not end")
    except zlib.error as exc:
        process.kill()
        process.wait()
        raise BackupError(f"the stored dump is not readable: {exc}") from None
    finally:
        try:
            stdin.close()
        except BrokenPipeError:
            pass
    code = process.wait()
    out.join(5)
    return code, errors.text(), out.lines


def sha256_of(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def verify(store: S3BackupStore, name: str, uploaded: Uploaded, pg_restore: str = "pg_restore") -> int:
    """Read the backup back: size and checksum from the store, the checksum recomputed from the bytes,
    and `pg_restore --list` on the way to prove it is a readable dump. Returns its entry count."""
    head = store.head(name)
    if head["ContentLength"] != uploaded.size_bytes:
        raise BackupError(f"stored size {head['ContentLength']} differs from {uploaded.size_bytes} uploaded")
    if head.get("Metadata", {}).get("sha256") != uploaded.sha256:
        raise BackupError("stored SHA-256 metadata differs from the upload's")
    digest = hashlib.sha256()

    def counted() -> Iterable[bytes]:
        for chunk in store.read(name):
            digest.update(chunk)
            yield chunk

    code, errors, entries = _feed([pg_restore, "--list"], counted(), dict(os.environ))
    if digest.hexdigest() != uploaded.sha256:
        raise BackupError("the object read back does not match the SHA-256 computed while uploading")
    if code != 0 or entries == 0:
        raise BackupError(f"pg_restore --list rejected the dump (exit {code}): {errors}")
    return entries


def restore(store: S3BackupStore, name: str, target_url: str, expected_sha256: str, clean: bool,
            pg_restore: str = "pg_restore", progress: Callable[[int], None] | None = None) -> None:
    """Check the whole object against its checksum first (nothing touched yet), then restore it."""
    if sha256_of(store.read(name)) != expected_sha256:
        raise BackupError(f"{name} does not match its recorded SHA-256: the object is damaged; nothing restored")
    dsn, env = libpq_target(target_url)
    argv = [pg_restore, "--no-owner", "--exit-on-error", "--dbname", dsn]
    if clean:
        argv[1:1] = ["--clean", "--if-exists"]
    code, errors, _ = _feed(argv, store.read(name), env, progress)
    if code != 0:
        raise BackupError(f"pg_restore failed (exit {code}): {errors}")


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def table_row_counts(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch("SELECT schemaname, relname FROM pg_stat_user_tables ORDER BY 1, 2")
        return {f"{t['schemaname']}.{t['relname']}": await conn.fetchval(
            f'SELECT count(*) FROM "{t["schemaname"]}"."{t["relname"]}"') for t in tables}
    finally:
        await conn.close()


class PgDumpPipeline:
    """The worker's dump pipeline: this database, these client tools, this store."""

    def __init__(self, database_url: str, store: S3BackupStore, pg_dump: str = "pg_dump",
                 pg_restore: str = "pg_restore") -> None:
        self.database_url = database_url
        self.store = store
        self.pg_dump = pg_dump
        self.pg_restore = pg_restore
        self.database = urlsplit(database_url).path.lstrip("/")

    def dump_and_upload(self, name: str) -> Uploaded:
        return dump_and_upload(self.database_url, self.store, name, self.pg_dump)

    def verify(self, name: str, uploaded: Uploaded) -> int:
        return verify(self.store, name, uploaded, self.pg_restore)

    async def restore_test(self, name: str, sha256: str) -> dict[str, int]:
        """Restore into a scratch database and count the rows of every table."""
        scratch = f"costwarden_restore_test_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(with_database(self.database_url, "postgres"))
        await admin.execute(f'CREATE DATABASE "{scratch}"')
        try:
            target = with_database(self.database_url, scratch)
            await asyncio.to_thread(restore, self.store, name, target, sha256, False, self.pg_restore)
            return await table_row_counts(target)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
            await admin.close()
