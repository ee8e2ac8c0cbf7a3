"""jobkit in one file: define jobs, dispatch them, watch them run on the inline engine.

Run it with `python examples/quickstart.py` (no Redis, no Temporal needed). The inline
engine runs on a manual clock here, so the two-day sleep and the retry backoff below are
skipped instead of waited for, as Temporal's time-skipping test server does.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from jobkit_dispatch import cancel_job, dispatch_job, get_job
from jobkit_dispatch.testing import inline_engine, wait_for_job
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


# -- dispatching ---------------------------------------------------------------------------


def main() -> None:
    with inline_engine():
        d = dispatch_job("emails.welcome", {"user_id": 7, "email": "ada@example.com"})
        print(f"dispatched {d.job_id} to the {d.engine} engine ({d.reason})")

        sleeping = wait_for_job(d.job_id, lambda info: info.status == "sleeping")
        print(
            f"  status={sleeping.status}, wakes at {sleeping.scheduled_for:%Y-%m-%d %H:%M}, "
            f"progress={sleeping.progress}"
        )

        done = wait_for_job(d.job_id)
        print(f"  status={done.status} after {done.attempts} attempts: {done.result!r}")
        print(f"  step calls: {calls} (load-user ran once despite the retry)")

        bad = wait_for_job(dispatch_job(monthly_report, Report(month="November")).job_id)
        print(
            f"reports.monthly: {bad.status} at once ({bad.attempts} attempt): {bad.error.message}"
        )

        later = dispatch_job(monthly_report, {"month": "2026-12"}, delay=timedelta(days=30))
        cancel_job(later.job_id)
        print(f"a job due in 30 days, cancelled: {get_job(later.job_id).status}")

        again = dispatch_job(
            "emails.welcome", {"user_id": 8, "email": "bob@example.com"}, idempotency_key="signup-8"
        )
        repeat = dispatch_job(
            "emails.welcome", {"user_id": 8, "email": "bob@example.com"}, idempotency_key="signup-8"
        )
        print(f"same idempotency key, same job: {again.job_id == repeat.job_id}")


if __name__ == "__main__":
    main()
