"""`jobkit worker` serving several engines as child processes, and `jobkit dev -- COMMAND`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobkit.settings import JobkitSettings
from jobkit_dispatch._dispatch import Dispatcher
from jobkit_dispatch.cli import main
from jobkit_dispatch.engines import JobRequest
from jobkit_dispatch.testing import RedisServer
from jobkit_dispatch.testing.temporal_server import TemporalDevServer

ROOT = Path(__file__).resolve().parents[1]


def test_import_finds_a_job_module_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "local_jobs_mod.py").write_text(
        "from jobkit_engine import job\n\n"
        "@job('local.hello')\n"
        "async def hello(ctx, payload: None) -> str:\n"
        "    return 'hi'\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    result = CliRunner().invoke(main, ["jobs", "--import", "local_jobs_mod"])
    assert result.exit_code == 0, result.output
    assert "local.hello" in result.output


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def worker_env(
    jobkit_redis_server: RedisServer, jobkit_temporal_server: TemporalDevServer
) -> dict[str, str]:
    return {
        **os.environ,
        "JOBKIT_REDIS_URL": jobkit_redis_server.url,
        "JOBKIT_TEMPORAL_ADDRESS": jobkit_temporal_server.address,
        "JOBKIT_TEMPORAL_TASK_QUEUE_PREFIX": f"procs-{os.getpid()}-{time.monotonic_ns()}-",
        "JOBKIT_WORKER_HEARTBEAT": "1",
    }


class Output:
    """A process's output, read as it comes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.lines.extend(process.stdout)

    @property
    def text(self) -> str:
        self._reader.join(timeout=60)
        return "".join(self.lines)


@pytest.fixture
def both_engines(
    worker_env: dict[str, str],
) -> Iterator[tuple[subprocess.Popen[str], Output]]:
    """`jobkit worker --engine all` serving `default`, with both engines' workers up."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "jobkit_dispatch.cli", "worker"),
            *("--engine", "all", "--queue", "default", "--import", "tests.jobs"),
        ],
        env=worker_env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    settings = JobkitSettings(
        redis_url=worker_env["JOBKIT_REDIS_URL"], worker_check_ttl=0, worker_heartbeat=1
    )
    dispatcher = Dispatcher(settings=settings)
    probe = JobRequest("probe", "probe", None, "default")
    output = Output(process)
    try:
        _wait(lambda: len(_children_of(process.pid)) == 2, 30, "two worker processes")
        _wait(lambda: dispatcher.engine("rq").availability(probe) is None, 60, "a live RQ worker")
        _wait(lambda: "on Temporal at" in "".join(output.lines), 60, "the Temporal worker")
        yield process, output
    finally:
        dispatcher.close()
        if process.poll() is None:
            process.kill()
        process.wait(60)


@pytest.mark.slow
def test_sigterm_stops_every_engine_worker_gracefully(
    both_engines: tuple[subprocess.Popen[str], Output],
) -> None:
    process, output = both_engines
    children = _children_of(process.pid)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0, output.text
    out = output.text
    assert "[rq] " in out and "[temporal] " in out
    assert "stopped" in out
    assert "aborting" not in out  # one SIGTERM reached each worker: finish, not abort
    assert not [pid for pid in children if _alive(pid)]


@pytest.mark.slow
def test_a_worker_that_dies_stops_the_others_and_fails_the_command(
    both_engines: tuple[subprocess.Popen[str], Output],
) -> None:
    process, output = both_engines
    rq_child, temporal_child = sorted(
        _children_of(process.pid),
        key=lambda pid: "temporal" in Path(f"/proc/{pid}/cmdline").read_text(),
    )
    os.kill(rq_child, signal.SIGKILL)
    assert process.wait(60) != 0
    assert "rq exited" in output.text
    _wait(lambda: not _alive(temporal_child), 10, "the temporal worker to stop")


@pytest.mark.slow
def test_workers_do_not_outlive_a_killed_parent(
    both_engines: tuple[subprocess.Popen[str], Output],
) -> None:
    process, _output = both_engines
    children = _children_of(process.pid)
    process.kill()
    process.wait(10)
    _wait(lambda: not [pid for pid in children if _alive(pid)], 30, "orphaned workers to stop")


@pytest.mark.slow
def test_dev_runs_a_command_against_the_stack_and_exits_with_its_status() -> None:
    script = (
        "import os, tests.jobs\n"
        "from jobkit_dispatch import dispatch_job\n"
        "from jobkit_dispatch.testing import wait_for_job\n"
        "d = dispatch_job('tests.greet', {'name': 'Ada'})\n"
        "info = wait_for_job(d.job_id, timeout=30)\n"
        "print('engine', d.engine, info.status, info.result)\n"
        "raise SystemExit(3)\n"
    )
    run = subprocess.run(
        [
            *(sys.executable, "-m", "jobkit_dispatch.cli", "dev", "--import", "tests.jobs"),
            *("--", sys.executable, "-c", script),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 3, run.stdout[-3000:] + run.stderr[-3000:]
    assert "export JOBKIT_REDIS_URL=redis://127.0.0.1:" in run.stdout
    assert "engine rq succeeded" in run.stdout
    assert "stack stopped" in run.stdout


@pytest.mark.slow
def test_sigterm_stops_jobkit_dev_and_every_server_it_started() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "jobkit_dispatch.cli", "dev", "--import", "tests.jobs"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(process)
    try:
        _wait(lambda: "stack is up" in "".join(output.lines), 120, "the stack")
        servers = _children_of(process.pid)
        assert len(servers) >= 4  # redis-server, temporal, the two workers
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, output.text
        assert "stack stopped" in output.text
        _wait(lambda: not [pid for pid in servers if _alive(pid)], 30, "the servers to stop")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
