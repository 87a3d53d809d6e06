"""One emulator (moto server + tests/emulator/middleware.py) per test session, reset before each test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orgrunner.sandbox.org import SandboxOrg, seed_organization, start_emulator
from tests.cli import Cli
from tests.emulator.client import EmulatorClient

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def _emulator_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorClient]:
    with start_emulator(
        wsgi_wrapper="tests.emulator.middleware:wrap", extra_env={"PYTHONPATH": str(REPO_ROOT)}
    ) as process:
        yield EmulatorClient(process.url, tmp_path_factory.mktemp("aws-home"), process.token)


@pytest.fixture(autouse=True)
def emulator(_emulator_session: EmulatorClient, monkeypatch: pytest.MonkeyPatch) -> EmulatorClient:
    """The emulator, freshly reset; the test process's AWS_* environment points at it only."""
    _emulator_session.reset()
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in _emulator_session.aws_env().items():
        monkeypatch.setenv(name, value)
    return _emulator_session


@pytest.fixture
def org(emulator: EmulatorClient) -> SandboxOrg:
    return seed_organization(emulator.url)


@pytest.fixture
def cli(emulator: EmulatorClient, tmp_path: Path) -> Cli:
    """The installed orgrunner command, run against the emulator from a scratch folder."""
    return Cli(emulator, tmp_path)
