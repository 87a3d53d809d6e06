"""The test emulator itself: the seeded sandbox organization and the middleware's recording,
faults, latency and session-policy enforcement, all through boto3 against the running server."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from orgrunner.sandbox.org import SANDBOX_ENV_CREDENTIALS, SandboxOrg, start_emulator
from tests.emulator.client import EmulatorClient, assume_role, aws_client, member_client
from tests.emulator.middleware import session_policy_verdict

OPEN_TO_WORLD = [("tcp", 22, "0.0.0.0/0"), ("tcp", 3389, "0.0.0.0/0"), ("-1", None, "::/0")]


def _error(call: Callable[[], Any]) -> dict[str, Any]:
    with pytest.raises(ClientError) as excinfo:
        call()
    return {**excinfo.value.response["Error"], "Status": excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"]}


def _default_group(ec2: Any) -> dict[str, Any]:
    vpc_id = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    filters = [{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": ["default"]}]
    group: dict[str, Any] = ec2.describe_security_groups(Filters=filters)["SecurityGroups"][0]
    return group


def _world_open(group: dict[str, Any]) -> list[tuple[str, int | None, str]]:
    return sorted(
        (p["IpProtocol"], p.get("FromPort"), r.get("CidrIp") or r["CidrIpv6"])
        for p in group["IpPermissions"]
        for r in p["IpRanges"] + p["Ipv6Ranges"]
    )


def test_environment_points_at_emulator_only(emulator: EmulatorClient) -> None:
    assert os.environ["AWS_ENDPOINT_URL"] == emulator.url
    assert "AWS_PROFILE" not in os.environ
    assert not os.path.exists(os.environ["AWS_CONFIG_FILE"])
    assert os.environ["AWS_ACCESS_KEY_ID"].startswith("ASIA") and len(os.environ["AWS_ACCESS_KEY_ID"]) == 20
    assert boto3.client("sts").get_caller_identity()["Account"] == "123456789012"
    assert emulator.env()["AWS_ENDPOINT_URL"] == emulator.url


def test_seeded_organization(org: SandboxOrg) -> None:
    orgs = boto3.client("organizations")
    assert orgs.describe_organization()["Organization"]["Id"] == org.organization_id
    assert org.management_account_id == "123456789012"

    def child_ous(parent: str) -> set[str]:
        return {ou["Name"] for ou in orgs.list_organizational_units_for_parent(ParentId=parent)["OrganizationalUnits"]}

    assert child_ous(org.root_id) == {"Workloads", "Security"}
    assert child_ous(org.ous["Workloads"]) == {"Prod", "NonProd"}
    assert child_ous(org.ous["NonProd"]) == {"Sandbox"}
    in_sandbox = {a["Name"] for a in orgs.list_accounts_for_parent(ParentId=org.ous["Sandbox"])["Accounts"]}
    assert in_sandbox == {"sandbox-1", "sandbox-2"}

    accounts = {a["Id"]: a for a in orgs.list_accounts()["Accounts"]}
    assert len(org.accounts) == 8 and set(org.accounts.values()) < set(accounts)
    assert all(accounts[i]["State"] == "ACTIVE" for i in org.accounts.values())
    assert accounts[org.suspended_account_id]["Name"] == "retired-1"
    assert [a["Name"] for a in accounts.values() if a["State"] != "ACTIVE"] == ["retired-1"]
    assert orgs.describe_account(AccountId=org.suspended_account_id)["Account"]["State"] == "SUSPENDED"

    tags = orgs.list_tags_for_resource(ResourceId=org.accounts["prod-app-1"])["Tags"]
    assert {t["Key"]: t["Value"] for t in tags} == {"env": "prod", "team": "payments"}
    tags = orgs.list_tags_for_resource(ResourceId=org.accounts["dev-app-2"])["Tags"]
    assert {t["Key"]: t["Value"] for t in tags}["env"] == "dev"


def test_seeded_default_security_groups_are_open_in_seeded_regions_only(
    emulator: EmulatorClient, org: SandboxOrg
) -> None:
    for account_id in org.accounts.values():
        credentials = assume_role(emulator.url, account_id)
        for region in org.regions:
            group = _default_group(aws_client(emulator.url, "ec2", region, **credentials))
            assert _world_open(group) == sorted(OPEN_TO_WORLD)
            self_rule = [p for p in group["IpPermissions"] if p["UserIdGroupPairs"]]
            assert self_rule[0]["UserIdGroupPairs"][0]["GroupId"] == group["GroupId"]
            assert group["IpPermissionsEgress"][0]["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}]
    untouched = _default_group(member_client(emulator.url, org.accounts["prod-app-1"], "ec2", "ap-southeast-2"))
    assert untouched["IpPermissions"] == []


def test_requests_are_recorded_with_assume_role_parameters_and_no_secrets(
        emulator: EmulatorClient, org: SandboxOrg) -> None:
    account_id = org.accounts["dev-app-1"]
    policy = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ec2:Describe*"}]})
    credentials = assume_role(
        emulator.url,
        account_id,
        RoleSessionName="alice-task",
        SourceIdentity="alice",
        Policy=policy,
        DurationSeconds=900,
    )
    aws_client(emulator.url, "ec2", "eu-west-1", **credentials).describe_vpcs()

    [assume] = [r for r in emulator.requests(operation="AssumeRole") if r["params"]["RoleSessionName"] == "alice-task"]
    [describe] = [r for r in emulator.requests(operation="DescribeVpcs") if r["session"] == "alice-task"]
    assert assume["account"] == "123456789012" and assume["target_account"] == account_id
    assert assume["params"] == {
        "RoleArn": f"arn:aws:iam::{account_id}:role/OrganizationAccountAccessRole",
        "RoleSessionName": "alice-task",
        "SourceIdentity": "alice",
        "Policy": policy,
        "DurationSeconds": 900,
        "SerialNumber": None,
        "TokenCode": None,
    }
    assert describe == {
        "service": "ec2",
        "operation": "DescribeVpcs",
        "account": account_id,
        "region": "eu-west-1",
        "access_key_id": credentials["aws_access_key_id"][:4] + "...",
        "access_key_sha256": hashlib.sha256(credentials["aws_access_key_id"].encode()).hexdigest()[:16],
        "session": "alice-task",
        "status": 200,
    }
    recorded = json.dumps(emulator.requests())
    management_keys = [v for k, v in SANDBOX_ENV_CREDENTIALS.items() if k != "AWS_DEFAULT_REGION"]
    for secret in [*credentials.values(), *management_keys]:
        assert secret not in recorded


def test_fault_rule_denies_assume_role_into_one_account_only(emulator: EmulatorClient, org: SandboxOrg) -> None:
    denied, allowed = org.accounts["prod-app-1"], org.accounts["dev-app-1"]
    emulator.add_rule(operation="AssumeRole", target_account=denied, code="AccessDenied", message="nope", status=403)
    assert _error(lambda: assume_role(emulator.url, denied)) == {
        "Type": "Sender",
        "Code": "AccessDenied",
        "Message": "nope",
        "Status": 403,
    }
    assert assume_role(emulator.url, allowed)["aws_access_key_id"].startswith("ASIA")
    emulator.clear_rules()
    assert assume_role(emulator.url, denied)


@pytest.mark.parametrize(
    ("service", "call"),
    [
        ("ec2", lambda c: c.describe_vpcs()),  # ec2 protocol
        ("iam", lambda c: c.list_roles()),  # query
        ("organizations", lambda c: c.list_roots()),  # json
        ("securityhub", lambda c: c.describe_hub()),  # rest-json
        ("s3control", lambda c: c.get_public_access_block(AccountId="123456789012")),  # rest-xml
    ],
)
def test_fault_errors_have_each_protocols_shape(
    emulator: EmulatorClient, service: str, call: Callable[[Any], Any]
) -> None:
    emulator.add_rule(service=service, code="InvalidParameterValue", message="injected <fault>", times=1)
    client = aws_client(emulator.url, service, "eu-west-1")
    error = _error(lambda: call(client))
    assert (error["Code"], error["Message"], error["Status"]) == ("InvalidParameterValue", "injected <fault>", 400)
    try:  # `times=1`: the next call reaches moto (which may answer its own error)
        call(client)
    except ClientError as exc:
        assert exc.response["Error"]["Code"] != "InvalidParameterValue"


def test_fault_probability_uses_a_seeded_rng(emulator: EmulatorClient) -> None:
    def failures() -> int:
        emulator.add_rule(operation="GetCallerIdentity", code="InvalidClientTokenId", probability=0.5)
        sts = aws_client(emulator.url, "sts")
        outcomes = []
        for _ in range(20):
            try:
                sts.get_caller_identity()
                outcomes.append(0)
            except ClientError:
                outcomes.append(1)
        emulator.reset()
        return sum(outcomes)

    first = failures()
    assert 0 < first < 20
    assert failures() == first


def test_latency_global_and_per_rule(emulator: EmulatorClient) -> None:
    sts = aws_client(emulator.url, "sts")

    def timed() -> float:
        start = time.monotonic()
        sts.get_caller_identity()
        return time.monotonic() - start

    timed()  # warm up the connection
    assert timed() < 0.15
    emulator.set_latency(200)
    assert timed() >= 0.2
    emulator.set_latency(0)
    emulator.add_rule(service="sts", region="eu-*", latency_ms=200)
    assert timed() < 0.15
    start = time.monotonic()
    aws_client(emulator.url, "sts", "eu-west-1").get_caller_identity()
    assert time.monotonic() - start >= 0.2


def _allow(*actions: str, deny: tuple[str, ...] = ()) -> str:
    statements = [{"Effect": "Allow", "Action": list(actions), "Resource": "*"}]
    statements += [{"Effect": "Deny", "Action": list(deny), "Resource": "*"}] if deny else []
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def test_session_policy_enforcement_on_ec2(emulator: EmulatorClient, org: SandboxOrg) -> None:
    account_id, region = org.accounts["prod-app-1"], "us-east-1"
    read_only = assume_role(emulator.url, account_id, Policy=_allow("ec2:DescribeVpcs", "ec2:DescribeSecurityGroups"))
    ec2 = aws_client(emulator.url, "ec2", region, **read_only)
    emulator.enforce_session_policies(True)

    group = _default_group(ec2)  # declared reads are allowed
    revoke = {"GroupId": group["GroupId"], "IpPermissions": group["IpPermissions"]}
    error = _error(lambda: ec2.revoke_security_group_ingress(**revoke))
    assert (error["Code"], error["Status"]) == ("UnauthorizedOperation", 403)
    assert "ec2:RevokeSecurityGroupIngress" in error["Message"]
    assert _error(lambda: ec2.describe_instances())["Code"] == "UnauthorizedOperation"  # not declared
    unrestricted = member_client(emulator.url, account_id, "ec2", region)
    assert unrestricted.revoke_security_group_ingress(**revoke)  # no Policy: not restricted
    assert _world_open(_default_group(ec2)) == []

    emulator.enforce_session_policies(False)  # moto alone ignores session policies
    ec2.authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=group["IpPermissions"])
    assert _world_open(_default_group(unrestricted)) == sorted(OPEN_TO_WORLD)


def test_denied_write_changes_nothing_and_explicit_deny_wins(emulator: EmulatorClient, org: SandboxOrg) -> None:
    account_id = org.accounts["dev-app-1"]
    policy = _allow("ec2:*", deny=("ec2:Revoke*",))
    ec2 = aws_client(emulator.url, "ec2", "eu-west-1", **assume_role(emulator.url, account_id, Policy=policy))
    emulator.enforce_session_policies(True)
    before = _default_group(ec2)
    error = _error(
        lambda: ec2.revoke_security_group_ingress(GroupId=before["GroupId"], IpPermissions=before["IpPermissions"])
    )
    assert error["Code"] == "UnauthorizedOperation" and "explicit deny" in error["Message"]
    assert _default_group(ec2) == before
    assert emulator.requests(operation="RevokeSecurityGroupIngress")[0]["status"] == 403


def test_session_policy_enforcement_on_json_and_rest_services(emulator: EmulatorClient, org: SandboxOrg) -> None:
    account_id = org.accounts["prod-app-1"]  # the seeded org has no Security Hub here
    policy = _allow("s3:GetAccountPublicAccessBlock", "organizations:Describe*", "securityhub:DescribeHub")
    credentials = assume_role(emulator.url, account_id, Policy=policy)
    s3control = aws_client(emulator.url, "s3control", **credentials)
    orgs = aws_client(emulator.url, "organizations", **credentials)
    securityhub = aws_client(emulator.url, "securityhub", **credentials)
    emulator.enforce_session_policies(True)

    assert orgs.describe_organization()["Organization"]["Id"] == org.organization_id
    error = _error(lambda: orgs.list_accounts())
    assert (error["Code"], error["Status"]) == ("AccessDeniedException", 403)
    assert "organizations:ListAccounts" in error["Message"]
    assert _error(lambda: securityhub.describe_hub())["Code"] == "InvalidAccessException"  # moto: not enabled
    assert _error(lambda: securityhub.enable_security_hub())["Code"] == "AccessDeniedException"
    assert _error(lambda: securityhub.describe_hub())["Code"] == "InvalidAccessException"  # still not enabled

    no_block = "NoSuchPublicAccessBlockConfiguration"
    assert _error(lambda: s3control.get_public_access_block(AccountId=account_id))["Code"] == no_block
    block = {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    error = _error(
        lambda: s3control.put_public_access_block(AccountId=account_id, PublicAccessBlockConfiguration=block)
    )
    assert (error["Code"], error["Status"]) == ("AccessDenied", 403)
    assert "s3:PutAccountPublicAccessBlock" in error["Message"]
    assert _error(lambda: s3control.get_public_access_block(AccountId=account_id))["Code"] == no_block
    assert [r["operation"] for r in emulator.requests(service="s3control")][:2] == [
        "GetPublicAccessBlock",
        "PutPublicAccessBlock",
    ]


def test_session_policy_enforcement_requires_dependent_actions(emulator: EmulatorClient, org: SandboxOrg) -> None:
    """AWS lists ec2:CreateTags as a dependent action of AuthorizeSecurityGroupIngress: a session
    policy holding only the declared action is refused, as AWS refuses it; with it, allowed."""
    account_id, region = org.accounts["prod-app-1"], "us-east-1"
    bare = _allow("ec2:DescribeVpcs", "ec2:DescribeSecurityGroups", "ec2:AuthorizeSecurityGroupIngress")
    ec2 = aws_client(emulator.url, "ec2", region, **assume_role(emulator.url, account_id, Policy=bare))
    full = aws_client(emulator.url, "ec2", region, **assume_role(
        emulator.url, account_id, Policy=_allow("ec2:DescribeVpcs", "ec2:DescribeSecurityGroups",
                                                "ec2:AuthorizeSecurityGroupIngress", "ec2:CreateTags")))
    emulator.enforce_session_policies(True)
    group = _default_group(ec2)
    rule = [{"IpProtocol": "tcp", "FromPort": 8443, "ToPort": 8443, "IpRanges": [{"CidrIp": "10.9.0.0/16"}]}]
    error = _error(lambda: ec2.authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=rule))
    assert error["Code"] == "UnauthorizedOperation"
    assert "ec2:CreateTags" in error["Message"]
    assert "required with ec2:AuthorizeSecurityGroupIngress" in error["Message"]
    assert full.authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=rule)["Return"]


@pytest.mark.parametrize(
    ("statements", "action", "verdict"),
    [
        ({"Effect": "Allow", "Action": "ec2:Describe*"}, "ec2:DescribeVpcs", "allow"),
        ({"Effect": "Allow", "Action": ["EC2:describe*"]}, "ec2:DescribeVpcs", "allow"),
        ({"Effect": "Allow", "Action": "ec2:Describe?pcs"}, "ec2:DescribeVpcs", "allow"),
        ({"Effect": "Allow", "Action": "ec2:Describe*"}, "ec2:RevokeSecurityGroupIngress", "implicit-deny"),
        (
            [{"Effect": "Allow", "Action": "*"}, {"Effect": "Deny", "Action": "ec2:*"}],
            "ec2:DescribeVpcs",
            "explicit-deny",
        ),
        ({"Effect": "Allow", "NotAction": "iam:*"}, "ec2:DescribeVpcs", "allow"),
        ({"Effect": "Allow", "NotAction": "iam:*"}, "iam:ListRoles", "implicit-deny"),
    ],
)
def test_session_policy_verdict(statements: Any, action: str, verdict: str) -> None:
    assert session_policy_verdict(json.dumps({"Statement": statements}), action) == verdict


def test_reset_clears_moto_and_middleware_state(emulator: EmulatorClient, org: SandboxOrg) -> None:
    emulator.add_rule(operation="ListRoots", code="Boom")
    emulator.set_latency(500)
    emulator.enforce_session_policies(True)
    emulator.reset()
    assert emulator.requests() == []
    start = time.monotonic()
    assert _error(lambda: boto3.client("organizations").list_roots())["Code"] == "AWSOrganizationsNotInUseException"
    assert time.monotonic() - start < 0.5


def test_control_api_rejects_unknown_rule_fields(emulator: EmulatorClient) -> None:
    with pytest.raises(RuntimeError, match=r"400 .*unknown rule fields: \['operations'\]"):
        emulator.add_rule(operations="AssumeRole", code="AccessDenied")


def test_start_emulator_reports_a_child_that_dies() -> None:
    with pytest.raises(RuntimeError, match="ModuleNotFoundError"):
        start_emulator(wsgi_wrapper="no_such_module:wrap")


def test_securityhub_central_configuration(emulator: EmulatorClient, org: SandboxOrg) -> None:
    """A delegated administrator's central configuration: only the administrator may read it; a member
    under a configuration policy cannot update its own controls (AWS's refusal), a self-managed one can."""
    admin, governed, free = (org.accounts[n] for n in ("security-audit", "dev-app-1", "prod-app-2"))
    policy = "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111"
    fsbp = "arn:aws:securityhub:us-east-1::standards/aws-foundational-security-best-practices/v/1.0.0"
    update = [{"StandardsArn": fsbp, "SecurityControlId": "EC2.7", "AssociationStatus": "ENABLED"}]
    with pytest.raises(RuntimeError, match="400"):
        emulator.securityhub_central(admin, "us-east-1", {"not-an-account": policy})
    emulator.securityhub_central(admin, "us-east-1", {governed: policy, free: "SELF_MANAGED_SECURITY_HUB"})
    hub = {a: member_client(emulator.url, a, "securityhub") for a in (admin, governed, free)}

    described = hub[admin].describe_organization_configuration()["OrganizationConfiguration"]
    assert described == {"ConfigurationType": "CENTRAL", "Status": "ENABLED"}
    association = hub[admin].get_configuration_policy_association(Target={"AccountId": governed})
    assert (association["ConfigurationPolicyId"], association["TargetType"], association["AssociationType"]) == (
        policy, "ACCOUNT", "APPLIED")
    inherited = hub[admin].get_configuration_policy_association(Target={"AccountId": org.accounts["prod-app-1"]})
    assert (inherited["ConfigurationPolicyId"], inherited["AssociationType"]) == ("SELF_MANAGED_SECURITY_HUB",
                                                                                 "INHERITED")
    assert _error(lambda: hub[admin].get_configuration_policy_association(Target={"RootId": org.root_id}))[
        "Code"] == "InvalidInputException"
    for member in (hub[governed], hub[free]):
        assert _error(member.describe_organization_configuration)["Code"] == "AccessDeniedException"
    elsewhere = member_client(emulator.url, admin, "securityhub", "eu-west-1")
    elsewhere.enable_security_hub(EnableDefaultStandards=False)
    assert _error(lambda: elsewhere.describe_organization_configuration())["Code"] == "AccessDeniedException"

    refused = _error(lambda: hub[governed].batch_update_standards_control_associations(
        StandardsControlAssociationUpdates=update))
    assert (refused["Code"], refused["Status"]) == ("AccessDeniedException", 403)
    assert refused["Message"] == ("This account is currently associated with a central configuration policy, so "
                                  "only the administrator can access this operation.")
    assert hub[free].batch_update_standards_control_associations(
        StandardsControlAssociationUpdates=update)["UnprocessedAssociationUpdates"] == []



def test_ebs_default_kms_key_per_account_and_region(emulator: EmulatorClient, org: SandboxOrg) -> None:
    """AWS's managed alias/aws/ebs until changed; a new key must be an enabled symmetric key of that
    account and region (an alias resolves to its key's ARN); reset goes back to the managed key."""
    account, other = org.accounts["dev-app-1"], org.accounts["prod-app-1"]
    ec2 = member_client(emulator.url, account, "ec2", "us-east-1")
    kms = member_client(emulator.url, account, "kms", "us-east-1")
    managed = f"arn:aws:kms:us-east-1:{account}:alias/aws/ebs"
    assert ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == managed
    key = kms.create_key()["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName="alias/ebs-default", TargetKeyId=key)
    assert ec2.modify_ebs_default_kms_key_id(KmsKeyId="alias/ebs-default")["KmsKeyId"] == key
    assert ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == key

    assert member_client(emulator.url, account, "ec2", "eu-west-1").get_ebs_default_kms_key_id()["KmsKeyId"] == (
        f"arn:aws:kms:eu-west-1:{account}:alias/aws/ebs")
    other_ec2 = member_client(emulator.url, other, "ec2", "us-east-1")
    assert other_ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == f"arn:aws:kms:us-east-1:{other}:alias/aws/ebs"
    asymmetric = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")["KeyMetadata"]["Arn"]
    disabled = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.disable_key(KeyId=disabled)
    for bad in ("alias/no-such-key", "1234abcd-12ab-34cd-56ef-1234567890ab", asymmetric, disabled):
        error = _error(lambda bad=bad: ec2.modify_ebs_default_kms_key_id(KmsKeyId=bad))
        assert (error["Code"], error["Status"]) == ("InvalidParameterValue", 400), bad
    assert _error(lambda: other_ec2.modify_ebs_default_kms_key_id(KmsKeyId=key))["Code"] == "InvalidParameterValue"
    assert ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == key  # the refusals changed nothing

    assert ec2.reset_ebs_default_kms_key_id()["KmsKeyId"] == managed
    assert ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == managed
