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
    return await _send(
        ctx, payload.user_id, "welcome", "Welcome, {name}!", "Thanks for signing up."
    )


@job("emails.followup", queue="scheduled", retry=MAIL_RETRY, timeout=timedelta(minutes=1))
async def send_followup(ctx: JobContext, payload: Signup) -> Sent:
    return await _send(
        ctx, payload.user_id, "followup", "Getting started", "Three things to try this week."
    )


async def _send(ctx: JobContext, user_id: int, kind: str, subject: str, text: str) -> Sent:
    """Load the user, send, record: three steps, so a retry after a 503 neither reloads
    the user nor, once the send went through, sends twice. The idempotency key covers the
    last gap: a send that reached the provider but whose answer was lost."""
    user = await ctx.step.run("load-user", store.load_user, user_id)
    message_id = await ctx.step.run(
        "send",
        mail.send_email,
        user.email,
        subject.format(name=user.name),
        text,
        idempotency_key=f"{ctx.job_id}:{kind}",
    )
    await ctx.step.run("record", store.record_message, user.id, kind, message_id)
    return Sent(to=user.email, message_id=message_id)
