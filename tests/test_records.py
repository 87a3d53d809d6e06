"""What a run leaves behind: the JSON lines report (--report), the audit log, and no secret
anywhere (terminal output, report, audit log, journal)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from orgrunner.sandbox.org import SANDBOX_ENV_CREDENTIALS, SandboxOrg
from orgrunner.task import Change
from tests.cli import Cli
from tests.emulator.client import EmulatorClient, assume_role, aws_client
from tests.test_run_dry import SEEDED, ok, snapshot

TASK = "strip-default-sg"
REPORT_KEYS = {"account", "region", "task", "phase", "status", "changes", "error"}
RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
KEY_ID = re.compile(r"(?:AKIA|ASIA)[A-Z0-9]{12,}")
LONG_SECRET = re.compile(r"[A-Za-z0-9/+=]{80,}")
OPERATOR = "arn:aws:sts::123456789012:user/moto"  # who the sandbox credentials are, to moto


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rule_content(rule: dict[str, Any]) -> tuple[Any, ...]:
    """A rule without its id: what recreating it must give back."""
    peer = (rule.get("CidrIpv4") or rule.get("CidrIpv6") or rule.get("PrefixListId")
            or rule.get("ReferencedGroupId") or (rule.get("ReferencedGroupInfo") or {}).get("GroupId"))
    return (bool(rule["IsEgress"]), rule["IpProtocol"], rule.get("FromPort"), rule.get("ToPort"), peer)


def permission(rule: dict[str, Any]) -> dict[str, Any]:
    """The IpPermissions entry that recreates a rule as the audit log recorded it."""
    perm: dict[str, Any] = {"IpProtocol": rule["IpProtocol"]}
    if rule["IpProtocol"] != "-1":
        perm |= {"FromPort": rule["FromPort"], "ToPort": rule["ToPort"]}
    if "CidrIpv4" in rule:
        perm["IpRanges"] = [{"CidrIp": rule["CidrIpv4"]}]
    elif "CidrIpv6" in rule:
        perm["Ipv6Ranges"] = [{"CidrIpv6": rule["CidrIpv6"]}]
    elif "PrefixListId" in rule:
        perm["PrefixListIds"] = [{"PrefixListId": rule["PrefixListId"]}]
    else:
        perm["UserIdGroupPairs"] = [{"GroupId": rule["ReferencedGroupId"]}]
    return perm


# --- the report ---------------------------------------------------------------------------------

def test_report_has_one_line_per_account_and_region_and_the_failed_account(cli: Cli, org: SandboxOrg,
                                                                         emulator: EmulatorClient) -> None:
    nonprod = sorted(org.accounts[n] for n in ("dev-app-1", "dev-app-2", "sandbox-1", "sandbox-2"))
    before = snapshot(emulator.url, nonprod)
    denied = org.accounts["dev-app-2"]
    emulator.add_rule(operation="AssumeRole", target_account=denied, code="AccessDenied",
                      message="no trust relationship for the caller", status=403)
    report = cli.home / "out" / "report.jsonl"

    result = ok(cli.run("run", TASK, "--ou", org.ous["NonProd"], "--region", "us-east-1", "--region", "eu-west-1",
                        "--report", str(report)), 1)

    lines = read_jsonl(report)
    assert sorted((r["account"], r["region"]) for r in lines) == sorted((a, r) for a in nonprod for r in SEEDED)
    run_ids = {r.get("run_id") for r in lines}
    assert len(run_ids) == 1 and RUN_ID.match(str(run_ids.pop()))
    for line in lines:
        assert set(line) >= REPORT_KEYS, line
        assert line["task"] == TASK and line["phase"] == "plan"
        if line["account"] == denied:
            assert line["status"] == "failed"
            assert line["changes"] == []
            assert "AccessDenied" in line["error"] and "no trust relationship" in line["error"]
            assert f"arn:aws:iam::{denied}:role/OrganizationAccountAccessRole" in line["error"]
        else:
            assert line["status"] == "ok" and line["error"] is None
            [change] = line["changes"]
            assert change["account_id"] == line["account"] and change["region"] == line["region"]
            planned = {r["SecurityGroupRuleId"] for r in change["before"]["rules"]}
            assert planned == set(before[(line["account"], line["region"])])
    assert f"{denied}" in result.stdout and "FAILED" in result.stdout


def test_report_of_an_armed_run_has_the_plan_and_the_apply(cli: Cli, org: SandboxOrg) -> None:
    targeted = sorted([org.accounts["prod-app-1"], org.accounts["prod-app-3"]])
    report = cli.home / "report.jsonl"
    ok(cli.run("run", TASK, "--arm", "--account", targeted[0], "--account", targeted[1], "--region", "eu-west-1",
               "--confirm-accounts", ",".join(targeted), "--report", str(report)))
    lines = read_jsonl(report)
    assert sorted((r["phase"], r["account"]) for r in lines) == sorted(
        [("plan", a) for a in targeted] + [("apply", a) for a in targeted])
    for line in lines:
        assert set(line) >= REPORT_KEYS
        assert line["status"] == "ok" and line["region"] == "eu-west-1" and line["error"] is None
        assert len(line["changes"]) == 1
    applied = [r for r in lines if r["phase"] == "apply"]
    assert all([o["status"] for o in r["outcomes"]] == ["applied"] for r in applied)


def test_report_path_that_cannot_be_written_is_bad_input(cli: Cli, org: SandboxOrg) -> None:
    blocker = cli.home / "a-file"
    blocker.write_text("")
    result = cli.run("run", TASK, "--account", org.accounts["dev-app-1"], "--region", "us-east-1",
                     "--report", str(blocker / "report.jsonl"))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "--report" in result.stderr and "Traceback" not in result.stderr


# --- the audit log ------------------------------------------------------------------------------

def test_audit_log_of_a_dry_run(cli: Cli, org: SandboxOrg) -> None:
    excluded = org.accounts["sandbox-2"]
    result = ok(cli.run("run", TASK, "--ou", org.ous["NonProd"], "--exclude", excluded, "--tag", "env=dev",
                        "--region", "us-east-1", "--region", "eu-west-1"))
    events = cli.audit()
    assert [e["event"] for e in events if e["event"].startswith("run-")] == ["run-start", "run-end"]
    start = next(e for e in events if e["event"] == "run-start")
    end = next(e for e in events if e["event"] == "run-end")
    run_id = start["run_id"]
    assert RUN_ID.match(run_id) and f"run {run_id}:" in result.stderr
    assert all(e["run_id"] == run_id for e in events)
    assert start["operator"] == OPERATOR
    assert start["task"] == TASK and start["mode"] == "dry-run"
    assert start["selectors"]["ous"] == [org.ous["NonProd"]]
    assert start["selectors"]["exclude"] == [excluded]
    assert start["selectors"]["tags"] == {"env": "dev"}
    assert start["selectors"]["include_management"] is False
    assert start["regions"] == ["us-east-1", "eu-west-1"]
    assert sorted(start["targets"]) == sorted(org.accounts[n] for n in ("dev-app-1", "dev-app-2", "sandbox-1"))
    assert end["task"] == TASK and end["mode"] == "dry-run" and end["status"] == "ok"

    planned = [e for e in events if e["event"] == "planned"]
    assert sorted((e["account"], e["region"]) for e in planned) == sorted(
        (a, r) for a in start["targets"] for r in SEEDED)  # one line per change: one default group each
    assert all(e["task"] == TASK and e["summary"] and len(e["sha256"]) == 64 and "change" not in e for e in planned)
    assert not [e for e in events if e["event"] in ("confirmed", "applied")]


def test_journal_of_an_armed_run_keeps_every_removed_rule_in_full(cli: Cli, org: SandboxOrg,
                                                                  emulator: EmulatorClient) -> None:
    targeted = sorted(org.accounts[n] for n in ("sandbox-1", "sandbox-2"))
    before = snapshot(emulator.url, targeted, ["us-east-1"])
    ok(cli.run("run", TASK, "--arm", "--ou", org.ous["Sandbox"], "--region", "us-east-1",
               "--confirm-accounts", ",".join(targeted)))
    events = cli.audit()
    start = next(e for e in events if e["event"] == "run-start")
    end = next(e for e in events if e["event"] == "run-end")
    assert start["mode"] == "armed" and start["operator"] == OPERATOR and end["status"] == "ok"
    [confirmed] = [e for e in events if e["event"] == "confirmed"]
    assert confirmed["accounts"] == targeted

    planned = [e for e in events if e["event"] == "planned"]
    applied = [e for e in events if e["event"] == "applied"]
    assert len(planned) == len(applied) == 2
    assert sorted(e["account"] for e in applied) == targeted
    journal = {e["change"]["account_id"]: e["change"] for e in read_jsonl(
        next((cli.home / "state" / "orgrunner" / "journal").glob("*.jsonl"))) if e["status"] == "applied"}
    for entry in applied:
        assert entry["status"] == "applied" and entry["region"] == "us-east-1" and entry["error"] is None
        assert "change" not in entry  # the audit log: a summary and the digest of the journal's change
        assert Change.from_dict(journal[entry["account"]]).digest() == entry["sha256"]
        rules = journal[entry["account"]]["before"]["rules"]
        live_before = before[(entry["account"], "us-east-1")]
        assert {r["SecurityGroupRuleId"] for r in rules} == set(live_before)
        assert sorted(map(rule_content, rules)) == sorted(map(rule_content, live_before.values()))
    assert snapshot(emulator.url, targeted, ["us-east-1"]) == {k: {} for k in before}

    # the journal alone is enough to put every rule back as it was
    for entry in applied:
        change = journal[entry["account"]]
        ec2 = aws_client(emulator.url, "ec2", "us-east-1", **assume_role(emulator.url, entry["account"]))
        group_id = change["before"]["group_id"]
        for egress, authorize in ((False, ec2.authorize_security_group_ingress),
                                  (True, ec2.authorize_security_group_egress)):
            perms = [permission(r) for r in change["before"]["rules"] if r["IsEgress"] == egress]
            if perms:
                authorize(GroupId=group_id, IpPermissions=perms)
    restored = snapshot(emulator.url, targeted, ["us-east-1"])
    for key, rules in before.items():
        assert sorted(map(rule_content, restored[key].values())) == sorted(map(rule_content, rules.values()))


def test_audit_log_of_a_refused_run(cli: Cli, org: SandboxOrg) -> None:
    account = org.accounts["dev-app-1"]
    result = cli.run("run", TASK, "--arm", "--account", account, "--region", "us-east-1")
    assert result.returncode == 3
    events = cli.audit()
    end = next(e for e in events if e["event"] == "run-end")
    assert end["mode"] == "armed" and end["status"].startswith("refused: ")
    assert "--confirm-accounts" in end["status"]
    assert [e["event"] for e in events].count("planned") == 1
    assert not [e for e in events if e["event"] in ("confirmed", "applied")]


# --- no secrets anywhere ------------------------------------------------------------------------

def test_no_secret_in_output_report_audit_log_or_journal(cli: Cli, org: SandboxOrg,
                                                         emulator: EmulatorClient) -> None:
    targeted = sorted(org.accounts[n] for n in ("dev-app-1", "sandbox-1"))
    denied = org.accounts["dev-app-2"]
    emulator.add_rule(operation="AssumeRole", target_account=denied, code="AccessDenied",
                      message="denied", status=403)
    report = cli.home / "report.jsonl"
    runs = [
        cli.run("whoami"),
        cli.run("accounts", "--format", "json"),
        cli.run("run", TASK, "--region", "us-east-1", "--ou", org.ous["NonProd"], "--report", str(report)),
        cli.run("run", TASK, "--arm", "--region", "us-east-1", "--ou", org.ous["NonProd"], "--exclude", denied,
                "--report", str(report)),  # refused: no confirmation
        cli.run("run", TASK, "--arm", "--region", "us-east-1", "--ou", org.ous["NonProd"], "--exclude", denied,
                "--exclude", org.accounts["sandbox-2"], "--report", str(report),
                "--confirm-accounts", ",".join(targeted)),
    ]
    assert [r.returncode for r in runs] == [0, 0, 1, 3, 0], [(r.returncode, r.stderr) for r in runs]
    texts = {f"output of {' '.join(map(str, r.args[1:3]))}": r.stdout + r.stderr for r in runs}
    state_files = [p for p in (cli.home / "state").rglob("*") if p.is_file()]
    assert cli.audit_log in state_files
    assert any(p.parent.name == "journal" for p in state_files)
    for path in [report, *state_files]:
        texts[str(path)] = path.read_text(errors="replace")

    secrets = [SANDBOX_ENV_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], SANDBOX_ENV_CREDENTIALS["AWS_SESSION_TOKEN"],
               SANDBOX_ENV_CREDENTIALS["AWS_ACCESS_KEY_ID"]]
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, (where, secret)
        assert not KEY_ID.search(text), (where, KEY_ID.search(text))
        assert not LONG_SECRET.search(text), (where, LONG_SECRET.search(text))
    # the caller's key is described by its kind and prefix only
    assert "ASIA..." in runs[0].stdout
