"""Unattended runs (cron, CI): without a terminal no prompt, no colour, no progress display, plain
lines; `--format json` for one machine-readable summary on stdout; `--fail-on-changes` for drift
detection (exit 4); exit codes as documented."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pexpect
import pytest

from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli, orgrunner_command
from tests.emulator.client import EmulatorClient, member_client

REGION = "us-east-1"
PLAIN_LINE = re.compile(r"^(?:\d{12} +\S+ +[a-z]{2}-[a-z]+-\d +\S.*"  # one per target (failed, applied...)
                        r"|  (?:account|kind of change|\d{12} \S+|[a-z-]+) +.*"  # the summary's rows
                        r"|Needs a look first \(\d+ change\(s\)\):|Other changes \(\d+\):"  # the details...
                        r"|\d{12} \S+|  [a-z]{2}-[a-z]+-\d"  # ...grouped by account and region
                        r"|    [!~] \S.*|        - \S.*"  # a change, and its details
                        r"|\d+ other change\(s\) not shown .*"
                        r"|Plan: .*|Apply: .*|Dry run: .*|Run \d{8}T\d{6}Z-[0-9a-f]{6}: .*|Next: .*|Review: .*)$")
JSON_KEYS = {"run_id", "task", "mode", "status", "exit_code", "plan", "apply", "failed_targets"}
TALLY_KEYS = {"targets", "changes", "failed", "skipped", "accounts", "accounts_with_changes", "outcomes"}


def check(result: subprocess.CompletedProcess[str], code: int) -> subprocess.CompletedProcess[str]:
    assert result.returncode == code, (result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    return result


def selectors(accounts: list[str], regions: tuple[str, ...] = (REGION,)) -> list[str]:
    return [*[x for a in accounts for x in ("--account", a)], *[x for r in regions for x in ("--region", r)]]


def colourful_env(cli: Cli) -> dict[str, str]:
    """An environment that would invite colours if orgrunner looked at it rather than at the TTY."""
    env = cli.env(TERM="xterm-256color", COLORTERM="truecolor")
    env.pop("NO_COLOR", None)
    return env


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The whole stdout is one JSON document."""
    data: dict[str, Any] = json.loads(result.stdout)
    assert set(data) >= JSON_KEYS, data
    assert set(data["plan"]) >= TALLY_KEYS and set(data["apply"]) >= TALLY_KEYS
    return data


def rules_left(url: str, account: str, region: str = REGION) -> int:
    ec2 = member_client(url, account, "ec2", region)
    groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["default"]}])["SecurityGroups"]
    ids = [g["GroupId"] for g in groups]
    return len(ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": ids}])["SecurityGroupRules"])


@pytest.fixture
def pair(org: SandboxOrg) -> list[str]:
    return [org.accounts["dev-app-2"], org.accounts["sandbox-2"]]


# --- no colour, no progress, plain lines -------------------------------------------------------

def test_output_without_a_terminal_is_plain_lines(cli: Cli, emulator: EmulatorClient, pair: list[str],
                                                  tmp_path: Path) -> None:
    env = colourful_env(cli)
    runs = {
        "dry run": check(cli.run("run", "strip-default-sg", "--dry-run", "--plan-out", str(tmp_path / "p.json"),
                                 *selectors(pair), env=env), 0),
        "refused": check(cli.run("run", "strip-default-sg", "--arm", *selectors(pair), env=env), 3),
        "drift check": check(cli.run("run", "strip-default-sg", "--fail-on-changes", *selectors(pair), env=env), 4),
        "json": check(cli.run("run", "strip-default-sg", "--format", "json", *selectors(pair), env=env), 0),
        "armed": check(cli.run("run", "strip-default-sg", "--arm", "--confirm-accounts", ",".join(pair),
                               *selectors(pair), env=env), 0),
        "undo": check(cli.run("undo", [e for e in cli.audit() if e["event"] == "run-start"][-1]["run_id"],
                              env=env), 0),
        "apply (drifted)": check(cli.run("apply", str(tmp_path / "p.json"), "--confirm-accounts", ",".join(pair),
                                         env=env), 3),
        "bad input": check(cli.run("run", "no-such-task", env=env), 2),
        "usage error": check(cli.run("run", "strip-default-sg", "--no-such-option", env=env), 2),
    }
    for name, result in runs.items():
        for stream, text in (("stdout", result.stdout), ("stderr", result.stderr)):
            assert "\x1b" not in text, (name, stream, text[:2000])
            assert "\r" not in text, (name, stream, text[:2000])  # no progress bar redrawing a line
            assert not set(text) & set("━╸╺─│╭╮╰╯"), (name, stream, text[:2000])  # no bars, no panels
            assert "To apply, type" not in text, (name, stream)  # no prompt
    # text output: every stdout line is one of the documented line kinds
    for name in ("dry run", "drift check", "armed", "undo"):
        lines = [line for line in runs[name].stdout.splitlines() if line.strip()]
        assert lines, name
        assert [line for line in lines if not PLAIN_LINE.match(line)] == [], name
    # the refused and drifted runs said so in one line each
    assert [line for line in runs["refused"].stderr.splitlines() if line.startswith("orgrunner: ")]
    assert [line for line in runs["apply (drifted)"].stderr.splitlines() if line.startswith("drift: ")]


def test_no_prompt_even_when_stdin_stays_open(cli: Cli, emulator: EmulatorClient, pair: list[str],
                                              tmp_path: Path) -> None:
    """A pipe that never closes (a scheduler's stdin): an armed run without --confirm-accounts is
    refused at once rather than waiting for an answer."""
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen([orgrunner_command(), "run", "strip-default-sg", "--arm", *selectors(pair)],
                                   stdin=subprocess.PIPE, stdout=stdout, stderr=stderr, env=cli.env(), cwd=cli.home)
        try:
            code = process.wait(timeout=90)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            assert process.stdin is not None
            process.stdin.close()
    assert code == 3, (out.read_text(), err.read_text())
    assert "--confirm-accounts" in err.read_text()
    assert all(rules_left(emulator.url, a) == 5 for a in pair)


# --- --format json -----------------------------------------------------------------------------

def test_format_json_is_one_document_on_stdout(cli: Cli, emulator: EmulatorClient, pair: list[str]) -> None:
    result = check(cli.run("run", "strip-default-sg", "--format", "json", *selectors(pair, (REGION, "eu-west-1"))), 0)
    data = summary(result)
    assert data["status"] == "ok" and data["exit_code"] == 0 and data["mode"] == "dry-run"
    assert data["task"] == "strip-default-sg"
    assert data["plan"]["targets"] == 4 and data["plan"]["changes"] == 4 and data["plan"]["failed"] == 0
    assert data["plan"]["accounts"] == 2 and data["plan"]["accounts_with_changes"] == 2
    assert data["failed_targets"] == []
    assert [e["run_id"] for e in cli.audit() if e["event"] == "run-start"] == [data["run_id"]]
    # the plan went to stderr
    assert result.stderr.count("    ! ") == 4 and "Plan: 2 account(s)" in result.stderr


def test_format_json_of_an_armed_run_counts_what_was_applied(cli: Cli, emulator: EmulatorClient,
                                                             pair: list[str]) -> None:
    result = check(cli.run("run", "strip-default-sg", "--arm", "--confirm-accounts", ",".join(pair),
                           "--format", "json", *selectors(pair)), 0)
    data = summary(result)
    assert data["mode"] == "armed" and data["status"] == "ok" and data["exit_code"] == 0
    assert data["apply"]["outcomes"] == {"applied": 2}
    assert data["apply"]["targets"] == 2 and data["apply"]["failed"] == 0
    assert all(rules_left(emulator.url, a) == 0 for a in pair)


def test_format_json_of_a_refused_run_says_so(cli: Cli, emulator: EmulatorClient, pair: list[str]) -> None:
    result = check(cli.run("run", "strip-default-sg", "--arm", "--format", "json", *selectors(pair)), 3)
    data = summary(result)
    assert data["exit_code"] == 3
    assert data["status"].startswith("refused") and "--confirm-accounts" in data["status"]
    assert data["apply"]["targets"] == 0
    assert all(rules_left(emulator.url, a) == 5 for a in pair)


def test_format_json_when_no_account_matches_is_still_one_document(cli: Cli, org: SandboxOrg) -> None:
    result = check(cli.run("run", "strip-default-sg", "--format", "json", "--account", org.suspended_account_id), 0)
    data = json.loads(result.stdout)
    assert data["exit_code"] == 0
    assert data["plan"]["targets"] == 0 and data["failed_targets"] == []


# --- --fail-on-changes -------------------------------------------------------------------------

def test_fail_on_changes_exits_4_with_changes_and_0_without(cli: Cli, emulator: EmulatorClient,
                                                            pair: list[str]) -> None:
    pending = check(cli.run("run", "strip-default-sg", "--fail-on-changes", *selectors(pair)), 4)
    assert "Dry run: nothing was changed" in pending.stdout
    as_json = summary(check(cli.run("run", "strip-default-sg", "--fail-on-changes", "--format", "json",
                                    *selectors(pair)), 4))
    assert as_json["exit_code"] == 4 and as_json["status"] == "changes pending" and as_json["plan"]["changes"] == 2
    assert all(rules_left(emulator.url, a) == 5 for a in pair)  # still a dry run

    check(cli.run("run", "strip-default-sg", "--arm", "--confirm-accounts", ",".join(pair), *selectors(pair)), 0)
    clean = check(cli.run("run", "strip-default-sg", "--fail-on-changes", *selectors(pair)), 0)
    assert "0 change(s)" in clean.stdout
    clean_json = summary(check(cli.run("run", "strip-default-sg", "--fail-on-changes", "--format", "json",
                                       *selectors(pair)), 0))
    assert clean_json["exit_code"] == 0 and clean_json["status"] == "ok" and clean_json["plan"]["changes"] == 0


def test_a_failed_target_exit_1_wins_over_pending_changes(cli: Cli, emulator: EmulatorClient,
                                                          pair: list[str]) -> None:
    denied = pair[1]
    emulator.add_rule(operation="AssumeRole", target_account=denied, code="AccessDenied",
                      message="not authorized to perform sts:AssumeRole", status=403)
    check(cli.run("run", "strip-default-sg", "--fail-on-changes", *selectors(pair)), 1)
    data = summary(check(cli.run("run", "strip-default-sg", "--fail-on-changes", "--format", "json",
                                 *selectors(pair, (REGION, "eu-west-1"))), 1))
    assert data["exit_code"] == 1 and data["status"] == "failed"
    assert data["plan"]["changes"] == 2  # the other account's, still pending
    assert sorted((t["account"], t["region"]) for t in data["failed_targets"]) == [(denied, "eu-west-1"),
                                                                                   (denied, REGION)]
    assert all("AccessDenied" in (t["error"] or "") for t in data["failed_targets"])


@pytest.mark.parametrize(("args", "code"), [
    (("run", "no-such-task"), 2),
    (("run", "strip-default-sg", "--region", "moon-1"), 2),
    (("run", "strip-default-sg", "--account", "12345"), 2),
    (("run", "strip-default-sg", "--arm", "--fail-on-changes"), 2),
    (("run", "strip-default-sg", "--format", "yaml"), 2),
    (("run", "strip-default-sg", "--dry-run", "--confirm-accounts", "111122223333"), 2),
])
def test_bad_input_exits_2_in_one_line_before_any_aws_call(cli: Cli, emulator: EmulatorClient,
                                                           args: tuple[str, ...], code: int) -> None:
    mark = len(emulator.requests())
    result = check(cli.run(*args), code)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("orgrunner: "), result.stderr
    assert emulator.requests()[mark:] == []


# --- with a terminal -----------------------------------------------------------------------------

def test_in_a_terminal_the_run_completes(cli: Cli, emulator: EmulatorClient, pair: list[str]) -> None:
    child = cli.spawn("run", "strip-default-sg", "--dry-run", *selectors(pair, (REGION, "eu-west-1")), timeout=90)
    child.expect(r"Plan: 2 account\(s\), 2 region\(s\), 4 target\(s\)")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert all(rules_left(emulator.url, a) == 5 for a in pair)
