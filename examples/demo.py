"""The example app's demo, run by `./dev demo` inside `jobkit dev`:

    jobkit dev --import examples.app.jobs -- python -m examples.demo

It starts the fake media site and mail API and the web app, then uses the app as a client
would: sign-ups, episode lookups (one premiering in a few seconds, so its job sleeps),
a catalog sync, each followed through `GET /jobs/{id}` to the end. Then it stops Redis and
does it again: the same endpoints, the same jobs, now on Temporal. Exit status 0 when
every job succeeded where it should have.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis
import uvicorn

# Before the app reads its settings: a follow-up a few seconds, not days, after signup.
os.environ.setdefault("EXAMPLE_FOLLOWUP_DELAY", "PT4S")

from examples.app.fakes import MailServer, MediaSite
from examples.app.main import app
from examples.app.settings import get_example_settings
from jobkit_dispatch.testing.redis_server import free_port

FINAL = ("succeeded", "failed", "cancelled")


@contextmanager
def serving() -> Iterator[tuple[httpx.Client, MediaSite]]:
    """The fakes on the ports the workers expect (EXAMPLE_*), and the app on a free one."""
    settings = get_example_settings()
    site = MediaSite(_port(settings.media_site), page_delay=0.3).start()
    mail = MailServer(_port(settings.mail_api), fail_every=2).start()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("the web app did not start")
        time.sleep(0.05)
    print(f"app on http://127.0.0.1:{server.config.port}, media site {site.url}, mail {mail.url}")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}") as api:
            yield api, site
    finally:
        server.should_exit = True
        thread.join(10)
        site.stop()
        mail.stop()


def _port(url: str) -> int:
    return urlsplit(url).port or 80


def post(api: httpx.Client, path: str, body: Any = None) -> dict[str, Any]:
    response = api.post(path, json=body)
    response.raise_for_status()
    return response.json()


def follow(api: httpx.Client, jobs: dict[str, str], timeout: float = 90.0) -> bool:
    """Poll `GET /jobs/{id}` for each (label, job id); print every change; True if all
    succeeded."""
    seen: dict[str, tuple[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for label, job_id in jobs.items():
            view = api.get(f"/jobs/{job_id}").json()
            state = (view["status"], view["progress"])
            if seen.get(label) != state:
                seen[label] = state
                print(f"  {label:22} {view['status']:10} on {view['engine']:8} {_detail(view)}")
        if all(status in FINAL for status, _ in seen.values()):
            return all(status == "succeeded" for status, _ in seen.values())
        time.sleep(0.2)
    print("  timed out")
    return False


def _detail(view: dict[str, Any]) -> str:
    if view["status"] == "succeeded":
        result = view["result"]
        if isinstance(result, dict):
            result = ", ".join(f"{k}={v}" for k, v in list(result.items())[:3])
        return f"attempt {view['attempts']}: {result}"
    if view["error"]:
        return f"{view['error']['type']}: {view['error']['message']}"
    if view["progress"]:
        return f"{view['progress']['fraction']:.0%} {view['progress']['message'] or ''}"
    return ""


def round_of_jobs(api: httpx.Client, site: MediaSite, who: str) -> tuple[bool, set[str]]:
    """Sign-up, two episode lookups and a sync through the app; (all succeeded, engines)."""
    signup = post(api, "/signups", {"email": f"{who}@example.com", "name": who.title()})
    released = post(api, "/episodes", {"url": f"{site.url}/episodes/ep1"})
    premiere = httpx.post(
        f"{site.url}/admin/episodes", json={"title": f"{who.title()} live", "premiere_in": 4}
    ).json()
    sleeper = post(api, "/episodes", {"url": premiere["url"]})
    sync = post(api, "/syncs")
    dispatched = {
        "welcome email": signup["welcome"],
        "follow-up (in 4 s)": signup["followup"],
        "episode (released)": released,
        "episode (premiere)": sleeper,
        "catalog sync": sync,
    }
    for label, d in dispatched.items():
        print(f"  {label:22} -> {d['engine']:8} reason: {d['reason']}")
    ok = follow(api, {label: d["job_id"] for label, d in dispatched.items()})
    return ok, {d["engine"] for d in dispatched.values()}


def main() -> int:
    redis_url = os.environ.get("JOBKIT_REDIS_URL")
    if not redis_url:
        raise SystemExit("run me inside the stack: jobkit dev --import examples.app.jobs -- ...")
    with serving() as (api, site):
        print("\n== Redis up: the app's jobs run on RQ ==")
        first_ok, first_engines = round_of_jobs(api, site, "ada")
        print("\n== Redis stopped: the same endpoints, now on Temporal ==")
        # The server may close the connection on its way down: that is it stopped.
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis.from_url(redis_url).shutdown(nosave=True)
        second_ok, second_engines = round_of_jobs(api, site, "grace")
    ok = first_ok and second_ok and first_engines == {"rq"} and second_engines == {"temporal"}
    print("\ndemo " + ("succeeded" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
