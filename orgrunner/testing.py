"""Testing a task with pytest, in your own repository: a small supported module.

In your `conftest.py`::

    pytest_plugins = ["orgrunner.testing"]

Then a test asks for two fixtures:

- `emulated_org`: an emulated organization (moto in server mode, one for the test session, reset
  and seeded again for each test): a management account and members in nested OUs, as
  `orgrunner sandbox serve` has. `emulated_org.accounts` maps member names to ids;
  `emulated_org.client(account_id, "ec2", "eu-west-1")` is a boto3 client acting in that member
  account, to set up state before a run and check it after.
- `orgrunner`: runs the installed `orgrunner` command against it, as an operator would, with a
  private state folder (audit log, journal, locks) under the test's temporary folder, never the
  operator's own. `orgrunner("run", TASK, "--dry-run", ...)` returns a `CliRun`: exit code,
  stdout, stderr and the parsed `--report` lines (`.changes`: the planned changes).

Needs the `sandbox` extra (moto).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from orgrunner.sandbox.org import (
    SANDBOX_ENV_CREDENTIALS,
    SandboxOrg,
    sandbox_environment,
    seed_organization,
    start_emulator,
)

__all__ = ["CliRun", "EmulatedOrg", "OrgRunner", "emulated_org", "orgrunner", "orgrunner_emulator_url"]

_REPORTING = {"run", "apply", "undo"}


@dataclass
class EmulatedOrg:
    """A seeded organization in the emulator at `url`."""

    url: str
    org: SandboxOrg

    @property
    def accounts(self) -> dict[str, str]:
        """Member account name -> id (active members)."""
        return self.org.accounts

    @property
    def ous(self) -> dict[str, str]:
        return self.org.ous

    def client(self, account_id: str, service: str, region: str = "us-east-1") -> Any:
        """A boto3 client acting in `account_id` (its OrganizationAccountAccessRole)."""
        management = boto3.session.Session(
            aws_access_key_id=SANDBOX_ENV_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=SANDBOX_ENV_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=SANDBOX_ENV_CREDENTIALS["AWS_SESSION_TOKEN"], region_name="us-east-1")
        sts: Any = management.client("sts", endpoint_url=self.url)
        creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account_id}:role/OrganizationAccountAccessRole",
                                RoleSessionName="orgrunner-testing")["Credentials"]
        member = boto3.session.Session(aws_access_key_id=creds["AccessKeyId"],
                                       aws_secret_access_key=creds["SecretAccessKey"],
                                       aws_session_token=creds["SessionToken"], region_name=region)
        client: Any = member.client(service, endpoint_url=self.url)  # type: ignore[call-overload]
        return client


@dataclass
class CliRun:
    """One `orgrunner` command's result."""

    code: int
    out: str
    err: str
    report: list[dict[str, Any]] = field(default_factory=list)

    @property
    def changes(self) -> list[dict[str, Any]]:
        """The planned changes, from the `--report` lines of the plan phase."""
        return [c for line in self.report if line["phase"] == "plan" for c in line["changes"]]

    def statuses(self, phase: str) -> list[str]:
        return [line["status"] for line in self.report if line["phase"] == phase]


class OrgRunner:
    """Runs `orgrunner` against the emulator, from `home`, with its own state folder."""

    def __init__(self, url: str, home: Path) -> None:
        self.url = url
        self.home = home
        self.state = home / "state"
        self._runs = 0

    def env(self) -> dict[str, str]:
        nowhere = str(self.home / "no-aws-config")  # never the operator's AWS config or credentials
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
                "XDG_STATE_HOME": str(self.state), "ORGRUNNER_STATE_DIR": str(self.state / "orgrunner"),
                "AWS_CONFIG_FILE": nowhere, "AWS_SHARED_CREDENTIALS_FILE": nowhere, "NO_COLOR": "1",
                "COLUMNS": "200", **sandbox_environment(self.url)}

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = 300) -> CliRun:
        report: Path | None = None
        extra: list[str] = []
        if args and args[0] in _REPORTING and "--report" not in args:
            self._runs += 1
            report = self.home / f"report-{self._runs}.jsonl"
            extra = ["--report", str(report)]
        done = subprocess.run([sys.executable, "-m", "orgrunner", *args, *extra], input=stdin,
                              stdin=None if stdin is not None else subprocess.DEVNULL, capture_output=True,
                              text=True, env=self.env(), cwd=self.home, timeout=timeout)
        lines = []
        if report is not None and report.is_file():
            lines = [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines() if line.strip()]
        return CliRun(done.returncode, done.stdout, done.stderr, lines)


@pytest.fixture(scope="session")
def orgrunner_emulator_url() -> Iterator[str]:
    """One emulator for the test session."""
    with start_emulator() as emulator:
        yield emulator.url


@pytest.fixture
def emulated_org(orgrunner_emulator_url: str) -> EmulatedOrg:
    """The emulator reset, and a fresh organization seeded in it."""
    request = urllib.request.Request(f"{orgrunner_emulator_url}/moto-api/reset", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=60):
        pass
    return EmulatedOrg(orgrunner_emulator_url, seed_organization(orgrunner_emulator_url))


@pytest.fixture
def orgrunner(emulated_org: EmulatedOrg, tmp_path: Path) -> OrgRunner:
    """The `orgrunner` command against `emulated_org`, from a scratch folder with its own state."""
    home = tmp_path / "orgrunner-home"
    home.mkdir()
    return OrgRunner(emulated_org.url, home)
