"""Settings, read from `JOBKIT_*` environment variables (or a `.env` file).

Secrets (the Redis URLs may carry a password) are `SecretStr`: they never show up in a
`repr`, a log line or an error message. Use `redact_url` to name a server in a message.
"""

from __future__ import annotations

import functools
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

EngineChoice = Literal["auto", "rq", "temporal", "inline"] | str


class JobkitSettings(BaseSettings):
    """Everything jobkit reads from the environment. Every field is `JOBKIT_<NAME>`."""

    model_config = SettingsConfigDict(
        env_prefix="JOBKIT_", env_file=".env", extra="ignore", frozen=True
    )

    engine: EngineChoice = Field(
        "auto",
        description="auto (RQ first, Temporal as fallback), rq, temporal, inline, "
        "or 'module:Class' of a third-party engine",
    )
    use_rq: bool = Field(True, description="off: every dispatch goes to Temporal")
    redis_url: SecretStr = Field(SecretStr("redis://127.0.0.1:6379/0"))
    cache_redis_url: SecretStr | None = Field(None, description="volatile cache Redis")
    redis_socket_timeout: float = Field(0.5, gt=0, description="seconds per Redis command")
    redis_connect_timeout: float = Field(0.25, gt=0, description="seconds to open a connection")
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_task_queue_prefix: str = "jobkit-"
    pickup_timeout: float | None = Field(
        None, ge=0, description="seconds to wait for an RQ worker to start a job, or off"
    )
    circuit_cool_down: float = Field(
        5.0, gt=0, description="seconds RQ is skipped after Redis failed, before a new probe"
    )
    worker_check_ttl: float = Field(
        1.0, ge=0, description="seconds a 'live worker serves this queue' answer is reused"
    )
    sleep_threshold: float = Field(
        5.0, ge=0, description="sleeps at least this long free the worker (seconds)"
    )
    result_ttl: int = Field(86_400, gt=0, description="seconds a finished job stays readable")
    failure_ttl: int = Field(7 * 86_400, gt=0, description="seconds a failed job stays readable")
    worker_heartbeat: float = Field(
        5.0,
        gt=0,
        description="seconds between worker heartbeats; a job whose worker missed "
        "three of them is considered abandoned and retried",
    )
    max_payload_bytes: int = Field(
        1_048_576,
        gt=0,
        le=2_000_000,
        description="largest JSON (in bytes) of a job's payload or result, or a step's "
        "arguments or result, on every engine; Temporal's 2 MB per payload is the ceiling",
    )
    job_modules: list[str] = Field(
        default_factory=list, description="modules a worker imports to register jobs"
    )
    strict: bool = Field(
        False,
        description="workers run handlers in strict mode (jobkit_engine.strict): code outside "
        "steps that Temporal would refuse fails the job; meant for staging",
    )


@functools.cache
def get_settings() -> JobkitSettings:
    """The process-wide settings, read once. Tests pass their own `JobkitSettings`."""
    return JobkitSettings()


def redact_url(url: str | SecretStr) -> str:
    """`redis://:secret@host:6379/0` → `redis://***@host:6379/0`, safe to print."""
    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    parts = urlsplit(raw)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=f"***@{host}")
    return urlunsplit(parts)
