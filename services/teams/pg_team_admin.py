"""Teams, their members and the limits of keys, users and teams in Postgres, every change with its audit
row (`admin_audit`: who, what, when, and the change) in the same transaction. A user is in at most one
team (the primary key of `team_members`), and their keys follow them in and out of it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from services.teams.team_admin import Conflict, LimitsRecord, NotFound, Refused, Team
from shared.limits import Scope, ScopeLimits

TEAM = """
SELECT t.team_id, t.name, t.created_at,
       coalesce(array_agg(m.user_id ORDER BY m.user_id) FILTER (WHERE m.user_id IS NOT NULL), '{}') AS members
FROM teams t LEFT JOIN team_members m ON m.team_id = t.team_id
WHERE $1::text IS NULL OR t.team_id = $1
GROUP BY t.team_id ORDER BY t.team_id
"""


async def audit(conn: asyncpg.Connection, subject: str, action: str, actor: str, **detail: Any) -> None:
    await conn.execute("INSERT INTO admin_audit (subject, action, actor, detail) VALUES ($1, $2, $3, $4)",
                       subject, action, actor, json.dumps(detail, default=str))


def team_of_row(row: asyncpg.Record) -> Team:
    return Team(row["team_id"], row["name"], row["created_at"], tuple(row["members"]))


async def fetch_team(conn: asyncpg.Connection, team_id: str) -> Team | None:
    row = await conn.fetchrow(TEAM, team_id)
    return team_of_row(row) if row else None


async def add_members(conn: asyncpg.Connection, team_id: str, users: Sequence[str], actor: str) -> None:
    """Each user joins the team with their keys; a user in another team is refused (they leave it first)."""
    users = sorted(set(users))
    for user in users:
        if not 1 <= len(user) <= 256:
            raise Refused("a member's user id is 1 to 256 characters")
    elsewhere = await conn.fetch("SELECT user_id, team_id FROM team_members WHERE user_id = ANY($1::text[])"
                                 " AND team_id <> $2", users, team_id)
    if elsewhere:
        named = ", ".join(f"{row['user_id']} (in {row['team_id']})" for row in elsewhere)
        raise Conflict(f"a user is in at most one team: {named}; remove them from it first")
    try:
        added = await conn.fetch("INSERT INTO team_members (user_id, team_id) SELECT unnest($1::text[]), $2"
                                 " ON CONFLICT (user_id) DO NOTHING RETURNING user_id", users, team_id)
    except asyncpg.UniqueViolationError as exc:  # joined another team at this very moment
        raise Conflict("a user is in at most one team; one of these joined another one meanwhile") from exc
    joined = [row["user_id"] for row in added]
    if len(joined) < len(users):  # taken by another team between the check and the insert
        raise Conflict("a user is in at most one team; one of these joined another one meanwhile")
    await conn.execute("UPDATE api_keys SET team_id = $1 WHERE user_id = ANY($2::text[])", team_id, joined)
    for user in joined:
        await audit(conn, f"team:{team_id}", "add_member", actor, user_id=user)


async def remove_members(conn: asyncpg.Connection, team_id: str, users: Sequence[str], actor: str) -> None:
    """Each user leaves the team; their keys leave it with them (the foreign key sets their team to null)."""
    users = sorted(set(users))
    removed = {row["user_id"] for row in await conn.fetch(
        "DELETE FROM team_members WHERE team_id = $1 AND user_id = ANY($2::text[]) RETURNING user_id", team_id, users)}
    missing = [user for user in users if user not in removed]
    if missing:
        raise NotFound(f"not in team {team_id}: {', '.join(missing)}")
    for user in users:
        await audit(conn, f"team:{team_id}", "remove_member", actor, user_id=user)


async def scope_exists(conn: asyncpg.Connection, scope: Scope, scope_id: str) -> bool:
    if scope == "key":
        return scope_id.isdigit() and len(scope_id) < 19 and await conn.fetchval(
            "SELECT EXISTS (SELECT FROM api_keys WHERE id = $1)", int(scope_id))
    if scope == "team":
        return bool(await conn.fetchval("SELECT EXISTS (SELECT FROM teams WHERE team_id = $1)", scope_id))
    return 1 <= len(scope_id) <= 256


def limits_record(row: asyncpg.Record) -> LimitsRecord:
    return LimitsRecord(row["scope"], row["scope_id"], ScopeLimits.model_validate(json.loads(row["limits"])),
                        row["updated_at"], row["updated_by"])


class PgTeamAdmin:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create_team(self, team_id: str, name: str, members: Sequence[str], actor: str) -> Team:
        if not 1 <= len(name) <= 200:
            raise Refused("a team's name is 1 to 200 characters")
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await conn.execute("INSERT INTO teams (team_id, name) VALUES ($1, $2)", team_id, name)
            except asyncpg.UniqueViolationError as exc:
                raise Conflict(f"team {team_id} exists") from exc
            await audit(conn, f"team:{team_id}", "create_team", actor, name=name)
            await add_members(conn, team_id, members, actor)
            team = await fetch_team(conn, team_id)
        assert team is not None
        return team

    async def team(self, team_id: str) -> Team | None:
        async with self.pool.acquire() as conn:
            return await fetch_team(conn, team_id)

    async def teams(self) -> list[Team]:
        return [team_of_row(row) for row in await self.pool.fetch(TEAM, None)]

    async def change_team(self, team_id: str, name: str | None, add: Sequence[str], remove: Sequence[str],
                          actor: str) -> Team:
        async with self.pool.acquire() as conn, conn.transaction():
            old = await conn.fetchval("SELECT name FROM teams WHERE team_id = $1 FOR UPDATE", team_id)
            if old is None:
                raise NotFound(f"no team {team_id}")
            if name is not None and name != old:
                if not 1 <= len(name) <= 200:
                    raise Refused("a team's name is 1 to 200 characters")
                await conn.execute("UPDATE teams SET name = $2 WHERE team_id = $1", team_id, name)
                await audit(conn, f"team:{team_id}", "rename_team", actor, name=name, was=old)
            if remove:
                await remove_members(conn, team_id, remove, actor)
            if add:
                await add_members(conn, team_id, add, actor)
            team = await fetch_team(conn, team_id)
        assert team is not None
        return team

    async def delete_team(self, team_id: str, actor: str) -> Team | None:
        """The team, its members (their keys leave it) and its limits."""
        async with self.pool.acquire() as conn, conn.transaction():
            team = await fetch_team(conn, team_id)
            if team is None:
                return None
            await conn.execute("DELETE FROM scope_limits WHERE scope = 'team' AND scope_id = $1", team_id)
            await conn.execute("DELETE FROM teams WHERE team_id = $1", team_id)
            await audit(conn, f"team:{team_id}", "delete_team", actor, name=team.name, members=list(team.members))
        return team

    async def team_of(self, user_id: str) -> str | None:
        team: str | None = await self.pool.fetchval("SELECT team_id FROM team_members WHERE user_id = $1", user_id)
        return team

    async def set_limits(self, scope: Scope, scope_id: str, limits: ScopeLimits, actor: str) -> LimitsRecord:
        async with self.pool.acquire() as conn, conn.transaction():
            if not await scope_exists(conn, scope, scope_id):
                raise NotFound(f"no {scope} {scope_id}")
            before = await conn.fetchval("SELECT limits FROM scope_limits WHERE scope = $1 AND scope_id = $2"
                                         " FOR UPDATE", scope, scope_id)
            after = limits.model_dump_json()
            row = await conn.fetchrow(
                "INSERT INTO scope_limits (scope, scope_id, limits, updated_by) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (scope, scope_id) DO UPDATE SET limits = excluded.limits, updated_at = now(),"
                " updated_by = excluded.updated_by RETURNING *", scope, scope_id, after, actor)
            await audit(conn, f"{scope}:{scope_id}", "set_limits", actor,
                        before=json.loads(before) if before else None, after=json.loads(after))
        return limits_record(row)

    async def limits(self, scope: Scope, scope_id: str) -> LimitsRecord | None:
        row = await self.pool.fetchrow("SELECT * FROM scope_limits WHERE scope = $1 AND scope_id = $2", scope, scope_id)
        return limits_record(row) if row else None

    async def delete_limits(self, scope: Scope, scope_id: str, actor: str) -> LimitsRecord | None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("DELETE FROM scope_limits WHERE scope = $1 AND scope_id = $2 RETURNING *",
                                      scope, scope_id)
            if row is not None:
                await audit(conn, f"{scope}:{scope_id}", "delete_limits", actor, before=json.loads(row["limits"]))
        return limits_record(row) if row else None
