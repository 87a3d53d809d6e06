"""Partitions: a GovCloud-shaped and a China-shaped organization in the emulator. The partition
comes from the caller's ARN; role ARNs, the home region of global calls and the regions covered
all follow it, and another partition's regions are never targeted, even when DescribeRegions
lists them (moto lists every partition's: the tests' middleware can let it answer). The
emulator refuses a request signed for another partition's region, as AWS does."""

from __future__ import annotations

from typing import Any

import pytest

from orgrunner import aws
from orgrunner.sandbox.org import seed_organization
from tests.cli import Cli
from tests.emulator.client import EmulatorClient

PARTITIONS = [
    pytest.param("aws-us-gov", "us-gov-west-1", ("us-gov-east-1", "us-gov-west-1"), id="govcloud"),
    pytest.param("aws-cn", "cn-north-1", ("cn-north-1", "cn-northwest-1"), id="china"),
]


def _sent(emulator: EmulatorClient, mark: int) -> list[dict[str, Any]]:
    return emulator.requests()[mark:]


@pytest.mark.parametrize(("partition", "home", "regions"), PARTITIONS)
def test_a_run_stays_in_the_callers_partition(emulator: EmulatorClient, cli: Cli, partition: str, home: str,
                                              regions: tuple[str, ...]) -> None:
    org = seed_organization(emulator.url, member_count=3, regions=(home,), home_region=home)
    emulator.moto_describe_regions(True)  # every partition's regions listed, opt-in or not
    env = cli.env(AWS_DEFAULT_REGION=home)
    mark = len(emulator.requests())

    dry = cli.run("run", "strip-default-sg", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"caller: arn:{partition}:" in dry.stderr
    assert f"Plan: 3 account(s), {len(regions)} region(s)" in dry.stdout
    armed = cli.run("run", "strip-default-sg", "--arm", "--region", home, "--confirm-accounts",
                    ",".join(org.accounts.values()), env=env)
    assert armed.returncode == 0, armed.stdout + armed.stderr
    doctor = cli.run("doctor", env=env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr

    sent = _sent(emulator, mark)
    assert sent and {r["region"] for r in sent} <= set(regions), sorted({r["region"] for r in sent})
    assert {r["status"] for r in sent} <= {200}, [r for r in sent if r["status"] != 200]
    assumed = [r["params"]["RoleArn"] for r in sent if r["operation"] == "AssumeRole"]
    assert assumed and all(arn.startswith(f"arn:{partition}:iam::") for arn in assumed), assumed
    global_calls = [r for r in sent if r["service"] in ("organizations", "sts", "iam")]
    assert global_calls and {r["region"] for r in global_calls} == {home}


@pytest.mark.parametrize(("partition", "home", "regions"), PARTITIONS)
def test_another_partitions_region_is_never_targeted(emulator: EmulatorClient, cli: Cli, partition: str,
                                                      home: str, regions: tuple[str, ...]) -> None:
    seed_organization(emulator.url, member_count=2, regions=(home,), home_region=home)
    emulator.moto_describe_regions(True)
    mark = len(emulator.requests())
    result = cli.run("run", "strip-default-sg", "--dry-run", "--region", home, "--region", "us-east-1",
                     env=cli.env(AWS_DEFAULT_REGION=home))
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert {r["region"] for r in _sent(emulator, mark)} <= set(regions)
    assert "us-east-1" in result.stdout + result.stderr  # reported as not covered, not called


def test_the_emulator_refuses_a_partition_the_credentials_do_not_belong_to(emulator: EmulatorClient,
                                                                          cli: Cli) -> None:
    """What the engine must never do: ask us-east-1 with GovCloud credentials. AWS refuses it."""
    seed_organization(emulator.url, member_count=1, regions=("us-gov-west-1",), home_region="us-gov-west-1")
    result = cli.run("whoami", env=cli.env(AWS_DEFAULT_REGION="us-east-1"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr


def test_partition_functions() -> None:
    assert aws.partition_of_arn("arn:aws-us-gov:sts::123456789012:assumed-role/r/s") == "aws-us-gov"
    assert aws.partition_of_arn("arn:aws-cn:iam::123456789012:user/u") == "aws-cn"
    assert aws.partition_of_arn("arn:aws:iam::123456789012:user/u") == "aws"
    assert [aws.home_region(p) for p in ("aws", "aws-us-gov", "aws-cn")] == ["us-east-1", "us-gov-west-1",
                                                                            "cn-north-1"]
    assert aws.partition_of_region("cn-northwest-1") == "aws-cn"
    assert "us-gov-east-1" in aws.partition_regions("aws-us-gov")
    assert not aws.partition_regions("aws") & aws.partition_regions("aws-cn")
