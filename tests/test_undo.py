"""Undo: every applied change goes to the run's journal with what reverses it; `orgrunner undo RUN_ID`
plans the reversal (a dry run by default), and with `--arm` and the confirmation restores what the
run changed, leaving alone (and saying so) what has changed again since."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli
from tests.emulator.client import EmulatorClient, member_client

REGIONS = ("us-east-1", "eu-west-1")
EXTRA_RULE = {"IpProtocol": "tcp", "FromPort": 8443, "ToPort": 8443, "IpRanges": [{"CidrIp": "192.0.2.0/24"}]}
CONTENT_KEYS = ("IsEgress", "IpProtocol", "FromPort", "ToPort", "CidrIpv4", "CidrIpv6", "PrefixListId",
                "Description")

Content = list[tuple[Any, ...]]  # a group's rules without their ids, sorted


def raw_rules(url: str, account: str, region: str) -> dict[str, list[dict[str, Any]]]:
    """Default group id -> its rules (DescribeSecurityGroupRules), read by the test's own session."""
    ec2 = member_client(url, account, "ec2", region)
    groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["default"]}])["SecurityGroups"]
    assert groups, f"no default security group in {account} {region}"
    return {g["GroupId"]: ec2.describe_security_group_rules(
        Filters=[{"Name": "group-id", "Values": [g["GroupId"]]}])["SecurityGroupRules"] for g in groups}


def content(rules: list[dict[str, Any]]) -> Content:
    """What a rule allows: protocol, ports, peer (cidr, ipv6, prefix list, referenced group), direction."""
    return sorted(((*(r.get(k) for k in CONTENT_KEYS), r.get("ReferencedGroupInfo", {}).get("GroupId"))
                   for r in rules), key=repr)


def contents(url: str, accounts: list[str], regions: tuple[str, ...] = REGIONS) -> dict[tuple[str, str, str], Content]:
    """(account, region, group id) -> content of each default group."""
    return {(a, r, g): content(rules) for a in accounts for r in regions
            for g, rules in raw_rules(url, a, r).items()}


def selectors(accounts: list[str], regions: tuple[str, ...] = REGIONS) -> list[str]:
    return [*[x for a in accounts for x in ("--account", a)], *[x for r in regions for x in ("--region", r)]]


def check(result: subprocess.CompletedProcess[str], code: int) -> subprocess.CompletedProcess[str]:
    assert result.returncode == code, (result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    return result


def journal_path(cli: Cli, run_id: str) -> Path:
    return cli.home / "state" / "orgrunner" / "journal" / f"{run_id}.jsonl"


def strip(cli: Cli, accounts: list[str], code: int = 0) -> str:
    """An armed strip-default-sg over `accounts` x REGIONS; returns its run id (from the audit log)."""
    check(cli.run("run", "strip-default-sg", "--arm", "--confirm-accounts", ",".join(accounts), *selectors(accounts)),
          code)
    run_id: str = [e for e in cli.audit() if e["event"] == "run-start"][-1]["run_id"]
    assert journal_path(cli, run_id).is_file()
    return run_id


def writes_since(emulator: EmulatorClient, mark: int) -> list[dict[str, Any]]:
    return [r for r in emulator.requests()[mark:] if r["operation"].startswith(("Revoke", "Authorize"))]


def all_empty(url: str, accounts: list[str], regions: tuple[str, ...] = REGIONS) -> bool:
    return all(c == [] for c in contents(url, accounts, regions).values())


@pytest.fixture
def pair(org: SandboxOrg) -> list[str]:
    return [org.accounts["dev-app-1"], org.accounts["sandbox-1"]]


# --- the round trip ----------------------------------------------------------------------------

def test_strip_then_undo_restores_exactly_the_original_rules(cli: Cli, emulator: EmulatorClient,
                                                             pair: list[str]) -> None:
    emulator.enforce_session_policies(True)  # as AWS does: each phase can do only what it declared
    before = contents(emulator.url, pair)
    assert len(before) == 4 and all(len(c) == 5 for c in before.values())

    run_id = strip(cli, pair)
    assert all_empty(emulator.url, pair)

    # the dry run of the undo: the restore plan, and nothing written
    mark = len(emulator.requests())
    dry = check(cli.run("undo", run_id), 0)
    for _account, _region, group in before:
        assert f"{group} (default of " in dry.stdout
    assert dry.stdout.count("restore 5 rule(s) removed by the run") == 4
    assert "Dry run: nothing was changed" in dry.stdout
    assert writes_since(emulator, mark) == []
    assert all_empty(emulator.url, pair)

    # armed: every group holds exactly its original rules again
    mark = len(emulator.requests())
    done = check(cli.run("undo", run_id, "--arm", "--confirm-accounts", ",".join(pair)), 0)
    assert done.stdout.count("applied: ") == 4
    assert contents(emulator.url, pair) == before
    writes = writes_since(emulator, mark)
    assert writes and all(w["operation"].startswith("Authorize") and w["status"] == 200 for w in writes)
    assert [r for r in emulator.requests()[mark:] if r["status"] == 403] == []
    # the undo's write session may authorize, and may not revoke
    policies = [json.loads(c["params"]["Policy"]) for c in emulator.requests()[mark:]
                if c["operation"] == "AssumeRole" and c["params"].get("Policy")]
    apply_actions = [{a for st in p["Statement"] for a in st["Action"]} for p in policies
                     if any("Authorize" in a for st in p["Statement"] for a in st["Action"])]
    assert apply_actions
    assert all(not any("Revoke" in a for a in actions) for actions in apply_actions)
    start = [e for e in cli.audit() if e["event"] == "run-start"][-1]
    assert start["command"] == f"undo {run_id}"


def test_journal_holds_one_line_per_applied_change_with_the_full_removed_rules(cli: Cli, emulator: EmulatorClient,
                                                                               pair: list[str]) -> None:
    before = {(a, r): raw_rules(emulator.url, a, r) for a in pair for r in REGIONS}
    run_id = strip(cli, pair)
    starts = [e for e in cli.audit() if e["event"] == "run-start"]
    assert starts[-1]["run_id"] == run_id

    lines = [json.loads(line) for line in journal_path(cli, run_id).read_text().splitlines()]
    # each change: an `applying` line just before the call to AWS, then its outcome
    assert sorted(e["status"] for e in lines) == ["applied"] * 4 + ["applying"] * 4
    entries = [e for e in lines if e["status"] != "applying"]
    assert {(e["change"]["account_id"], e["change"]["region"]) for e in entries} == set(before)
    for entry in entries:
        assert entry["run_id"] == run_id and entry["task"] == "strip-default-sg" and entry["status"] == "applied"
        change = entry["change"]
        (group, rules), = before[(change["account_id"], change["region"])].items()
        assert change["resource"] == group
        removed = change["undo"]["rules"]
        assert sorted(r["SecurityGroupRuleId"] for r in removed) == sorted(r["SecurityGroupRuleId"] for r in rules)
        # in full: enough to recreate each rule
        assert content([{**r, "ReferencedGroupInfo": {"GroupId": r["ReferencedGroupId"]}}
                        if "ReferencedGroupId" in r else r for r in removed]) == content(rules)


# --- selecting, skipping, repeating ------------------------------------------------------------

def test_undo_account_restricts_the_reversal_to_that_account(cli: Cli, emulator: EmulatorClient,
                                                            pair: list[str]) -> None:
    before = contents(emulator.url, pair)
    run_id = strip(cli, pair)
    first, second = pair

    # the other account of the run is not a target of this undo, so confirming it is refused
    refused = check(cli.run("undo", run_id, "--account", first, "--arm", "--confirm-accounts", ",".join(pair)), 3)
    assert second in refused.stderr
    assert all_empty(emulator.url, pair)

    dry = check(cli.run("undo", run_id, "--account", first), 0)
    assert second not in dry.stdout and dry.stdout.count("restore 5 rule(s)") == 2

    check(cli.run("undo", run_id, "--account", first, "--arm", "--confirm-accounts", first), 0)
    assert contents(emulator.url, [first]) == {k: v for k, v in before.items() if k[0] == first}
    assert all_empty(emulator.url, [second])


def test_group_changed_since_the_run_is_left_alone_and_said(cli: Cli, emulator: EmulatorClient,
                                                           pair: list[str]) -> None:
    before = contents(emulator.url, pair)
    run_id = strip(cli, pair)
    first = pair[0]
    (changed,) = raw_rules(emulator.url, first, "us-east-1")
    member_client(emulator.url, first, "ec2", "us-east-1").authorize_security_group_ingress(
        GroupId=changed, IpPermissions=[EXTRA_RULE])
    changed_content = contents(emulator.url, [first], ("us-east-1",))

    dry = check(cli.run("undo", run_id), 0)
    assert f"note: {changed} has changed since the run" in dry.stdout
    assert dry.stdout.count("restore 5 rule(s)") == 3

    done = check(cli.run("undo", run_id, "--arm", "--confirm-accounts", ",".join(pair)), 0)
    assert f"note: {changed} has changed since the run" in done.stdout
    assert done.stdout.count("applied: ") == 3
    after = contents(emulator.url, pair)
    assert after[(first, "us-east-1", changed)] == changed_content[(first, "us-east-1", changed)]  # the new rule only
    assert {k: v for k, v in after.items() if k[2] != changed} == {k: v for k, v in before.items() if k[2] != changed}


def test_undo_twice_plans_nothing_the_second_time(cli: Cli, emulator: EmulatorClient, pair: list[str]) -> None:
    before = contents(emulator.url, pair)
    run_id = strip(cli, pair)
    check(cli.run("undo", run_id, "--arm", "--confirm-accounts", ",".join(pair)), 0)
    assert contents(emulator.url, pair) == before

    mark = len(emulator.requests())
    again = check(cli.run("undo", run_id, "--arm", "--confirm-accounts", ",".join(pair)), 0)
    assert again.stdout.count("already holds its old rules") == 4
    assert ": no planned changes: nothing to apply." in again.stdout
    assert "applied: " not in again.stdout
    assert writes_since(emulator, mark) == []
    assert contents(emulator.url, pair) == before


def test_undo_of_a_partly_failed_run_restores_what_it_applied(cli: Cli, emulator: EmulatorClient,
                                                             pair: list[str]) -> None:
    before = contents(emulator.url, pair)
    failing = pair[1]
    emulator.add_rule(service="ec2", operation="RevokeSecurityGroupIngress", account=failing, region="us-east-1",
                      code="UnauthorizedOperation", message="not today", status=403)
    run_id = strip(cli, pair, code=1)
    lines = [json.loads(line) for line in journal_path(cli, run_id).read_text().splitlines()]
    entries = [e for e in lines if e["status"] != "applying"]
    assert sorted(e["status"] for e in entries) == ["applied", "applied", "applied", "failed"]
    (failed,) = [e for e in entries if e["status"] == "failed"]
    assert (failed["change"]["account_id"], failed["change"]["region"]) == (failing, "us-east-1")
    assert failed["error"]
    emulator.clear_rules()

    dry = check(cli.run("undo", run_id), 0)
    assert dry.stdout.count("restore 5 rule(s)") == 3
    check(cli.run("undo", run_id, "--arm", "--confirm-accounts", ",".join(pair)), 0)
    assert contents(emulator.url, pair) == before


# --- refusals ----------------------------------------------------------------------------------

def test_armed_undo_needs_the_confirmation(cli: Cli, emulator: EmulatorClient, pair: list[str]) -> None:
    run_id = strip(cli, pair)
    mark = len(emulator.requests())
    refused = check(cli.run("undo", run_id, "--arm", stdin=" ".join(pair) + "\n"), 3)
    assert "--confirm-accounts" in refused.stderr and "nothing applied" in refused.stderr
    short = check(cli.run("undo", run_id, "--arm", "--confirm-accounts", pair[0]), 3)
    assert pair[1] in short.stderr
    assert writes_since(emulator, mark) == []
    assert all_empty(emulator.url, pair)


@pytest.mark.parametrize("run_id", [
    "20261129T190000Z-1a2b3c",  # well formed, never ran here
    "yesterday",
    "20261129T190000Z-1A2B3C",
    "../../../etc/passwd",
    "20261129T190000Z-1a2b3c/../x",
    "",
])
def test_undo_of_an_unknown_or_malformed_run_id_is_one_line_and_exit_2(cli: Cli, emulator: EmulatorClient,
                                                                       run_id: str) -> None:
    mark = len(emulator.requests())
    result = check(cli.run("undo", run_id), 2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("orgrunner: "), result.stderr
    assert emulator.requests()[mark:] == []


def test_undo_of_an_account_the_run_did_not_change_is_exit_2(cli: Cli, emulator: EmulatorClient, org: SandboxOrg,
                                                              pair: list[str]) -> None:
    run_id = strip(cli, pair)
    result = check(cli.run("undo", run_id, "--account", org.accounts["prod-app-1"]), 2)
    assert "applied nothing in the given accounts" in result.stderr
    assert all_empty(emulator.url, pair)


# --- what the journal must keep exactly ----------------------------------------------------------

def test_undo_restores_rule_descriptions_exactly(cli: Cli, emulator: EmulatorClient, pair: list[str]) -> None:
    account = pair[0]
    (group,) = raw_rules(emulator.url, account, "us-east-1")
    described = {"IpProtocol": "tcp", "FromPort": 9000, "ToPort": 9000, "IpRanges": [{
        "CidrIp": "10.1.0.0/16",
        "Description": "see https://wiki.example.com/display/NETWORKING/"
                       "DefaultSecurityGroupExceptionsForLegacyBatchProcessingHosts"}]}
    member_client(emulator.url, account, "ec2", "us-east-1").authorize_security_group_ingress(
        GroupId=group, IpPermissions=[described])
    before = contents(emulator.url, [account], ("us-east-1",))
    check(cli.run("run", "strip-default-sg", "--arm", "--confirm-accounts", account,
                  *selectors([account], ("us-east-1",))), 0)
    run_id = [e for e in cli.audit() if e["event"] == "run-start"][-1]["run_id"]
    assert all_empty(emulator.url, [account], ("us-east-1",))
    check(cli.run("undo", run_id, "--arm", "--confirm-accounts", account), 0)
    assert contents(emulator.url, [account], ("us-east-1",)) == before


def test_undo_survives_a_journal_whose_last_line_was_torn(cli: Cli, emulator: EmulatorClient,
                                                         pair: list[str]) -> None:
    before = contents(emulator.url, pair)
    run_id = strip(cli, pair)
    path = journal_path(cli, run_id)
    whole = path.read_text()
    with path.open("a") as journal:  # a fifth entry, cut short by a crash (no newline)
        journal.write(whole.splitlines()[0][:80])

    dry = check(cli.run("undo", run_id), 0)
    assert dry.stdout.count("restore 5 rule(s)") == 4
    assert path.name in dry.stderr  # the torn line is reported
    check(cli.run("undo", run_id, "--arm", "--confirm-accounts", ",".join(pair)), 0)
    assert contents(emulator.url, pair) == before
