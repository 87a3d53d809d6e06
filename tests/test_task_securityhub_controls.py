"""securityhub-controls, end to end through the CLI against the emulator layer's Security Hub
(orgrunner/sandbox/emulator.py: hub, standards, control associations and a delegated administrator's central
configuration, AWS's shapes and errors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from orgrunner_builtin_tasks.securityhub_controls import SecurityHubControlsConfig

from orgrunner.sandbox.org import SandboxOrg
from tests.emulator.client import EmulatorClient, member_client
from tests.tasks_helpers import run_cli, task_config

TASK = "securityhub-controls"
FSBP = "aws-foundational-security-best-practices/v/1.0.0"
CIS = "cis-aws-foundations-benchmark/v/3.0.0"
ARN = {std: f"arn:aws:securityhub:us-east-1::standards/{std}" for std in (FSBP, CIS)}
REASON = "Root hardware MFA is handled by the management account team"
CONFIG = {"standards": {
    FSBP: {"EC2.7": {"status": "ENABLED"}, "IAM.6": {"status": "DISABLED", "reason": REASON}},
    CIS: {"IAM.15": {"status": "ENABLED"}},
}}


def _hub(emulator: EmulatorClient, account: str) -> Any:
    return member_client(emulator.url, account, "securityhub", "us-east-1")


def _statuses(emulator: EmulatorClient, account: str, std: str, controls: tuple[str, ...]) -> dict[str, str]:
    hub = _hub(emulator, account)
    ids = [{"StandardsArn": ARN[std], "SecurityControlId": c} for c in controls]
    out = hub.batch_get_standards_control_associations(StandardsControlAssociationIds=ids)
    return {a["SecurityControlId"]: a["AssociationStatus"] for a in out["StandardsControlAssociationDetails"]}


def _config(tmp_path: Path, config: dict[str, Any] = CONFIG) -> Path:
    lines = ["standards:"]
    for std, controls in config["standards"].items():
        lines.append(f"  {std}:")
        for control, state in controls.items():
            reason = f", reason: {state['reason']}" if "reason" in state else ""
            lines.append(f"    {control}: {{status: {state['status']}{reason}}}")
    return task_config(tmp_path, "securityhub-controls.yaml", "\n".join(lines) + "\n")


def test_not_enabled_region_is_skipped_not_failed(emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    text = f"standards:\n  {FSBP}:\n    EC2.7: {{status: ENABLED}}\n"
    config = task_config(tmp_path, "securityhub-controls.yaml", text)
    run = run_cli(emulator, tmp_path, TASK, org.accounts["prod-app-1"], "--dry-run", config=config)
    assert run.code == 0, run.err
    assert run.statuses("plan") == ["skipped"]


def test_dry_run_plans_one_change_per_differing_control_and_changes_nothing(
        emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    """The seeded member has FSBP and CIS 1.2 (not 3.0: left alone) with EC2.7 off; IAM.6 is to go off."""
    account = org.accounts["dev-app-1"]
    emulator.enforce_session_policies(True)
    seeded = len(emulator.requests(operation="BatchUpdateStandardsControlAssociations"))
    run = run_cli(emulator, tmp_path, TASK, account, "--dry-run", config=_config(tmp_path))

    assert run.code == 0, run.out + run.err
    assert sorted((c["resource"], c["action"], c["destructive"]) for c in run.changes) == [
        (f"{FSBP}/EC2.7", "enable-control", False), (f"{FSBP}/IAM.6", "disable-control", True)]
    assert _statuses(emulator, account, FSBP, ("EC2.7", "IAM.6")) == {"EC2.7": "DISABLED", "IAM.6": "ENABLED"}
    assert len(emulator.requests(operation="BatchUpdateStandardsControlAssociations")) == seeded


def test_armed_run_applies_under_the_session_policy_then_replans_clean(
        emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    """Enabling and (confirmed) disabling through the CLI, with session policies enforced: the apply
    policy must hold securityhub:UpdateStandardsControl, the dependent action AWS requires."""
    account = org.accounts["dev-app-1"]
    emulator.enforce_session_policies(True)
    config = _config(tmp_path)
    run = run_cli(emulator, tmp_path, TASK, account, "--arm", "--confirm-accounts", account, config=config)

    assert run.code == 0, run.out + run.err
    assert sorted(run.statuses("apply")) == ["ok"], run.report
    assert _statuses(emulator, account, FSBP, ("EC2.7", "IAM.6")) == {"EC2.7": "ENABLED", "IAM.6": "DISABLED"}
    reasons = _hub(emulator, account).batch_get_standards_control_associations(StandardsControlAssociationIds=[
        {"StandardsArn": ARN[FSBP], "SecurityControlId": "IAM.6"}])["StandardsControlAssociationDetails"]
    assert reasons[0]["UpdatedReason"] == REASON
    again = run_cli(emulator, tmp_path, TASK, account, "--dry-run", config=config)
    assert again.code == 0 and again.changes == []


def test_no_configured_standard_enabled_is_skipped(emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    config = _config(tmp_path, {"standards": {CIS: {"IAM.15": {"status": "ENABLED"}}}})
    run = run_cli(emulator, tmp_path, TASK, org.accounts["dev-app-1"], "--dry-run", config=config)
    assert run.code == 0, run.err
    assert run.statuses("plan") == ["skipped"]
    assert "none of the configured standards is enabled" in run.out + json.dumps(run.report)


def test_a_control_the_standard_lacks_fails_the_target_with_security_hubs_reason(
        emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    config = _config(tmp_path, {"standards": {FSBP: {"Lambda.99": {"status": "ENABLED"}}}})
    run = run_cli(emulator, tmp_path, TASK, org.accounts["dev-app-1"], "--dry-run", config=config)
    assert run.code == 1
    assert run.statuses("plan") == ["failed"]
    reported = run.out + json.dumps(run.report)
    assert "cannot read Lambda.99" in reported and "RESOURCE_NOT_FOUND" in reported


# Central configuration: the emulator layer's delegated administrator (EmulatorClient.securityhub_central).

POLICY_ID = "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111"


def test_centrally_configured_account_is_reported_not_planned(
        emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    """In the delegated administrator's own account, associated with a configuration policy, the plan
    sees the central configuration and fails the target instead of planning writes."""
    account = org.accounts["dev-app-1"]
    emulator.securityhub_central(account, "us-east-1", {account: POLICY_ID})
    seeded = len(emulator.requests(operation="BatchUpdateStandardsControlAssociations"))
    run = run_cli(emulator, tmp_path, TASK, account, "--arm", "--confirm-accounts", account,
                  config=_config(tmp_path))

    assert run.code == 1, run.out + run.err
    assert run.statuses("plan") == ["failed"] and run.changes == []
    assert "2 control(s) differ, but this account is under Security Hub central configuration" in run.out
    assert "only the delegated administrator can change its controls" in run.out
    assert _statuses(emulator, account, FSBP, ("EC2.7", "IAM.6")) == {"EC2.7": "DISABLED", "IAM.6": "ENABLED"}
    assert emulator.requests(operation="GetConfigurationPolicyAssociation")[-1]["status"] == 200
    assert len(emulator.requests(operation="BatchUpdateStandardsControlAssociations")) == seeded


def test_self_managed_administrator_account_is_planned(
        emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    """The delegated administrator's account left self-managed (SELF_MANAGED_SECURITY_HUB) is planned and
    applied as any other."""
    account = org.accounts["dev-app-1"]
    emulator.securityhub_central(account, "us-east-1", {account: "SELF_MANAGED_SECURITY_HUB",
                                                        org.accounts["security-audit"]: POLICY_ID})
    config = _config(tmp_path)
    run = run_cli(emulator, tmp_path, TASK, account, "--dry-run", config=config)

    assert run.code == 0, run.out + run.err
    assert sorted(c["resource"] for c in run.changes) == [f"{FSBP}/EC2.7", f"{FSBP}/IAM.6"]
    assert [r["status"] for r in emulator.requests(operation="GetConfigurationPolicyAssociation")] == [200]
    armed = run_cli(emulator, tmp_path, TASK, account, "--arm", "--confirm-accounts", account, config=config)
    assert armed.code == 0, armed.out + armed.err
    assert _statuses(emulator, account, FSBP, ("EC2.7", "IAM.6")) == {"EC2.7": "ENABLED", "IAM.6": "DISABLED"}


def test_apply_in_a_centrally_configured_member_reports_it(
        emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    """A member cannot see the central configuration (DescribeOrganizationConfiguration is refused), so
    its change is planned; Security Hub refuses the update, and the CLI says why; nothing changed."""
    account = org.accounts["dev-app-1"]
    emulator.securityhub_central(org.accounts["security-audit"], "us-east-1", {account: POLICY_ID})
    config = _config(tmp_path, {"standards": {FSBP: {"IAM.6": {"status": "DISABLED", "reason": REASON}}}})
    seeded = len(emulator.requests(operation="BatchUpdateStandardsControlAssociations"))
    run = run_cli(emulator, tmp_path, TASK, account, "--arm", "--confirm-accounts", account, config=config)

    assert run.code == 1, run.out + run.err
    assert [c["resource"] for c in run.changes] == [f"{FSBP}/IAM.6"]
    assert run.statuses("apply") == ["failed"], run.report
    assert "only the delegated administrator can change its controls" in run.out
    assert [r["status"] for r in emulator.requests(operation="DescribeOrganizationConfiguration")] == [403]
    updates = emulator.requests(operation="BatchUpdateStandardsControlAssociations")[seeded:]
    assert [(r["account"], r["status"]) for r in updates] == [(account, 403)]
    assert _statuses(emulator, account, FSBP, ("IAM.6",)) == {"IAM.6": "ENABLED"}


@pytest.mark.parametrize(("text", "line", "message"), [
    (f"standards:\n  {FSBP}:\n    IAM.6:\n      status: DISABLED\n", 3,
     f"standards.{FSBP}.IAM.6: Value error, a reason is required to disable a control"),
    (f"standards:\n  {FSBP}:\n    IAM.6: {{status: ENABLED, note: x}}\n", 3,
     f"standards.{FSBP}.IAM.6.note: Extra inputs are not permitted"),
    (f"standards:\n  {FSBP}:\n    IAM.6: {{status: true}}\n", 3,
     f"standards.{FSBP}.IAM.6.status: Input should be 'ENABLED' or 'DISABLED'"),
    ("standards: {}\n", 1, "standards: Dictionary should have at least 1 item"),
    ("standard:\n  x: y\n", 1, "standards: Field required"),
])
def test_config_errors_name_the_file_and_line(emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path,
                                              text: str, line: int, message: str) -> None:
    config = task_config(tmp_path, "securityhub-controls.yaml", text)
    run = run_cli(emulator, tmp_path, TASK, org.accounts["dev-app-1"], "--dry-run", config=config)
    assert run.code == 2
    [error] = run.err.strip().splitlines()
    assert f"securityhub-controls.yaml:{line}: {message}" in error


def test_shipped_config_is_valid() -> None:
    from orgrunner.config import configfile
    root = Path(__file__).resolve().parents[1]
    config = configfile.load(root / "config" / "securityhub-controls.yaml", SecurityHubControlsConfig)
    assert config.standards[CIS]["IAM.15"].status == "ENABLED"
