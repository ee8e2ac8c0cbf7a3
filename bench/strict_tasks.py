"""The jobs `strict_bench.py` measures (in a module: step functions need an import path)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from jobkit_engine import JobContext, JobRegistry, job

registry = JobRegistry()


class Item(BaseModel):
    name: str
    size: int


async def fetch(n: int) -> dict[str, Any]:
    return {"name": f"item-{n}", "size": n}


@job("bench.steps", registry=registry)
async def steps(ctx: JobContext) -> int:
    total = 0
    for n in range(20):
        item = Item(**await ctx.step.run(f"fetch-{n}", fetch, n))
        total += item.size + len(item.name.upper())
    return total


def _score(n: int) -> int:
    return (n * 7) % 13


@job("bench.busy", registry=registry)
async def busy(ctx: JobContext) -> int:
    total = sum(_score(n) for n in range(2_000))
    item = Item.model_validate({"name": "x", "size": total})
    return await ctx.step.run("fetch", fetch, item.size)
