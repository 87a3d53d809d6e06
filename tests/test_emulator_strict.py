"""The emulator layer shared by the sandbox and the tests (orgrunner/sandbox/emulator.py) says no where
AWS says no: AssumeRole only into roles that exist and trust the caller, DescribeRegions for the
caller's partition only; and the S3 Control host rewrite is for orgrunner's emulator alone."""

from __future__ import annotations

from typing import Any

import botocore.awsrequest
import pytest
from botocore.exceptions import ClientError

from orgrunner import aws
from orgrunner.config import environment
from orgrunner.sandbox.emulator import AWS_DEFAULT_REGIONS
from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli
from tests.emulator.client import EmulatorClient, assume_role, aws_client, create_role, member_client


def test_assume_role_only_into_a_role_that_exists_and_trusts_the_caller(emulator: EmulatorClient,
                                                                         org: SandboxOrg) -> None:
    account = org.accounts["prod-app-1"]
    assert assume_role(emulator.url, account)["aws_access_key_id"]  # OrganizationAccountAccessRole, as AWS creates
    sts = aws_client(emulator.url, "sts")
    with pytest.raises(ClientError, match="AccessDenied") as missing:
        sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/NoSuchRole", RoleSessionName="xy")
    assert "not authorized to perform: sts:AssumeRole" in str(missing.value)
    create_role(emulator.url, account, "TrustsSomeoneElse", trusted="999999999999")
    with pytest.raises(ClientError, match="AccessDenied"):
        sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/TrustsSomeoneElse", RoleSessionName="xy")


def test_doctor_with_a_role_that_does_not_exist_fails_every_account(cli: Cli, org: SandboxOrg) -> None:
    result = cli.run("doctor", "--role-name", "NoSuchRole")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"0 of {len(org.accounts)} account(s) ok" in result.stdout
    assert "AccessDenied" in result.stdout
    assert cli.run("doctor").returncode == 0


def test_describe_regions_answers_for_the_aws_partition_only(emulator: EmulatorClient, org: SandboxOrg) -> None:
    ec2 = member_client(emulator.url, org.accounts["dev-app-1"], "ec2", "us-east-1")
    enabled = {r["RegionName"]: r["OptInStatus"] for r in ec2.describe_regions()["Regions"]}
    assert set(enabled) == AWS_DEFAULT_REGIONS
    assert set(enabled.values()) == {"opt-in-not-required"}
    every = {r["RegionName"]: r["OptInStatus"] for r in ec2.describe_regions(AllRegions=True)["Regions"]}
    assert every["af-south-1"] == "not-opted-in" and every["eu-west-1"] == "opt-in-not-required"
    assert not [r for r in every if r.startswith(("cn-", "us-gov-", "us-iso"))]


def _sent_url(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """The URL an orgrunner S3 Control client sends GetPublicAccessBlock to (answered locally)."""
    for name in ("AWS_ENDPOINT_URL", aws.EMULATOR_SWITCH):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    environment.current.cache_clear()  # the environment is parsed once per process: parse this one
    client = aws.Session.from_profile(None).client("s3control", "us-east-1")
    sent: list[str] = []

    def answer(request: Any, **_: Any) -> botocore.awsrequest.AWSResponse:
        sent.append(request.url)
        raw = botocore.awsrequest.AWSResponse(request.url, 404, {}, None)
        raw._content = (b"<Error><Code>NoSuchPublicAccessBlockConfiguration</Code><Message>none</Message></Error>")
        return raw

    client.meta.events.register_first("before-send.s3-control.*", answer)
    with pytest.raises(ClientError):
        client.get_public_access_block(AccountId="111122223333")
    environment.current.cache_clear()
    return sent[0]


def test_a_users_own_endpoint_receives_the_account_host_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_ENDPOINT_URL alone (a proxy, LocalStack) gets the request as AWS would: with the
    account-id host prefix; only the explicit emulator switch strips it."""
    own = _sent_url({"AWS_ENDPOINT_URL": "http://proxy.example:8080"}, monkeypatch)
    assert own.startswith("http://111122223333.proxy.example:8080/"), own
    ours = _sent_url({"AWS_ENDPOINT_URL": "http://proxy.example:8080", aws.EMULATOR_SWITCH: "1"}, monkeypatch)
    assert ours.startswith("http://proxy.example:8080/"), ours
