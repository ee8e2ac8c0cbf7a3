"""`emails.welcome` (right after signup) and `emails.followup` (a few days later)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from examples.app import mail, store
from jobkit_engine import JobContext, Retry, job


class Signup(BaseModel):
    user_id: int


class Sent(BaseModel):
    to: str
    message_id: str


# The mail provider is flaky: five attempts, 1 s, 2 s, 4 s, 8 s apart (with jitter).
MAIL_RETRY = Retry(attempts=5, backoff=2.0, initial_delay=timedelta(seconds=1))


@job("emails.welcome", queue="default", retry=MAIL_RETRY, timeout=timedelta(minutes=1))
async def send_welcome(ctx: JobContext, payload: Signup) -> Sent:
    user = await ctx.step.run("load-user", store.load_user, payload.user_id)
    message_id = await ctx.step.run(
        "send",
        mail.send_email,
        user.email,
        f"Welcome, {user.name}!",
        "Thanks for signing up.",
        idempotency_key=f"{ctx.job_id}:welcome",
    )
    await ctx.step.run("record", store.record_message, user.id, "welcome", message_id)
    return Sent(to=user.email, message_id=message_id)


@job("emails.followup", queue="scheduled", retry=MAIL_RETRY, timeout=timedelta(minutes=1))
async def send_followup(ctx: JobContext, payload: Signup) -> Sent:
    user = await ctx.step.run("load-user", store.load_user, payload.user_id)
    message_id = await ctx.step.run(
        "send",
        mail.send_email,
        user.email,
        "Getting started",
        "Three things to try this week.",
        idempotency_key=f"{ctx.job_id}:followup",
    )
    await ctx.step.run("record", store.record_message, user.id, "followup", message_id)
    return Sent(to=user.email, message_id=message_id)
