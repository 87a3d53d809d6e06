"""Safety layers 6 and 7: credential hygiene and traceability, and credentials that outlive the run.

- `whoami` and every run show the caller and whether its credentials are long-term (AKIA...) or
  temporary; an armed run with long-term keys is refused unless explicitly allowed; the default
  profile is never used silently; MFA on the first hop (`--operator-role-arn`).
- RoleSessionName carries task, run and operator within AWS's limits and SourceIdentity the
  operator; the audit log's run-start holds exactly what was sent.
- Per-account (and first-hop) credentials are refreshed before they expire.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pexpect
import pytest
from botocore.config import Config

from orgrunner import aws
from orgrunner.engine.credentials import (
    MAX_SESSION_NAME,
    RoleAssumer,
    RoleRequest,
    operator_session,
    session_name,
    source_identity,
)
from orgrunner.engine.identity import operator_name
from orgrunner.errors import SafetyRefusal
from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli
from tests.emulator.client import EmulatorClient, aws_client, create_role, default_rule_ids

REGION = "us-east-1"
BROKEN = str(Path(__file__).parent / "broken_tasks")
LONG_TERM_KEY = "AKIAIOSFODNN7EXAMPLE"
OPERATOR_ROLE = "arn:aws:iam::123456789012:role/Operator"
MFA_SERIAL = "arn:aws:iam::123456789012:mfa/alice"
# AWS: RoleSessionName 2..64 of [\w+=,.@-] (\w being ASCII letters, digits and _); SourceIdentity the same.
AWS_NAME = re.compile(r"^[A-Za-z0-9_+=,.@-]{2,64}$")


@pytest.fixture
def operator_roles(emulator: EmulatorClient) -> None:
    """The management account's operator roles (the emulator, like AWS, assumes only roles that exist)."""
    for name in ("Operator", "Engineer"):
        create_role(emulator.url, "123456789012", name)


def default_rules(emulator: EmulatorClient, account: str, region: str = REGION) -> list[str]:
    return default_rule_ids(emulator.url, account, region)


def long_term_env(cli: Cli) -> dict[str, str]:
    env = cli.env(AWS_ACCESS_KEY_ID=LONG_TERM_KEY, AWS_SECRET_ACCESS_KEY="long-term-secret-not-a-secret")
    del env["AWS_SESSION_TOKEN"]
    return env


def env_without_credentials(cli: Cli) -> dict[str, str]:
    env = cli.env()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(name, None)
    return env


def member_assumes(emulator: EmulatorClient) -> list[dict[str, Any]]:
    return [r for r in emulator.requests("sts", "AssumeRole")
            if (r["params"]["RoleArn"] or "").endswith(":role/OrganizationAccountAccessRole")
            and (r["params"]["RoleSessionName"] or "").startswith("or.")]


def operator_assumes(emulator: EmulatorClient) -> list[dict[str, Any]]:
    return [r for r in emulator.requests("sts", "AssumeRole") if r["params"]["RoleArn"] == OPERATOR_ROLE]


def field(stdout: str, name: str) -> str:
    match = re.search(rf"^{name}:\s+(.*)$", stdout, re.M)
    assert match, stdout
    return match[1]


# --- who is calling ------------------------------------------------------------------------------


def test_whoami_with_temporary_credentials(cli: Cli, org: SandboxOrg) -> None:
    result = cli.run("whoami")

    assert result.returncode == 0, result.stderr
    assert field(result.stdout, "credentials").startswith("temporary (ASIA..., from environment)")
    assert field(result.stdout, "account") == "123456789012"
    assert field(result.stdout, "organization") == org.organization_id
    assert "ASIASANDBOX" not in result.stdout + result.stderr  # the key id itself is never shown


def test_whoami_with_long_term_keys(cli: Cli, org: SandboxOrg) -> None:
    result = cli.run("whoami", env=long_term_env(cli))

    assert result.returncode == 0, result.stderr
    assert field(result.stdout, "credentials").startswith("long-term (AKIA...")
    assert field(result.stdout, "arn").startswith("arn:aws:")
    assert LONG_TERM_KEY not in result.stdout + result.stderr


def test_run_shows_the_caller_before_any_work(cli: Cli, org: SandboxOrg) -> None:
    result = cli.run("run", "strip-default-sg", "--dry-run", "--region", REGION,
                     "--account", org.accounts["dev-app-1"])

    assert result.returncode == 0, result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith("caller: arn:aws:") and "temporary credentials" in first, result.stderr


def test_armed_run_with_long_term_keys_is_refused(cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    account = org.accounts["dev-app-1"]
    before = default_rules(emulator, account)

    result = cli.run("run", "strip-default-sg", "--arm", "--confirm-accounts", account, "--region", REGION,
                     "--account", account, env=long_term_env(cli))

    assert result.returncode == 3, result.stdout + result.stderr
    assert "long-term" in result.stderr and "--allow-long-term-credentials" in result.stderr
    assert member_assumes(emulator) == []
    assert default_rules(emulator, account) == before


def test_armed_run_with_long_term_keys_proceeds_when_allowed(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    account = org.accounts["dev-app-1"]

    result = cli.run("run", "strip-default-sg", "--arm", "--confirm-accounts", account, "--region", REGION,
                     "--account", account, "--allow-long-term-credentials", env=long_term_env(cli))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: long-term" in result.stderr
    assert default_rules(emulator, account) == []


def test_dry_run_with_long_term_keys_warns(cli: Cli, org: SandboxOrg) -> None:
    result = cli.run("run", "strip-default-sg", "--dry-run", "--region", REGION,
                     "--account", org.accounts["dev-app-1"], env=long_term_env(cli))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: long-term access keys (AKIA...)" in result.stderr
    assert "1 change(s)" in result.stdout


def test_no_profile_and_no_environment_credentials_is_refused(cli: Cli, emulator: EmulatorClient) -> None:
    for command in (("whoami",), ("run", "strip-default-sg", "--dry-run", "--region", REGION)):
        result = cli.run(*command, env=env_without_credentials(cli))
        assert result.returncode == 3, result.stdout + result.stderr
        assert "--profile" in result.stderr
    assert emulator.requests() == []


def test_the_default_profile_is_never_used_silently(cli: Cli, tmp_path: Path, emulator: EmulatorClient) -> None:
    """Credentials in the shared file's [default] profile: refused unless a profile is named."""
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        "[default]\naws_access_key_id = ASIADEFAULTPROFILE01\naws_secret_access_key = s\naws_session_token = t\n"
        "[ops]\naws_access_key_id = ASIAOPSPROFILE000001\naws_secret_access_key = s\naws_session_token = t\n")
    env = {**env_without_credentials(cli), "AWS_SHARED_CREDENTIALS_FILE": str(credentials)}

    refused = cli.run("whoami", env=env)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert emulator.requests() == []

    for args, extra in ((("--profile", "ops"), {}), ((), {"AWS_PROFILE": "ops"}),
                        (("--profile", "default"), {})):
        named = cli.run("whoami", *args, env={**env, **extra})
        assert named.returncode == 0, named.stderr
        profile = args[1] if args else extra["AWS_PROFILE"]
        assert field(named.stdout, "credentials") == f"temporary (ASIA..., from profile {profile})"


def test_unknown_profile_is_bad_input(cli: Cli) -> None:
    result = cli.run("whoami", "--profile", "nope", env=env_without_credentials(cli))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "nope" in result.stderr


# --- MFA on the first hop -------------------------------------------------------------------------


@pytest.mark.usefixtures("operator_roles")
def test_whoami_through_an_operator_role_with_mfa(cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    result = cli.run("whoami", "--operator-role-arn", OPERATOR_ROLE, "--mfa-serial", MFA_SERIAL,
                     "--mfa-token", "123456")

    assert result.returncode == 0, result.stderr
    assert field(result.stdout, "arn").startswith("arn:aws:sts::123456789012:assumed-role/Operator/")
    assert f"via {OPERATOR_ROLE} with MFA" in field(result.stdout, "credentials")
    [hop] = operator_assumes(emulator)
    assert hop["status"] == 200
    assert AWS_NAME.match(hop["params"]["RoleSessionName"])


@pytest.mark.usefixtures("operator_roles")
def test_mfa_serial_and_token_are_sent_on_the_first_hop(cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    result = cli.run("whoami", "--operator-role-arn", OPERATOR_ROLE, "--mfa-serial", MFA_SERIAL,
                     "--mfa-token", "123456")
    assert result.returncode == 0, result.stderr
    [hop] = operator_assumes(emulator)
    assert hop["params"].get("SerialNumber") == MFA_SERIAL
    assert hop["params"].get("TokenCode") == "123456"


@pytest.mark.usefixtures("operator_roles")
def test_mfa_code_is_prompted_for_at_a_terminal(cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    child = cli.spawn("whoami", "--operator-role-arn", OPERATOR_ROLE, "--mfa-serial", MFA_SERIAL)
    child.expect("MFA code")
    assert operator_assumes(emulator) == []  # nothing assumed before the code is typed
    child.sendline("654321")
    child.expect(pexpect.EOF)
    child.close()

    assert child.exitstatus == 0, child.before
    assert "assumed-role/Operator/" in child.before
    assert len(operator_assumes(emulator)) == 1


def test_mfa_without_a_terminal_needs_the_token(cli: Cli, emulator: EmulatorClient) -> None:
    result = cli.run("whoami", "--operator-role-arn", OPERATOR_ROLE, "--mfa-serial", MFA_SERIAL)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--mfa-token" in result.stderr
    assert emulator.requests() == []


def test_mfa_serial_needs_an_operator_role(cli: Cli, emulator: EmulatorClient) -> None:
    for command in (("whoami",), ("run", "strip-default-sg", "--dry-run")):
        result = cli.run(*command, "--mfa-serial", MFA_SERIAL, "--mfa-token", "123456")
        assert result.returncode == 2, result.stdout + result.stderr
        assert "--operator-role-arn" in result.stderr
    assert emulator.requests() == []


@pytest.mark.usefixtures("operator_roles")
def test_run_through_the_operator_role_assumes_member_roles_from_it(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    account = org.accounts["dev-app-1"]

    result = cli.run("run", "strip-default-sg", "--dry-run", "--region", REGION, "--account", account,
                     "--operator-role-arn", OPERATOR_ROLE, "--mfa-serial", MFA_SERIAL, "--mfa-token", "123456")

    assert result.returncode == 0, result.stdout + result.stderr
    [hop] = operator_assumes(emulator)
    [member] = member_assumes(emulator)
    assert member["session"] == hop["params"]["RoleSessionName"]  # signed with the operator role's session
    assert "assumed-role/Operator/" in result.stderr.splitlines()[0]


@pytest.mark.usefixtures("operator_roles")
def test_long_term_keys_through_an_operator_role_without_mfa_are_refused_when_armed(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    account = org.accounts["dev-app-1"]
    before = default_rules(emulator, account)

    result = cli.run("run", "strip-default-sg", "--arm", "--confirm-accounts", account, "--region", REGION,
                     "--account", account, "--operator-role-arn", OPERATOR_ROLE, env=long_term_env(cli))

    assert result.returncode == 3, result.stdout + result.stderr
    assert "long-term" in result.stderr
    assert default_rules(emulator, account) == before


# --- traceability ---------------------------------------------------------------------------------


def test_session_name_and_source_identity_sent_and_audited(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    accounts = [org.accounts["dev-app-1"], org.accounts["sandbox-1"]]
    operator = operator_name(aws_client(emulator.url, "sts").get_caller_identity()["Arn"])

    result = cli.run("run", "strip-default-sg", "--dry-run", "--region", REGION,
                     *[arg for a in accounts for arg in ("--account", a)])

    assert result.returncode == 0, result.stderr
    sent = member_assumes(emulator)
    assert len(sent) == len(accounts)
    names = {r["params"]["RoleSessionName"] for r in sent}
    identities = {r["params"]["SourceIdentity"] for r in sent}
    assert len(names) == 1 and len(identities) == 1  # one identity for the whole run
    [name], [identity] = names, identities
    assert AWS_NAME.match(name) and "strip-default-sg" in name and operator in name
    assert identity == operator
    [start] = [e for e in cli.audit() if e["event"] == "run-start"]
    assert start["role_session_name"] == name and start["source_identity"] == identity
    assert start["run_id"].rsplit("-", 1)[-1] in name  # the session name links to the run
    assert all(e["run_id"] == start["run_id"] for e in cli.audit())


@pytest.mark.usefixtures("operator_roles")
def test_long_operator_and_long_task_name_still_fit(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    """The caller is a role session with a 64-character name; it then assumes the operator role
    (whose session name is cut to 64) and runs the task with the longest allowed name."""
    human = "alice.averylongsurname-with+many=parts,and@example.com-0123456789"[:64]
    assert len(human) == 64
    creds = aws_client(emulator.url, "sts").assume_role(
        RoleArn="arn:aws:iam::123456789012:role/Engineer", RoleSessionName=human)["Credentials"]
    env = cli.env(AWS_ACCESS_KEY_ID=creds["AccessKeyId"], AWS_SECRET_ACCESS_KEY=creds["SecretAccessKey"],
                  AWS_SESSION_TOKEN=creds["SessionToken"])
    task = "a-task-name-of-fifty-characters-for-session-limits"

    result = cli.run("run", task, "--tasks-dir", BROKEN, "--dry-run", "--region", REGION,
                     "--account", org.accounts["dev-app-1"], "--operator-role-arn", OPERATOR_ROLE, env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    [hop] = operator_assumes(emulator)
    assert len(hop["params"]["RoleSessionName"]) == MAX_SESSION_NAME
    assert AWS_NAME.match(hop["params"]["RoleSessionName"]) and human[:20] in hop["params"]["RoleSessionName"]
    [member] = member_assumes(emulator)
    name, identity = member["params"]["RoleSessionName"], member["params"]["SourceIdentity"]
    assert member["status"] == 200
    assert AWS_NAME.match(name) and len(name) <= MAX_SESSION_NAME, name
    assert task in name
    assert AWS_NAME.match(identity), identity
    [start] = [e for e in cli.audit() if e["event"] == "run-start"]
    assert (start["role_session_name"], start["source_identity"]) == (name, identity)


@pytest.mark.usefixtures("operator_roles")
def test_source_identity_names_the_human_through_the_operator_hop(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    human = operator_name(aws_client(emulator.url, "sts").get_caller_identity()["Arn"])

    result = cli.run("run", "strip-default-sg", "--dry-run", "--region", REGION, "--account",
                     org.accounts["dev-app-1"], "--operator-role-arn", OPERATOR_ROLE)

    assert result.returncode == 0, result.stdout + result.stderr
    [member] = member_assumes(emulator)
    assert member["params"]["SourceIdentity"] == human
    assert member["params"]["RoleSessionName"].endswith(f".{human}")


@pytest.mark.parametrize("operator", [
    "alice", "a" * 200, "alice@example.com", "bob smith/with:odd*chars", "-", "", "_", "x" * 64,
])
@pytest.mark.parametrize("task", ["strip-default-sg", "a-task-name-of-fifty-characters-for-session-limits"])
def test_session_name_limits(operator: str, task: str) -> None:
    name = session_name(operator, task, "20260101T000000Z-abc123")
    assert AWS_NAME.match(name), name
    assert name.startswith(f"or.{task}.abc123.")
    assert session_name(operator, task) == session_name(operator, task, "")
    assert AWS_NAME.match(session_name(operator, task))


@pytest.mark.parametrize("operator", ["alice", "a" * 200, "alice@example.com", "bob smith/with:odd*chars", "ab"])
def test_source_identity_limits(operator: str) -> None:
    identity = source_identity(operator)
    assert AWS_NAME.match(identity), identity
    assert len(identity) <= 64
    assert identity == re.sub(r"[^\w+=,.@-]", "-", operator)[:64].strip("-")


def test_source_identity_of_a_one_letter_operator() -> None:
    assert AWS_NAME.match(source_identity("a"))


def test_session_name_is_ascii() -> None:
    assert AWS_NAME.match(session_name("josé", "strip-default-sg", "r-abc123"))
    assert AWS_NAME.match(source_identity("josé"))


def test_operator_name_of_caller_arns() -> None:
    assert operator_name("arn:aws:iam::123456789012:user/alice") == "alice"
    assert operator_name("arn:aws:iam::123456789012:user/team/alice") == "alice"
    assert operator_name("arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Admin_abc/alice@example.com") \
        == "alice@example.com"
    assert operator_name("arn:aws:iam::123456789012:root") == "root"


# --- credentials that outlive the run ----------------------------------------------------------
#
# botocore refuses AssumeRole DurationSeconds below 900 before sending (parameter validation);
# moto itself honours any duration (Expiration = now + 4 s for 4). So the base session here turns
# parameter validation off, and a 4-second session shows the refresh within seconds.

SHORT = 4


def short_session_base() -> aws.Session:
    return aws.Session.from_profile(None, config=Config(parameter_validation=False,
                                                        retries={"mode": "standard", "max_attempts": 2}))


def test_member_credentials_are_refreshed_before_they_expire(org: SandboxOrg, emulator: EmulatorClient) -> None:
    account = org.accounts["dev-app-1"]
    request = RoleRequest(role_name="OrganizationAccountAccessRole", session_name="or.test.x",
                          source_identity="x", policy=None, duration=SHORT)
    assumer = RoleAssumer(short_session_base(), request)

    start = time.monotonic()
    ec2 = assumer.session(account).client("ec2", REGION)  # one long-lived client, as a task holds it
    first_refresh = None
    calls = 0
    while time.monotonic() - start < SHORT * 1.6:
        began = time.monotonic() - start
        assert ec2.describe_vpcs()["Vpcs"]
        calls += 1
        if first_refresh is None and assumer.assume_calls > 1:
            first_refresh = began  # the call that refreshed started at `began`
        time.sleep(0.05)
    # A client made later comes from the same cached (refreshed) session: no new AssumeRole.
    assumed_so_far = assumer.assume_calls
    assert assumer.session(account).client("ec2", REGION).describe_vpcs()["Vpcs"]
    calls += 1
    assert assumer.assume_calls == assumed_so_far

    assumed = [r for r in emulator.requests("sts", "AssumeRole") if r["target_account"] == account
               and r["params"]["RoleSessionName"] == "or.test.x"]
    assert len(assumed) >= 2, "the credentials were never refreshed"
    assert len(assumed) == assumer.assume_calls
    assert len(assumed) <= 4, "refreshed far too often (on every call?)"
    assert all(r["params"]["DurationSeconds"] == SHORT for r in assumed)
    assert first_refresh is not None and first_refresh < SHORT, "refreshed only after the expiry"
    ours = [r for r in emulator.requests("ec2", "DescribeVpcs") if r["session"] == "or.test.x"]
    assert len(ours) == calls and {r["status"] for r in ours} == {200}
    assert {r["account"] for r in ours} == {account}


@pytest.mark.usefixtures("operator_roles")
def test_operator_hop_credentials_are_refreshed_too(emulator: EmulatorClient) -> None:
    session = operator_session(short_session_base(), OPERATOR_ROLE, "or.operator.x", SHORT)
    sts = session.client("sts", REGION)

    start = time.monotonic()
    while time.monotonic() - start < SHORT * 1.6:
        assert "assumed-role/Operator/or.operator.x" in sts.get_caller_identity()["Arn"]
        time.sleep(0.1)

    assert len([r for r in emulator.requests("sts", "AssumeRole") if r["params"]["RoleArn"] == OPERATOR_ROLE]) >= 2


@pytest.mark.usefixtures("operator_roles")
def test_mfa_operator_session_cannot_refresh_and_says_so(emulator: EmulatorClient) -> None:
    tokens = iter(["123456"])
    session = operator_session(short_session_base(), OPERATOR_ROLE, "or.operator.x", SHORT, MFA_SERIAL,
                               lambda: next(tokens))
    sts = session.client("sts", REGION)
    assert "assumed-role/Operator/" in sts.get_caller_identity()["Arn"]

    time.sleep(SHORT + 0.5)
    with pytest.raises(SafetyRefusal, match=r"MFA session .* expired; run again with a new token"):
        sts.get_caller_identity()
    assert len([r for r in emulator.requests("sts", "AssumeRole") if r["params"]["RoleArn"] == OPERATOR_ROLE]) == 1


def test_an_accounts_credentials_leave_the_scrubber_when_its_work_is_done(org: SandboxOrg) -> None:
    """Scrubbing checks every credential the process holds against each output line: it must stay
    proportional to the accounts in flight (at 3,000 registered accounts it cost 1 ms a line)."""
    from orgrunner.records import audit
    request = RoleRequest(role_name="OrganizationAccountAccessRole", session_name="or.test.x",
                          source_identity="tester", policy=None)
    assumer = RoleAssumer(aws.Session.from_profile(None), request)
    first, second = org.accounts["dev-app-1"], org.accounts["prod-app-1"]
    frozen = {a: assumer.credentials(a).get_frozen_credentials() for a in (first, second)}
    held = {a: {c.access_key, c.secret_key, c.token} for a, c in frozen.items()}
    for values in held.values():
        for value in values:
            assert value in audit._secrets
            assert value not in audit.scrub(f"error: {value}")
    assumer.forget(first)
    assert held[second] <= set(audit._secrets)  # the emulator issues one token to all: still held
    assert not (held[first] - held[second]) & set(audit._secrets)
    assumer.forget(second)
    assert not (held[first] | held[second]) & set(audit._secrets)
    # what a pattern can recognise is still caught without the registry
    assert frozen[first].access_key not in audit.scrub(f"key {frozen[first].access_key}")
    assert frozen[first].token not in audit.scrub(f"token {frozen[first].token}")
