"""jobkit on the inline engine: dispatch jobs and watch them run, with no servers.

Run it with `python examples/quickstart.py` (no Redis, no Temporal needed); the jobs are
in `quickstart_jobs.py`. The inline engine runs on a manual clock here, so the two-day
sleep and the retry backoff are skipped instead of waited for, as Temporal's
time-skipping test server does.
"""

from __future__ import annotations

from datetime import timedelta

from quickstart_jobs import Report, calls, monthly_report

from jobkit_dispatch import cancel_job, dispatch_job, get_job
from jobkit_dispatch.testing import inline_engine, wait_for_job

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
