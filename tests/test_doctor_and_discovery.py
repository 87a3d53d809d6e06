"""`orgrunner doctor` names the accounts whose role cannot be assumed; third-party tasks load
from the `orgrunner.tasks` entry point group of installed packages."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli
from tests.emulator.client import EmulatorClient


def test_doctor_lists_the_accounts_where_the_role_cannot_be_assumed(cli: Cli, org: SandboxOrg,
                                                                     emulator: EmulatorClient) -> None:
    broken = org.accounts["dev-app-1"]
    emulator.add_rule(service="sts", operation="AssumeRole", target_account=broken, code="AccessDenied",
                      message="not authorized to perform: sts:AssumeRole", status=403)

    mark = len(emulator.requests())
    result = cli.run("doctor")

    assert result.returncode == 1, result.stderr
    assert f"{broken} dev-app-1" in result.stdout and "FAILED" in result.stdout and "AccessDenied" in result.stdout
    assert f"{len(org.accounts) - 1} of {len(org.accounts)} account(s) ok" in result.stdout
    for name, account in org.accounts.items():
        if account != broken:
            assert f"{account} {name}" in result.stdout
    # the check can change nothing: its sessions may only ask who they are
    policies = {r["params"]["Policy"] for r in emulator.requests()[mark:] if r["operation"] == "AssumeRole"}
    assert [json.loads(p)["Statement"][0]["Action"] for p in policies] == [["sts:GetCallerIdentity"]]


def test_tasks_of_installed_packages_load_through_the_entry_point_group(cli: Cli, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "acme_tasks.py").write_text(textwrap.dedent('''
        """acme-audit: a third-party task."""
        from orgrunner import Change, Task, TaskContext, register
        @register
        class AcmeAudit(Task):
            name = "acme-audit"
            description = "A team's own read-only check."
            destructive = False
            regional = True
            plan_actions = ("ec2:DescribeVpcs",)
            apply_actions = ()

            def plan(self, ctx: TaskContext) -> list[Change]:
                return []
        '''))
    (site / "acme_broken.py").write_text("raise ImportError('acme_broken needs a module that is not installed')\n")
    dist = site / "acme_tasks-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-tasks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[orgrunner.tasks]\nacme = acme_tasks\nbroken = acme_broken\n")

    result = cli.run("tasks", env=cli.env(PYTHONPATH=str(site)))

    assert result.returncode == 0, result.stderr
    assert "acme-audit" in result.stdout and "strip-default-sg" in result.stdout
    assert "entry point broken (acme_broken)" in result.stderr and "not installed" in result.stderr
    described = cli.run("describe", "acme-audit", env=cli.env(PYTHONPATH=str(site)))
    assert described.returncode == 0 and "A team's own read-only check." in described.stdout
