"""The example app end to end: the web app, the worker scripts and cron as separate
processes, on a real Redis and a real Temporal dev server, with the loopback media site
and the flaky mail API. Then Redis is stopped and the same jobs complete on Temporal.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import pytest
import redis

pytest.importorskip("yt_dlp")
pytest.importorskip("fastapi")

from examples.app.fakes import MailServer, MediaSite
from jobkit_dispatch.testing import RedisServer
from jobkit_dispatch.testing.redis_server import free_port
from jobkit_dispatch.testing.temporal_server import TemporalDevServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
WORKERS = ROOT / "examples" / "workers"
T = TypeVar("T")


def poll(check: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Example:
    """The example's processes and the fakes they talk to."""

    tmp: Path
    env: dict[str, str]
    redis: RedisServer
    site: MediaSite
    mail: MailServer
    api: httpx.Client
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: list[IO[bytes]] = field(default_factory=list)

    def spawn(self, name: str, args: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        self.processes[name] = subprocess.Popen(
            args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def stop(self, name: str, timeout: float = 30.0) -> int:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.api.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def finished(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        info = poll(
            lambda: (j := self.job(job_id))["status"] in {"succeeded", "failed"} and j,
            f"job {job_id} to finish",
            timeout,
        )
        assert info["status"] == "succeeded", info
        return info

    def sign_up(self, name: str) -> dict[str, Any]:
        response = self.api.post("/signups", json={"email": f"{name}@example.com", "name": name})
        assert response.status_code == 202, response.text
        assert response.headers["Location"] == response.json()["welcome"]["status_url"]
        return response.json()

    def resolve(self, url: str) -> dict[str, Any]:
        response = self.api.post("/episodes", json={"url": url})
        assert response.status_code == 202, response.text
        return response.json()


@pytest.fixture
def example(tmp_path: Path, jobkit_temporal_server: TemporalDevServer) -> Iterator[Example]:
    server = RedisServer(appendonly=True).start()
    site = MediaSite(page_delay=0.2).start()
    mail = MailServer(fail_every=2).start()
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "JOBKIT_REDIS_URL": server.url,
        "JOBKIT_TEMPORAL_ADDRESS": jobkit_temporal_server.address,
        "JOBKIT_TEMPORAL_TASK_QUEUE_PREFIX": f"example-{uuid.uuid4().hex[:8]}-",
        "JOBKIT_WORKER_HEARTBEAT": "1",
        "EXAMPLE_DATA_DIR": str(tmp_path / "data"),
        "EXAMPLE_MEDIA_SITE": site.url,
        "EXAMPLE_MAIL_API": mail.url,
        "EXAMPLE_FOLLOWUP_DELAY": "PT2S",
        "EXAMPLE_SYNC_CRON": "* * * * * */3",  # every 3 s (croniter's seconds field)
    }
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    example = Example(tmp_path, env, server, site, mail, api)
    try:
        for queue in ("default", "data_sync", "scheduled"):
            example.spawn(queue, ["bash", str(WORKERS / f"{queue}.sh")])
        example.spawn("app", [sys.executable, "-m", "uvicorn", "examples.app.main:app",
                              "--port", str(port)])  # fmt: skip
        workers = redis.Redis.from_url(server.url)
        poll(lambda: workers.scard("rq:workers") >= 3, "three RQ workers", 30)
        # Cron only now: a fire before the data_sync worker is up goes to Temporal, as it
        # should, but this test shows each job on RQ first.
        example.spawn("cron", ["bash", str(WORKERS / "cron.sh")])
        poll(_answers(api), "the app", 30)
        yield example
    finally:
        for name in list(example.processes):
            example.stop(name)
        for log in example.logs:
            log.close()
        api.close()
        site.stop()
        mail.stop()
        server.stop()


def _answers(api: httpx.Client) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return api.get("/openapi.json").status_code == 200
        except httpx.TransportError:
            return False

    return check


def welcome_mails(mail: MailServer, name: str) -> list[dict[str, Any]]:
    return [
        m for m in mail.messages_to(f"{name}@example.com") if m["subject"].startswith("Welcome")
    ]


def test_example_app_runs_on_rq_then_on_temporal_with_redis_stopped(example: Example) -> None:
    site, mail = example.site, example.mail

    # -- Redis up: everything runs on RQ -------------------------------------------------
    signups = [example.sign_up(name) for name in ("ada", "grace", "alan")]
    assert {s["welcome"]["engine"] for s in signups} == {"rq"}
    welcomes = [example.finished(s["welcome"]["job_id"]) for s in signups]
    assert any(w["attempts"] > 1 for w in welcomes), "the mail API's 503s were retried"
    for name in ("ada", "grace", "alan"):
        assert len(welcome_mails(mail, name)) == 1  # retries sent no duplicate
    followup = example.finished(signups[0]["followup"]["job_id"])
    assert followup["job_name"] == "emails.followup" and followup["engine"] == "rq"
    again = example.sign_up("ada")  # the form posted twice: the same welcome job
    assert again["welcome"]["job_id"] == signups[0]["welcome"]["job_id"]

    released = site.episodes["ep1"]
    job = example.resolve(site.page_url(released))
    episode = example.finished(job["job_id"])["result"]
    assert episode["sha256"] == hashlib.sha256(released.audio).hexdigest()
    assert Path(episode["file"]).read_bytes() == released.audio

    upcoming = httpx.post(
        f"{site.url}/admin/episodes", json={"title": "Live premiere", "premiere_in": 7}
    ).json()
    job = example.resolve(upcoming["url"])
    sleeping = poll(
        lambda: (j := example.job(job["job_id"]))["status"] == "sleeping" and j,
        "the job to sleep until the premiere",
    )
    assert sleeping["progress"]["message"].startswith("premieres at")
    info = example.finished(job["job_id"])
    assert info["engine"] == "rq" and info["result"]["title"] == "Live premiere"

    syncs = poll(lambda: example.api.get("/syncs").json(), "cron to run the nightly sync")
    sync = example.finished(syncs[0]["job_id"])
    assert sync["job_name"] == "sync.nightly" and sync["engine"] == "rq"
    assert sync["result"] == {"pages": 3, "episodes": syncs[0]["episodes"]}
    assert sync["progress"] == {"fraction": 1.0, "message": "page 3 of 3"}
    assert example.stop("cron") == 0, example.log("cron")

    # -- Redis stopped: the same jobs fall back to Temporal and complete ------------------
    example.redis.stop()
    signup = example.sign_up("barbara")
    assert signup["welcome"]["engine"] == "temporal"
    assert signup["welcome"]["reason"].startswith("redis-unhealthy")
    welcome = example.finished(signup["welcome"]["job_id"])
    assert welcome["engine"] == "temporal"
    assert len(welcome_mails(mail, "barbara")) == 1
    upcoming = httpx.post(
        f"{site.url}/admin/episodes", json={"title": "Fallback premiere", "premiere_in": 6}
    ).json()
    job = example.resolve(upcoming["url"])
    assert job["engine"] == "temporal"
    info = example.finished(job["job_id"])
    assert info["result"]["title"] == "Fallback premiere"
    sync = example.api.post("/syncs").json()
    assert example.finished(sync["job_id"])["result"]["pages"] == 3
    assert example.finished(signup["followup"]["job_id"])["engine"] == "temporal"

    # -- Redis back: jobs RQ workers held through the outage finish; then every worker
    # script exits cleanly on SIGTERM, after its running jobs (graceful shutdown) ----------
    example.redis.start()
    for queue in ("default", "data_sync", "scheduled"):
        assert example.stop(queue) == 0, example.log(queue)
        assert "giving up on Redis" not in example.log(queue)


def test_the_demo_runs_the_app_on_rq_then_on_temporal(tmp_path: Path) -> None:
    """`./dev demo` runs this command."""
    command = Path(ROOT / "dev").read_text()
    assert 'dev --import examples.app.jobs -- "$PY" -m examples.demo' in command
    env = {
        **os.environ,
        "EXAMPLE_DATA_DIR": str(tmp_path / "data"),
        "EXAMPLE_MEDIA_SITE": f"http://127.0.0.1:{free_port()}",
        "EXAMPLE_MAIL_API": f"http://127.0.0.1:{free_port()}",
    }
    run = subprocess.run(
        [
            *(sys.executable, "-m", "jobkit_dispatch.cli", "dev", "--import", "examples.app.jobs"),
            *("--", sys.executable, "-m", "examples.demo"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = "\n".join(line for line in run.stdout.splitlines() if not line.startswith("["))
    assert run.returncode == 0, out + run.stderr[-3000:]
    on_rq, on_temporal = out.split("== Redis stopped")
    assert on_rq.count("-> rq       reason: rq") == 5
    assert on_temporal.count("-> temporal reason: redis-unhealthy") == 5
    assert on_rq.count(" succeeded  on rq ") == 5
    assert on_temporal.count(" succeeded  on temporal ") == 5
    assert " sleeping " in on_rq and " sleeping " in on_temporal  # the premieres
    assert "demo succeeded" in out and "stack stopped" in out
