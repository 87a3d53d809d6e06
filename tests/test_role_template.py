"""config/orgrunner-role.yaml: the member-account role shipped for a service-managed StackSet.

The template must lint clean, trust only named operator principals of the management account
(never `*`, never a whole account) with a SourceIdentity set, and grant exactly the union of what
the built-in tasks declare: a task whose actions are missing from the role fails here, so adding
a task means updating the template too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cfnlint.api import ManualArgs, lint

from orgrunner.safety import iamdata
from orgrunner.safety.policy import phase_actions
from orgrunner.task import BUILTIN_TASKS, Task, load_tasks

TEMPLATE = Path(__file__).resolve().parents[1] / "config" / "orgrunner-role.yaml"

class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags: `!Ref X` -> {"Ref": X}, `!If [...]` -> {"Fn::If": [...]}."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    data = yaml.load(TEMPLATE.read_text(encoding="utf-8"), Loader=_CfnLoader)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def role(template: dict[str, Any]) -> dict[str, Any]:
    roles = [r for r in template["Resources"].values() if r["Type"] == "AWS::IAM::Role"]
    assert len(roles) == 1, "the template creates exactly one role"
    props = roles[0]["Properties"]
    assert isinstance(props, dict)
    return props


@pytest.fixture(scope="module")
def builtin_tasks() -> list[type[Task]]:
    loaded = load_tasks()
    broken = [e for e in loaded.errors if e.startswith(f"{BUILTIN_TASKS}.")]
    assert not broken, f"built-in tasks failed to load: {broken}"
    found = [cls for cls in loaded.tasks.values() if cls.__module__.startswith(f"{BUILTIN_TASKS}.")]
    assert "strip-default-sg" in {cls.name for cls in found}
    # the member role serves the account scope; organization-scope tasks (org-accounts) run under the
    # management account's own role (docs/accounts.md), never with rights granted to every member
    return [cls for cls in found if cls.scope == "account"]


def test_the_member_role_grants_no_organizations_write(role: dict[str, Any]) -> None:
    writes = sorted(a for a in _granted(role) if a.startswith("organizations:") and not iamdata.is_read(a))
    assert not writes, f"a member role able to change the organization: {writes}"


def _listify(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _granted(role: dict[str, Any]) -> set[str]:
    """Every action the role's permission policies allow."""
    actions: set[str] = set()
    for policy in role.get("Policies", []):
        for statement in _listify(policy["PolicyDocument"]["Statement"]):
            assert statement["Effect"] == "Allow"
            assert "NotAction" not in statement, "NotAction would grant everything not listed"
            actions.update(_listify(statement["Action"]))
    return actions


def _declared(tasks: list[type[Task]]) -> dict[str, set[str]]:
    """Action -> the built-in tasks that need it: plan, apply and undo actions, the engine's own, and
    the dependent actions AWS requires of each (from orgrunner/safety/iamdata.py's table)."""
    needed: dict[str, set[str]] = {}
    for cls in tasks:
        actions = iamdata.with_dependents(
            {*cls.plan_actions, *cls.apply_actions, *cls.undo_actions, *phase_actions(cls, "apply")})
        for action in actions:
            needed.setdefault(action, set()).add(cls.name)
    return needed


def test_template_lints_clean() -> None:
    matches = lint(TEMPLATE.read_text(encoding="utf-8"), config=ManualArgs(regions=["us-east-1"]))
    problems = [f"{m.rule.id} line {m.linenumber}: {m.message}" for m in matches if m.rule.id[0] in "EW"]
    assert not problems, "cfn-lint:\n" + "\n".join(problems)


def test_trust_policy_names_operator_principals_only(template: dict[str, Any], role: dict[str, Any]) -> None:
    statements = _listify(role["AssumeRolePolicyDocument"]["Statement"])
    assert statements
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert "NotPrincipal" not in statement and "NotAction" not in statement
        principal = statement["Principal"]
        assert isinstance(principal, dict) and set(principal) == {"AWS"}, "only AWS principals, never `*`"
        assert principal["AWS"] == {"Ref": "OperatorPrincipalArns"}, "trust only the operator ARNs parameter"
        assert sorted(_listify(statement["Action"])) == ["sts:AssumeRole", "sts:SetSourceIdentity"]

        condition = statement["Condition"]
        assert condition["Null"] == {"sts:SourceIdentity": "false"}, "a SourceIdentity must be set"
        branches = condition["StringEquals"]["Fn::If"]
        assert branches[0] == "HasExternalId"
        with_id, without_id = branches[1], branches[2]
        account = {"Ref": "ManagementAccountId"}
        assert with_id == {"aws:PrincipalAccount": account, "sts:ExternalId": {"Ref": "ExternalId"}}
        assert without_id == {"aws:PrincipalAccount": account}
    assert template["Conditions"]["HasExternalId"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "ExternalId"}, ""]}]}


def test_operator_parameter_refuses_wildcards_and_account_roots(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    assert params["OperatorPrincipalArns"]["Type"] == "CommaDelimitedList"
    assert "Default" not in params["OperatorPrincipalArns"], "operators must be named at deployment"
    pattern = re.compile(params["OperatorPrincipalArns"]["AllowedPattern"])
    for good in ("arn:aws:iam::111122223333:role/orgrunner-operator",
                 "arn:aws:iam::111122223333:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_Ops_0123abcd",
                 "arn:aws:iam::111122223333:user/alice"):
        assert pattern.fullmatch(good), good
    for bad in ("*", "111122223333", "arn:aws:iam::111122223333:root", "arn:aws:iam::*:role/ops",
                "arn:aws:iam::111122223333:role/*", "arn:aws:sts::111122223333:assumed-role/ops/alice", ""):
        assert not pattern.fullmatch(bad), bad

    account = re.compile(params["ManagementAccountId"]["AllowedPattern"])
    assert account.fullmatch("111122223333") and not account.fullmatch("1111") and not account.fullmatch("*")
    external = re.compile(params["ExternalId"]["AllowedPattern"])
    assert params["ExternalId"]["Default"] == "" and external.fullmatch("")
    assert params["RoleName"]["Default"] == "OrgRunnerRole"
    assert params["MaxSessionDuration"]["Default"] == 3600
    assert "RoleArn" in template["Outputs"]


def test_role_grants_every_action_the_builtin_tasks_declare(role: dict[str, Any],
                                                            builtin_tasks: list[type[Task]]) -> None:
    granted = _granted(role)
    missing = {a: sorted(t) for a, t in _declared(builtin_tasks).items() if a not in granted}
    assert not missing, (
        f"config/orgrunner-role.yaml lacks actions the built-in tasks declare: {missing}; "
        "add them to the role's policy (and update the StackSet)"
    )


def test_role_grants_nothing_beyond_the_tasks(role: dict[str, Any], builtin_tasks: list[type[Task]]) -> None:
    granted = _granted(role)
    for action in granted:
        assert "*" not in action and "?" not in action, f"wildcard action {action!r}"
        assert iamdata.canonical(action) == action, f"{action!r} is not an IAM action as AWS lists it"
    extra = granted - set(_declared(builtin_tasks))
    assert not extra, f"the role grants actions no built-in task needs: {sorted(extra)}"
    assert "ManagedPolicyArns" not in role, "no managed policies (AdministratorAccess and the like)"
    for policy in role.get("Policies", []):
        for statement in _listify(policy["PolicyDocument"]["Statement"]):
            assert "NotResource" not in statement
