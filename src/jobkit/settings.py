"""Settings, read from `JOBKIT_*` environment variables (or a `.env` file).

Secrets (the Redis URLs may carry a password) are `SecretStr`: they never show up in a
`repr`, a log line or an error message. Use `redact_url` to name a server in a message.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from jobkit.errors import ConfigurationError

log = logging.getLogger("jobkit.settings")

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
    unknown_job_grace: float = Field(
        600.0,
        ge=0,
        description="seconds a worker hands back a job it does not know (a rolling deploy: "
        "older code) for a worker that knows it, before failing it with UnknownJobError; "
        "0 fails it at once",
    )
    max_payload_bytes: int = Field(
        1_048_576,
        gt=0,
        le=2_000_000,
        description="largest JSON (in bytes) of a job's payload or result, or a step's "
        "arguments or result, on every engine; Temporal's 2 MB per payload is the ceiling",
    )
    job_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="modules a worker imports to register jobs: myapp.jobs,myapp.other "
        "(or a JSON list)",
    )

    @field_validator("job_modules", mode="before")
    @classmethod
    def _module_list(cls, value: Any) -> Any:
        """`a.jobs,b.jobs` as well as `["a.jobs", "b.jobs"]`."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [name.strip() for name in text.split(",") if name.strip()]
        return value

    strict: bool = Field(
        False,
        description="workers run handlers in strict mode (jobkit_engine.strict): code outside "
        "steps that Temporal would refuse fails the job; meant for staging",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="how `jobkit worker`, `jobkit cron` and `jobkit dev` log when the "
        "application has not configured logging: text lines, or one JSON object per line "
        "(for log shippers)",
    )

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


@functools.cache
def get_settings() -> JobkitSettings:
    """The process-wide settings, read once. Tests pass their own `JobkitSettings`.

    A `JOBKIT_*` variable that is no setting (a typo: `JOBKIT_REDIS_ULR`) is logged once,
    with the setting it resembles: silently ignored, it would send every job elsewhere.
    A value that does not parse is a `ConfigurationError` naming the variable (and not
    its value, which may be a secret).
    """
    for name, suggestion in unknown_variables(os.environ):
        hint = f" (did you mean {suggestion}?)" if suggestion else ""
        log.warning("%s is not a jobkit setting%s; it is ignored", name, hint)
    try:
        return JobkitSettings()
    except (ValidationError, SettingsError) as exc:
        raise ConfigurationError(f"invalid jobkit settings: {_describe(exc)}") from None


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """Each `JOBKIT_*` variable that names no setting, with the closest setting's name."""
    known = [f"JOBKIT_{name.upper()}" for name in JobkitSettings.model_fields]
    return [
        (name, next(iter(difflib.get_close_matches(name, known, n=1)), None))
        for name in sorted(environ)
        if name.startswith("JOBKIT_") and name not in known
    ]


def _describe(exc: ValidationError | SettingsError) -> str:
    if isinstance(exc, SettingsError):
        return str(exc).replace('for field "', "for JOBKIT_").replace('" from', " from")
    return "; ".join(
        f"JOBKIT_{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)
    )


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
