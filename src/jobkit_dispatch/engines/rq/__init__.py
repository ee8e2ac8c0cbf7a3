"""The RQ engine: jobkit jobs as RQ jobs on Redis, run by jobkit's async worker."""

from __future__ import annotations

from jobkit.errors import EngineNotInstalledError

try:
    import redis  # noqa: F401
    import rq  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise EngineNotInstalledError("rq", "rq", exc.name or "rq") from exc

from jobkit_dispatch.engines.rq.engine import RQEngine

__all__ = ["RQEngine"]
