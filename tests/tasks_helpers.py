"""Helpers for the tests of built-in tasks: run the CLI against the emulator, write task configs,
and run a task's plan/apply directly with contexts whose clients are the engine's guarded ones,
acting through the emulator.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orgrunner.safety.confirm import confirm_listed
from orgrunner.safety.guard import CallGuard
from orgrunner.safety.policy import phase_actions
from orgrunner.task import GLOBAL_REGION, ApplyContext, Phase, Target, Task, TaskContext
from tests.emulator.client import EmulatorClient, member_client

ORGRUNNER = Path(sys.executable).parent / "orgrunner"


@dataclass
class CliRun:
    code: int
    out: str
    err: str
    report: list[dict[str, Any]]

    @property
    def changes(self) -> list[dict[str, Any]]:
        """Every change of the plan phase, as its JSON dict."""
        return [c for r in self.report if r["phase"] == "plan" for c in r["changes"]]

    def statuses(self, phase: str) -> list[str]:
        return [r["status"] for r in self.report if r["phase"] == phase]


def run_cli(emulator: EmulatorClient, tmp: Path, task: str, account: str, *args: str,
            regions: tuple[str, ...] = ("us-east-1",), config: Path | None = None) -> CliRun:
    """`orgrunner run TASK --account ACCOUNT --region R... ARGS` as a subprocess against the emulator."""
    report = tmp / f"report-{len(list(tmp.glob('report-*')))}.jsonl"
    cmd = [str(ORGRUNNER), "run", task, "--account", account, "--audit-log", str(tmp / "audit.jsonl"),
           "--report", str(report), "--details", "all", *[a for r in regions for a in ("--region", r)], *args]
    if config is not None:
        cmd += ["--config", str(config)]
    env = {**emulator.env(), "XDG_STATE_HOME": str(tmp / "state")}  # journal and locks: never the operator's
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp, check=False)
    lines = report.read_text().splitlines() if report.exists() else []
    return CliRun(done.returncode, done.stdout, done.stderr, [json.loads(line) for line in lines])


def task_config(tmp: Path, filename: str, text: str) -> Path:
    """A settings file in `tmp/conf` with the task's config file beside it; returns the settings file."""
    folder = tmp / "conf"
    folder.mkdir(exist_ok=True)
    (folder / filename).write_text(text)
    settings = folder / "orgrunner.yaml"
    settings.write_text("concurrency: 4\n")
    return settings


def guarded(task: Task, phase: Phase, client: Any) -> Any:
    """`client` with the engine's call guard for `phase` installed, as the runner hands it to tasks."""
    return CallGuard(task.name, phase, phase_actions(type(task), phase)).install(client)


def armed_context(task: Task, target: Target, clients: Any) -> ApplyContext:
    acct = {target.account_id}
    return ApplyContext(task, target, clients, confirm_listed(task.name, acct, acct, acct))


def emulator_contexts(emulator: EmulatorClient, task: Task, account: str,
                      region: str = GLOBAL_REGION) -> tuple[TaskContext, ApplyContext]:
    """Plan and apply contexts for one target whose clients act in `account` through the emulator."""
    target = Target(account, region)

    def clients(service: str, phase: Phase) -> Any:
        aws_region = "us-east-1" if region == GLOBAL_REGION else region
        return guarded(task, phase, member_client(emulator.url, account, service, aws_region))

    return TaskContext(task, target, clients), armed_context(task, target, clients)

