"""The CI pipeline files under deploy/: a GitHub Actions workflow and an AWS CodeBuild buildspec.

Each is validated against a schema (the workflow against SchemaStore's github-workflows schema as
vendored by check-jsonschema; the buildspec against tests/schemas/codebuild-buildspec.schema.json,
written from AWS's buildspec reference), the workflow also by actionlint, and the shell steps of
both are run against the emulated organization: the digest the plan step prints is the one the
apply step's `orgrunner apply plan.json --confirm-plan DIGEST` accepts, and a tampered plan is
refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli, orgrunner_command
from tests.conftest import REPO_ROOT
from tests.emulator.client import default_rule_ids

WORKFLOW = REPO_ROOT / "deploy" / "github" / "orgrunner.yml"
BUILDSPEC = REPO_ROOT / "deploy" / "codebuild" / "buildspec.yml"
BUILDSPEC_SCHEMA = REPO_ROOT / "tests" / "schemas" / "codebuild-buildspec.schema.json"
BIN = Path(sys.executable).parent
REGIONS = ("us-east-1", "eu-west-1")


def tool(name: str) -> str:
    found = BIN / name
    assert found.exists(), f"{name} is not installed (pip install -e '.[test]')"
    return str(found)


def check_jsonschema(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("check-jsonschema"), *args], capture_output=True, text=True, timeout=120)


def workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def step(job: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [s for s in job["steps"] if s.get("name") == name or s.get("id") == name]
    assert len(found) == 1, f"one step named {name!r} expected"
    return found[0]


def uses(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if str(s.get("uses", "")).split("@")[0] == action]


# --- schemas and linters ------------------------------------------------------------------------


def test_the_workflow_validates_against_the_github_workflows_schema() -> None:
    result = check_jsonschema("--builtin-schema", "vendor.github-workflows", str(WORKFLOW))
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_finds_nothing_in_the_workflow() -> None:
    result = subprocess.run([tool("actionlint"), "-no-color", str(WORKFLOW)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_does_find_a_broken_workflow(tmp_path: Path) -> None:
    """The linter is really looking: an apply job needing a job that does not exist is an error."""
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("needs: plan", "needs: planning"))
    result = subprocess.run([tool("actionlint"), "-no-color", str(broken)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1 and "planning" in result.stdout


def test_the_buildspec_schema_is_a_valid_schema_and_the_buildspec_follows_it() -> None:
    meta = check_jsonschema("--check-metaschema", str(BUILDSPEC_SCHEMA))
    assert meta.returncode == 0, meta.stdout + meta.stderr
    result = check_jsonschema("--schemafile", str(BUILDSPEC_SCHEMA), str(BUILDSPEC))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("breakage", [
    ("version: 0.2", "version: 0.1"),                       # only version 0.2 is documented
    ("phases:", "stages:"),                                 # phases is required, stages unknown
    ("  build:\n    commands:", "  build:\n    command:"),  # a phase's key misspelled
    ("exported-variables:", "exported_variables:"),         # env keys use dashes
])
def test_the_buildspec_schema_refuses_what_codebuild_refuses(tmp_path: Path, breakage: tuple[str, str]) -> None:
    old, new = breakage
    text = BUILDSPEC.read_text()
    assert old in text
    broken = tmp_path / "buildspec.yml"
    broken.write_text(text.replace(old, new, 1))
    result = check_jsonschema("--schemafile", str(BUILDSPEC_SCHEMA), str(broken))
    assert result.returncode == 1, result.stdout


# --- what the workflow promises ---------------------------------------------------------------


def test_the_workflow_gets_credentials_only_through_oidc_and_keeps_no_keys() -> None:
    flow = workflow()
    assert flow["permissions"] == {"contents": "read"}, "least privilege by default, widened per job"
    text = WORKFLOW.read_text()
    assert "secrets." not in text and "AWS_ACCESS_KEY_ID" not in text and "AWS_SECRET_ACCESS_KEY" not in text
    for name, role_var in (("plan", "ORGRUNNER_PLAN_ROLE_ARN"), ("apply", "ORGRUNNER_APPLY_ROLE_ARN")):
        job = flow["jobs"][name]
        assert job["permissions"]["id-token"] == "write", f"{name}: OIDC needs id-token: write"
        (creds,) = uses(job, "aws-actions/configure-aws-credentials")
        assert creds["with"]["role-to-assume"] == "${{ vars." + role_var + " }}"
        assert set(creds["with"]) <= {"role-to-assume", "role-session-name", "aws-region"}


def test_apply_waits_for_the_approval_gate_and_applies_the_plan_job_s_artifact() -> None:
    jobs = workflow()["jobs"]
    plan, apply = jobs["plan"], jobs["apply"]
    assert apply["needs"] == "plan"
    assert apply["environment"] == "orgrunner-apply", "the environment with required reviewers"
    assert "environment" not in plan, "the plan job runs without approval"
    assert "pull_request" in apply["if"], "a pull request is planned and commented, never applied"
    (upload,) = [s for s in uses(plan, "actions/upload-artifact")]
    (download,) = uses(apply, "actions/download-artifact")
    assert download["with"]["name"] == upload["with"]["name"]
    assert "plan.json" in upload["with"]["path"].split()
    assert plan["outputs"]["digest"] == "${{ steps.plan.outputs.digest }}"
    run = step(apply, "apply")
    assert run["env"]["PLAN_DIGEST"] == "${{ needs.plan.outputs.digest }}"
    assert 'orgrunner apply plan.json --confirm-plan "$PLAN_DIGEST"' in run["run"]


def test_no_expression_is_expanded_inside_a_shell_script() -> None:
    """`${{ }}` inside `run:` is pasted into the script before the shell sees it (script
    injection from a pull request's title or branch name); values come in through `env:`."""
    for name, job in workflow()["jobs"].items():
        for s in job["steps"]:
            assert "${{" not in s.get("run", ""), f"{name}: {s.get('name')}"


# --- the scripts, run against the emulated organization ---------------------------------------


def _needs_saved_plan_digests() -> None:
    """The pipeline's interface to orgrunner: `run --format markdown` (issue 12) and a dry run that
    prints the plan digest which `apply --confirm-plan` accepts (issue 16). Until both are in the
    installed command, the end-to-end tests below cannot run against the real thing."""
    run_help = subprocess.run([orgrunner_command(), "run", "--help"], capture_output=True, text=True).stdout
    apply_help = subprocess.run([orgrunner_command(), "apply", "--help"], capture_output=True, text=True).stdout
    missing = [what for what, ok in (("run --format markdown", "markdown" in run_help),
                                     ("apply --confirm-plan", "--confirm-plan" in apply_help)) if not ok]
    if missing:
        pytest.skip(f"not in orgrunner yet: {', '.join(missing)}")


def _workspace(cli: Cli, org: SandboxOrg, name: str) -> tuple[Path, dict[str, str]]:
    """A checkout as the CI job sees it: config/ with the regions to cover, orgrunner on PATH."""
    work = cli.home / name
    (work / "config").mkdir(parents=True)
    (work / "config" / "orgrunner.yaml").write_text(
        "regions: [" + ", ".join(REGIONS) + "]\n")
    env = cli.env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", ORGRUNNER_TASK="strip-default-sg",
                  ORGRUNNER_ROLE_NAME="OrganizationAccountAccessRole", HOME=str(work),
                  ORGRUNNER_STATE_DIR=str(work / ".orgrunner-state"))
    return work, env


def _bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert shutil.which("bash", path=env["PATH"])
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_github_plan_step_prints_the_digest_that_the_apply_step_accepts(cli: Cli, org: SandboxOrg) -> None:
    _needs_saved_plan_digests()
    jobs = workflow()["jobs"]
    work, env = _workspace(cli, org, "plan-runner")
    outputs, summary = work / "github-output", work / "step-summary"
    env.update(GITHUB_OUTPUT=str(outputs), GITHUB_STEP_SUMMARY=str(summary))
    planned = _bash(step(jobs["plan"], "plan")["run"], work, env)
    assert planned.returncode == 0, planned.stderr[-3000:]
    values = dict(line.split("=", 1) for line in outputs.read_text().splitlines())
    assert re.fullmatch(r"[0-9a-f]{64}", values["digest"])
    assert int(values["changes"]) > 0
    assert values["digest"] in summary.read_text() and "strip-default-sg" in summary.read_text()
    accounts = sorted(org.accounts.values())
    assert any(default_rule_ids(cli.emulator.url, a, "us-east-1") for a in accounts)

    # The apply job runs elsewhere: a fresh checkout and state folder, the artifact downloaded.
    apply_dir, apply_env = _workspace(cli, org, "apply-runner")
    shutil.copy(work / "plan.json", apply_dir / "plan.json")
    script = step(jobs["apply"], "apply")["run"]

    # An attack: the artifact swapped for a plan that was not reviewed. Dropping one account keeps
    # the rest free of drift, so only the digest can tell; nothing may be applied anywhere.
    saved = json.loads((work / "plan.json").read_text())
    dropped = saved["changes"][0]["account_id"]
    saved["targets"] = [t for t in saved["targets"] if t["account"] != dropped]
    saved["changes"] = [c for c in saved["changes"] if c["account_id"] != dropped]
    (apply_dir / "plan.json").write_text(json.dumps(saved, indent=2))
    refused = _bash(script, apply_dir, {**apply_env, "PLAN_DIGEST": values["digest"]})
    assert refused.returncode == 3, refused.stderr[-3000:]
    assert all(default_rule_ids(cli.emulator.url, a, r) for a in accounts for r in REGIONS)

    shutil.copy(work / "plan.json", apply_dir / "plan.json")
    applied = _bash(script, apply_dir, {**apply_env, "PLAN_DIGEST": values["digest"]})
    assert applied.returncode == 0, applied.stderr[-3000:]
    assert not any(default_rule_ids(cli.emulator.url, a, r) for a in accounts for r in REGIONS)


def test_codebuild_plan_then_apply_with_the_exported_digest(cli: Cli, org: SandboxOrg) -> None:
    _needs_saved_plan_digests()
    spec = yaml.safe_load(BUILDSPEC.read_text())
    build = "\n".join(spec["phases"]["build"]["commands"])
    work, env = _workspace(cli, org, "codebuild")
    env.update({k: str(v) for k, v in spec["env"]["variables"].items()})
    env.update(ORGRUNNER_ROLE_NAME="OrganizationAccountAccessRole", HOME=str(work))
    # CodeBuild reads the exported variables from the build phase's shell when the phase ends.
    exported = "\n".join(f'echo "{name}=${{{name}:-}}"' for name in spec["env"]["exported-variables"])
    planned = _bash(build + "\n" + exported, work, {**env, "ORGRUNNER_STAGE": "plan"})
    assert planned.returncode == 0, planned.stderr[-3000:]
    values = dict(line.split("=", 1) for line in planned.stdout.splitlines() if re.match(r"PLAN_\w+=", line))
    assert re.fullmatch(r"[0-9a-f]{64}", values["PLAN_DIGEST"])
    assert (work / "plan.digest").read_text().strip() == values["PLAN_DIGEST"]

    no_digest = _bash(build, work, {**env, "ORGRUNNER_STAGE": "apply", "PLAN_DIGEST": ""})
    assert no_digest.returncode == 1 and "PLAN_DIGEST is not set" in no_digest.stderr
    applied = _bash(build, work, {**env, "ORGRUNNER_STAGE": "apply", "PLAN_DIGEST": values["PLAN_DIGEST"]})
    assert applied.returncode == 0, applied.stderr[-3000:]
    accounts = sorted(org.accounts.values())
    assert not any(default_rule_ids(cli.emulator.url, a, r) for a in accounts for r in REGIONS)
