"""`orgrunner baseline`: every task of config/baseline.yaml planned for the selected accounts, each
under its own session policy, shown as one plan, confirmed once, applied task by task (one run id
each, linked by the baseline id in the audit log). A task that fails stops the ones after it. For
accounts just created, AssumeRole is retried while AWS propagates their role, up to a timeout."""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

import pexpect
import pytest
from botocore.exceptions import ClientError

from orgrunner.sandbox.org import SandboxOrg, created_account_id
from tests.cli import Cli, orgrunner_command
from tests.emulator.client import EmulatorClient, assume_role, aws_client, member_client
from tests.test_org_accounts import conf, entry, mgmt, with_entries
from tests.test_run_dry import new_requests, ok, snapshot, writes

__all__ = ["mgmt"]  # the management account's role fixture, shared with tests/test_org_accounts.py

TASKS = ("strip-default-sg", "iam-password-policy")
PROMPT = re.compile(r"To apply, type [^\n]*: ")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def based(cli: Cli) -> Cli:
    """A scratch folder whose config/baseline.yaml names two tasks: one destructive, one by plan."""
    (cli.home / "config").mkdir(exist_ok=True)
    (cli.home / "config" / "baseline.yaml").write_text("tasks:\n" + "".join(f"  - {t}\n" for t in TASKS))
    return cli


@pytest.fixture
def pair(org: SandboxOrg) -> list[str]:
    return sorted([org.accounts["dev-app-1"], org.accounts["sandbox-1"]])


def chosen(accounts: list[str]) -> list[str]:
    return [a for account in accounts for a in ("--account", account)] + ["--region", "us-east-1"]


def password_policy(url: str, account: str) -> dict[str, Any] | None:
    try:
        policy: dict[str, Any] = member_client(url, account, "iam").get_account_password_policy()["PasswordPolicy"]
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchEntity"
        return None
    return policy


def events(cli: Cli, *names: str) -> list[dict[str, Any]]:
    return [e for e in cli.audit() if e["event"] in names]


def the_baseline(cli: Cli) -> tuple[str, list[dict[str, Any]]]:
    """The last baseline's id (from baseline-start) and its runs' run-start events, in order."""
    start = events(cli, "baseline-start")[-1]
    baseline_id = start["run_id"]
    assert start["baseline_id"] == baseline_id
    runs = [e for e in events(cli, "run-start") if e.get("baseline_id") == baseline_id]
    return baseline_id, runs


def policy_actions(call: dict[str, Any]) -> set[str]:
    return {a for st in json.loads(call["params"]["Policy"])["Statement"] for a in st["Action"]}


# --- the dry run ---------------------------------------------------------------------------------

def test_dry_run_plans_every_task_under_its_own_policy_shows_one_plan_and_writes_nothing(
        based: Cli, pair: list[str], emulator: EmulatorClient) -> None:
    emulator.enforce_session_policies(True)
    before = snapshot(emulator.url, pair, ["us-east-1"])
    mark = len(emulator.requests())

    result = ok(based.run("baseline", *chosen(pair), "--details", "all"))
    requests = new_requests(emulator, mark)

    assert writes(requests) == [] and [r for r in requests if r["status"] == 403] == []
    assert snapshot(emulator.url, pair, ["us-east-1"]) == before
    assert all(password_policy(emulator.url, a) is None for a in pair)
    out = result.stdout
    # one plan: the headline, a line per task (in the baseline's order), then the changes of both
    assert "Baseline plan: 2 task(s), 2 account(s): 4 change(s) in 2 account(s); 0 failed, 0 skipped." in out
    lines = [line for line in out.splitlines() if re.match(r"^  (strip-default-sg|iam-password-policy) ", line)]
    assert [line.split()[0] for line in lines] == list(TASKS)
    assert out.count("strip-default-sg: ") >= 2 and out.count("iam-password-policy: ") >= 2  # labelled changes
    assert "Dry run: nothing was changed." in out
    assert "Next: to apply, run the same command with --arm instead of --dry-run." in out

    # the audit log: the baseline's start and end, and one dry run per task linked to it, in order
    baseline_id, runs = the_baseline(based)
    assert [r["task"] for r in runs] == list(TASKS)
    assert all(r["mode"] == "dry-run" for r in runs)
    assert len({r["run_id"] for r in runs}) == 2 and baseline_id not in {r["run_id"] for r in runs}
    ends = [e for e in events(based, "run-end") if e["run_id"] in {r["run_id"] for r in runs}]
    assert [e["status"] for e in ends] == ["ok", "ok"] and all(e["baseline_id"] == baseline_id for e in ends)
    end = events(based, "baseline-end")[-1]
    assert end["run_id"] == baseline_id and end["status"] == "ok"
    assert [(r["task"], r["run_id"]) for r in end["runs"]] == [(r["task"], r["run_id"]) for r in runs]
    assert baseline_id in result.stdout

    # each task planned under its own read-only session policy and session name
    calls = [r for r in requests if r["operation"] == "AssumeRole"]
    assert len(calls) == 4
    by_task = {t: [c for c in calls if f"or.{t}." in c["params"]["RoleSessionName"]] for t in TASKS}
    assert all(len(c) == 2 for c in by_task.values())
    strip_actions, iam_actions = (policy_actions(by_task[t][0]) for t in TASKS)
    assert "ec2:DescribeSecurityGroupRules" in strip_actions and "iam:GetAccountPasswordPolicy" not in strip_actions
    assert "iam:GetAccountPasswordPolicy" in iam_actions and "ec2:DescribeSecurityGroupRules" not in iam_actions


def test_help_has_examples_and_exit_codes(cli: Cli) -> None:
    text = " ".join(ok(cli.run("baseline", "--help")).stdout.split())
    assert "Examples:" in text and "orgrunner baseline --account 111122223333 --arm" in text
    assert "Exit codes:" in text and "3 refused by a safety rule" in text and "--wait-for-role" in text


def test_bad_input_is_one_line_before_any_aws_call(based: Cli, emulator: EmulatorClient) -> None:
    mark = len(emulator.requests())
    for args, expected in ((["--yes"], "No such option"), (["--dry-run", "--arm"], "exclude each other"),
                           (["--confirm-accounts", "123"], "12-digit"),
                           (["--baseline", str(based.home / "missing.yaml")], "missing.yaml")):
        result = ok(based.run("baseline", *args), 2)
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    (based.home / "config" / "baseline.yaml").write_text("tasks:\n  - strip-default-sg\n  - no-such-task\n")
    result = ok(based.run("baseline"), 2)
    assert "baseline.yaml:3: " in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert emulator.requests()[mark:] == []


# --- armed -----------------------------------------------------------------------------------------

def test_armed_with_confirm_accounts_applies_every_task_in_order_one_run_each(
        based: Cli, pair: list[str], emulator: EmulatorClient) -> None:
    emulator.enforce_session_policies(True)
    mark = len(emulator.requests())
    result = ok(based.run("baseline", "--arm", *chosen(pair), "--confirm-accounts", ",".join(pair)))

    assert snapshot(emulator.url, pair, ["us-east-1"]) == {(a, "us-east-1"): {} for a in pair}
    assert all(password_policy(emulator.url, a)["MinimumPasswordLength"] == 14 for a in pair)  # type: ignore[index]
    assert [r for r in new_requests(emulator, mark) if r["status"] == 403] == []

    baseline_id, runs = the_baseline(based)
    assert [(r["task"], r["mode"]) for r in runs] == [(t, "armed") for t in TASKS]
    audit = based.audit()
    run_ids = [r["run_id"] for r in runs]
    applied = [(i, e) for i, e in enumerate(audit) if e["event"] == "applied" and e["run_id"] in run_ids]
    assert [e["run_id"] for _, e in applied] == [run_ids[0]] * 2 + [run_ids[1]] * 2  # task by task, in order
    assert all(e["baseline_id"] == baseline_id and e["status"] == "applied" for _, e in applied)
    starts = [i for i, e in enumerate(audit) if e["event"] == "run-start" and e["run_id"] in run_ids]
    assert max(starts) < applied[0][0]  # every task planned before any change is applied
    confirmed = [e for e in audit if e["event"] == "confirmed" and e["run_id"] in run_ids]
    assert [e["accounts"] for e in confirmed] == [pair, pair]
    assert events(based, "baseline-end")[-1]["status"] == "ok"
    for task, run_id in zip(TASKS, run_ids, strict=True):
        assert re.search(rf"^  {task} +run {run_id}: 2 change\(s\) applied in 2 account\(s\)", result.stdout, re.M)

    # `orgrunner runs` shows the link; `runs --baseline ID` lists exactly its runs
    listed = ok(based.run("runs"))
    assert all(re.search(rf"^{r}.*baseline {baseline_id}$", listed.stdout, re.M) for r in run_ids), listed.stdout
    mine = json.loads(ok(based.run("runs", "--baseline", baseline_id, "--format", "json")).stdout)
    assert sorted(r["run_id"] for r in mine) == sorted(run_ids)
    assert all(r["baseline_id"] == baseline_id for r in mine)
    shown = ok(based.run("runs", "show", run_ids[1]))
    assert f"baseline {baseline_id}" in shown.stdout


def test_typed_confirmation_at_a_terminal_names_every_account_of_every_task(
        based: Cli, pair: list[str], emulator: EmulatorClient) -> None:
    child = based.spawn("baseline", "--arm", *chosen(pair), timeout=180)
    child.expect(PROMPT)
    shown = ANSI.sub("", child.before + child.after)
    assert "baseline (2 task(s)) will change 2 account(s):" in shown
    for account in pair:
        assert re.search(rf"^  {account} \S+ +2 change\(s\), 1 destructive", shown, re.M), shown
    assert "yes" not in PROMPT.search(shown).group(0)  # type: ignore[union-attr]
    child.sendline(" ".join(reversed(pair)))
    child.expect(pexpect.EOF)
    output = ANSI.sub("", child.before)
    child.close()
    assert child.exitstatus == 0, output
    assert snapshot(emulator.url, pair, ["us-east-1"]) == {(a, "us-east-1"): {} for a in pair}
    assert all(password_policy(emulator.url, a) is not None for a in pair)
    attempts = events(based, "confirmation-attempt")
    assert [(a["run_id"], a["matched"]) for a in attempts] == [(the_baseline(based)[0], True)]


def test_no_wrong_or_missing_confirmation_applies_anything(based: Cli, pair: list[str],
                                                           emulator: EmulatorClient, org: SandboxOrg) -> None:
    before = snapshot(emulator.url, pair, ["us-east-1"])
    mark = len(emulator.requests())
    other = org.accounts["prod-app-1"]
    for extra, expected in (([], "needs --confirm-accounts"),
                            (["--confirm-accounts", pair[0]], "does not include 1 account(s)"),
                            (["--confirm-accounts", f"{pair[0]},{pair[1]},{other}"], "not targets")):
        result = ok(based.run("baseline", "--arm", *chosen(pair), *extra), 3)
        assert expected in result.stderr and "nothing applied" in result.stderr, result.stderr
    child = based.spawn("baseline", "--arm", *chosen(pair), timeout=180)
    for answer in (pair[0], "yes", f"{pair[0]} {other}"):
        child.expect(PROMPT)
        child.sendline(answer)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 3
    assert writes(new_requests(emulator, mark)) == []
    assert snapshot(emulator.url, pair, ["us-east-1"]) == before
    assert all(password_policy(emulator.url, a) is None for a in pair)
    assert not [e for e in based.audit() if e["event"] == "applied"]
    assert all(e["status"].startswith("refused") for e in events(based, "baseline-end"))


# --- failures ----------------------------------------------------------------------------------------

def test_a_task_that_fails_stops_the_tasks_after_it(based: Cli, pair: list[str], emulator: EmulatorClient) -> None:
    broken, fine = pair
    emulator.add_rule(service="ec2", operation="RevokeSecurityGroup*", account=broken,
                      code="UnauthorizedOperation", message="injected", status=403)
    mark = len(emulator.requests())
    result = ok(based.run("baseline", "--arm", *chosen(pair), "--confirm-accounts", ",".join(pair)), 1)

    # the first task applied where it could; the second was not applied at all
    after = snapshot(emulator.url, pair, ["us-east-1"])
    assert after[(fine, "us-east-1")] == {} and after[(broken, "us-east-1")]
    assert [r for r in new_requests(emulator, mark) if r["operation"] == "UpdateAccountPasswordPolicy"] == []
    assert all(password_policy(emulator.url, a) is None for a in pair)
    out = result.stdout
    assert re.search(r"^  strip-default-sg +run \S+: 1 change\(s\) applied in \d account\(s\); 1 target\(s\) failed",
                     out, re.M), out
    assert re.search(r"^  iam-password-policy +run \S+: not applied \(strip-default-sg failed before it\)", out, re.M)
    assert "stopped after strip-default-sg failed" in out
    _baseline_id, runs = the_baseline(based)
    ends = {e["run_id"]: e["status"] for e in events(based, "run-end")}
    assert ends[runs[0]["run_id"]] == "failed"
    assert ends[runs[1]["run_id"]].startswith("not applied")
    end = events(based, "baseline-end")[-1]
    assert end["status"].startswith("stopped") and end["applied"] == ["strip-default-sg"]


def test_a_target_that_cannot_be_planned_applies_nothing(based: Cli, pair: list[str],
                                                         emulator: EmulatorClient) -> None:
    emulator.add_rule(service="iam", operation="GetAccountPasswordPolicy", account=pair[0],
                      code="AccessDenied", message="injected", status=403)
    mark = len(emulator.requests())
    result = ok(based.run("baseline", "--arm", *chosen(pair), "--confirm-accounts", ",".join(pair)), 1)
    assert "could not be planned" in result.stderr and "nothing applied" in result.stderr, result.stderr
    assert writes(new_requests(emulator, mark)) == []
    assert not [e for e in based.audit() if e["event"] in ("applied", "confirmed")]


# --- new accounts: the role AWS is still propagating ---------------------------------------------------

def create_accounts(url: str, names: list[str]) -> list[str]:
    orgs = aws_client(url, "organizations")
    return [created_account_id(orgs, orgs.create_account(AccountName=n, Email=f"{n}@example.com")) for n in names]


def test_the_emulator_refuses_a_new_accounts_role_while_it_propagates(org: SandboxOrg,
                                                                      emulator: EmulatorClient) -> None:
    emulator.role_propagation(3600)
    new = create_accounts(emulator.url, ["fresh-1"])[0]
    with pytest.raises(ClientError) as denied:
        assume_role(emulator.url, new)
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    assume_role(emulator.url, org.accounts["dev-app-1"])  # an older account's role is there
    emulator.role_propagation(0)  # propagated
    assert assume_role(emulator.url, new)["aws_access_key_id"]


def start(cli: Cli, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([orgrunner_command(), *args], env=cli.env(), cwd=cli.home, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(condition: Any, what: str, limit: float = 120) -> None:
    """Poll until `condition()` (a safety limit, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.2)


def test_new_accounts_are_baselined_once_their_role_propagates(org: SandboxOrg, based: Cli,
                                                               emulator: EmulatorClient) -> None:
    emulator.role_propagation(3600)
    new = sorted(create_accounts(emulator.url, ["fresh-1", "fresh-2"]))
    process = start(based, "baseline", "--arm", *chosen(new), "--confirm-accounts", ",".join(new),
                    "--wait-for-role", "600")

    def refused_once() -> bool:
        return {r["target_account"] for r in emulator.requests(operation="AssumeRole")
                if r["status"] == 403} >= set(new)

    try:
        wait_for(refused_once, "AssumeRole refused in both new accounts")
        emulator.role_propagation(0)  # AWS has propagated the role now
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, (stdout[-3000:], stderr[-3000:])
    assert "waiting for OrganizationAccountAccessRole in 2 account(s)" in stderr
    assert "assumable in 2 of 2 account(s)" in stderr
    assert all(password_policy(emulator.url, a) is not None for a in new)
    assert snapshot(emulator.url, new, ["us-east-1"]) == {(a, "us-east-1"): {} for a in new}


def test_a_role_that_never_propagates_times_out_clearly_and_nothing_is_planned(org: SandboxOrg, based: Cli,
                                                                               emulator: EmulatorClient) -> None:
    emulator.role_propagation(3600)
    new = create_accounts(emulator.url, ["fresh-1"])
    mark = len(emulator.requests())
    result = ok(based.run("baseline", "--arm", *chosen(new), "--confirm-accounts", new[0], "--wait-for-role", "3"), 1)
    lines = result.stderr.strip().splitlines()
    assert any(f"{new[0]}: AccessDenied" in line for line in lines), result.stderr
    assert "could not be assumed in 1 account(s) within 3 s" in result.stderr
    assert "--wait-for-role" in lines[-1] and "nothing applied" in lines[-1]
    assert writes(new_requests(emulator, mark)) == []
    assert not events(based, "run-start")  # no task was started
    assert events(based, "baseline-end")[-1]["status"].startswith("error: ")


def test_without_waiting_a_new_accounts_role_fails_its_plan_and_nothing_is_applied(
        org: SandboxOrg, based: Cli, emulator: EmulatorClient) -> None:
    emulator.role_propagation(3600)
    new = create_accounts(emulator.url, ["fresh-1"])
    result = ok(based.run("baseline", "--arm", *chosen(new), "--confirm-accounts", new[0]), 1)
    assert "AccessDenied" in result.stdout + result.stderr
    assert "--wait-for-role" in result.stderr  # the hint for accounts just created
    assert not [e for e in based.audit() if e["event"] == "applied"]





def test_a_fault_in_the_middle_ends_every_run_and_the_baseline_and_applies_nothing_more(
        based: Cli, pair: list[str], emulator: EmulatorClient) -> None:
    """Attack: a bug in the parent just before the first task applies (ORGRUNNER_TEST_BUG_AT). Must
    hold: exit 70 in one line, every run of the baseline and the baseline itself recorded as ended
    with the error (never left open, never `interrupted`), nothing written."""
    mark = len(emulator.requests())
    result = ok(based.run("baseline", "--arm", *chosen(pair), "--confirm-accounts", ",".join(pair),
                          env=based.env(ORGRUNNER_TEST_BUG_AT="after-confirm")), 70)
    assert result.stderr.strip().splitlines()[-1].startswith("orgrunner: internal error: RuntimeError: injected bug")
    assert writes(new_requests(emulator, mark)) == []
    _, runs = the_baseline(based)
    ends = {e["run_id"]: e["status"] for e in events(based, "run-end")}
    assert [ends[r["run_id"]][:len("error: RuntimeError")] for r in runs] == ["error: RuntimeError"] * 2
    assert events(based, "baseline-end")[-1]["status"].startswith("error: RuntimeError")


# --- run org-accounts --arm --then-baseline --------------------------------------------------------------

def test_then_baseline_baselines_exactly_the_accounts_the_run_created_once_their_role_propagates(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient, mgmt: str) -> None:
    settings = conf(cli, with_entries(entry("fresh-1", "/Workloads/Prod", {"env": "prod", "team": "data"})))
    (settings.parent / "baseline.yaml").write_text("tasks:\n" + "".join(f"  - {t}\n" for t in TASKS))
    emulator.role_propagation(3600)
    process = start(cli, "run", "org-accounts", "--config", str(settings), "--arm", "--confirm-accounts", mgmt,
                    "--then-baseline", "--confirm-new-accounts", "fresh-1", "--region", "us-east-1")

    def refused_once() -> bool:
        return any(r["status"] == 403 and r["target_account"] not in (mgmt, *org.accounts.values())
                   for r in emulator.requests(operation="AssumeRole"))

    try:
        wait_for(refused_once, "AssumeRole refused in the new account")
        emulator.role_propagation(0)  # AWS has propagated the role now
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, (stdout[-3000:], stderr[-3000:])
    new = next(a["Id"] for a in aws_client(emulator.url, "organizations").list_accounts()["Accounts"]
               if a["Name"] == "fresh-1")
    assert "waiting for OrganizationAccountAccessRole in 1 account(s)" in stderr
    assert password_policy(emulator.url, new) is not None
    assert snapshot(emulator.url, [new], ["us-east-1"]) == {(new, "us-east-1"): {}}
    start_event = events(cli, "baseline-start")[-1]
    assert start_event["targets"] == [new]  # exactly the new account, no other
    assert all(password_policy(emulator.url, a) is None for a in org.accounts.values())


def test_then_baseline_without_the_new_names_creates_and_says_how_to_baseline_later(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient, mgmt: str) -> None:
    settings = conf(cli, with_entries(entry("fresh-2", "/Workloads/Prod", {"env": "prod", "team": "data"})))
    (settings.parent / "baseline.yaml").write_text("tasks:\n" + "".join(f"  - {t}\n" for t in TASKS))
    mark = len(emulator.requests())
    result = ok(cli.run("run", "org-accounts", "--config", str(settings), "--arm", "--confirm-accounts", mgmt,
                        "--then-baseline", "--region", "us-east-1"), 3)
    new = next(a["Id"] for a in aws_client(emulator.url, "organizations").list_accounts()["Accounts"]
               if a["Name"] == "fresh-2")
    assert f"orgrunner baseline --account {new} --arm" in result.stderr
    assert "needs --confirm-new-accounts" in result.stderr and "nothing applied" in result.stderr
    assert [r for r in writes(new_requests(emulator, mark)) if r["account"] == new] == []
    assert password_policy(emulator.url, new) is None


def test_then_baseline_is_checked_before_any_aws_call(based: Cli, emulator: EmulatorClient) -> None:
    mark = len(emulator.requests())
    for args, expected in ((["--then-baseline"], "add --arm"), (["--wait-for-role", "5"], "go with --then-baseline"),
                           (["--confirm-new-accounts", "a"], "go with --then-baseline")):
        result = ok(based.run("run", "org-accounts", *args), 2)
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert emulator.requests()[mark:] == []
