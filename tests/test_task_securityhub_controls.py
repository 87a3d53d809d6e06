"""securityhub-controls. moto serves DescribeHub (so "Security Hub not enabled -> skipped" runs end
to end through the CLI) but none of the standards and controls APIs (GetEnabledStandards,
BatchGet/BatchUpdateStandardsControlAssociations answer 404): those paths run plan/apply directly
with botocore Stubbers, on clients guarded like the engine's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from orgrunner_builtin_tasks.securityhub_controls import SecurityHubControls, SecurityHubControlsConfig

from orgrunner.errors import TargetError
from orgrunner.sandbox import SandboxOrg
from orgrunner.task import Skip
from tests.emulator.client import EmulatorClient
from tests.tasks_helpers import Stubbed, run_cli, task_config

TASK = "securityhub-controls"
FSBP = "aws-foundational-security-best-practices/v/1.0.0"
CIS = "cis-aws-foundations-benchmark/v/3.0.0"
ARN = {std: f"arn:aws:securityhub:us-east-1::standards/{std}" for std in (FSBP, CIS)}
REASON = "Root hardware MFA is handled by the management account team"
CONFIG = {"standards": {
    FSBP: {"EC2.7": {"status": "ENABLED"}, "IAM.6": {"status": "DISABLED", "reason": REASON}},
    CIS: {"IAM.15": {"status": "ENABLED"}},
}}


def _task(config: dict[str, Any] = CONFIG) -> Stubbed:
    return Stubbed(SecurityHubControls(SecurityHubControlsConfig.model_validate(config)))


def _association(std: str, control: str, status: str, reason: str | None = None) -> dict[str, Any]:
    item = {"StandardsArn": ARN[std], "SecurityControlId": control, "AssociationStatus": status,
            "SecurityControlArn": f"arn:aws:securityhub:us-east-1:111122223333:security-control/{control}"}
    return item | ({"UpdatedReason": reason} if reason else {})


def _subscription(std: str) -> dict[str, Any]:
    return {"StandardsSubscriptionArn": f"{ARN[std]}-subscription", "StandardsArn": ARN[std], "StandardsInput": {},
            "StandardsStatus": "READY"}


def _hub_reads(stubbed: Stubbed, statuses: dict[str, str]) -> None:
    """DescribeHub, GetEnabledStandards and one BatchGetStandardsControlAssociations for FSBP's controls."""
    hub = stubbed.stub("securityhub")
    hub.add_response("describe_hub", {"HubArn": "arn:aws:securityhub:us-east-1:111122223333:hub/default"}, {})
    hub.add_response("get_enabled_standards", {"StandardsSubscriptions": [_subscription(FSBP)]}, {})
    ids = [{"StandardsArn": ARN[FSBP], "SecurityControlId": c} for c in statuses]
    hub.add_response("batch_get_standards_control_associations", {"StandardsControlAssociationDetails": [
        _association(FSBP, c, s) for c, s in statuses.items()]}, {"StandardsControlAssociationIds": ids})


def _not_the_administrator(stubbed: Stubbed) -> None:
    stubbed.stub("securityhub").add_client_error(
        "describe_organization_configuration", "AccessDeniedException",
        "You do not have sufficient access to perform this action.", 403)


def test_not_enabled_region_is_skipped_not_failed(emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    text = f"standards:\n  {FSBP}:\n    EC2.7: {{status: ENABLED}}\n"
    config = task_config(tmp_path, "securityhub-controls.yaml", text)
    run = run_cli(emulator, tmp_path, TASK, org.accounts["dev-app-1"], "--dry-run", config=config)
    assert run.code == 0, run.err
    assert run.statuses("plan") == ["skipped"]
    assert run.report[0]["error"] == "Security Hub is not enabled in this region"
    assert "0 failed, 1 skipped" in run.out


def test_matching_controls_are_no_change() -> None:
    stubbed = _task()
    _hub_reads(stubbed, {"EC2.7": "ENABLED", "IAM.6": "DISABLED"})  # CIS is not enabled: left alone
    assert stubbed.task.plan(stubbed.plan_context()) == []
    stubbed.assert_done()


def test_differing_controls_one_change_each_and_disabling_is_destructive() -> None:
    stubbed = _task()
    _hub_reads(stubbed, {"EC2.7": "DISABLED", "IAM.6": "ENABLED"})
    _not_the_administrator(stubbed)
    enable, disable = stubbed.task.plan(stubbed.plan_context())
    stubbed.assert_done()
    assert (enable.resource, enable.action, enable.destructive) == (f"{FSBP}/EC2.7", "enable-control", False)
    assert enable.details == ("AssociationStatus: DISABLED -> ENABLED",)
    assert (disable.action, disable.destructive) == ("disable-control", True)
    assert disable.details == ("AssociationStatus: ENABLED -> DISABLED", f"UpdatedReason: (none) -> {REASON}")
    assert disable.after == {"StandardsArn": ARN[FSBP], "SecurityControlId": "IAM.6",
                             "AssociationStatus": "DISABLED", "UpdatedReason": REASON}
    assert disable.undo == {"StandardsArn": ARN[FSBP], "SecurityControlId": "IAM.6", "AssociationStatus": "ENABLED"}


def test_no_configured_standard_enabled_is_skipped() -> None:
    stubbed = _task({"standards": {CIS: {"IAM.15": {"status": "ENABLED"}}}})
    hub = stubbed.stub("securityhub")
    hub.add_response("describe_hub", {}, {})
    hub.add_response("get_enabled_standards", {"StandardsSubscriptions": [_subscription(FSBP)]})
    with pytest.raises(Skip, match="none of the configured standards"):
        stubbed.task.plan(stubbed.plan_context())


def test_unreadable_control_fails_the_target_instead_of_planning() -> None:
    stubbed = _task({"standards": {FSBP: {"EC2.999": {"status": "ENABLED"}}}})
    hub = stubbed.stub("securityhub")
    hub.add_response("describe_hub", {}, {})
    hub.add_response("get_enabled_standards", {"StandardsSubscriptions": [_subscription(FSBP)]})
    hub.add_response("batch_get_standards_control_associations", {
        "StandardsControlAssociationDetails": [],
        "UnprocessedAssociations": [{"StandardsControlAssociationId": {"StandardsArn": ARN[FSBP],
                                                                       "SecurityControlId": "EC2.999"},
                                     "ErrorCode": "NOT_FOUND", "ErrorReason": "no such control"}]})
    with pytest.raises(TargetError, match=r"cannot read EC2\.999 in .*: NOT_FOUND: no such control"):
        stubbed.task.plan(stubbed.plan_context())


def test_centrally_configured_account_is_reported_not_planned() -> None:
    stubbed = _task()
    _hub_reads(stubbed, {"EC2.7": "DISABLED", "IAM.6": "DISABLED"})
    hub = stubbed.stub("securityhub")
    hub.add_response("describe_organization_configuration",
                     {"OrganizationConfiguration": {"ConfigurationType": "CENTRAL", "Status": "ENABLED"}}, {})
    hub.add_response("get_configuration_policy_association", {"ConfigurationPolicyId": "a1b2c3"},
                     {"Target": {"AccountId": "111122223333"}})
    with pytest.raises(TargetError, match=r"1 control\(s\) differ, but this account is under Security Hub central"):
        stubbed.task.plan(stubbed.plan_context())
    stubbed.assert_done()


def test_self_managed_administrator_account_is_planned() -> None:
    stubbed = _task()
    _hub_reads(stubbed, {"EC2.7": "DISABLED", "IAM.6": "DISABLED"})
    hub = stubbed.stub("securityhub")
    hub.add_response("describe_organization_configuration",
                     {"OrganizationConfiguration": {"ConfigurationType": "CENTRAL"}}, {})
    hub.add_response("get_configuration_policy_association", {"ConfigurationPolicyId": "SELF_MANAGED_SECURITY_HUB"})
    [change] = stubbed.task.plan(stubbed.plan_context())
    assert change.resource == f"{FSBP}/EC2.7"


def _apply_setup() -> tuple[Stubbed, Any, Any]:
    stubbed = _task({"standards": {FSBP: {"IAM.6": {"status": "DISABLED", "reason": REASON}}}})
    _hub_reads(stubbed, {"IAM.6": "ENABLED"})
    _not_the_administrator(stubbed)
    [change] = stubbed.task.plan(stubbed.plan_context())
    return stubbed, change, stubbed.stub("securityhub", "apply")


def _live(hub: Any, status: str) -> None:
    hub.add_response("batch_get_standards_control_associations",
                     {"StandardsControlAssociationDetails": [_association(FSBP, "IAM.6", status)]})


def test_apply_updates_exactly_the_planned_control_then_replans_clean() -> None:
    stubbed, change, hub = _apply_setup()
    _live(hub, "ENABLED")
    hub.add_response("batch_update_standards_control_associations", {}, {"StandardsControlAssociationUpdates": [
        {"StandardsArn": ARN[FSBP], "SecurityControlId": "IAM.6", "AssociationStatus": "DISABLED",
         "UpdatedReason": REASON}]})
    assert stubbed.task.apply(stubbed.apply_context(), change) == "applied"
    _hub_reads(stubbed, {"IAM.6": "DISABLED"})  # the state the update left
    assert stubbed.task.plan(stubbed.plan_context()) == []
    stubbed.assert_done()


def test_apply_when_the_control_is_already_as_wanted() -> None:
    stubbed, change, hub = _apply_setup()
    _live(hub, "DISABLED")
    assert stubbed.task.apply(stubbed.apply_context(), change) == "already done"
    stubbed.assert_done()


def test_apply_fails_on_unprocessed_updates_with_their_reason() -> None:
    stubbed, change, hub = _apply_setup()
    _live(hub, "ENABLED")
    hub.add_response("batch_update_standards_control_associations", {"UnprocessedAssociationUpdates": [
        {"StandardsControlAssociationUpdate": change.after, "ErrorCode": "RESOURCE_NOT_FOUND",
         "ErrorReason": "standard is NOT_READY_FOR_UPDATES"}]})
    with pytest.raises(TargetError, match=r"IAM\.6 not updated: RESOURCE_NOT_FOUND: standard is NOT_READY"):
        stubbed.task.apply(stubbed.apply_context(), change)


def test_apply_in_a_centrally_configured_member_reports_it() -> None:
    stubbed, change, hub = _apply_setup()
    _live(hub, "ENABLED")
    hub.add_client_error("batch_update_standards_control_associations", "AccessDeniedException",
                         "This account is currently associated with a central configuration policy, so only the "
                         "administrator can access this operation.", 403)
    with pytest.raises(TargetError, match="only the delegated administrator can change its controls"):
        stubbed.task.apply(stubbed.apply_context(), change)


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
    from orgrunner import configfile

    root = Path(__file__).resolve().parents[1]
    config = configfile.load(root / "config" / "securityhub-controls.yaml", SecurityHubControlsConfig)
    assert config.standards[CIS]["IAM.15"].status == "ENABLED"
