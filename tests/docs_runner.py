"""Run one document's code blocks in order, as a reader would.

`tests/test_docs.py` parses a Markdown file into blocks and starts this script with them
as JSON; it runs in the document's own working directory, so job modules and schedules a
document defines never meet another document's. Python blocks share one namespace and one
event loop (top-level `await` works, as in `python -m asyncio`); bash blocks run with
`set -euo pipefail`, and their exports and `cd` carry over to later blocks; background
blocks run until the document ends.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = 120.0


class BlockFailed(Exception):
    pass


class Background:
    """A `background` bash block: its output is collected, and it is stopped at the end."""

    def __init__(self, code: str, env: dict[str, str]) -> None:
        self.output: list[str] = []
        self.process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def wait_for(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, "".join(self.output)):
                return
            if self.process.poll() is not None:
                raise BlockFailed(f"exited ({self.process.returncode}) before {pattern!r}")
            time.sleep(0.05)
        raise BlockFailed(f"no {pattern!r} in its output within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._reader.join(timeout=2)


class Session:
    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__main__"}
        self.loop = asyncio.new_event_loop()
        self.background: list[Background] = []
        self.last_output = ""

    def run(self, block: dict[str, Any]) -> None:
        options: dict[str, str] = block["options"]
        code: str = block["code"]
        timeout = float(options.get("timeout", DEFAULT_TIMEOUT))
        if "file" in options:
            path = Path(options["file"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(code)
        elif block["lang"] == "python":
            self.last_output = self._python(code, block["name"], options.get("raises"))
        elif block["lang"] == "bash" and "background" in options:
            process = Background(code, dict(os.environ))
            self.background.append(process)
            if "ready" in options:
                process.wait_for(options["ready"], timeout)
        elif block["lang"] == "bash":
            self.last_output = self._bash(code, timeout)
        elif "output" in options:
            self._check_output(code)
        else:
            raise BlockFailed(f"nothing runs a {block['lang'] or 'plain'} block")

    def _python(self, code: str, name: str, raises: str | None) -> str:
        compiled = compile(code, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(_Tee(out)):
                result = eval(compiled, self.namespace)
                if inspect.isawaitable(result):
                    self.loop.run_until_complete(result)
        except Exception as exc:
            if raises and type(exc).__name__ == raises:
                return out.getvalue()
            raise
        if raises:
            raise BlockFailed(f"expected {raises}, nothing was raised")
        return out.getvalue()

    def _bash(self, code: str, timeout: float) -> str:
        """Run a bash block. What it exports (and `. .venv/bin/activate`) and where it
        `cd`s carry over to the blocks after it, as in the reader's terminal."""
        state = Path.cwd() / ".bash-state"
        keep = f'trap \'[ $? = 0 ] && {{ env -0 > "{state}.env"; pwd > "{state}.pwd"; }}\' EXIT\n'
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", keep + code],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        sys.stdout.write(run.stdout)
        sys.stdout.write(run.stderr)
        if run.returncode:
            raise BlockFailed(f"exit status {run.returncode}")
        env_file, pwd_file = Path(f"{state}.env"), Path(f"{state}.pwd")
        if env_file.exists():
            entries = env_file.read_text().split("\0")
            os.environ.clear()
            os.environ.update(e.split("=", 1) for e in entries if "=" in e)
            env_file.unlink()
        if pwd_file.exists():
            os.chdir(pwd_file.read_text().strip())
            pwd_file.unlink()
        return run.stdout + run.stderr

    def _check_output(self, expected: str) -> None:
        missing = [
            line.strip()
            for line in expected.splitlines()
            if line.strip() and line.strip() not in self.last_output
        ]
        if missing:
            raise BlockFailed(f"output lacks {missing!r}; it was:\n{self.last_output}")

    def close(self) -> None:
        for process in reversed(self.background):
            process.stop()
            sys.stdout.write(f"--- background output ---\n{''.join(process.output)}")
        self.loop.close()


class _Tee(io.TextIOBase):
    """Print as usual, and keep a copy for an `output` block to check."""

    def __init__(self, copy: io.StringIO) -> None:
        self.copy = copy

    def write(self, text: str) -> int:
        self.copy.write(text)
        return sys.__stdout__.write(text) if sys.__stdout__ else len(text)


def main(plan_file: str) -> int:
    # A page's own `jobs.py` must not be shadowed by the test suite's, next to this script.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    blocks = json.loads(Path(plan_file).read_text())
    session = Session()
    try:
        for block in blocks:
            try:
                session.run(block)
            except Exception:
                print(f"\n*** {block['name']} failed:", file=sys.stderr)
                traceback.print_exc()
                return 1
    finally:
        session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
