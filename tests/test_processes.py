"""Task workers (`--processes N`): the same plan as one process, one AssumeRole per account (made
by the parent), nothing written; interrupts stop every worker and keep what they completed; a
worker that dies or hangs fails exactly the targets it had not reported, by name, and
`--retry-failed` covers them; workers do not outlive a killed orgrunner.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil

from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli
from tests.emulator.client import EmulatorClient
from tests.test_faults_interrupt import REGION_ARGS, TOTAL, output, records, start, stop, wait_for
from tests.test_run_dry import assume_calls, new_requests, snapshot, writes

TASK = "strip-default-sg"
BROKEN_TASKS = Path(__file__).resolve().parent / "broken_tasks"


def planned(cli: Cli, name: str, *args: str) -> dict[tuple[str, str], list[dict[str, object]]]:
    report = cli.home / name
    result = cli.run("run", TASK, *REGION_ARGS, "--report", str(report), *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return {(r["account"], r["region"]): r["changes"] for r in records(report)}


def slow_sharded_plan(cli: Cli, emulator: EmulatorClient, latency_ms: int,
                      planned_first: int) -> tuple[subprocess.Popen[bytes], Path, list[psutil.Process]]:
    """A dry run over 2 worker processes against a slowed-down emulator, started in the background;
    returns once both workers run and `planned_first` targets are in its report."""
    emulator.set_latency(latency_ms)
    report = cli.home / "plan.jsonl"
    process = start(cli, "run", TASK, *REGION_ARGS, "--processes", "2", "--concurrency", "2",
                    "--report", str(report))
    wait_for(lambda: len(workers_of(process.pid)) == 2, "two workers")
    wait_for(lambda: len(records(report)) >= planned_first, f"{planned_first} target(s) planned")
    return process, report, workers_of(process.pid)


def workers_of(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_processes_plan_the_same_as_one_process_with_one_assume_role_per_account(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    members = list(org.accounts.values())
    before = snapshot(emulator.url, members)
    single = planned(cli, "one.jsonl", "--processes", "1")
    mark = len(emulator.requests())
    result = cli.run("run", TASK, *REGION_ARGS, "--report", str(cli.home / "three.jsonl"), "--processes", "3",
                     "--concurrency", "6")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "planning in 3 processes of 2 workers each" in result.stderr
    sharded = {(r["account"], r["region"]): r["changes"] for r in records(cli.home / "three.jsonl")}
    assert sharded == single and len(sharded) == TOTAL
    requests = new_requests(emulator, mark)
    calls = assume_calls(requests)
    assert sorted(c["target_account"] for c in calls) == sorted(members)  # one per account, whichever process
    assert len({(c["params"]["RoleSessionName"], c["params"]["Policy"]) for c in calls}) == 1
    assert writes(requests) == []
    assert snapshot(emulator.url, members) == before
    assert f"Plan: 8 account(s), 2 region(s), {TOTAL} target(s)" in result.stdout


def test_more_processes_than_accounts_start_one_per_account(cli: Cli, org: SandboxOrg) -> None:
    account = org.accounts["dev-app-1"]
    result = cli.run("run", TASK, "--account", account, "--account", org.accounts["prod-app-1"],
                     "--region", "us-east-1", "--processes", "8", "--concurrency", "8")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "planning in 2 processes of 4 workers each" in result.stderr


def test_armed_run_after_a_sharded_plan_applies_exactly_the_plan(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    members = sorted(org.accounts.values())
    result = cli.run("run", TASK, "--arm", "--region", "us-east-1", "--processes", "2",
                     "--confirm-accounts", ",".join(members))
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(not rules for rules in snapshot(emulator.url, members, ("us-east-1",)).values())
    assert any(rules for rules in snapshot(emulator.url, members, ("eu-west-1",)).values())


def test_processes_setting_is_validated_before_any_aws_call(cli: Cli, emulator: EmulatorClient) -> None:
    mark = len(emulator.requests())
    for bad in ("0", "65", "two"):
        result = cli.run("run", TASK, "--processes", bad)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "--processes" in result.stderr, result.stderr
    assert new_requests(emulator, mark) == []


def test_sigterm_stops_every_worker_and_keeps_what_they_completed(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    process, report, children = slow_sharded_plan(cli, emulator, 200, planned_first=3)
    code = stop(process, signal.SIGTERM)
    stdout, stderr = output(cli)
    assert code == 143, stderr[-2000:]
    assert "Traceback" not in stdout + stderr
    done = [r for r in records(report) if r["status"] == "ok"]
    assert 3 <= len(done) < TOTAL
    assert all(len(r["changes"]) == 1 for r in done)
    assert all(not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in children)
    end = [e for e in cli.audit() if e["event"] == "run-end"]
    assert end and end[-1]["status"] == "interrupted"


def test_a_worker_that_dies_fails_its_unreported_targets_and_retry_failed_covers_them(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    process, report, children = slow_sharded_plan(cli, emulator, 150, planned_first=1)  # each holds an account
    children[0].kill()  # as the out-of-memory killer would
    code = process.wait(120)
    stdout, stderr = output(cli)
    assert code == 1, stderr[-2000:]
    assert "Traceback" not in stdout + stderr
    lost = [r for r in records(report) if r["status"] == "failed"]
    assert lost and all("ended (killed by signal 9) before planning this target" in r["error"] for r in lost)
    # every account x region ends with exactly one result: planned, or failed by name
    reported = [(r["account"], r["region"]) for r in records(report)]
    assert len(reported) == len(set(reported)) == TOTAL
    assert {a for a, _ in reported} == set(org.accounts.values())

    emulator.set_latency(0)
    mark = len(emulator.requests())
    again = cli.run("run", TASK, "--retry-failed", str(report), "--processes", "2")
    assert again.returncode == 0, again.stderr[-2000:]
    retried = {c["target_account"] for c in assume_calls(new_requests(emulator, mark))}
    assert retried == {r["account"] for r in lost}



def test_a_worker_that_hangs_is_ended_and_fails_exactly_its_unreported_targets(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    """A task that never returns from plan in eu-west-1: the worker stops making progress, is ended
    after `worker_timeout` (SIGTERM, then SIGKILL), and every target it had not reported fails by
    name; the run ends with each account x region reported once."""
    config = cli.home / "orgrunner.yaml"
    config.write_text("worker_timeout: 2\n")
    report = cli.home / "plan.jsonl"
    result = cli.run("run", "hangs-in-plan", *REGION_ARGS, "--tasks-dir", str(BROKEN_TASKS), "--config", str(config),
                     "--processes", "1", "--concurrency", "2", "--report", str(report))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    reported = records(report)
    keys = [(r["account"], r["region"]) for r in reported]
    assert len(keys) == len(set(keys)) == TOTAL
    failed = [r for r in reported if r["status"] == "failed"]
    assert {r["account"] for r in failed if r["region"] == "eu-west-1"} == set(org.accounts.values())
    assert all("made no progress for 2 s; ended" in r["error"] or "no worker process left" in r["error"]
               for r in failed), failed
    assert any("made no progress" in r["error"] for r in failed)
    assert all(r["status"] == "ok" for r in reported if r not in failed)


def test_workers_do_not_outlive_a_killed_orgrunner(cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    process, _, children = slow_sharded_plan(cli, emulator, 200, planned_first=1)
    process.kill()
    process.wait(30)
    deadline = time.monotonic() + 30  # each notices at its next result (a few latencies)
    while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children):
        assert time.monotonic() < deadline, "worker processes outlived orgrunner"
        time.sleep(0.1)
