"""Every engine at a glance, for the dashboard's overview page: `overview()` / `aoverview()`.

Each engine of the dispatcher's route that declares `supports_overview` summarises itself
(`engines/overview.py`); they are asked at once, and one that is down is named in
`unavailable` beside the others' answers. The share of dispatches that fell back, and why,
is worked out here from what every engine reported (`FallbackShare.of`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from jobkit_dispatch._dispatch import Dispatcher, aget_dispatcher
from jobkit_dispatch._listing import ask_engines, operated_engines
from jobkit_dispatch.engines.overview import EngineSummary, SummaryQuery

UNRECORDED = "unrecorded"
"""The reason of fallbacks no earlier engine wrote down (its server was down, or it was
turned off): what later engines accepted beyond what earlier ones recorded as turned away."""


@dataclass(frozen=True)
class FallbackShare:
    """Where the window's dispatches went: `accepted` by engine, in route order, and why
    the engines after the first got theirs (`reasons`: reason kind → count)."""

    accepted: Mapping[str, int]
    reasons: Mapping[str, int]

    @property
    def total(self) -> int:
        return sum(self.accepted.values())

    @property
    def fell_back(self) -> int:
        """Dispatches accepted by any engine but the first of the route."""
        return sum(list(self.accepted.values())[1:])

    @property
    def share(self) -> float | None:
        """`fell_back / total`, None when nothing was dispatched."""
        return self.fell_back / self.total if self.total else None

    @classmethod
    def of(cls, summaries: list[EngineSummary]) -> FallbackShare:
        """From the summaries in route order: an engine's `passed_over` are the reasons of
        the jobs the later ones accepted; what those accepted beyond that is `UNRECORDED`."""
        accepted = {s.engine: s.accepted for s in summaries if s.accepted is not None}
        reasons: dict[str, int] = {}
        for earlier in summaries[:-1]:
            for kind, count in earlier.passed_over.items():
                reasons[kind] = reasons.get(kind, 0) + count
        later = sum(list(accepted.values())[1:])
        if later > sum(reasons.values()):
            reasons[UNRECORDED] = later - sum(reasons.values())
        return cls(accepted, reasons)


@dataclass(frozen=True)
class Overview:
    """`engines`: each engine's summary, in route order; `unavailable`: engine name → why
    it has none; `fallback`: where the window's dispatches went and why."""

    engines: Mapping[str, EngineSummary]
    unavailable: Mapping[str, str]
    fallback: FallbackShare
    query: SummaryQuery
    taken_at: datetime = field(default_factory=lambda: datetime.now(UTC))


async def aoverview(
    *,
    queues: tuple[str, ...] = (),
    window: timedelta = timedelta(hours=1),
    buckets: int = 12,
    dispatcher: Dispatcher | None = None,
) -> Overview:
    """Every engine of the route at a glance: its queues by state, live workers,
    throughput over `window` in `buckets`, health; and the share of dispatches that fell
    back. `queues` empty: every queue each engine knows."""
    dispatcher = dispatcher or await aget_dispatcher()
    query = SummaryQuery(queues=queues, now=datetime.now(UTC), window=window, buckets=buckets)
    engines, unavailable = await asyncio.to_thread(
        operated_engines, dispatcher, None, "supports_overview", "summarise itself"
    )
    answers: dict[str, EngineSummary] = await ask_engines(
        engines,
        lambda each: each.summarise(query),  # type: ignore[attr-defined]
        unavailable,
    )
    ordered = [answers[e.name] for e in engines if e.name in answers]
    return Overview({s.engine: s for s in ordered}, unavailable, FallbackShare.of(ordered), query)


def overview(
    *,
    queues: tuple[str, ...] = (),
    window: timedelta = timedelta(hours=1),
    buckets: int = 12,
    dispatcher: Dispatcher | None = None,
) -> Overview:
    """`aoverview` for code without a running event loop."""
    return asyncio.run(
        aoverview(queues=queues, window=window, buckets=buckets, dispatcher=dispatcher)
    )
