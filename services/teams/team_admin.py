"""What administering teams and limits means, apart from where they are kept: the records, the refusals
(each with a message an administrator can act on), the port, and the use case that announces every change
on the bus so that every limiter and cost replica reloads within seconds."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Protocol

from shared.limits import TEAM_ID_PATTERN, Scope, ScopeLimits

TEAM_ID = re.compile(TEAM_ID_PATTERN)


@dataclass(frozen=True)
class Team:
    team_id: str
    name: str
    created_at: datetime
    members: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "created_at": self.created_at.isoformat(), "members": list(self.members)}


@dataclass(frozen=True)
class LimitsRecord:
    scope: Scope
    scope_id: str
    limits: ScopeLimits
    updated_at: datetime
    updated_by: str

    def as_json(self) -> dict[str, Any]:
        return {"scope": self.scope, "id": self.scope_id, "limits": self.limits.model_dump(mode="json"),
                "updated_at": self.updated_at.isoformat(), "updated_by": self.updated_by}


class Refused(Exception):
    """A change that cannot be made as asked; the message says why and what to do."""

    status = 400


class NotFound(Refused):
    status = 404


class Conflict(Refused):
    status = 409


def check_team_id(team_id: str) -> str:
    if not TEAM_ID.match(team_id):
        raise Refused(f"team_id {team_id!r} must be 1 to 64 letters, digits, '_', '.' or '-', starting with a "
                      "letter or digit")
    return team_id


class TeamStore(Protocol):
    """Teams, members and limits where they are kept; every change audited under `actor`. Raises Refused."""

    async def create_team(self, team_id: str, name: str, members: Sequence[str], actor: str) -> Team: ...

    async def team(self, team_id: str) -> Team | None: ...

    async def teams(self) -> list[Team]: ...

    async def change_team(self, team_id: str, name: str | None, add: Sequence[str], remove: Sequence[str],
                          actor: str) -> Team: ...

    async def delete_team(self, team_id: str, actor: str) -> Team | None: ...

    async def team_of(self, user_id: str) -> str | None: ...

    async def set_limits(self, scope: Scope, scope_id: str, limits: ScopeLimits, actor: str) -> LimitsRecord: ...

    async def limits(self, scope: Scope, scope_id: str) -> LimitsRecord | None: ...

    async def delete_limits(self, scope: Scope, scope_id: str, actor: str) -> LimitsRecord | None: ...


Announce = Callable[[str], Awaitable[None]]


class TeamAdmin:
    """Changes through the store, each announced once committed (`limits.changed`, naming what changed):
    the limiters apply it within seconds instead of at their next periodic reload."""

    def __init__(self, store: TeamStore, announce: Announce) -> None:
        self.store, self.announce = store, announce

    async def create_team(self, team_id: str, name: str, members: Sequence[str], actor: str) -> Team:
        team = await self.store.create_team(check_team_id(team_id), name, members, actor)
        await self.announce(f"team:{team_id}")
        return team

    async def change_team(self, team_id: str, name: str | None, add: Sequence[str], remove: Sequence[str],
                          actor: str) -> Team:
        team = await self.store.change_team(team_id, name, add, remove, actor)
        await self.announce(f"team:{team_id}")
        return team

    async def delete_team(self, team_id: str, actor: str) -> Team | None:
        team = await self.store.delete_team(team_id, actor)
        if team is not None:
            await self.announce(f"team:{team_id}")
        return team

    async def set_limits(self, scope: Scope, scope_id: str, limits: ScopeLimits, actor: str) -> LimitsRecord:
        record = await self.store.set_limits(scope, scope_id, limits, actor)
        await self.announce(f"{scope}:{scope_id}")
        return record

    async def delete_limits(self, scope: Scope, scope_id: str, actor: str) -> LimitsRecord | None:
        record = await self.store.delete_limits(scope, scope_id, actor)
        if record is not None:
            await self.announce(f"{scope}:{scope_id}")
        return record
