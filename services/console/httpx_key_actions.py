"""Changes through the api's admin API (keys, limits and teams), as the signed-in key: the api checks
that it is an admin key and audits the change under its user, as it does for any caller."""

from __future__ import annotations

from urllib.parse import quote

import httpx

from services.console.console import CreatedKey, KeyActionRefused
from shared.limits import Scope

COLLECTIONS: dict[Scope, str] = {"key": "keys", "user": "users", "team": "teams"}


def limits_path(scope: Scope, scope_id: str) -> str:
    return f"/admin/{COLLECTIONS[scope]}/{quote(scope_id, safe='')}/limits"


class HttpxKeyActions:
    def __init__(self, client: httpx.AsyncClient, api_url: str) -> None:
        self.client, self.api_url = client, api_url.rstrip("/")

    async def _call(self, method: str, path: str, as_key: str, body: dict | None = None) -> dict:
        try:
            answer = await self.client.request(method, f"{self.api_url}{path}", json=body, timeout=10,
                                               headers={"Authorization": f"Bearer {as_key}"})
        except httpx.HTTPError as exc:
            raise KeyActionRefused(f"the api did not answer ({type(exc).__name__}); try again") from None
        try:
            document: dict = answer.json()
        except ValueError:
            document = {}
        if answer.is_error:
            message = document.get("error", {}).get("message") or f"the api answered {answer.status_code}"
            raise KeyActionRefused(message)
        return document

    async def create(self, as_key: str, user_id: str, tier: str, alias: str | None, expires_in: str | None,
                     admin: bool) -> CreatedKey:
        body = {"user_id": user_id, "tier": tier, "admin": admin}
        if alias:
            body["alias"] = alias
        if expires_in:
            body["expires_in"] = expires_in
        made = await self._call("POST", "/admin/keys", as_key, body)
        return CreatedKey(made["id"], made["key"], made["prefix"])

    async def revoke(self, as_key: str, key_id: int) -> None:
        await self._call("DELETE", f"/admin/keys/{key_id}", as_key)

    async def set_limits(self, as_key: str, scope: Scope, scope_id: str, limits: dict) -> None:
        await self._call("PUT", limits_path(scope, scope_id), as_key, limits)

    async def delete_limits(self, as_key: str, scope: Scope, scope_id: str) -> None:
        await self._call("DELETE", limits_path(scope, scope_id), as_key)

    async def create_team(self, as_key: str, team_id: str, name: str, members: list[str]) -> None:
        await self._call("POST", "/admin/teams", as_key, {"team_id": team_id, "name": name, "members": members})

    async def change_team(self, as_key: str, team_id: str, add: list[str], remove: list[str]) -> None:
        await self._call("PATCH", f"/admin/teams/{quote(team_id, safe='')}", as_key,
                         {"add_members": add, "remove_members": remove})
