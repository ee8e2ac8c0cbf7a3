"""Jobs for `jobkit dev --demo`: a few steps, a durable sleep, a retry, progress."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from jobkit_dispatch.cron import schedule
from jobkit_engine import JobContext, Retry, job


class Signup(BaseModel):
    user_id: int
    email: str


class Welcome(BaseModel):
    user_id: int
    message: str


def load_user(user_id: int) -> dict[str, str]:
    return {"name": f"user{user_id}"}


def render(name: str, email: str) -> str:
    return f"Welcome aboard, {name} <{email}>!"


@job("demo.welcome", retry=Retry(attempts=3, initial_delay=1))
async def welcome(ctx: JobContext, payload: Signup) -> Welcome:
    user = await ctx.step.run("load-user", load_user, payload.user_id)
    ctx.report_progress(0.3, "user loaded")
    await ctx.step.sleep("settle-in", timedelta(seconds=2))  # durable: frees the worker
    ctx.report_progress(0.8, "rendering")
    message = await ctx.step.run("render", render, user["name"], payload.email)
    return Welcome(user_id=payload.user_id, message=message)


class Flaky(BaseModel):
    label: str


def call_flaky_service(label: str, attempt: int) -> str:
    if attempt == 1:
        raise ConnectionError("the service hiccuped")
    return f"{label}: ok on attempt {attempt}"


@job("demo.flaky", retry=Retry(attempts=3, initial_delay=1, jitter=0))
async def flaky(ctx: JobContext, payload: Flaky) -> str:
    return await ctx.step.run("call", call_flaky_service, payload.label, ctx.attempt)


class Tick(BaseModel):
    label: str


@job("demo.tick", retry=1)
async def tick(ctx: JobContext, payload: Tick) -> str:
    return payload.label


# `jobkit dev` runs a cron process for this: one `demo.tick` job every 10 seconds.
schedule(
    "demo.every-10s",
    job=tick,
    payload={"label": "tick"},
    every=timedelta(seconds=10),
    catch_up="skip",
)
