"""Teams and limits in Postgres: a user is in at most one team and their keys follow them, every change is
an audit row, limits are kept as set and announced once committed."""

from __future__ import annotations

import json
from decimal import Decimal

import asyncpg
import pytest

from services.keys.pg_key_admin import create_key
from services.teams.pg_team_admin import PgTeamAdmin
from services.teams.team_admin import Conflict, NotFound, Refused, TeamAdmin
from shared.limits import Budget, ScopeLimits
from tests.conftest import unique

pytestmark = pytest.mark.adapter


@pytest.fixture
async def admin(database_url):
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    announced: list[str] = []

    async def announce(subject: str) -> None:
        announced.append(subject)

    yield TeamAdmin(PgTeamAdmin(pool), announce), pool, announced
    await pool.close()


async def key_teams(pool, *users: str) -> dict[str, str | None]:
    rows = await pool.fetch("SELECT user_id, team_id FROM api_keys WHERE user_id = ANY($1::text[])", list(users))
    return {row["user_id"]: row["team_id"] for row in rows}


async def test_a_team_takes_its_members_keys_and_a_user_is_in_one_team_at_most(admin):
    teams, pool, announced = admin
    research, support = unique("research"), unique("support")
    alice, bob = unique("alice"), unique("bob")
    async with pool.acquire() as conn:
        await create_key(conn, alice, "pro", actor="test")
        await create_key(conn, bob, "free", actor="test")
    made = await teams.create_team(research, "Research", [alice, bob], "admin-api:ops")
    assert made.members == tuple(sorted([alice, bob])) and announced == [f"team:{research}"]
    assert await key_teams(pool, alice, bob) == {alice: research, bob: research}
    await teams.create_team(support, "Support", [], "admin-api:ops")
    with pytest.raises(Conflict, match=f"{alice} \\(in {research}\\)"):
        await teams.change_team(support, None, [alice], [], "admin-api:ops")
    moved = await teams.change_team(research, "Research & Dev", [], [bob], "admin-api:ops")
    assert moved.members == (alice,) and moved.name == "Research & Dev"
    assert await key_teams(pool, alice, bob) == {alice: research, bob: None}
    await teams.change_team(support, None, [bob], [], "admin-api:ops")
    assert await key_teams(pool, bob) == {bob: support}
    with pytest.raises(NotFound, match="not in team"):
        await teams.change_team(research, None, [], [bob], "admin-api:ops")
    with pytest.raises(Refused, match="team_id"):
        await teams.create_team("no spaces", "x", [], "admin-api:ops")
    await teams.set_limits("team", research, ScopeLimits(budgets=(Budget(usd=Decimal(5), period="month"),)), "ops")
    assert (await teams.delete_team(research, "admin-api:ops")).members == (alice,)
    assert await key_teams(pool, alice) == {alice: None}
    assert await teams.store.limits("team", research) is None
    actions = [(r["action"], r["actor"]) for r in await pool.fetch(
        "SELECT action, actor FROM admin_audit WHERE subject = $1 ORDER BY id", f"team:{research}")]
    assert actions == [("create_team", "admin-api:ops"), ("add_member", "admin-api:ops"),
                       ("add_member", "admin-api:ops"), ("rename_team", "admin-api:ops"),
                       ("remove_member", "admin-api:ops"), ("set_limits", "ops"), ("delete_team", "admin-api:ops")]


async def test_limits_are_kept_as_set_audited_with_before_and_after_and_need_their_scope_to_exist(admin):
    teams, pool, announced = admin
    user = unique("carol")
    async with pool.acquire() as conn:
        key, _ = await create_key(conn, user, "pro", actor="test")
    first = ScopeLimits(budgets=(Budget(usd=Decimal("0.002"), period="day"),), soft=(Decimal("0.5"),))
    second = ScopeLimits(requests=5, window_s=60, models=("gpt-4o-mini",))
    await teams.set_limits("key", str(key.id), first, "admin-api:ops")
    record = await teams.set_limits("key", str(key.id), second, "admin-api:ops")
    assert record.limits == second and (await teams.store.limits("key", str(key.id))).limits == second
    with pytest.raises(NotFound, match="no key 999999999"):
        await teams.set_limits("key", "999999999", first, "admin-api:ops")
    with pytest.raises(NotFound, match="no team"):
        await teams.set_limits("team", unique("nobody"), first, "admin-api:ops")
    await teams.set_limits("user", user, first, "admin-api:ops")  # any user id: users are not a table
    assert (await teams.delete_limits("key", str(key.id), "admin-api:ops")).limits == second
    assert await teams.delete_limits("key", str(key.id), "admin-api:ops") is None
    assert announced == [f"key:{key.id}", f"key:{key.id}", f"user:{user}", f"key:{key.id}"]
    rows = await pool.fetch("SELECT action, detail FROM admin_audit WHERE subject = $1 ORDER BY id", f"key:{key.id}")
    details = [(r["action"], json.loads(r["detail"])) for r in rows]
    assert [a for a, _ in details] == ["set_limits", "set_limits", "delete_limits"]
    assert details[1][1]["before"]["budgets"][0]["usd"] == "0.002" and details[1][1]["after"]["requests"] == 5
