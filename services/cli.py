"""The `costwarden` command: migrations, API keys and the local run."""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from shared.migrate import apply_migrations
from shared.settings import DEFAULT_TIERS, get_settings


async def _keys_create(args: argparse.Namespace) -> int:
    from services.api.callers import create_key

    conn = await asyncpg.connect(get_settings().database_url)
    try:
        key = await create_key(conn, args.user, args.tier, args.admin, args.label)
    finally:
        await conn.close()
    print(f"API key for user {args.user} (tier {args.tier}{', admin' if args.admin else ''}); "
          "it is shown only once:")
    print(key)
    return 0


async def _keys_revoke(args: argparse.Namespace) -> int:
    from services.api.callers import revoke_key

    conn = await asyncpg.connect(get_settings().database_url)
    try:
        revoked = await revoke_key(conn, args.key)
    finally:
        await conn.close()
    if revoked == 1:
        print("revoked")
        return 0
    print("no active key matches" if revoked == 0 else f"{-revoked} active keys share that prefix; give the key",
          file=sys.stderr)
    return 1


async def _keys_list(args: argparse.Namespace) -> int:
    conn = await asyncpg.connect(get_settings().database_url)
    try:
        rows = await conn.fetch(
            "SELECT key_prefix, user_id, tier, is_admin, label, created_at, revoked_at FROM api_keys"
            " WHERE ($1::text IS NULL OR user_id = $1) ORDER BY created_at", args.user)
    finally:
        await conn.close()
    for r in rows:
        state = f"revoked {r['revoked_at']:%Y-%m-%d}" if r["revoked_at"] else "active"
        print(f"{r['key_prefix']}…  {r['user_id']:<20} {r['tier']:<10} {'admin ' if r['is_admin'] else ''}"
              f"{state}  {r['label'] or ''}")
    return 0


async def _migrate(args: argparse.Namespace) -> int:
    applied = await apply_migrations(get_settings().database_url)
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="costwarden", description="costwarden control plane")
    commands = root.add_subparsers(dest="command", required=True)

    commands.add_parser("migrate", help="apply pending SQL migrations").set_defaults(handler=_migrate)
    commands.add_parser("run", help="run every service locally (make run)")

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key; it is printed once, as the last line")
    create.add_argument("--user", required=True)
    create.add_argument("--tier", required=True, choices=[t for t in DEFAULT_TIERS if t != "anonymous"])
    create.add_argument("--admin", action="store_true", help="may read every user's usage")
    create.add_argument("--label")
    create.set_defaults(handler=_keys_create)
    revoke = keys.add_parser("revoke", help="revoke a key (the key itself, or its displayed prefix)")
    revoke.add_argument("key")
    revoke.set_defaults(handler=_keys_revoke)
    listing = keys.add_parser("list", help="list keys (prefixes only)")
    listing.add_argument("--user")
    listing.set_defaults(handler=_keys_list)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "run":
        from services.devrun import run

        return run()
    return asyncio.run(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
