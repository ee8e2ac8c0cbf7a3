"""The jobs of `quickstart.py`, in a module of their own.

Step functions live in an importable module, not in the script being run (`__main__`):
a worker process finds a step function by its import path, so jobkit refuses step
functions of `__main__` on every engine, inline included.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from jobkit_engine import JobContext, NonRetryableError, Retry, job

# -- the jobs ------------------------------------------------------------------------------


class Signup(BaseModel):
    user_id: int
    email: str


class Welcome(BaseModel):
    user_id: int
    subject: str
    sent_to: str


calls = {"load_user": 0, "send_email": 0}


def load_user(user_id: int) -> dict[str, str]:
    """A step: its result is stored, so a retried or resumed job does not call it again."""
    calls["load_user"] += 1
    return {"name": f"user{user_id}"}


def send_email(to: str, subject: str) -> str:
    calls["send_email"] += 1
    if calls["send_email"] == 1:
        raise ConnectionError("mail server hiccup")  # the job is retried, with backoff
    return f"<{subject}> sent to {to}"


@job("emails.welcome", retry=Retry(attempts=3, initial_delay=30), timeout=timedelta(minutes=1))
async def send_welcome(ctx: JobContext, payload: Signup) -> Welcome:
    user = await ctx.step.run("load-user", load_user, payload.user_id)
    ctx.report_progress(0.3, "user loaded")
    await ctx.step.sleep("cool-down", timedelta(days=2))  # frees the worker meanwhile
    ctx.report_progress(0.6, "sending")
    subject = f"Welcome, {user['name']}!"
    await ctx.step.run("send", send_email, payload.email, subject)
    return Welcome(user_id=payload.user_id, subject=subject, sent_to=payload.email)


class Report(BaseModel):
    month: str


@job("reports.monthly", queue="data_sync", retry=5)
async def monthly_report(ctx: JobContext, payload: Report) -> None:
    if not payload.month.startswith("20"):
        raise NonRetryableError(f"{payload.month!r} is not a month like 2026-11")
