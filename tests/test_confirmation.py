"""The typed confirmation of an armed run: every way of not confirming exactly the accounts with
planned changes refuses the whole run (exit 3) and leaves every rule in place; at a terminal
(pseudo-terminal through pexpect) and without one (--confirm-accounts)."""

from __future__ import annotations

import re
from typing import Any

import pexpect

from orgrunner.sandbox.org import SandboxOrg, seed_organization
from tests.cli import Cli
from tests.emulator.client import EmulatorClient, assume_role, aws_client
from tests.test_run_dry import new_requests, ok, snapshot, writes

TASK = "strip-default-sg"
PROMPT = re.compile(r"To apply, type [^\n]*: ")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_rules(url: str, account: str, region: str) -> None:
    """Remove every rule of the account's default security group, as the test (not orgrunner)."""
    ec2 = aws_client(url, "ec2", region, **assume_role(url, account))
    for group in ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["default"]}])[
            "SecurityGroups"]:
        rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group["GroupId"]]}])
        for egress, revoke in ((False, ec2.revoke_security_group_ingress), (True, ec2.revoke_security_group_egress)):
            ids = [r["SecurityGroupRuleId"] for r in rules["SecurityGroupRules"] if r["IsEgress"] == egress]
            if ids:
                revoke(GroupId=group["GroupId"], SecurityGroupRuleIds=ids)


def spawn_to_prompt(cli: Cli, *args: str) -> tuple[pexpect.spawn, str]:
    """Start an armed run in a pseudo-terminal and wait for the confirmation prompt."""
    child = cli.spawn("run", TASK, "--arm", *args, timeout=90)
    child.expect(PROMPT)
    return child, ANSI.sub("", child.before + child.after)


def finish(child: pexpect.spawn) -> tuple[int | None, str]:
    child.expect(pexpect.EOF)
    output = ANSI.sub("", child.before)
    child.close()
    return child.exitstatus, output


def assert_no_write(emulator: EmulatorClient, mark: int, why: str) -> None:
    """Not one write call reached AWS since `mark`."""
    assert writes(new_requests(emulator, mark)) == [], why


def assert_untouched(emulator: EmulatorClient, before: Any, why: str = "") -> None:
    """Every rule of `before` is still in place (and no other rule appeared)."""
    assert snapshot(emulator.url, sorted({a for a, _ in before}), sorted({r for _, r in before})) == before, why


# --- at a terminal --------------------------------------------------------------------------------

def test_interactive_prompt_names_the_accounts_and_the_exact_ids_apply(cli: Cli, org: SandboxOrg,
                                                                       emulator: EmulatorClient) -> None:
    targeted = sorted([org.accounts["dev-app-1"], org.accounts["sandbox-2"]])
    child, shown = spawn_to_prompt(cli, "--account", targeted[0], "--account", targeted[1], "--region", "us-east-1")
    assert f"{TASK} will change 2 account(s):" in shown  # what is confirmed, shown above the prompt
    for account in targeted:
        assert re.search(rf"^  {account} \S+ +1 change\(s\), 1 destructive, 1 need a look\r?$", shown, re.M), shown
    assert "ids of the accounts" in shown
    assert "yes" not in PROMPT.search(shown).group(0)  # type: ignore[union-attr]
    child.sendline(f"{targeted[1]}, {targeted[0]}")  # any order, commas or spaces
    code, output = finish(child)
    assert code == 0, output
    assert "Apply: 2 target(s) in 2 account(s): 2 applied; 0 target(s) failed." in output
    after = snapshot(emulator.url, targeted)
    assert after[(targeted[0], "us-east-1")] == {} and after[(targeted[1], "us-east-1")] == {}
    assert after[(targeted[0], "eu-west-1")] and after[(targeted[1], "eu-west-1")]


def test_every_wrong_interactive_answer_refuses_and_leaves_every_rule_in_place(cli: Cli, org: SandboxOrg,
                                                                                 emulator: EmulatorClient) -> None:
    targeted = sorted([org.accounts["prod-app-1"], org.accounts["prod-app-2"]])
    stranger = org.accounts["prod-app-3"]
    before = snapshot(emulator.url, targeted)
    args = ("--account", targeted[0], "--account", targeted[1], "--region", "us-east-1", "--region", "eu-west-1")
    answers = {
        "yes": "yes",
        "y": "y",
        "a subset": targeted[0],
        "an extra id": f"{targeted[0]} {targeted[1]} {stranger}",
        "an empty line": "",
        "the count and task name (ten accounts or fewer want ids)": f"2 {TASK}",
    }
    for why, answer in answers.items():
        mark = len(emulator.requests())
        child, _ = spawn_to_prompt(cli, *args)
        child.sendline(answer)
        for _ in range(2):  # three attempts in all, each answered wrong
            child.expect(PROMPT)
            child.sendline(answer)
        code, output = finish(child)
        assert code == 3, (why, output)
        assert "confirmation did not match" in output and "nothing applied" in output, (why, output)
        assert "Apply:" not in output, why
        assert_no_write(emulator, mark, why)
    assert_untouched(emulator, before)
    refusals = [e for e in cli.audit() if e["event"] == "run-end"]
    assert len(refusals) == len(answers)
    assert all(e["status"].startswith("refused: ") for e in refusals)
    assert not [e for e in cli.audit() if e["event"] in ("confirmed", "applied")]


def test_a_wrong_answer_is_explained_and_can_be_retyped_without_planning_again(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    targeted = sorted([org.accounts["dev-app-1"], org.accounts["sandbox-2"]])
    stranger = org.accounts["prod-app-3"]
    child, _ = spawn_to_prompt(cli, "--account", targeted[0], "--account", targeted[1], "--region", "us-east-1")
    mark = len(emulator.requests())
    child.sendline(f"{targeted[0]} {stranger} yes")
    child.expect(PROMPT)
    told = ANSI.sub("", child.before)
    assert f"missing 1: {targeted[1]}" in told and f"not to be changed 1: {stranger}" in told, told
    assert "1 word(s) that are not account ids" in told and "2 attempt(s) left" in told
    assert new_requests(emulator, mark) == []  # nothing planned again, nothing written
    child.sendline(" ".join(targeted))
    code, output = finish(child)
    assert code == 0, output
    assert "Apply: 2 target(s) in 2 account(s): 2 applied" in output and output.count("Plan: ") == 0
    attempts = [e for e in cli.audit() if e["event"] == "confirmation-attempt"]
    assert [(e["attempt"], e["matched"]) for e in attempts] == [(1, False), (2, True)]
    assert stranger in attempts[0]["problem"] and attempts[1]["problem"] is None


def test_end_of_input_or_interrupt_at_the_prompt_applies_nothing(cli: Cli, org: SandboxOrg,
                                                                 emulator: EmulatorClient) -> None:
    account = org.accounts["sandbox-1"]
    before = snapshot(emulator.url, [account], ["us-east-1"])
    for why, send, expected in (("Ctrl-D", "sendeof", 3), ("Ctrl-C", "sendintr", 130)):
        mark = len(emulator.requests())
        child, _ = spawn_to_prompt(cli, "--account", account, "--region", "us-east-1")
        getattr(child, send)()
        code, output = finish(child)
        assert code == expected, (why, output)
        assert "Traceback" not in output, why
        assert "Apply:" not in output, why
        assert_no_write(emulator, mark, why)
    assert_untouched(emulator, before)


def test_more_than_ten_accounts_want_the_count_and_task_name(cli: Cli, emulator: EmulatorClient) -> None:
    org = seed_organization(emulator.url, member_count=12, regions=("us-east-1",))
    accounts = sorted(org.accounts.values())
    assert len(accounts) == 12
    before = snapshot(emulator.url, accounts, ["us-east-1"])
    args = ("--region", "us-east-1")
    wrong = {
        "a wrong count": f"11 {TASK}",
        "all the ids": " ".join(accounts),
        "yes": "yes",
        "y": "y",
    }
    for why, answer in wrong.items():
        mark = len(emulator.requests())
        child, shown = spawn_to_prompt(cli, *args)
        assert "number of accounts and the task name" in shown and "12 accounts" in shown, shown
        child.sendline(answer)
        for _ in range(2):  # three attempts in all
            child.expect(PROMPT)
            child.sendline(answer)
        code, output = finish(child)
        assert code == 3, (why, output)
        assert_no_write(emulator, mark, why)
    assert_untouched(emulator, before)

    child, _ = spawn_to_prompt(cli, *args)
    child.sendline(f"  12   {TASK} ")
    code, output = finish(child)
    assert code == 0, output
    assert "Apply: 12 target(s) in 12 account(s): 12 applied; 0 target(s) failed." in output
    assert snapshot(emulator.url, accounts, ["us-east-1"]) == {k: {} for k in before}


def test_plan_without_changes_applies_nothing_and_asks_nothing(cli: Cli, org: SandboxOrg,
                                                              emulator: EmulatorClient) -> None:
    account = org.accounts["dev-app-2"]
    strip_rules(emulator.url, account, "us-east-1")
    mark = len(emulator.requests())
    child = cli.spawn("run", TASK, "--arm", "--account", account, "--region", "us-east-1", timeout=90)
    code, output = finish(child)  # it never stops at a prompt
    assert code == 0, output
    assert "nothing to apply" in output
    assert "To apply, type" not in output
    # without a terminal and without --confirm-accounts it is not refused either: nothing to confirm
    result = ok(cli.run("run", TASK, "--arm", "--account", account, "--region", "us-east-1"))
    assert "nothing to apply" in result.stdout
    assert writes(new_requests(emulator, mark)) == []


# --- without a terminal ---------------------------------------------------------------------------

def test_exact_confirm_accounts_applies_in_any_order_and_separator(cli: Cli, org: SandboxOrg,
                                                                   emulator: EmulatorClient) -> None:
    targeted = sorted(org.accounts[n] for n in ("sandbox-1", "sandbox-2"))
    result = ok(cli.run("run", TASK, "--arm", "--ou", org.ous["Sandbox"], "--region", "eu-west-1",
                        "--confirm-accounts", f" {targeted[1]} ,{targeted[0]} "))
    assert "Apply: 2 target(s) in 2 account(s): 2 applied" in result.stdout
    after = snapshot(emulator.url, targeted, ["eu-west-1"])
    assert all(rules == {} for rules in after.values())


def test_every_wrong_confirm_accounts_refuses_and_leaves_every_rule_in_place(cli: Cli, org: SandboxOrg,
                                                                               emulator: EmulatorClient) -> None:
    targeted = sorted(org.accounts[n] for n in ("dev-app-1", "dev-app-2", "sandbox-1", "sandbox-2"))
    before = snapshot(emulator.url, targeted)
    run = ("run", TASK, "--arm", "--ou", org.ous["NonProd"], "--region", "us-east-1", "--region", "eu-west-1")
    cases: dict[str, tuple[tuple[str, ...], str | None, str]] = {
        "one account missing": (("--confirm-accounts", ",".join(targeted[1:])), None,
                                f"does not include 1 account(s) with planned changes: {targeted[0]}"),
        "an account that is not a target": (
            ("--confirm-accounts", ",".join([*targeted, org.accounts["prod-app-1"]])), None,
            f"names 1 account(s) that are not targets of this run: {org.accounts['prod-app-1']}"),
        "the management account": (("--confirm-accounts", ",".join([*targeted, org.management_account_id])), None,
                                   "not targets of this run"),
        "no --confirm-accounts and no terminal": ((), None, "needs --confirm-accounts"),
        "the ids piped to stdin instead": ((), " ".join(targeted) + "\n", "needs --confirm-accounts"),
    }
    for why, (extra, stdin, message) in cases.items():
        mark = len(emulator.requests())
        result = cli.run(*run, *extra, stdin=stdin)
        assert result.returncode == 3, (why, result.stdout, result.stderr)
        assert message in result.stderr, (why, result.stderr)
        assert "nothing applied" in result.stderr, why
        assert "Traceback" not in result.stderr
        # the plan was shown before the refusal
        assert "Plan: 4 account(s), 2 region(s), 8 target(s): 8 change(s) in 4 account(s)" in result.stdout, why
        assert "Apply:" not in result.stdout, why
        assert_no_write(emulator, mark, why)
    assert_untouched(emulator, before)
    assert not [e for e in cli.audit() if e["event"] in ("confirmed", "applied")]


# --- protected accounts: their own confirmation, by name ------------------------------------------

def protect_prod(cli: Cli) -> str:
    config = cli.home / "settings.yaml"
    config.write_text("protected_accounts:\n  name_patterns: ['prod-app-*']\n")
    return str(config)


def test_protected_accounts_refuse_without_their_own_confirmation(cli: Cli, org: SandboxOrg,
                                                                  emulator: EmulatorClient) -> None:
    protected = sorted([org.accounts["prod-app-1"], org.accounts["prod-app-2"]])
    before = snapshot(emulator.url, protected, ["us-east-1"])
    run = ("run", TASK, "--arm", "--config", protect_prod(cli), "--include-protected", "--region", "us-east-1",
           "--account", protected[0], "--account", protected[1], "--confirm-accounts", ",".join(protected))
    cases: dict[str, tuple[tuple[str, ...], str]] = {
        "no --confirm-protected": ((), "--confirm-protected"),
        "one protected account missing": (("--confirm-protected", protected[0]), "exactly the protected accounts"),
    }
    for why, (extra, message) in cases.items():
        mark = len(emulator.requests())
        result = cli.run(*run, *extra)
        assert result.returncode == 3, (why, result.stderr)
        assert message in result.stderr and "nothing applied" in result.stderr, (why, result.stderr)
        assert_no_write(emulator, mark, why)
    assert_untouched(emulator, before)
    # both confirmations, exact: applied
    result = ok(cli.run(*run, "--confirm-protected", ",".join(protected)))
    assert "Apply: 2 target(s) in 2 account(s): 2 applied" in result.stdout


def test_protected_accounts_at_a_terminal_want_their_names_or_ids(cli: Cli, org: SandboxOrg,
                                                           emulator: EmulatorClient) -> None:
    protected = sorted([org.accounts["prod-app-1"], org.accounts["prod-app-2"]])
    before = snapshot(emulator.url, protected, ["us-east-1"])
    args = ("run", TASK, "--arm", "--config", protect_prod(cli), "--include-protected", "--region", "us-east-1",
            "--account", protected[0], "--account", protected[1])
    names_prompt = re.compile(r"Protected accounts will change: type their names[^\n]*: ")
    for why, answer in {"one of the two ids": protected[0], "one name": "prod-app-1",
                        "a name and an id": f"prod-app-1 {protected[1]}"}.items():
        mark = len(emulator.requests())
        child = cli.spawn(*args, timeout=90)
        child.expect(names_prompt)
        child.sendline(answer)
        code, output = finish(child)
        assert code == 3, (why, output)
        assert "not confirmed by name" in output, (why, output)
        assert_no_write(emulator, mark, why)
    assert_untouched(emulator, before)

    child = cli.spawn(*args, timeout=90)
    child.expect(names_prompt)
    child.sendline("prod-app-2 prod-app-1")
    child.expect(PROMPT)  # then the account ids, as for any destructive plan
    child.sendline(" ".join(protected))
    code, output = finish(child)
    assert code == 0, output
    assert snapshot(emulator.url, protected, ["us-east-1"]) == {k: {} for k in before}
