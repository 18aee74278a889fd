"""What the console reads: its session secret and cookie, where the api and the health service are,
and its part of the YAML file (the tiers it offers a new key, the thresholds it draws)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from shared.settings import ServiceSettings, ThresholdsPart, TiersPart


class ConsoleConfig(TiersPart, ThresholdsPart):
    pass


class ConsoleSettings(ServiceSettings):
    console_port: int = 3006
    console_session_secret: SecretStr | None = Field(
        default=None, description="Encrypts and signs the console's session cookies; the same on every replica.")
    console_session_hours: float = Field(default=12, gt=0, description="A console session lasts this long.")
    console_cookie_secure: bool = Field(default=False, description="Send the session cookie over HTTPS only.")
    console_api_url: str = Field(default="http://127.0.0.1:3000", description="The api, for the console's key actions.")
    console_health_url: str = Field(default="http://127.0.0.1:3001", description="The health service, for the console.")

    def file_config(self) -> ConsoleConfig:
        return self.file_part(ConsoleConfig)
