"""What strict mode costs a job that breaks no rule, per execution.

    python bench/strict_bench.py [--runs 300]

Runs two jobs through `execute_job` on one event loop (no engine around it, so only the
handler's own cost is measured), without strict mode and with each check added in turn:
- `steps`: 20 async steps with a little code between them (a pydantic model, strings);
- `busy`: 2,000 Python calls and a pydantic validation outside steps, then one step —
  the worst case for the call check, whose profile hook sees every call.
Prints the mean time per execution (µs) and writes it to bench/results/strict.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from jobkit_engine import (
    DictStepMemo,
    JobContext,
    MemoSteps,
    StrictMode,
    SystemClock,
    execute_job,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "strict.md"
sys.path.insert(0, str(HERE))

from strict_tasks import registry  # noqa: E402

MODES: dict[str, StrictMode | None] = {
    "off": None,
    "block watchdog": StrictMode(calls=False, replay=False),
    "+ call check": StrictMode(replay=False),
    "+ replay (all)": StrictMode(),
}


async def per_execution(name: str, strict: StrictMode | None, runs: int) -> float:
    """Mean seconds per execution, after a warm-up."""

    def context(definition: Any) -> JobContext:
        memo = MemoSteps(DictStepMemo(), SystemClock(), timedelta(seconds=5))
        return JobContext(
            job_id="bench", job_name=name, attempt=1, engine="bench", step=memo,
            progress_sink=lambda p: None,
        )  # fmt: skip

    async def once() -> None:
        outcome = await execute_job(name, None, 1, context, registry=registry, strict=strict)
        assert type(outcome).__name__ == "Succeeded", outcome

    for _ in range(20):
        await once()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(runs // 5):
            await once()
        samples.append((time.perf_counter() - start) / (runs // 5))
    return statistics.median(samples)


async def main(runs: int) -> str:
    lines = [
        "| mode | steps (20 steps) µs | busy (2,000 calls outside steps) µs |",
        "|---|---|---|",
    ]
    base: dict[str, float] = {}
    for mode, strict in MODES.items():
        cells = []
        for name in ("bench.steps", "bench.busy"):
            seconds = await per_execution(name, strict, runs)
            base.setdefault(name, seconds)
            cells.append(f"{seconds * 1e6:,.0f} (x{seconds / base[name]:.2f})")
        lines.append(f"| {mode} | {' | '.join(cells)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    table = asyncio.run(main(args.runs))
    print(table)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(f"# Strict mode: cost per execution\n\n{table}\n")
