"""The `costwarden` command: migrations, API keys and the local run."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta
from pathlib import Path

import asyncpg

from services.deploy.migrate import apply_migrations
from services.deploy.settings import DeploySettings
from shared.policy import DEFAULT_TIERS


def cli_actor() -> str:
    """Who made a key change from the command line, for the audit rows."""
    import getpass

    return f"cli:{getpass.getuser()}"


async def _keys_create(args: argparse.Namespace) -> int:
    from services.keys.pg_key_admin import KeyTeamMismatch, create_key

    conn = await asyncpg.connect(DeploySettings().database_url)
    try:
        _, key = await create_key(conn, args.user, args.tier, actor=cli_actor(), is_admin=args.admin,
                                  label=args.label, expires_in=args.expires_in, team_id=args.team)
    except KeyTeamMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    expiry = f", expires in {args.expires_in}" if args.expires_in else ""
    print(f"API key for user {args.user} (tier {args.tier}{', admin' if args.admin else ''}{expiry}); "
          "it is shown only once:")
    print(key)
    return 0


async def one_active_key(conn: asyncpg.Connection, key_or_prefix: str) -> int | None:
    from services.keys.pg_key_admin import active_key_id

    key_id = await active_key_id(conn, key_or_prefix)
    if key_id > 0:
        return key_id
    print("no active key matches" if key_id == 0 else f"{-key_id} active keys share that prefix; give the key",
          file=sys.stderr)
    return None


async def _keys_rotate(args: argparse.Namespace) -> int:
    from services.keys.pg_key_admin import rotate_key

    conn = await asyncpg.connect(DeploySettings().database_url)
    try:
        key_id = await one_active_key(conn, args.key)
        if key_id is None:
            return 1
        key = await rotate_key(conn, key_id, args.grace, cli_actor())
    finally:
        await conn.close()
    print(f"new key; the old one keeps working for {args.grace}. It is shown only once:")
    print(key)
    return 0


async def _keys_revoke(args: argparse.Namespace) -> int:
    from services.keys.pg_key_admin import revoke_key

    conn = await asyncpg.connect(DeploySettings().database_url)
    try:
        key_id = await one_active_key(conn, args.key)
        if key_id is None:
            return 1
        await revoke_key(conn, key_id, cli_actor())
    finally:
        await conn.close()
    print("revoked")
    return 0


async def _keys_list(args: argparse.Namespace) -> int:
    from services.keys.pg_key_admin import list_keys

    conn = await asyncpg.connect(DeploySettings().database_url)
    try:
        keys = await list_keys(conn, user_id=args.user)
    finally:
        await conn.close()
    for k in keys:
        state = (f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else
                 f"expires {k.expires_at:%Y-%m-%d %H:%M}" if k.expires_at else "active")
        print(f"{k.id:>6} {k.prefix}…  {k.user_id:<20} {k.tier:<10} {'admin ' if k.admin else ''}{state}  "
              f"{k.alias or ''}")
    return 0


async def _migrate(args: argparse.Namespace) -> int:
    """The database's migrations, then the bus's streams (as the NATS admin identity when the bus has
    identities: services only bind to streams)."""
    import nats

    from shared.bus import nats_options
    from shared.subjects import ensure_streams

    settings = DeploySettings()
    applied = await apply_migrations(settings.database_url)
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    nc = await nats.connect(**nats_options(settings, "admin"))
    try:
        await ensure_streams(nc.jetstream(), settings.nats_stream_replicas)
    finally:
        await nc.close()
    print(f"JetStream streams up to date ({settings.nats_stream_replicas} replica(s) each)")
    return 0


async def _redis_acl(args: argparse.Namespace) -> int:
    """Print a Redis ACL file: `limiter` with its commands on `cw:*` keys, `api` with its commands on
    `cwapi:*` keys (the deployments' rpm/tpm counters and the response cache), `health` that can only
    ping, the default user off. New random passwords; the file holds only their SHA-256, and each user's
    REDIS_URL (with its password) goes to stderr, once."""
    import hashlib
    import secrets
    from urllib.parse import urlsplit

    from services.api import redis_response_cache
    from services.api import redis_route_ceilings as api_redis
    from services.limiter import redis_limiter_store as limiter_redis
    from shared.redis_client import CLIENT_COMMANDS, acl_user

    users = {"limiter": (limiter_redis.acl_commands(), limiter_redis.KEY_PATTERN),
             "api": ([*api_redis.acl_commands(), *redis_response_cache.COMMANDS], api_redis.KEY_PATTERN),
             "health": (["ping", *CLIENT_COMMANDS], None)}
    server = urlsplit(DeploySettings().redis_url)
    lines = ["user default off resetkeys resetchannels -@all"]  # an ACL file has no comments
    for name, (commands, keys) in users.items():
        password = secrets.token_urlsafe(24)
        lines.append(acl_user(name, hashlib.sha256(password.encode()).hexdigest(), commands, keys))
        print(f"{name}: REDIS_URL=redis://{name}:{password}@{server.hostname}:{server.port or 6379}"
              f"{server.path or '/0'}", file=sys.stderr)
    print("\n".join(lines))
    return 0


async def _config_check(args: argparse.Namespace) -> int:
    from services.config_check import check

    path = Path(args.file) if args.file else DeploySettings().costwarden_config
    if path is None:
        print("no file named and COSTWARDEN_CONFIG is not set: every service runs on its defaults")
        return 0
    lines, errors = check(path)
    for line in lines:
        print(line, file=sys.stderr if errors else sys.stdout)
    warnings = len(lines) - errors
    print(f"{path}: {errors} error(s), {warnings} warning(s)" if errors else
          f"{path}: valid{f', {warnings} warning(s)' if warnings else ''}")
    return 1 if errors else 0


async def _nats_config(args: argparse.Namespace) -> int:
    from services.deploy.nats_identities import write_nats_config

    auth = write_nats_config(Path(args.out))
    print(f"{auth}: nats-server authorization (public keys and permissions; `nats-server -c {auth}` or include it)")
    print(f"{args.out}/<role>.nk: one NKEY seed per role, readable by its owner only; give each service its own "
          "as NATS_NKEY_SEED_FILE (admin: `costwarden migrate` and the bus commands of this CLI)")
    return 0


async def _backup_run(args: argparse.Namespace) -> int:
    import nats

    from services.backup.settings import BackupSettings
    from services.backup.worker import BackupStatus
    from shared.backup_requests import backup_worker_listening
    from shared.batch_consumer import MAX_BACKOFF_S
    from shared.bus import nats_options, publish_event
    from shared.events import BackupRequested
    from shared.subjects import BACKUP_REQUESTED, bind_streams, stream_of

    settings = BackupSettings()
    request = BackupRequested(restore_test=args.restore_test)
    nc = await nats.connect(**nats_options(settings, "admin"))
    try:
        js = nc.jetstream()
        await bind_streams(js, [stream_of(BACKUP_REQUESTED)])
        listening = await backup_worker_listening(js, MAX_BACKOFF_S + 1, on_wait=lambda patience_s: print(
            f"looking for a backup worker (up to {patience_s:g} s)...", file=sys.stderr))
        if not listening and not args.queue:
            print("no backup worker is running: nothing consumes backup.requested (durable consumer "
                  "backup-requests). Start one (the backup service, which `make run` starts when S3_BACKUP_BUCKET "
                  "is set), or pass --queue to leave the request for the next worker to start (it expires after "
                  f"BACKUP_REQUEST_TTL_S, {int(settings.backup_request_ttl_s)} s).", file=sys.stderr)
            return 2
        await publish_event(js, BACKUP_REQUESTED, request, request.id)
    finally:
        await nc.close()
    if not listening:
        print(f"backup request {request.id} queued: no backup worker is running now; the next one to start "
              f"runs it if it starts within {int(settings.backup_request_ttl_s)} s")
        return 0
    print(f"backup requested ({request.id}); a backup worker is taking it")
    if not args.wait:
        return 0
    conn = await asyncpg.connect(settings.database_url)
    try:
        for _ in range(int(args.timeout * 2)):
            row = await conn.fetchrow("SELECT status, object_key, size_bytes, sha256, error FROM backup_logs"
                                      " WHERE request_id = $1", request.id)
            if row and row["status"] != BackupStatus.RUNNING:
                break
            await asyncio.sleep(0.5)
        else:
            print("no result yet; see backup_logs", file=sys.stderr)
            return 1
    finally:
        await conn.close()
    if row["status"] == BackupStatus.SUCCESS:
        print(f"{row['object_key']}  {row['size_bytes']} bytes  sha256 {row['sha256']}")
        return 0
    print(f"backup {row['status']}: {row['error']}", file=sys.stderr)
    return 1


def _store():
    from services.backup.app import make_store
    from services.backup.settings import BackupSettings

    return make_store(BackupSettings())


async def _backup_list(args: argparse.Namespace) -> int:
    store = _store()
    backups = await asyncio.to_thread(store.list_backups)
    for backup in backups:
        manifest = await asyncio.to_thread(store.manifest, backup.name) if backup.complete else None
        size = f"{manifest.size_bytes:>14,} bytes" if manifest else " " * 20
        state = "complete" if backup.complete else "INCOMPLETE (no manifest)"
        print(f"{backup.name}  {backup.created_at:%Y-%m-%d %H:%M:%S}Z  {size}  {state}")
    if not backups:
        print("no backups under the prefix")
    return 0


async def _restore(args: argparse.Namespace) -> int:
    from services.backup.pg_dump_pipeline import restore, table_row_counts
    from services.backup.settings import BackupSettings
    from services.backup.worker import BackupError

    settings = BackupSettings()
    store = _store()
    target = args.target or settings.backup_database_url or settings.database_url
    if args.latest:
        complete = [b for b in await asyncio.to_thread(store.list_backups) if b.complete]
        if not complete:
            print("no complete backup to restore", file=sys.stderr)
            return 1
        name = complete[-1].name
    else:
        name = args.file
    manifest = await asyncio.to_thread(store.manifest, name)
    if manifest is None:
        print(f"{name} has no manifest: it is missing or incomplete; refusing to restore it", file=sys.stderr)
        return 1
    conn = await asyncpg.connect(target)
    try:
        tables = await conn.fetchval("SELECT count(*) FROM pg_stat_user_tables")
    finally:
        await conn.close()
    if tables and not args.force:
        print(f"the target database has {tables} tables; restore into an empty database or pass --force "
              "(which drops and recreates what the backup contains)", file=sys.stderr)
        return 1
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        print(f"\rrestoring {name}: {done[0] * 100 // max(manifest.size_bytes, 1):3d}%", end="", file=sys.stderr)

    print(f"verifying {name} ({manifest.size_bytes:,} bytes) against its SHA-256", file=sys.stderr)
    try:
        await asyncio.to_thread(restore, store, name, target, manifest.sha256, bool(tables), settings.pg_restore_path,
                                progress)
    except BackupError as exc:
        print(f"\nrestore refused or failed: {exc}", file=sys.stderr)
        return 1
    counts = await table_row_counts(target)
    print(f"\nrestored {name}: {len(counts)} tables, {sum(counts.values())} rows")
    return 0


def lifetime(text: str) -> timedelta:
    from services.keys.key_admin import parse_lifetime

    try:
        return parse_lifetime(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="costwarden", description="costwarden control plane")
    commands = root.add_subparsers(dest="command", required=True)

    commands.add_parser("migrate", help="apply pending SQL migrations and create or update the JetStream streams"
                        ).set_defaults(handler=_migrate)
    nats_config = commands.add_parser("nats-config", help="write NATS identities (one NKEY per role) and the "
                                      "nats-server authorization that grants each only what it needs")
    nats_config.add_argument("--out", required=True, help="directory for auth.conf and the <role>.nk seeds")
    nats_config.set_defaults(handler=_nats_config)
    commands.add_parser("redis-acl", help="print a Redis ACL file with least-privilege users for the limiter, the "
                        "api and the health check (their REDIS_URLs go to stderr)").set_defaults(handler=_redis_acl)
    config = commands.add_parser("config", help="the YAML file (COSTWARDEN_CONFIG)").add_subparsers(
        dest="config_command", required=True)
    config_check = config.add_parser("check", help="validate it as every service reads it: each mistake with its "
                                     "file position and field; exit status 1 on an error")
    config_check.add_argument("file", nargs="?", help="the file (default: COSTWARDEN_CONFIG)")
    config_check.set_defaults(handler=_config_check)
    run_all = commands.add_parser("run", help="run every service locally (make run)")
    run_all.add_argument("--replicas", help="processes per service, e.g. limiter=3,cost=2,notifier=2 "
                         "(default one each; the api scales with API_WORKERS)")

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key; it is printed once, as the last line")
    create.add_argument("--user", required=True)
    create.add_argument("--tier", required=True, choices=[t for t in DEFAULT_TIERS if t != "anonymous"])
    create.add_argument("--admin", action="store_true", help="may read every user's usage")
    create.add_argument("--label")
    create.add_argument("--team", help="the user's team (a key is in its user's team; checked when given)")
    create.add_argument("--expires-in", type=lifetime, help="e.g. 30d, 12h: the key stops working after that")
    create.set_defaults(handler=_keys_create)
    rotate = keys.add_parser("rotate", help="a new key with the same user, tier and rights; the old one keeps "
                             "working for a grace period, then expires")
    rotate.add_argument("key", help="the key itself, or its displayed prefix")
    rotate.add_argument("--grace", type=lifetime, default=lifetime("24h"), help="how long the old key still works "
                        "(default 24h; 0s ends it now)")
    rotate.set_defaults(handler=_keys_rotate)
    revoke = keys.add_parser("revoke", help="revoke a key (the key itself, or its displayed prefix)")
    revoke.add_argument("key")
    revoke.set_defaults(handler=_keys_revoke)
    listing = keys.add_parser("list", help="list keys (prefixes only)")
    listing.add_argument("--user")
    listing.set_defaults(handler=_keys_list)

    backup = commands.add_parser("backup", help="database backups").add_subparsers(dest="backup_command",
                                                                                  required=True)
    run = backup.add_parser("run", help="ask the backup worker for a backup now")
    run.add_argument("--restore-test", action="store_true", help="also restore it into a scratch database")
    run.add_argument("--wait", action="store_true", help="wait for the result")
    run.add_argument("--queue", action="store_true",
                     help="leave the request queued even if no backup worker is running now")
    run.add_argument("--timeout", type=float, default=3600)
    run.set_defaults(handler=_backup_run)
    backup.add_parser("list", help="list the backups in S3").set_defaults(handler=_backup_list)

    restore = commands.add_parser("restore", help="restore a backup (checksum verified first)")
    which = restore.add_mutually_exclusive_group(required=True)
    which.add_argument("--latest", action="store_true", help="the newest complete backup")
    which.add_argument("--file", help="a backup's name, as `backup list` prints it")
    restore.add_argument("--target", help="DATABASE_URL to restore into (default: DATABASE_URL)")
    restore.add_argument("--force", action="store_true", help="restore into a database that has tables")
    restore.set_defaults(handler=_restore)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "run":
        from services.devrun import run

        return run(args.replicas)
    return asyncio.run(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
