"""The tests' handle on the running emulator, and boto3 client helpers for it."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3

from orgrunner.sandbox.org import SANDBOX_ENV_CREDENTIALS, sandbox_environment


def strip_s3control_account_host(request: Any, **_: Any) -> None:
    """botocore `before-sign.s3-control.*` hook: s3control prefixes the host with the account id
    ("123456789012.127.0.0.1:5000"), which does not resolve locally; drop that prefix."""
    parts = urlsplit(request.url)
    request.url = parts._replace(netloc=re.sub(r"^\d{12}\.", "", parts.netloc)).geturl()


def aws_client(endpoint_url: str, service: str, region: str = "us-east-1", **credentials: str) -> Any:
    """A boto3 client for the emulator; `credentials` are boto3.client's aws_* keywords
    (default: the sandbox management account's)."""
    credentials = credentials or {
        "aws_access_key_id": SANDBOX_ENV_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": SANDBOX_ENV_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "aws_session_token": SANDBOX_ENV_CREDENTIALS["AWS_SESSION_TOKEN"],
    }
    client = boto3.client(service, region_name=region, endpoint_url=endpoint_url, **credentials)
    client.meta.events.register("before-sign.s3-control.*", strip_s3control_account_host)
    return client


def assume_role(endpoint_url: str, account_id: str, **kwargs: Any) -> dict[str, str]:
    """boto3.client keywords for credentials of OrganizationAccountAccessRole in `account_id`,
    assumed from the management account (`kwargs` go to AssumeRole, e.g. Policy)."""
    kwargs.setdefault("RoleSessionName", "emulator-tests")
    role_arn = f"arn:aws:iam::{account_id}:role/OrganizationAccountAccessRole"
    creds = aws_client(endpoint_url, "sts").assume_role(RoleArn=role_arn, **kwargs)["Credentials"]
    return {
        "aws_access_key_id": creds["AccessKeyId"],
        "aws_secret_access_key": creds["SecretAccessKey"],
        "aws_session_token": creds["SessionToken"],
    }


def create_role(endpoint_url: str, account_id: str, name: str, trusted: str = "123456789012") -> str:
    """Create role `name` in `account_id` (through AssumeRole into its OrganizationAccountAccessRole
    for a member, directly for the management account), trusting account `trusted`; its ARN."""
    trust = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{trusted}:root"}, "Action": "sts:AssumeRole"}]})
    credentials = {} if account_id == "123456789012" else assume_role(endpoint_url, account_id)
    iam = aws_client(endpoint_url, "iam", **credentials)
    arn: str = iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    return arn


def member_client(emulator_url: str, account_id: str, service: str, region: str = "us-east-1") -> Any:
    """A boto3 client acting in member `account_id` (OrganizationAccountAccessRole)."""
    return aws_client(emulator_url, service, region, **assume_role(emulator_url, account_id))


class EmulatorClient:
    """Controls the emulator's test middleware (tests/emulator/middleware.py) over HTTP."""

    def __init__(self, url: str, scratch: Path, token: str = "") -> None:
        self.url = url
        self.token = token  # what the emulator answers at orgrunner.sandbox.org._TOKEN_PATH (proves it is ours)
        self.scratch = scratch  # holds the (nonexistent) AWS config and credentials files

    def _call(self, method: str, path: str, data: Any = None) -> Any:
        body = None if data is None else json.dumps(data).encode()
        request = urllib.request.Request(f"{self.url}/_emulator/{path}", data=body, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            with error:
                raise RuntimeError(f"emulator {method} {path}: {error.code} {error.read().decode()}") from None

    def reset(self) -> None:
        self._call("POST", "reset")

    def requests(self, service: str | None = None, operation: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self._call("GET", "requests")
            if service in (None, r["service"]) and operation in (None, r["operation"])
        ]

    def add_rule(self, **rule: Any) -> int:
        """Match on service/operation/account/target_account/region (fnmatch patterns); then
        answer code/message/status (default 400) and/or add latency_ms; times, probability."""
        rule_id: int = self._call("POST", "rules", rule)["id"]
        return rule_id

    def clear_rules(self) -> None:
        self._call("DELETE", "rules")

    def set_latency(self, ms: float) -> None:
        self._call("POST", "latency", {"ms": ms})

    def moto_describe_regions(self, on: bool) -> None:
        """Let moto answer DescribeRegions: every partition's regions, as a lenient endpoint might."""
        self._call("POST", "moto-describe-regions", {"enabled": on})

    def role_propagation(self, seconds: float) -> None:
        """From now on, refuse AssumeRole into OrganizationAccountAccessRole (AccessDenied) of an
        account for `seconds` after it is created, as AWS does while it propagates a new account's
        role; a role still propagating is ready within `seconds` (0: every role is ready now)."""
        self._call("POST", "role-propagation", {"seconds": seconds})

    def enforce_session_policies(self, on: bool) -> None:
        self._call("POST", "enforce-session-policies", {"enabled": on})

    def securityhub_central(self, administrator: str, region: str, associations: dict[str, str]) -> None:
        """Make `administrator` the Security Hub delegated administrator of a central configuration
        (ConfigurationType CENTRAL) in `region`; `associations` maps accounts to the configuration
        policy id they follow, or to SELF_MANAGED_SECURITY_HUB."""
        self._call("POST", "securityhub-central",
                   {"administrator": administrator, "region": region, "associations": associations})

    def aws_env(self) -> dict[str, str]:
        """The AWS variables that point an SDK at the emulator and away from ~/.aws."""
        return {
            **sandbox_environment(self.url),
            "AWS_CONFIG_FILE": str(self.scratch / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.scratch / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def env(self) -> dict[str, str]:
        """A full environment for a subprocess run against the emulator (no other AWS_* set)."""
        return {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **self.aws_env()}


def default_rule_ids(emulator_url: str, account_id: str, region: str) -> list[str]:
    """The rule ids of the account's default security groups in `region`."""
    ec2 = member_client(emulator_url, account_id, "ec2", region)
    groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["default"]}])
    ids = [g["GroupId"] for g in groups["SecurityGroups"]]
    rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": ids}])
    return sorted(r["SecurityGroupRuleId"] for r in rules["SecurityGroupRules"])
