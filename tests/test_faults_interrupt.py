"""Interrupted runs: Ctrl-C (SIGINT) and SIGTERM stop new targets, let the work in flight finish and
record it, and exit 130 / 143; a SIGKILL leaves a journal that, with a fresh dry run, accounts for
every rule.

Each test starts the installed `orgrunner` as a subprocess against an organization whose calls are
slowed down by the emulator, waits until some targets are done, and signals it.
"""

from __future__ import annotations

import fcntl
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orgrunner.sandbox.org import SandboxOrg
from orgrunner.task import Change
from tests.cli import Cli, orgrunner_command
from tests.emulator.client import EmulatorClient
from tests.test_run_dry import Snapshot, assume_calls, new_requests, snapshot, writes

REGIONS = ("us-east-1", "eu-west-1")
REGION_ARGS = tuple(x for r in REGIONS for x in ("--region", r))
CONCURRENCY = 2
TOTAL = 8 * len(REGIONS)  # the seeded organization's members x regions


# --- helpers ------------------------------------------------------------------------------------

def start(cli: Cli, *args: str, stdout: Any = None) -> subprocess.Popen[bytes]:
    """`orgrunner ARGS` in the background, without a terminal; output to files unless given."""
    with (cli.home / "stdout.txt").open("wb") as out, (cli.home / "stderr.txt").open("wb") as err:
        return subprocess.Popen([orgrunner_command(), *args], env=cli.env(), cwd=cli.home,
                                stdin=subprocess.DEVNULL, stdout=out if stdout is None else stdout, stderr=err)


def output(cli: Cli) -> tuple[str, str]:
    return (cli.home / "stdout.txt").read_text(), (cli.home / "stderr.txt").read_text()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def records(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON lines file, each whole (a torn line fails here)."""
    return [json.loads(line) for line in lines(path)]


def journal_files(cli: Cli) -> list[Path]:
    return sorted((cli.home / "state" / "orgrunner" / "journal").glob("*.jsonl"))


def journal_lines(cli: Cli) -> int:
    return sum(len(lines(p)) for p in journal_files(cli))


def key_of(change: dict[str, Any]) -> tuple[str, str, str, str]:
    return change["account_id"], change["region"], change["resource"], change["action"]


def outcomes(entries: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], tuple[str, dict[str, Any]]]:
    """Each change's last journal status (`applying` when its outcome was never written), and the change."""
    last: dict[tuple[str, str, str, str], tuple[str, dict[str, Any]]] = {}
    for entry in entries:
        last[key_of(entry["change"])] = (entry["status"], entry["change"])
    return last


def stop(process: subprocess.Popen[bytes], sig: int, timeout: float = 60) -> int:
    process.send_signal(sig)
    try:
        return process.wait(timeout)
    finally:
        if process.poll() is None:
            process.kill()


def rule_ids(changes: list[dict[str, Any]]) -> list[str]:
    return [r["SecurityGroupRuleId"] for c in changes for r in c["before"]["rules"]]


def live_ids(state: Snapshot) -> set[str]:
    return {rule_id for rules in state.values() for rule_id in rules}


def quiet(emulator: EmulatorClient, settle: float = 1.0) -> None:
    """Wait until the emulator has answered everything sent to it (a killed client's last requests
    still reach AWS): no new request recorded for `settle` seconds."""
    count, since = len(emulator.requests()), time.monotonic()
    while time.monotonic() - since < settle:
        time.sleep(0.1)
        now = len(emulator.requests())
        if now != count:
            count, since = now, time.monotonic()


def rule_hits(emulator: EmulatorClient, rule_id: int) -> int:
    """How many requests an emulator fault rule has matched (counted as they arrive, before any latency)."""
    with urllib.request.urlopen(f"{emulator.url}/_emulator/rules", timeout=10) as answer:
        return int(next(r["hits"] for r in json.load(answer) if r["id"] == rule_id))


def audit_of(cli: Cli, run_id: str) -> list[dict[str, Any]]:
    return [e for e in cli.audit() if e["run_id"] == run_id]


def dry_run_plan(cli: Cli, name: str, *selectors: str) -> dict[tuple[str, str], list[str]]:
    """A fresh dry run: target -> the rule ids it plans to remove."""
    report = cli.home / name
    result = cli.run("run", "strip-default-sg", *(selectors or REGION_ARGS), "--report", str(report))
    assert result.returncode == 0, result.stderr[-2000:]
    return {(r["account"], r["region"]): rule_ids(r["changes"]) for r in records(report) if r["changes"]}


# --- Ctrl-C during a dry run ------------------------------------------------------------------------

def interrupt_plan(cli: Cli, emulator: EmulatorClient, sig: int = signal.SIGINT) -> tuple[int, Path, int]:
    emulator.set_latency(200)
    report = cli.home / "plan.jsonl"
    process = start(cli, "run", "strip-default-sg", *REGION_ARGS, "--concurrency", str(CONCURRENCY),
                    "--report", str(report))
    wait_for(lambda: len(lines(report)) >= 3, "three targets planned")
    assumed = len(assume_calls(emulator.requests()))
    return stop(process, sig), report, assumed


def test_ctrl_c_during_a_dry_run_records_what_completed_and_exits_130(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    mark = len(emulator.requests())
    code, report, assumed_at_signal = interrupt_plan(cli, emulator)
    stdout, stderr = output(cli)
    assert code == 130, stderr[-2000:]
    assert "interrupted: no new targets started" in stderr

    # the report: whole lines, one per completed target, fewer than all of them; the regions of an
    # account being opened at the signal are reported skipped, never as planned
    reported = records(report)
    assert len({(r["account"], r["region"]) for r in reported}) == len(reported)
    opened = [r for r in reported if r["status"] == "skipped"]
    assert all(r["error"] == "interrupted before start" and not r["changes"] for r in opened), opened
    done = [r for r in reported if r not in opened]
    assert 3 <= len(done) < TOTAL
    assert all(r["phase"] == "plan" and r["status"] == "ok" and len(r["changes"]) == 1 for r in done), done
    requests = new_requests(emulator, mark)
    # every reported target really was planned to the end (its last read answered)
    finished = {(r["account"], r["region"]) for r in requests if r["operation"] == "DescribeSecurityGroupRules"}
    assert {(r["account"], r["region"]) for r in done} <= finished
    # nothing new started after the signal: at most the accounts in flight assumed their role since
    assert len(assume_calls(requests)) - assumed_at_signal <= CONCURRENCY
    assert writes(requests) == []

    # the audit log: the run's start and end (interrupted), and the planned changes that were reported
    run_id = done[0]["run_id"]
    events = audit_of(cli, run_id)
    assert [e["event"] for e in events if e["event"].startswith("run-")] == ["run-start", "run-end"]
    end = events[-1]
    assert end["event"] == "run-end" and end["status"] == "interrupted"
    assert end["plan"]["targets"] >= len(done)
    planned = [e for e in events if e["event"] == "planned"]
    assert len(planned) >= len(done)
    # targets still queued were cancelled quietly
    assert "Traceback" not in stdout + stderr and "exception calling callback" not in stderr, stderr[-3000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_SETPIPE_SZ is Linux-only")
def test_ctrl_c_while_output_is_blocked_still_reports_every_completed_target(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    """`orgrunner run ... | less`, the pager waiting: stdout is full, every worker finishes its target,
    and the operator presses Ctrl-C. Every completed target must be in the report."""
    report = cli.home / "plan.jsonl"
    mark = len(emulator.requests())
    process = start(cli, "run", "strip-default-sg", *REGION_ARGS, "--concurrency", str(CONCURRENCY),
                    "--report", str(report), stdout=subprocess.PIPE)
    assert process.stdout is not None
    fcntl.fcntl(process.stdout.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)  # a small pager buffer

    def all_planned() -> bool:
        return len([r for r in new_requests(emulator, mark) if r["operation"] == "DescribeSecurityGroupRules"]) == TOTAL

    wait_for(all_planned, "every target planned")
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)  # the pager reads again
    assert process.returncode == 130
    assert len(records(report)) == TOTAL


def test_ctrl_c_while_accounts_are_being_opened_reports_no_phantom_target(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    emulator.set_latency(300)
    report = cli.home / "plan.jsonl"
    mark = len(emulator.requests())
    process = start(cli, "run", "strip-default-sg", *REGION_ARGS, "--concurrency", str(CONCURRENCY),
                    "--report", str(report))
    wait_for(lambda: bool(assume_calls(new_requests(emulator, mark))), "the first role assumed")
    assert stop(process, signal.SIGINT) == 130
    stdout, _ = output(cli)
    assert "cannot schedule new futures" not in stdout
    assert [r for r in records(report) if r["account"] == "?"] == []


# --- SIGTERM during an armed run ------------------------------------------------------------------

def test_sigterm_during_apply_finishes_and_journals_every_change_in_flight_and_a_rerun_plans_the_rest(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    accounts = sorted(org.accounts.values())
    seeded = snapshot(emulator.url, accounts)
    emulator.add_rule(service="ec2", operation="RevokeSecurityGroup*", latency_ms=300)
    report = cli.home / "armed.jsonl"
    process = start(cli, "run", "strip-default-sg", "--arm", "--confirm-accounts", ",".join(accounts),
                    *REGION_ARGS, "--concurrency", str(CONCURRENCY), "--report", str(report))
    wait_for(lambda: journal_lines(cli) >= 2, "two changes applied")
    code = stop(process, signal.SIGTERM)
    _, stderr = output(cli)
    assert code == 143, stderr[-2000:]
    assert "interrupted" in stderr

    after = snapshot(emulator.url, accounts)
    (journal,) = journal_files(cli)
    entries = records(journal)
    final = outcomes(entries)
    # each change: an `applying` line before the call, then its outcome; none left in doubt
    for key in final:
        assert [e["status"] for e in entries if key_of(e["change"]) == key] == ["applying", "applied"], key
    assert {status for status, _ in final.values()} == {"applied"}
    changes = [change for _, change in final.values()]
    assert 2 <= len(changes) < TOTAL  # stopped early

    # nothing half-done, nothing half-recorded: each group is stripped and journaled, or untouched
    journaled = {(c["account_id"], c["region"]) for c in changes}
    for target, rules in after.items():
        if target in journaled:
            assert rules == {}, target
        else:
            assert rules == seeded[target], target
    removed = live_ids(seeded) - live_ids(after)
    assert sorted(rule_ids(changes)) == sorted(removed)

    # the audit log has the same applied changes, and the run's end as interrupted
    run_id = journal.stem
    events = audit_of(cli, run_id)
    applied = [e for e in events if e["event"] == "applied"]  # each a summary and the digest of the whole
    assert sorted(e["sha256"] for e in applied) == sorted(Change.from_dict(c).digest() for c in changes)
    assert {e["status"] for e in applied} == {"applied"}
    assert events[-1]["event"] == "run-end" and events[-1]["status"] == "interrupted"
    apply_records = [r for r in records(report) if r["phase"] == "apply"]
    assert {(r["account"], r["region"]) for r in apply_records} <= journaled

    # a fresh dry run plans exactly the rules that remain
    remaining = dry_run_plan(cli, "replan.jsonl")
    assert set(remaining) == {t for t, rules in after.items() if rules}
    assert sorted(i for ids in remaining.values() for i in ids) == sorted(live_ids(after))


# --- SIGKILL during an armed run ----------------------------------------------------------------------

def test_after_a_sigkill_the_journal_and_a_fresh_dry_run_account_for_every_rule(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    accounts = sorted(org.accounts.values())
    seeded = snapshot(emulator.url, accounts)
    emulator.add_rule(service="ec2", operation="RevokeSecurityGroupIngress", latency_ms=300)
    process = start(cli, "run", "strip-default-sg", "--arm", "--confirm-accounts", ",".join(accounts),
                    *REGION_ARGS, "--concurrency", str(CONCURRENCY))
    wait_for(lambda: len([e for p in journal_files(cli) for e in records(p) if e["status"] == "applied"]) >= 3,
             "three changes applied")
    assert stop(process, signal.SIGKILL) == -signal.SIGKILL
    quiet(emulator)  # requests the killed process had sent still reach AWS, and AWS applies them

    (journal,) = journal_files(cli)
    final = outcomes(records(journal))  # fsynced whole lines: none torn
    applied = set(rule_ids([c for status, c in final.values() if status == "applied"]))
    in_doubt = [c for status, c in final.values() if status == "applying"]  # killed during the call
    assert {status for status, _ in final.values()} <= {"applied", "applying"}
    assert len(in_doubt) <= CONCURRENCY
    after = snapshot(emulator.url, accounts)
    live = live_ids(after)

    # none applied twice or recorded wrongly: a rule journaled as removed is gone
    assert not applied & live
    # none lost: every seeded rule is still there (a fresh dry run plans it) or in the journal,
    # removed for sure (`applied`) or possibly (`applying`: AWS may have acted before the kill)
    assert live_ids(seeded) <= applied | set(rule_ids(in_doubt)) | live
    remaining = dry_run_plan(cli, "replan.jsonl")
    assert sorted(i for ids in remaining.values() for i in ids) == sorted(live)

    # finishing the job removes exactly what is left (the killed run's lock did not survive it)
    emulator.clear_rules()
    finish = cli.run("run", "strip-default-sg", "--arm", "--confirm-accounts", ",".join(accounts), *REGION_ARGS)
    assert finish.returncode == 0, finish.stderr[-2000:]
    (second,) = [p for p in journal_files(cli) if p != journal]
    again = set(rule_ids([c for status, c in outcomes(records(second)).values() if status == "applied"]))
    assert again == live and not again & applied
    assert live_ids(snapshot(emulator.url, accounts)) == set()


def test_a_sigkill_between_aws_and_the_journal_leaves_the_change_in_doubt_and_undo_restores_it(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    """Killed while the last call of a change is on its way: AWS applies it, the outcome line is
    never written. The journal's `applying` line keeps the change, with every rule in full."""
    account = org.accounts["dev-app-1"]
    target = (account, "us-east-1")
    seeded = snapshot(emulator.url, [account], ["us-east-1"])
    held = emulator.add_rule(service="ec2", operation="RevokeSecurityGroupEgress", account=account, latency_ms=2000)
    process = start(cli, "run", "strip-default-sg", "--arm", "--account", account, "--region", "us-east-1",
                    "--confirm-accounts", account)
    wait_for(lambda: rule_hits(emulator, held) > 0, "the egress revoke to reach AWS")  # the ingress one is done
    assert stop(process, signal.SIGKILL) == -signal.SIGKILL
    wait_for(lambda: bool(emulator.requests(operation="RevokeSecurityGroupEgress")), "AWS to apply it", 10)
    assert snapshot(emulator.url, [account], ["us-east-1"]) == {target: {}}  # AWS applied it all

    (journal,) = journal_files(cli)
    ((status, change),) = outcomes(records(journal)).values()
    assert status == "applying"
    assert sorted(rule_ids([change])) == sorted(seeded[target])
    assert "run-end" not in [e["event"] for e in cli.audit()]  # the process died
    assert dry_run_plan(cli, "replan.jsonl", "--account", account, "--region", "us-east-1") == {}

    undo = cli.run("undo", journal.stem, "--arm", "--confirm-accounts", account)
    assert undo.returncode == 0, undo.stderr[-2000:]
    assert "possibly applied" in undo.stderr
    restored = snapshot(emulator.url, [account], ["us-east-1"])[target]
    assert contents(restored) == contents(seeded[target])  # the same rules again (with new ids)


def contents(rules: dict[str, dict[str, Any]]) -> list[str]:
    """Rules without what changes when a rule is recreated."""
    ids = ("SecurityGroupRuleId", "GroupId", "GroupOwnerId", "Tags")
    return sorted(json.dumps({k: v for k, v in r.items() if k not in ids}, sort_keys=True) for r in rules.values())
