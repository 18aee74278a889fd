"""What the tooling reads (`costwarden migrate`, `nats-config`, `redis-acl`, and `make run`, which
starts every service): the bus's stream replicas, and each service's port and what decides whether it
runs. The keys, backup and restore commands read the settings of what they stand for."""

from __future__ import annotations

from pydantic import Field, SecretStr

from shared.settings import RedisSettings


class DeploySettings(RedisSettings):
    nats_stream_replicas: int = Field(default=1, ge=1, le=5, description="Replicas of every JetStream stream.")

    api_port: int = 3000
    health_port: int = 3001
    limiter_port: int = 3002
    cost_port: int = 3003
    notifier_port: int = 3004
    backup_port: int = 3005
    console_port: int = 3006
    simulator_port: int = 3010

    together_api_key: SecretStr | None = Field(default=None, description="Unset: make run starts the simulator.")
    console_session_secret: SecretStr | None = Field(default=None, description="Unset: make run keeps one in .run/.")
    s3_backup_bucket: str | None = Field(default=None, description="Unset: make run starts no backup worker.")
