"""The example web app: endpoints that hand slow work to jobkit and report on it.

The async-endpoint pattern: a `POST` dispatches a job and answers `202 Accepted` at once,
with the job's id and a `Location` to poll; `GET /jobs/{id}` reports status, progress and
result wherever the job runs (RQ, or Temporal when Redis is down).

    uvicorn examples.app.main:app
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel, Field, HttpUrl

from examples.app import store
from examples.app.jobs import nightly_sync, resolve_episode, send_followup, send_welcome
from examples.app.settings import get_example_settings
from jobkit.errors import DispatchError, JobNotFoundError, PayloadValidationError
from jobkit_dispatch import Dispatched, acancel_job, adispatch_job, aget_job

app = FastAPI(title="jobkit example")


class SignupForm(BaseModel):
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    name: str


class EpisodeForm(BaseModel):
    url: HttpUrl


class Accepted(BaseModel):
    """Where a dispatched job went and where to ask about it."""

    job_id: str
    engine: str
    reason: str
    status_url: str


class JobView(BaseModel):
    job_id: str
    job_name: str
    status: str
    engine: str
    reason: str
    attempts: int
    progress: dict[str, Any] | None
    result: Any
    error: dict[str, Any] | None
    created_at: datetime | None
    finished_at: datetime | None


def accepted(dispatched: Dispatched, response: Response) -> Accepted:
    status_url = f"/jobs/{dispatched.job_id}"
    response.headers["Location"] = status_url
    return Accepted(
        job_id=dispatched.job_id,
        engine=dispatched.engine,
        reason=dispatched.reason,
        status_url=status_url,
    )


async def dispatch(job: Any, payload: Any, **options: Any) -> Dispatched:
    """`adispatch_job`, with jobkit's errors turned into HTTP answers."""
    try:
        return await adispatch_job(job, payload, **options)
    except PayloadValidationError as exc:
        raise HTTPException(422, str(exc)) from exc
    except DispatchError as exc:  # neither Redis nor Temporal would take it
        raise HTTPException(503, str(exc)) from exc


@app.post("/signups", status_code=202)
async def sign_up(form: SignupForm, response: Response) -> dict[str, Any]:
    user = store.create_user(form.email, form.name)
    # One welcome email per user however often the form is posted: the idempotency key
    # maps to one job id, so a repeat returns the first job.
    welcome = await dispatch(send_welcome, {"user_id": user.id}, idempotency_key=str(user.id))
    followup = await dispatch(
        send_followup,
        {"user_id": user.id},
        delay=get_example_settings().followup_delay,
        idempotency_key=str(user.id),
    )
    return {
        "user_id": user.id,
        "welcome": accepted(welcome, response),
        "followup": accepted(followup, Response()),
    }


@app.post("/episodes", status_code=202)
async def resolve(form: EpisodeForm, response: Response) -> Accepted:
    return accepted(await dispatch(resolve_episode, {"url": str(form.url)}), response)


@app.get("/episodes")
async def episodes() -> list[store.StoredEpisode]:
    return store.list_episodes()


@app.post("/syncs", status_code=202)
async def sync_now(response: Response) -> Accepted:
    """Run the nightly sync now (cron runs it every night; see examples/workers)."""
    return accepted(await dispatch(nightly_sync, {}), response)


@app.get("/syncs")
async def syncs() -> list[dict[str, Any]]:
    return store.list_syncs()


@app.get("/jobs/{job_id}")
async def job_status(job_id: str) -> JobView:
    try:
        info = await aget_job(job_id)
    except JobNotFoundError as exc:
        raise HTTPException(404, f"no job {job_id}") from exc
    fields = asdict(info)
    return JobView(**{name: fields[name] for name in JobView.model_fields})


@app.delete("/jobs/{job_id}")
async def cancel(job_id: str) -> dict[str, bool]:
    return {"cancelled": await acancel_job(job_id)}
