"""org-accounts end to end through the installed command, against the emulated organization: member
accounts as desired state (config/accounts.yaml), the organization scope (one target: the
management account, through the configured role there), and closing, the most destructive change
orgrunner can make, written as attacks that fail if a defence is switched off."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pexpect
import pytest
from botocore.exceptions import ClientError

from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli
from tests.emulator.client import EmulatorClient, aws_client, create_role, member_client

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = (REPO / "config" / "accounts.yaml").read_text()
CLOSING_OPS = ("CloseAccount",)
WRITES = ("CreateAccount", "CreateOrganizationalUnit", "MoveAccount", "TagResource", "UntagResource", "CloseAccount")


# --- helpers -----------------------------------------------------------------------------------

def conf(cli: Cli, accounts: str, settings: str = "") -> Path:
    """A settings file with accounts.yaml beside it; returns the settings file."""
    folder = cli.home / "conf"
    folder.mkdir(exist_ok=True)
    (folder / "accounts.yaml").write_text(accounts)
    path = folder / "orgrunner.yaml"
    path.write_text("concurrency: 4\n" + settings)
    return path


def with_entries(*entries: str, head: str = "") -> str:
    """The shipped example (it matches the sandbox) with these entries appended to `accounts:`."""
    return head + EXAMPLE.rstrip() + "\n" + "".join(entries)


def entry(name: str, ou: str, tags: dict[str, str] | None = None, closed: bool = False, email: str = "") -> str:
    lines = f"  - name: {name}\n    email: {email or name + '@sandbox.example'}\n    ou: {ou}\n"
    if tags is not None:
        lines += f"    tags: {json.dumps(tags)}\n"
    return lines + ("    closed: true\n" if closed else "")


def edit(text: str, name: str, **fields: str) -> str:
    """The example with `name`'s entry changed (ou, tags as YAML flow text, closed)."""
    block = re.search(rf"  - name: {re.escape(name)}\n(    .*\n)+", text)
    assert block, name
    new = block.group(0)
    for key, value in fields.items():
        if re.search(rf"^    {key}: .*$", new, re.M):
            new = re.sub(rf"^    {key}: .*$", f"    {key}: {value}", new, flags=re.M)
        else:
            new += f"    {key}: {value}\n"
    return text.replace(block.group(0), new)


def run(cli: Cli, settings: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli.run("run", "org-accounts", "--config", str(settings), "--details", "all", *args)


def check(result: subprocess.CompletedProcess[str], code: int) -> subprocess.CompletedProcess[str]:
    assert result.returncode == code, (result.returncode, result.stdout[-4000:], result.stderr[-4000:])
    assert "Traceback" not in result.stderr + result.stdout
    return result


def orgs(emulator: EmulatorClient) -> Any:
    """The test's own Organizations client, as the management account (the operator's session)."""
    return aws_client(emulator.url, "organizations")


def accounts_by_name(emulator: EmulatorClient) -> dict[str, dict[str, Any]]:
    client = orgs(emulator)
    found = {}
    for page in client.get_paginator("list_accounts").paginate():
        for account in page["Accounts"]:
            found[account["Name"]] = account
    return found


def state(account: dict[str, Any]) -> str:
    return str(account.get("State") or account.get("Status"))


def ou_of(emulator: EmulatorClient, account_id: str) -> str:
    """The account's OU path ('/Workloads/Prod'), read by the test itself."""
    client = orgs(emulator)
    names = []
    child = account_id
    while True:
        parent = client.list_parents(ChildId=child)["Parents"][0]
        if parent["Type"] == "ROOT":
            return "/" + "/".join(reversed(names))
        names.append(client.describe_organizational_unit(OrganizationalUnitId=parent["Id"])["OrganizationalUnit"]["Name"])
        child = parent["Id"]


def tags(emulator: EmulatorClient, account_id: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in orgs(emulator).list_tags_for_resource(ResourceId=account_id)["Tags"]}


def writes_since(emulator: EmulatorClient, mark: int, operations: tuple[str, ...] = WRITES) -> list[dict[str, Any]]:
    return [r for r in emulator.requests("organizations")[mark:] if r["operation"] in operations]


def mark(emulator: EmulatorClient) -> int:
    return len(emulator.requests("organizations"))


def last_run_id(cli: Cli) -> str:
    return str([e for e in cli.audit() if e["event"] == "run-start"][-1]["run_id"])


def journal(cli: Cli, run_id: str) -> list[dict[str, Any]]:
    path = cli.home / "state" / "orgrunner" / "journal" / f"{run_id}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def mgmt(emulator: EmulatorClient, org: SandboxOrg) -> str:
    """The management account, with the role organization-scope tasks assume there (AWS makes none
    in the management account: the operator deploys it, as the sandbox has done)."""
    create_role(emulator.url, org.management_account_id, "OrganizationAccountAccessRole")
    return org.management_account_id


# --- desired state: plan, create, move, tag ----------------------------------------------------

def test_the_shipped_example_matches_the_sandbox_and_plans_nothing(cli: Cli, emulator: EmulatorClient,
                                                                   org: SandboxOrg, mgmt: str) -> None:
    result = check(run(cli, conf(cli, EXAMPLE), "--dry-run"), 0)
    assert "nothing to do" in result.stdout, result.stdout
    assert "unmanaged" not in result.stdout + result.stderr
    start = [e for e in cli.audit() if e["event"] == "run-start"][-1]
    assert start["targets"] == [mgmt], "one target: the management account"
    # the task ran under the role in the management account, with its plan session policy
    sessions = [r for r in emulator.requests("sts", "AssumeRole")]
    assert any(f":{mgmt}:role/OrganizationAccountAccessRole" in json.dumps(r) for r in sessions), sessions


def test_create_two_accounts_in_a_nested_ou_then_nothing_to_do(cli: Cli, emulator: EmulatorClient, org: SandboxOrg,
                                                              mgmt: str) -> None:
    text = with_entries(entry("data-lake-1", "/Workloads/Data/Lake", {"env": "prod", "team": "data"}),
                        entry("data-lake-2", "/Workloads/Data/Lake", {"env": "dev", "team": "data"}))
    settings = conf(cli, text.replace("create_ous: false", "create_ous: true"))
    plan = check(run(cli, settings, "--dry-run"), 0)
    for line in ("create OU /Workloads/Data", "create OU /Workloads/Data/Lake",
                 "create account data-lake-1 <data-lake-1@sandbox.example> in /Workloads/Data/Lake",
                 "create account data-lake-2"):
        assert line in plan.stdout, plan.stdout
    before = mark(emulator)
    armed = check(run(cli, settings, "--arm", "--confirm-accounts", mgmt), 0)
    live = accounts_by_name(emulator)
    created = [live["data-lake-1"]["Id"], live["data-lake-2"]["Id"]]
    for name, env in (("data-lake-1", "prod"), ("data-lake-2", "dev")):
        assert state(live[name]) == "ACTIVE"
        assert ou_of(emulator, live[name]["Id"]) == "/Workloads/Data/Lake"
        assert tags(emulator, live[name]["Id"]) == {"env": env, "team": "data"}
    # the creation was followed to its end (the emulator answers IN_PROGRESS first, as AWS does)
    polls = [r for r in emulator.requests("organizations", "DescribeCreateAccountStatus")[0:]]
    assert len(polls) >= 4, polls
    assert len(writes_since(emulator, before, ("CreateAccount",))) == 2
    # the exact baseline command for the new accounts, in the summary
    command = "orgrunner baseline " + " ".join(f"--account {i}" for i in sorted(created))
    assert command in armed.stdout, armed.stdout
    # the new accounts' OrganizationAccountAccessRole can be assumed (what the baseline needs)
    assert member_client(emulator.url, created[0], "sts").get_caller_identity()["Account"] == created[0]
    again = check(run(cli, settings, "--dry-run"), 0)
    assert "nothing to do" in again.stdout, again.stdout


@pytest.mark.parametrize("mode", ["--dry-run", "--arm"])
def test_an_unknown_ou_without_create_ous_is_bad_input_exit_2_naming_the_entry(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg, mgmt: str, mode: str) -> None:
    """An OU path the organization lacks is found only against the live organization, while
    planning; it is still bad input: one `orgrunner:` line naming the entry and the path, exit 2,
    nothing applied (armed too), and the run recorded as an error."""
    settings = conf(cli, with_entries(entry("data-lake-1", "/Workloads/Data")))
    before = mark(emulator)
    armed = ("--confirm-accounts", mgmt) if mode == "--arm" else ()
    result = check(run(cli, settings, mode, *armed), 2)
    [line] = [line for line in result.stderr.splitlines() if line.startswith("orgrunner: ")]
    assert "accounts.yaml accounts[" in line and "(data-lake-1)" in line, line
    assert "OU /Workloads/Data does not exist" in line and "create_ous: true" in line, line
    assert not writes_since(emulator, before)
    end = [e for e in cli.audit() if e["event"] == "run-end"][-1]
    assert end["status"].startswith("error: org-accounts: accounts.yaml"), end


def test_an_email_already_used_in_aws_fails_with_aws_failure_reason(cli: Cli, emulator: EmulatorClient,
                                                                    org: SandboxOrg, mgmt: str) -> None:
    client = orgs(emulator)
    client.remove_account_from_organization(AccountId=org.accounts["prod-app-3"])  # it lives on, outside
    text = EXAMPLE.replace("  - name: prod-app-3\n", "  - name: prod-app-3b\n")  # same email, new name
    result = check(run(cli, conf(cli, text), "--arm", "--confirm-accounts", mgmt), 1)
    assert "EMAIL_ALREADY_EXISTS" in result.stdout + result.stderr
    assert "prod-app-3b" not in accounts_by_name(emulator)


def test_move_and_retag_then_undo_restores_both(cli: Cli, emulator: EmulatorClient, org: SandboxOrg,
                                                mgmt: str) -> None:
    account = org.accounts["dev-app-1"]
    text = edit(EXAMPLE, "dev-app-1", ou="/Workloads/Prod", tags='{env: staging, owner: alice}')
    settings = conf(cli, text)
    plan = check(run(cli, settings, "--dry-run"), 0)
    for line in ("dev-app-1 (" + account + "): move /Workloads/NonProd -> /Workloads/Prod",
                 "tag env: dev -> staging", "tag owner: (none) -> alice", "tag team: payments -> (removed)"):
        assert line in plan.stdout, plan.stdout
    # destructive: --arm alone, without a terminal, applies nothing
    before = mark(emulator)
    check(run(cli, settings, "--arm"), 3)
    assert not writes_since(emulator, before)
    check(run(cli, settings, "--arm", "--confirm-accounts", mgmt), 0)
    run_id = last_run_id(cli)
    assert ou_of(emulator, account) == "/Workloads/Prod"
    assert tags(emulator, account) == {"env": "staging", "owner": "alice"}

    dry = check(cli.run("undo", run_id, "--config", str(settings), "--details", "all"), 0)
    assert "move back /Workloads/Prod -> /Workloads/NonProd" in dry.stdout, dry.stdout
    check(cli.run("undo", run_id, "--config", str(settings), "--arm", "--confirm-accounts", mgmt), 0)
    assert ou_of(emulator, account) == "/Workloads/NonProd"
    assert tags(emulator, account) == {"env": "dev", "team": "payments"}


def test_undo_of_a_created_account_is_a_closure_with_its_own_confirmation(cli: Cli, emulator: EmulatorClient,
                                                                         org: SandboxOrg, mgmt: str) -> None:
    settings = conf(cli, with_entries(entry("scratch-1", "/Workloads/NonProd/Sandbox", {"env": "dev"})))
    check(run(cli, settings, "--arm", "--confirm-accounts", mgmt), 0)
    run_id = last_run_id(cli)
    created = accounts_by_name(emulator)["scratch-1"]["Id"]
    dry = check(cli.run("undo", run_id, "--config", str(settings), "--details", "all"), 0)
    assert f"scratch-1 ({created}): CLOSE the account" in dry.stdout, dry.stdout
    before = mark(emulator)
    check(cli.run("undo", run_id, "--config", str(settings), "--arm", "--confirm-accounts", mgmt), 3)
    assert not writes_since(emulator, before)
    check(cli.run("undo", run_id, "--config", str(settings), "--arm", "--confirm-accounts", mgmt,
                  "--confirm-close", "scratch-1"), 0)
    assert state(accounts_by_name(emulator)["scratch-1"]) != "ACTIVE"


def test_undo_leaves_what_changed_since_and_says_so(cli: Cli, emulator: EmulatorClient, org: SandboxOrg,
                                                    mgmt: str) -> None:
    account = org.accounts["dev-app-1"]
    settings = conf(cli, edit(EXAMPLE, "dev-app-1", tags="{env: staging}"))
    check(run(cli, settings, "--arm", "--confirm-accounts", mgmt), 0)
    run_id = last_run_id(cli)
    orgs(emulator).tag_resource(ResourceId=account, Tags=[{"Key": "env", "Value": "hand-made"}])
    before = mark(emulator)
    result = check(cli.run("undo", run_id, "--config", str(settings), "--arm", "--confirm-accounts", mgmt), 0)
    assert "has changed since the run" in result.stdout + result.stderr
    assert not writes_since(emulator, before)
    assert tags(emulator, account) == {"env": "hand-made"}


def test_a_manual_move_between_plan_and_apply_is_drift(cli: Cli, emulator: EmulatorClient, org: SandboxOrg,
                                                       mgmt: str) -> None:
    account = org.accounts["sandbox-1"]
    settings = conf(cli, edit(EXAMPLE, "sandbox-1", ou="/Workloads/NonProd"))
    plan_file = cli.home / "plan.json"
    check(run(cli, settings, "--dry-run", "--plan-out", str(plan_file)), 0)
    # someone moves the account by hand, directly against the organization
    orgs(emulator).move_account(AccountId=account, SourceParentId=org.ous["Sandbox"],
                                DestinationParentId=org.ous["Security"])
    before = mark(emulator)
    result = check(cli.run("apply", str(plan_file), "--config", str(settings), "--confirm-accounts", mgmt), 3)
    assert "drift" in result.stderr, result.stderr
    assert not writes_since(emulator, before)
    assert ou_of(emulator, account) == "/Security"


# --- unmanaged accounts and pruning ----------------------------------------------------------------

def without(text: str, name: str) -> str:
    return re.sub(rf"  - name: {re.escape(name)}\n(    .*\n)+", "", text)


def test_accounts_absent_from_the_file_are_unmanaged_and_left_alone_by_default(cli: Cli, emulator: EmulatorClient,
                                                                              org: SandboxOrg, mgmt: str) -> None:
    settings = conf(cli, without(EXAMPLE, "sandbox-2"))
    result = check(run(cli, settings, "--dry-run"), 0)
    assert f"unmanaged: sandbox-2 ({org.accounts['sandbox-2']})" in result.stdout + result.stderr
    assert "nothing to do" in result.stdout
    before = mark(emulator)
    check(run(cli, settings, "--arm", "--confirm-accounts", mgmt), 0)
    assert not writes_since(emulator, before)


def test_prune_close_plans_the_closure_of_accounts_absent_from_the_file(cli: Cli, emulator: EmulatorClient,
                                                                        org: SandboxOrg, mgmt: str) -> None:
    settings = conf(cli, without(EXAMPLE, "sandbox-2").replace("prune: off", "prune: close"))
    result = check(run(cli, settings, "--dry-run"), 0)
    closures = [line for line in result.stdout.splitlines() if "CLOSE the account" in line]
    assert len(closures) == 1 and f"sandbox-2 ({org.accounts['sandbox-2']})" in closures[0], result.stdout


# --- closing: the attacks ---------------------------------------------------------------------------

def closing(cli: Cli, *names: str, settings: str = "") -> Path:
    text = EXAMPLE
    for name in names:
        text = edit(text, name, closed="true")
    return conf(cli, text, settings)


def test_closing_without_the_typed_names_closes_nothing(cli: Cli, emulator: EmulatorClient, org: SandboxOrg,
                                                        mgmt: str) -> None:
    settings = closing(cli, "sandbox-2")
    victim = org.accounts["sandbox-2"]
    before = mark(emulator)
    for extra, why in (((), "--confirm-close"),  # the accounts confirmed, the closure not
                       (("--confirm-close", "sandbox-1"), "sandbox-2"),  # the wrong name
                       (("--confirm-close", victim), "names"),  # the id is not the name
                       (("--confirm-close", "sandbox-2,sandbox-1"), "sandbox-1")):  # one too many
        result = check(run(cli, settings, "--arm", "--confirm-accounts", mgmt, *extra), 3)
        assert why in result.stderr, (extra, result.stderr)
        assert "nothing applied" in result.stderr
    assert not writes_since(emulator, before), "refused before any write"
    assert state(accounts_by_name(emulator)["sandbox-2"]) == "ACTIVE"


def test_closing_with_the_names_closes_and_the_journal_keeps_the_account(cli: Cli, emulator: EmulatorClient,
                                                                         org: SandboxOrg, mgmt: str) -> None:
    settings = closing(cli, "sandbox-2")
    victim = org.accounts["sandbox-2"]
    plan = check(run(cli, settings, "--dry-run"), 0)
    assert f"sandbox-2 ({victim}): CLOSE the account" in plan.stdout
    assert "AWS Support" in plan.stdout, "the plan says it cannot be undone"
    check(run(cli, settings, "--arm", "--confirm-accounts", mgmt, "--confirm-close", "sandbox-2"), 0)
    assert state(accounts_by_name(emulator)["sandbox-2"]) in ("PENDING_CLOSURE", "SUSPENDED")
    run_id = last_run_id(cli)
    closed = [r for r in journal(cli, run_id) if r.get("change", {}).get("action") == "close-account"]
    assert closed, journal(cli, run_id)
    record = closed[-1]["change"]["before"]
    assert record["account_id"] == victim and record["name"] == "sandbox-2"
    assert record["email"] == "sandbox-2@sandbox.example" and record["ou"] == "/Workloads/NonProd/Sandbox"
    # undo re-opens nothing, and says so
    undo = check(cli.run("undo", run_id, "--config", str(settings), "--details", "all"), 0)
    assert "cannot reopen" in undo.stdout + undo.stderr and "90 days" in undo.stdout + undo.stderr
    assert "nothing to do" in undo.stdout


def test_at_a_terminal_the_names_are_typed_and_a_wrong_name_closes_nothing(cli: Cli, emulator: EmulatorClient,
                                                                          org: SandboxOrg, mgmt: str) -> None:
    settings = closing(cli, "sandbox-2")
    before = mark(emulator)
    for typed, code in (("sandbox-1", 3), (org.accounts["sandbox-2"], 3), ("sandbox-2", 0)):
        child = cli.spawn("run", "org-accounts", "--config", str(settings), "--arm", timeout=120)
        child.expect("Type their names, comma separated: ")
        assert "90 days" in child.before
        child.sendline(typed)
        if code == 0:
            child.expect("type the ids of the accounts with planned changes")
            child.sendline(mgmt)
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == code, (typed, child.before)
        if code:
            assert not writes_since(emulator, before), typed
    assert state(accounts_by_name(emulator)["sandbox-2"]) != "ACTIVE"


def test_more_closures_than_the_settings_allow_are_refused_with_aws_quota(cli: Cli, emulator: EmulatorClient,
                                                                          org: SandboxOrg, mgmt: str) -> None:
    settings = closing(cli, "sandbox-1", "sandbox-2")
    before = mark(emulator)
    result = check(run(cli, settings, "--arm", "--confirm-accounts", mgmt, "--confirm-close", "sandbox-1,sandbox-2"),
                   3)
    assert "2 account closures planned" in result.stderr and "max_closures_per_run" in result.stderr
    assert "10%" in result.stderr and "30 days" in result.stderr, "AWS's own quota explained"
    assert not writes_since(emulator, before)
    raised = closing(cli, "sandbox-1", "sandbox-2", settings="max_closures_per_run: 2\n")
    check(run(cli, raised, "--arm", "--confirm-accounts", mgmt, "--confirm-close", "sandbox-1,sandbox-2"), 0)
    live = accounts_by_name(emulator)
    assert state(live["sandbox-1"]) != "ACTIVE" and state(live["sandbox-2"]) != "ACTIVE"


def test_a_protected_account_is_never_closed(cli: Cli, emulator: EmulatorClient, org: SandboxOrg, mgmt: str) -> None:
    victim = org.accounts["sandbox-2"]
    for protect in (f"protected_accounts: ['{victim}']\n",
                    "protected_accounts: {name_patterns: ['sandbox-2']}\n"):
        settings = closing(cli, "sandbox-2", settings=protect)
        before = mark(emulator)
        result = check(run(cli, settings, "--arm", "--confirm-accounts", mgmt, "--confirm-close", "sandbox-2",
                           "--include-protected", "--confirm-protected", victim), 3)
        assert "protected" in result.stderr and "never closed" in result.stderr, result.stderr
        assert not writes_since(emulator, before)
    assert state(accounts_by_name(emulator)["sandbox-2"]) == "ACTIVE"


def test_moving_a_protected_account_needs_its_own_confirmation(cli: Cli, emulator: EmulatorClient, org: SandboxOrg,
                                                               mgmt: str) -> None:
    account = org.accounts["prod-app-1"]
    settings = conf(cli, edit(EXAMPLE, "prod-app-1", ou="/Workloads/NonProd"),
                    "protected_accounts: {name_patterns: ['prod-*']}\n")
    before = mark(emulator)
    refused = check(run(cli, settings, "--arm", "--confirm-accounts", mgmt), 3)
    assert "protected" in refused.stderr and account in refused.stderr, refused.stderr
    assert not writes_since(emulator, before)
    check(run(cli, settings, "--arm", "--confirm-accounts", mgmt, "--confirm-protected", account), 0)
    assert ou_of(emulator, account) == "/Workloads/NonProd"


HOSTILE = '''
from pydantic import BaseModel, ConfigDict
from orgrunner.aws import call
from orgrunner.task import ApplyContext, Change, Task, TaskContext, register


class Orders(BaseModel):
    model_config = ConfigDict(extra="forbid")
    close: list[dict[str, str]] = []
    tag_then_close: str = ""


@register
class CloseAnyway(Task):
    """Hostile: plans closures the engine must refuse, or closes under another change's name."""
    name = "close-anyway"
    description = "hostile"
    destructive = True
    regional = False
    scope = "organization"
    plan_actions = ("organizations:ListAccounts",)
    apply_actions = ("organizations:CloseAccount", "organizations:TagResource")
    config_file = "hostile.yaml"
    Config = Orders

    def plan(self, ctx: TaskContext) -> list[Change]:
        changes = [ctx.change(a["account_id"], "close-account", "close " + a["name"], before=a,
                              after={"state": "SUSPENDED"}) for a in self.config.close]
        if self.config.tag_then_close:
            changes.append(ctx.change(self.config.tag_then_close, "tag-account", "just a tag",
                                      before={"tags": {}}, after={"tags": {"x": "y"}}))
        return changes

    def apply(self, ctx: ApplyContext, change: Change) -> str:
        call(ctx.client("organizations"), "close_account", AccountId=change.resource)
        return "applied"
'''


def hostile(cli: Cli, orders: str, settings: str = "") -> tuple[Path, Path]:
    folder = cli.home / "hostile"
    folder.mkdir(exist_ok=True)
    (folder / "close_anyway.py").write_text(HOSTILE)
    path = conf(cli, EXAMPLE, settings)
    (path.parent / "hostile.yaml").write_text(orders)
    return path, folder


def account_record(org: SandboxOrg, name: str, ou: str) -> str:
    return json.dumps({"account_id": org.accounts[name], "name": name, "email": f"{name}@sandbox.example", "ou": ou})


def test_a_task_cannot_get_the_management_account_closed(cli: Cli, emulator: EmulatorClient, org: SandboxOrg,
                                                         mgmt: str) -> None:
    orders = "close:\n  - " + json.dumps({"account_id": mgmt, "name": "master", "email": "master@example.com",
                                          "ou": "/"}) + "\n"
    settings, folder = hostile(cli, orders)
    before = mark(emulator)
    result = check(cli.run("run", "close-anyway", "--config", str(settings), "--tasks-dir", str(folder), "--arm",
                           "--confirm-accounts", mgmt, "--confirm-close", "master"), 3)
    assert "management account" in result.stderr and "never closed" in result.stderr, result.stderr
    assert not writes_since(emulator, before)


def test_a_task_cannot_close_a_protected_account_it_planned_to_close(cli: Cli, emulator: EmulatorClient,
                                                                     org: SandboxOrg, mgmt: str) -> None:
    victim = org.accounts["sandbox-2"]
    settings, folder = hostile(cli, "close:\n  - " + account_record(org, "sandbox-2", "/Workloads/NonProd/Sandbox"),
                               settings=f"protected_accounts: ['{victim}']\n")
    before = mark(emulator)
    result = check(cli.run("run", "close-anyway", "--config", str(settings), "--tasks-dir", str(folder), "--arm",
                           "--confirm-accounts", mgmt, "--confirm-close", "sandbox-2"), 3)
    assert "never closed" in result.stderr, result.stderr
    assert not writes_since(emulator, before)
    assert state(accounts_by_name(emulator)["sandbox-2"]) == "ACTIVE"


def test_the_names_to_type_come_from_the_organization_not_from_the_task(cli: Cli, emulator: EmulatorClient,
                                                                        org: SandboxOrg, mgmt: str) -> None:
    """The task claims the account it closes is called "harmless": the operator would type that."""
    record = json.loads(account_record(org, "sandbox-2", "/Workloads/NonProd/Sandbox"))
    settings, folder = hostile(cli, "close:\n  - " + json.dumps({**record, "name": "harmless"}))
    before = mark(emulator)
    result = check(cli.run("run", "close-anyway", "--config", str(settings), "--tasks-dir", str(folder), "--arm",
                           "--confirm-accounts", mgmt, "--confirm-close", "harmless"), 3)
    assert "sandbox-2" in result.stderr, result.stderr
    assert not writes_since(emulator, before)


def test_a_task_cannot_close_an_account_under_another_change_s_name(cli: Cli, emulator: EmulatorClient,
                                                                    org: SandboxOrg, mgmt: str) -> None:
    """No closure planned and confirmed: the apply session policy denies CloseAccount, so AWS refuses."""
    emulator.enforce_session_policies(True)
    victim = org.accounts["sandbox-2"]
    settings, folder = hostile(cli, f"tag_then_close: '{victim}'\n")
    result = check(cli.run("run", "close-anyway", "--config", str(settings), "--tasks-dir", str(folder), "--arm",
                           "--confirm-accounts", mgmt), 1)
    assert "AccessDenied" in result.stdout + result.stderr, result.stdout + result.stderr
    assert state(accounts_by_name(emulator)["sandbox-2"]) == "ACTIVE"


def test_an_account_scope_task_cannot_close_an_account_from_the_management_account(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg, mgmt: str) -> None:
    """The closing rules are the organization scope's; a task of the account scope run in the
    management account (--include-management) gets no CloseAccount from its apply policy either."""
    emulator.enforce_session_policies(True)
    victim = org.accounts["sandbox-2"]
    settings, folder = hostile(cli, f"tag_then_close: '{victim}'\n")
    source = folder / "close_anyway.py"
    source.write_text(source.read_text().replace('scope = "organization"', 'scope = "account"'))
    result = check(cli.run("run", "close-anyway", "--config", str(settings), "--tasks-dir", str(folder), "--arm",
                           "--account", mgmt, "--include-management", "--confirm-accounts", mgmt), 1)
    assert "AccessDenied" in result.stdout + result.stderr, result.stdout + result.stderr
    assert state(accounts_by_name(emulator)["sandbox-2"]) == "ACTIVE"


def test_a_task_cannot_close_another_account_than_the_one_confirmed(cli: Cli, emulator: EmulatorClient,
                                                                    org: SandboxOrg, mgmt: str) -> None:
    """One closure confirmed (sandbox-1); the task's other change closes sandbox-2: the apply session
    policy allows CloseAccount on the confirmed account's ARN only."""
    emulator.enforce_session_policies(True)
    victim = org.accounts["sandbox-2"]
    orders = ("close:\n  - " + account_record(org, "sandbox-1", "/Workloads/NonProd/Sandbox")
              + f"\ntag_then_close: '{victim}'\n")
    settings, folder = hostile(cli, orders)
    check(cli.run("run", "close-anyway", "--config", str(settings), "--tasks-dir", str(folder), "--arm",
                  "--confirm-accounts", mgmt, "--confirm-close", "sandbox-1"), 1)
    live = accounts_by_name(emulator)
    assert state(live["sandbox-2"]) == "ACTIVE"
    assert state(live["sandbox-1"]) != "ACTIVE"


# --- the organization scope ---------------------------------------------------------------------

@pytest.mark.parametrize("selector", [("--account", "111122223333"), ("--ou", "ou-ab12-cd34ef56"),
                                      ("--tag", "env=prod"), ("--exclude", "111122223333")])
def test_account_selectors_do_not_apply_to_the_organization_scope(cli: Cli, emulator: EmulatorClient,
                                                                  org: SandboxOrg, selector: tuple[str, str]) -> None:
    before = len(emulator.requests())
    result = check(run(cli, conf(cli, EXAMPLE), "--dry-run", *selector), 2)
    assert "runs on the organization" in result.stderr.strip().splitlines()[-1], result.stderr
    assert len(emulator.requests()) == before, "refused before any AWS call"


def test_report_refuses_the_organization_scope(cli: Cli, emulator: EmulatorClient) -> None:
    result = check(cli.run("report", "org-accounts"), 2)
    assert "runs on the organization" in result.stderr and emulator.requests() == []


# --- accounts.yaml validation: one line, file:line, exit 2 ---------------------------------------------

BAD = {
    "duplicate name": (with_entries(entry("prod-app-1", "/Workloads/Prod", email="other@sandbox.example")),
                       "name repeats"),
    "duplicate email": (with_entries(entry("other", "/Workloads/Prod", email="PROD-APP-1@sandbox.example")),
                        "email repeats"),
    "bad email": (with_entries(entry("other", "/Workloads/Prod", email="not an email")), "not an email address"),
    "relative OU path": (with_entries(entry("other", "Workloads/Prod")), "OU path starts with '/'"),
    "OU path too deep": (with_entries(entry("other", "/a/b/c/d/e/f")), "at most 5 levels"),
    "unknown key": (with_entries(entry("other", "/Workloads/Prod") + "    owner: alice\n"), "owner"),
    "prune neither off nor close": (EXAMPLE.replace("prune: off", "prune: maybe"), "prune"),
    "closed not a boolean": (with_entries(entry("other", "/Workloads/Prod") + "    closed: 'yes'\n"), "closed"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_accounts_yaml_is_one_line_naming_file_and_line(cli: Cli, emulator: EmulatorClient, case: str) -> None:
    text, message = BAD[case]
    settings = conf(cli, text)
    before = len(emulator.requests())
    result = check(run(cli, settings, "--dry-run"), 2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    where = re.match(r".*accounts\.yaml:(\d+): ", lines[0])
    assert where, lines[0]
    number = int(where.group(1))
    assert number > EXAMPLE.count("\n") - 1 or case == "prune neither off nor close", (number, lines[0])
    assert message in lines[0], lines[0]
    assert len(emulator.requests()) == before, "refused before any AWS call"


# --- the emulator says no where AWS says no -----------------------------------------------------------

def test_the_emulator_refuses_what_organizations_refuses(emulator: EmulatorClient, org: SandboxOrg) -> None:
    client = orgs(emulator)
    with pytest.raises(ClientError) as refused:
        client.close_account(AccountId=org.management_account_id)
    assert refused.value.response["Error"]["Code"] == "ConstraintViolationException"
    with pytest.raises(ClientError) as refused:
        client.move_account(AccountId=org.accounts["sandbox-1"], SourceParentId=org.ous["Prod"],
                            DestinationParentId=org.ous["Security"])
    assert refused.value.response["Error"]["Code"] == "SourceParentNotFoundException"
    with pytest.raises(ClientError) as refused:
        client.create_organizational_unit(ParentId=org.root_id, Name="Workloads")
    assert refused.value.response["Error"]["Code"] == "DuplicateOrganizationalUnitException"
    client.close_account(AccountId=org.accounts["sandbox-1"])
    assert state(client.describe_account(AccountId=org.accounts["sandbox-1"])["Account"]) == "PENDING_CLOSURE"
    with pytest.raises(ClientError) as refused:
        client.close_account(AccountId=org.accounts["sandbox-1"])
    assert refused.value.response["Error"]["Code"] == "AccountAlreadyClosedException"


def test_the_emulator_creates_accounts_asynchronously_and_keeps_emails_unique(emulator: EmulatorClient,
                                                                              org: SandboxOrg) -> None:
    client = orgs(emulator)
    started = client.create_account(AccountName="fresh", Email="fresh@sandbox.example")["CreateAccountStatus"]
    assert started["State"] == "IN_PROGRESS" and "AccountId" not in started
    states = []
    while not states or states[-1]["State"] == "IN_PROGRESS":
        states.append(client.describe_create_account_status(CreateAccountRequestId=started["Id"])
                      ["CreateAccountStatus"])
    assert states[-1]["State"] == "SUCCEEDED" and states[-1]["AccountId"]
    taken = client.create_account(AccountName="again", Email="prod-app-1@sandbox.example")["CreateAccountStatus"]
    assert taken["State"] == "IN_PROGRESS"
    final = taken
    while final["State"] == "IN_PROGRESS":
        final = client.describe_create_account_status(CreateAccountRequestId=taken["Id"])["CreateAccountStatus"]
    assert final["State"] == "FAILED" and final["FailureReason"] == "EMAIL_ALREADY_EXISTS"
    assert "again" not in accounts_by_name(emulator)


def test_the_emulator_enforces_the_closure_quota(emulator: EmulatorClient, org: SandboxOrg) -> None:
    """AWS: at most 10% of the member accounts, and at least 10, closed per rolling 30 days."""
    client = orgs(emulator)
    for i in range(4):
        started = client.create_account(AccountName=f"extra-{i}", Email=f"extra-{i}@sandbox.example")
        while client.describe_create_account_status(
                CreateAccountRequestId=started["CreateAccountStatus"]["Id"])["CreateAccountStatus"]["State"] \
                == "IN_PROGRESS":
            pass
    active = [a for a in accounts_by_name(emulator).values()
              if state(a) == "ACTIVE" and a["Id"] != org.management_account_id]
    assert len(active) >= 10
    for account in active[:9]:  # the tenth closure of 30 days: the seeding closed retired-1
        client.close_account(AccountId=account["Id"])
    with pytest.raises(ClientError) as refused:
        client.close_account(AccountId=active[9]["Id"])
    assert refused.value.response["Error"]["Code"] == "ConstraintViolationException"
    assert "CLOSE_ACCOUNT_QUOTA_EXCEEDED" in json.dumps(refused.value.response)


def test_docs_state_the_quotas_and_the_points_of_no_return() -> None:
    docs = (REPO / "docs" / "accounts.md").read_text()
    for fact in ("10%", "30 days", "90 days", "CLOSE_ACCOUNT_QUOTA_EXCEEDED", "EMAIL_ALREADY_EXISTS",
                 "max_closures_per_run", "--confirm-close"):
        assert fact in docs, fact
    assert "org-accounts" in (REPO / "README.md").read_text()
