"""A local emulated AWS Organization (moto in server mode) for trying orgrunner without AWS.

`start_emulator` runs moto as a separate process (``python -m orgrunner.sandbox.org serve-moto``),
`seed_organization` fills it with an organization whose members have permissive default
security groups, and `sandbox_environment` gives the variables a shell needs to use it.
moto is imported only inside the child process, so this module imports without it.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import hmac
import importlib
import importlib.util
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import boto3
import botocore.session

from orgrunner.aws import EMULATOR_SWITCH
from orgrunner.errors import InputError, OrgrunnerError
from orgrunner.records.statefiles import StateFolder

SANDBOX_ENV_CREDENTIALS: dict[str, str] = {
    # Fake temporary credentials; moto maps any unknown key to its default account 123456789012.
    "AWS_ACCESS_KEY_ID": "ASIASANDBOXEXAMPLE01",
    "AWS_SECRET_ACCESS_KEY": "sandbox-secret-access-key-not-a-secret",
    "AWS_SESSION_TOKEN": "sandbox-session-token-not-a-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}

_READY_TIMEOUT_S = 30.0
_PERMISSIVE_INGRESS: list[dict[str, Any]] = [
    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    {"IpProtocol": "tcp", "FromPort": 3389, "ToPort": 3389, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]},
]


@dataclass
class Emulator:
    """A running emulator process serving every AWS service at `url`."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    _stderr: IO[bytes] = field(repr=False)
    token: str = field(default="", repr=False)  # what our emulator, and only it, answers at _TOKEN_PATH

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr.close()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_TOKEN_PATH = "/_orgrunner/sandbox-token"
_TOKEN_ENV = "ORGRUNNER_SANDBOX_TOKEN"


def _is_ours(url: str, token: str) -> bool | None:
    """Whether the server at `url` is the emulator that was given `token` (None: nothing answers).
    Another user's server on the port must never be taken for ours."""
    try:
        with urllib.request.urlopen(f"{url}{_TOKEN_PATH}", timeout=2) as answer:
            return hmac.compare_digest(answer.read(256), token.encode())
    except urllib.error.HTTPError as error:
        error.close()
        return False
    except OSError:
        return None


EMULATOR_WRAPPER = "orgrunner.sandbox.emulator:wrap"


def start_emulator(
    port: int = 0, *, wsgi_wrapper: str = EMULATOR_WRAPPER, extra_env: dict[str, str] | None = None
) -> Emulator:
    """Start moto's server in a child process and wait until it answers.

    `wsgi_wrapper` ("module:callable") wraps moto's WSGI app in the child: by default the strict
    layer of orgrunner/sandbox/emulator.py (which says no where AWS says no); the tests pass their own
    subclass of it. `extra_env` is added to the child's environment (e.g. PYTHONPATH so it can
    import the wrapper).
    """
    port = port or _free_port()
    token = secrets.token_hex(16)
    env = {**os.environ, **(extra_env or {}), "MOTO_EC2_LOAD_DEFAULT_AMIS": "false", _TOKEN_ENV: token}
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    # -P: the current folder is not put on the import path (an argparse.py there must not run)
    cmd = [sys.executable, "-P", "-m", "orgrunner.sandbox.org", "serve-moto", "--port", str(port)]
    if wsgi_wrapper:
        cmd += ["--wrapper", wsgi_wrapper]
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 (owned by the Emulator, closed by stop())
    process = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    emulator = Emulator(url=f"http://127.0.0.1:{port}", port=port, process=process, _stderr=stderr, token=token)
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not (ours := _is_ours(emulator.url, token)):
        if ours is False:
            emulator.stop()
            raise InputError(f"port {port} is taken by another server (it is not this sandbox's emulator); "
                             "choose another --port, or leave it out for a free one")
        if process.poll() is not None or time.monotonic() > deadline:
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace")[-3000:]
            emulator.stop()
            raise RuntimeError(f"emulator on port {port} did not start (exit {process.returncode}):\n{tail}")
        time.sleep(0.05)
    return emulator


def _answering_token(app: Callable[..., Any], token: str) -> Callable[..., Any]:
    """The WSGI app, answering `token` at _TOKEN_PATH: how the parent knows the port is ours."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") == _TOKEN_PATH and token:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [token.encode()]
        return app(environ, start_response)

    return wrapped


def _serve_moto(port: int, wrapper: str | None) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app: Callable[..., Any] = DomainDispatcherApplication(create_backend_app)
    if wrapper:
        module_name, _, attr = wrapper.partition(":")
        app = getattr(importlib.import_module(module_name), attr)(app)
    app = _answering_token(app, os.environ.pop(_TOKEN_ENV, ""))
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)
    server.serve_forever()


@dataclass
class SandboxOrg:
    management_account_id: str
    organization_id: str
    root_id: str
    ous: dict[str, str]  # OU name -> OU id
    accounts: dict[str, str]  # account name -> account id (ACTIVE members)
    suspended_account_id: str
    regions: tuple[str, ...]


# OU name -> parent OU name (None: the root); parents listed before children.
_OU_TREE: dict[str, str | None] = {
    "Workloads": None,
    "Prod": "Workloads",
    "NonProd": "Workloads",
    "Sandbox": "NonProd",
    "Security": None,
}
# (name prefix, OU, env tag, team tag), cycled after the first account "security-audit".
_ACCOUNT_KINDS = [
    ("prod-app", "Prod", "prod", "payments"),
    ("dev-app", "NonProd", "dev", "payments"),
    ("sandbox", "Sandbox", "dev", "research"),
]


def _account_plan(member_count: int) -> list[tuple[str, str, dict[str, str]]]:
    """(name, OU, tags) for each member account."""
    plan = [("security-audit", "Security", {"env": "prod", "team": "security"})]
    for i in range(member_count - 1):
        prefix, ou, env, team = _ACCOUNT_KINDS[i % len(_ACCOUNT_KINDS)]
        plan.append((f"{prefix}-{i // len(_ACCOUNT_KINDS) + 1}", ou, {"env": env, "team": team}))
    return plan[:member_count]


def _open_default_security_group(ec2: Any) -> None:
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]
    filters = [{"Name": "vpc-id", "Values": [vpc["VpcId"]]}, {"Name": "group-name", "Values": ["default"]}]
    group = ec2.describe_security_groups(Filters=filters)["SecurityGroups"][0]
    # moto's default group lacks AWS's self-referencing ingress rule: add it too.
    self_rule = {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group["GroupId"]}]}
    ec2.authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=[self_rule, *_PERMISSIVE_INGRESS])


def _enable_security_hub(hub: Any) -> None:
    """Security Hub with its default standards, one control (EC2.7, EBS encryption by default)
    switched off in the Foundational Security Best Practices standard."""
    hub.enable_security_hub(EnableDefaultStandards=True)
    fsbp = next(s["StandardsArn"] for s in hub.get_enabled_standards()["StandardsSubscriptions"]
                if "aws-foundational-security-best-practices" in s["StandardsArn"])
    hub.batch_update_standards_control_associations(StandardsControlAssociationUpdates=[{
        "StandardsArn": fsbp, "SecurityControlId": "EC2.7", "AssociationStatus": "DISABLED",
        "UpdatedReason": "sandbox: switched off to show securityhub-controls at work"}])


@functools.cache
def _botocore_session() -> botocore.session.Session:
    """One botocore session for every seeding, so service models are parsed once."""
    return botocore.session.get_session()


def created_account_id(orgs: Any, started: dict[str, Any]) -> str:
    """The id of the account a CreateAccount call started, once DescribeCreateAccountStatus says it
    SUCCEEDED (the emulator answers IN_PROGRESS first, as AWS does); RuntimeError if it FAILED."""
    status = started["CreateAccountStatus"]
    while status["State"] == "IN_PROGRESS":
        status = orgs.describe_create_account_status(CreateAccountRequestId=status["Id"])["CreateAccountStatus"]
    if status["State"] != "SUCCEEDED":
        raise RuntimeError(f"CreateAccount {status.get('AccountName')}: {status['State']}: "
                           f"{status.get('FailureReason')}")
    return str(status["AccountId"])


def _management_role(iam: Any, management_id: str, partition: str) -> None:
    """The role organization-scope tasks (org-accounts) assume in the management account: AWS makes
    none there, the operator does (docs/accounts.md); the sandbox's operator has made it, with the
    default role name (settings role_name), trusting the management account itself."""
    trust = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": f"arn:{partition}:iam::{management_id}:root"},
        "Action": "sts:AssumeRole"}]})
    iam.create_role(RoleName="OrganizationAccountAccessRole", AssumeRolePolicyDocument=trust,
                    Description="sandbox: the role orgrunner assumes in the management account")


def seed_organization(
    endpoint_url: str, *, member_count: int = 8, regions: tuple[str, ...] = ("us-east-1", "eu-west-1"),
    home_region: str = "us-east-1", management_role: bool = False,
) -> SandboxOrg:
    """Create an organization with nested OUs, tagged members and one SUSPENDED account (the
    emulator gives each member OrganizationAccountAccessRole, as Organizations does), open the
    default security group of every member's default VPC in `regions`, and enable Security Hub
    (default standards, EC2.7 off) in every other member in the first region. `management_role`:
    also the role organization-scope tasks assume in the management account (the sandbox has it)."""
    session = boto3.session.Session(
        botocore_session=_botocore_session(),
        aws_access_key_id=SANDBOX_ENV_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=SANDBOX_ENV_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=SANDBOX_ENV_CREDENTIALS["AWS_SESSION_TOKEN"],
        region_name=home_region,
    )
    partition = next((p for p in _botocore_session().get_available_partitions()
                      if home_region in _botocore_session().get_available_regions("ec2", p)), "aws")
    orgs = session.client("organizations", endpoint_url=endpoint_url)
    org = orgs.create_organization(FeatureSet="ALL")["Organization"]
    root_id: str = orgs.list_roots()["Roots"][0]["Id"]
    ous: dict[str, str] = {}
    for name, parent in _OU_TREE.items():
        parent_id = ous[parent] if parent else root_id
        ous[name] = orgs.create_organizational_unit(ParentId=parent_id, Name=name)["OrganizationalUnit"]["Id"]

    def create(name: str, ou: str, tags: dict[str, str]) -> str:
        status = orgs.create_account(
            AccountName=name,
            Email=f"{name}@sandbox.example",
            Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
        )
        account_id = created_account_id(orgs, status)
        orgs.move_account(AccountId=account_id, SourceParentId=root_id, DestinationParentId=ous[ou])
        return account_id

    accounts = {name: create(name, ou, tags) for name, ou, tags in _account_plan(member_count)}
    suspended_account_id = create("retired-1", "Prod", {"env": "prod", "team": "payments"})
    orgs.close_account(AccountId=suspended_account_id)
    while orgs.describe_account(AccountId=suspended_account_id)["Account"].get("State") != "SUSPENDED":
        pass  # PENDING_CLOSURE first, as on AWS: the sandbox starts with the closure complete

    if management_role:
        _management_role(session.client("iam", endpoint_url=endpoint_url), org["MasterAccountId"], partition)
    sts = session.client("sts", endpoint_url=endpoint_url)
    ec2_clients = []
    for account_id in accounts.values():
        role_arn = f"arn:{partition}:iam::{account_id}:role/OrganizationAccountAccessRole"
        creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="orgrunner-sandbox-seed")["Credentials"]
        ec2_clients += [
            session.client(
                "ec2",
                region_name=region,
                endpoint_url=endpoint_url,
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"],
            )
            for region in regions
        ]
    hubs = []
    for index, account_id in enumerate(accounts.values()):
        if index % 2 or not regions:
            continue  # every other member has Security Hub, in the first region only
        role_arn = f"arn:{partition}:iam::{account_id}:role/OrganizationAccountAccessRole"
        creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="orgrunner-sandbox-seed")["Credentials"]
        hubs.append(session.client(
            "securityhub", region_name=regions[0], endpoint_url=endpoint_url, aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"]))
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(_open_default_security_group, ec2_clients))
        list(pool.map(_enable_security_hub, hubs))
    return SandboxOrg(
        management_account_id=org["MasterAccountId"],
        organization_id=org["Id"],
        root_id=root_id,
        ous=ous,
        accounts=accounts,
        suspended_account_id=suspended_account_id,
        regions=regions,
    )


def sandbox_environment(url: str) -> dict[str, str]:
    """Environment variables pointing the AWS SDKs and CLI at the emulator at `url`, with the
    explicit switch (aws.EMULATOR_SWITCH) for the emulator-only request rewrites: never implied
    by AWS_ENDPOINT_URL alone, so a user's own endpoint receives what AWS would."""
    return {"AWS_ENDPOINT_URL": url, EMULATOR_SWITCH: "1", **SANDBOX_ENV_CREDENTIALS}


def state_file() -> Path:
    """Where a running `orgrunner sandbox serve` records its address."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "orgrunner" / "sandbox.json"


def _point_environment_at(url: str) -> None:
    """Point this process's AWS SDK at the emulator, and away from any real credentials."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        del os.environ[name]
    missing = str(Path(tempfile.gettempdir()) / "orgrunner-sandbox-no-aws-config")
    os.environ.update(sandbox_environment(url))
    os.environ.update({"AWS_CONFIG_FILE": missing, "AWS_SHARED_CREDENTIALS_FILE": missing,
                       "AWS_EC2_METADATA_DISABLED": "true"})


def _require_moto() -> None:
    if importlib.util.find_spec("moto") is None:
        from orgrunner.errors import InputError

        raise InputError("the sandbox needs moto: pip install 'orgrunner[sandbox]'")


def activate() -> None:
    """For `orgrunner --sandbox ...`: use the running `sandbox serve` if there is one, else start
    a fresh emulated organization for this command only (stopped when the command ends)."""
    path = state_file()
    if path.is_file():
        try:
            with StateFolder(path.parent).open(path, "r") as handle:  # ours: no link, no other owner
                recorded = json.loads(handle.read())
            url, token = str(recorded["url"]), str(recorded["token"])
        except (OSError, ValueError, KeyError, TypeError, OrgrunnerError):
            url, token = "", ""
        if url and _is_ours(url, token):  # the server there is the one `sandbox serve` started
            print(f"sandbox: using the emulated organization at {url}", file=sys.stderr)
            _point_environment_at(url)
            return
    _require_moto()
    print("sandbox: starting a fresh emulated organization for this command "
          "(`orgrunner sandbox serve` keeps one between commands)", file=sys.stderr)
    emulator = start_emulator()
    atexit.register(emulator.stop)
    seed_organization(emulator.url, management_role=True)
    _point_environment_at(emulator.url)


def serve(port: int = 0) -> None:
    """Start and seed the emulated organization, print the environment to use it, and wait."""
    _require_moto()
    with start_emulator(port) as emulator:
        org = seed_organization(emulator.url, management_role=True)
        path = state_file()
        with StateFolder(path.parent).open(path, "w") as handle:  # 0600: the token is for this user
            handle.write(json.dumps({"url": emulator.url, "pid": os.getpid(), "token": emulator.token}))
        try:
            from orgrunner.sandbox.emulator import AWS_DEFAULT_REGIONS

            print(f"# sandbox organization {org.organization_id}: management account {org.management_account_id}, "
                  f"{len(org.accounts)} members; {len(AWS_DEFAULT_REGIONS)} regions enabled (the aws partition's "
                  f"default regions; opt-in regions not opted in); default security groups opened in "
                  f"{', '.join(org.regions)}, Security Hub enabled in every other member in {org.regions[0]}")
            print("# `orgrunner --sandbox ...` in any shell now uses it; or point a shell at it with:")
            for name, value in sandbox_environment(emulator.url).items():
                print(f"export {name}={value}")
            print("# Ctrl-C stops it.", flush=True)
            while emulator.process.poll() is None:
                time.sleep(0.5)
            print("sandbox: the emulator stopped", file=sys.stderr)
        except KeyboardInterrupt:
            pass
        finally:
            path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orgrunner.sandbox.org")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve-moto", help="serve moto's emulated AWS on 127.0.0.1")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--wrapper", help="module:callable taking and returning a WSGI app")
    args = parser.parse_args(argv)
    _serve_moto(args.port, args.wrapper)


if __name__ == "__main__":
    main()
