"""Copies of a job that engines passed over may hold, and settling them once another
engine has the job (see docs/dispatch.md, "Exactly once across engines")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from jobkit.errors import EngineUnavailableError
from jobkit_dispatch.engines import Engine, JobRequest
from jobkit_dispatch.engines.base import Fenced, Fences


@dataclass
class Copies:
    """Engines passed over that may hold a copy of the job: `unsure`, where this
    dispatch's enqueue may have been applied unanswered (`missed`); `earlier`, for an
    idempotency key, every one, where an earlier dispatch of the key may have put it."""

    unsure: set[str] = field(default_factory=set)
    earlier: set[str] = field(default_factory=set)

    def fence(self) -> frozenset[str]:
        return frozenset(self.unsure)

    def hand_over(self) -> frozenset[str]:
        return frozenset(self.earlier - self.unsure)


def missed(name: str, exc: EngineUnavailableError, causes: dict[str, str], copies: Copies) -> None:
    """Note why engine `name` did not take the job, and whether it may hold it anyway."""
    causes[name] = str(exc)
    if exc.outcome_unknown:
        causes[name] += " (the enqueue may have been applied)"
        copies.unsure.add(name)


def held_before(request: JobRequest, engine: Callable[[str], Engine]) -> Fenced | None:
    """An earlier dispatch's job of this key that an engine passed over holds for good
    (one of its workers started it, or its marker names the engine that has it): then
    that is the job, and no other engine may start it. An engine that cannot answer now
    is left to the hand-over (`JobRequest.hand_over`)."""
    for other in map(engine, sorted(request.hand_over)):
        if isinstance(other, Fences):
            try:
                held = other.holder(request.job_id)
            except EngineUnavailableError:
                continue
            if held is not None:
                return held
    return None


def hand_over(request: JobRequest, taker: str, engine: Callable[[str], Engine]) -> Fenced | None:
    """Tell the engines passed over that may hold this idempotent job that `taker` has it
    (a repeat dispatch there then returns it); the one that already ran it, if any, keeps
    it: its answer is returned. The fence, or the hand-over of the engine that took the
    job, settles the same copies in any case; this makes the answer right sooner, when
    they answer now. A job without a key is not asked about: its copy can only come from
    a lost reply, from an engine that is sick; the fence waits for it."""
    if request.idempotency_key is None:
        return None
    for other in map(engine, sorted(request.fence | request.hand_over)):
        if isinstance(other, Fences):
            try:
                fenced = other.fence(request.job_id, taker, request.reason)
            except EngineUnavailableError:
                continue
            if fenced.engine == other.name:
                return fenced
    return None
