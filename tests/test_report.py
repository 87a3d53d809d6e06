"""`orgrunner report`: the organization's compliance as one document, rendered from the emulated
organization in every format and read back (JSON, CSV), parsed (HTML with an HTML parser), and
published to a local server following Confluence's REST contract. One dry run in the audit log;
nothing written to AWS."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from orgrunner.publish import compliance
from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli
from tests.confluence_server import Confluence, StoredPage
from tests.conftest import REPO_ROOT
from tests.emulator.client import EmulatorClient, default_rule_ids

TASKS = ("strip-default-sg", "iam-password-policy")
READS = ("Describe", "Get", "List")
TOKEN = "confluence-pat-0123456789abcdef"


def check(result: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert result.returncode == code, (result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture
def configured(cli: Cli) -> Cli:
    """The repository's config folder (task configs, baseline) in the scratch folder."""
    shutil.copytree(REPO_ROOT / "config", cli.home / "config")
    return cli


@pytest.fixture
def shaped(configured: Cli, org: SandboxOrg, emulator: EmulatorClient) -> dict[str, str]:
    """One account brought to compliance with both tasks (by orgrunner itself), one whose password
    policy cannot be read (failed); the others have pending changes. Returns name -> id."""
    clean, broken = org.accounts["dev-app-1"], org.accounts["sandbox-2"]
    check(configured.run("run", "strip-default-sg", "--arm", "--account", clean, "--region", "us-east-1",
                         "--confirm-accounts", clean))
    check(configured.run("run", "iam-password-policy", "--arm", "--account", clean))
    assert not default_rule_ids(emulator.url, clean, "us-east-1")
    emulator.add_rule(service="iam", operation="GetAccountPasswordPolicy", account=broken,
                      code="AccessDenied", message="injected", status=403)
    return {"clean": clean, "broken": broken}


def report(cli: Cli, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    return check(cli.run("report", *TASKS, "--region", "us-east-1", *args), code)


def every_account(org: SandboxOrg) -> set[str]:
    return {*org.accounts.values(), org.suspended_account_id, org.management_account_id}


def test_json_holds_the_inventory_and_the_matrix_and_the_run_is_one_dry_run(
        shaped: dict[str, str], configured: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    mark = len(emulator.requests())
    result = report(configured, "--format", "json", code=1)  # one target could not be planned
    document = json.loads(result.stdout)
    assert document["format"] == "orgrunner-report/1" and document["tasks"] == list(TASKS)
    rows = {a["id"]: a for a in document["accounts"]}
    assert set(rows) == every_account(org)

    clean, broken = rows[shaped["clean"]], rows[shaped["broken"]]
    assert clean["name"] == "dev-app-1" and clean["ou_path"] == "Root/Workloads/NonProd"
    assert clean["state"] == "ACTIVE" and clean["regions"] == ["us-east-1"] and clean["targeted"]
    assert clean["tags"] == {"env": "dev", "team": "payments"}
    assert {t: c["status"] for t, c in clean["tasks"].items()} == dict.fromkeys(TASKS, "compliant")
    assert broken["tasks"]["iam-password-policy"]["status"] == "failed"
    assert "AccessDenied" in broken["tasks"]["iam-password-policy"]["detail"]
    sg = broken["tasks"]["strip-default-sg"]
    assert sg["status"] == "pending" and sg["changes"] == 1 and sg["destructive"] == 1
    for account_id in (org.management_account_id, org.suspended_account_id):
        cells = rows[account_id]["tasks"].values()
        assert not rows[account_id]["targeted"] and {c["status"] for c in cells} == {"skipped"}
    assert "SUSPENDED" in rows[org.suspended_account_id]["state"]
    assert rows[org.accounts["prod-app-1"]]["ou_path"] == "Root/Workloads/Prod"

    totals = document["totals"]["tasks"]["strip-default-sg"]
    members = len(org.accounts)
    assert (totals["compliant"], totals["pending"], totals["failed"], totals["skipped"]) == (1, members - 1, 0, 2)
    assert document["totals"]["tasks"]["iam-password-policy"]["failed"] == 1
    assert document["totals"]["ous"]["Root/Workloads/NonProd"]["strip-default-sg"]["compliant"] == 1
    assert sum(sum(t["compliant"] + t["pending"] + t["failed"] + t["skipped"] for t in ou.values())
               for ou in document["totals"]["ous"].values()) == len(rows) * len(TASKS)

    # nothing written, every member session read-only and named for its task, one run recorded
    new = emulator.requests()[mark:]
    assert [r["operation"] for r in new if not r["operation"].startswith(READS) and r["operation"] != "AssumeRole"] \
        == []
    assumed = [r for r in new if r["operation"] == "AssumeRole"]
    assert {t for t in TASKS if any(t in r["params"]["RoleSessionName"] for r in assumed)} == set(TASKS)
    assert all(r["params"]["Policy"] for r in assumed)
    events = [e for e in configured.audit() if e["run_id"] == document["run_id"]]
    starts = [e for e in events if e["event"] == "run-start"]
    assert len(starts) == 1 and starts[0]["mode"] == "dry-run"
    assert starts[0]["command"] == "report " + ",".join(TASKS)
    assert [e["event"] for e in events].count("run-end") == 1
    assert any(e["event"] == "planned" and e["task"] == "iam-password-policy" for e in events)


def test_csv_reads_back_one_row_per_account(shaped: dict[str, str], configured: Cli, org: SandboxOrg) -> None:
    output = configured.home / "report.csv"
    result = report(configured, "--format", "csv", "--output", str(output), code=1)
    assert result.stdout == "" and f"report written to {output}" in result.stderr
    rows = list(csv.DictReader(io.StringIO(output.read_text())))
    assert list(rows[0]) == [*compliance.COLUMNS, *TASKS]
    by_id = {r["account_id"]: r for r in rows}
    assert len(rows) == len(by_id) and set(by_id) == every_account(org)
    clean = by_id[shaped["clean"]]
    assert (clean["name"], clean["ou_path"], clean["regions"]) == ("dev-app-1", "Root/Workloads/NonProd", "us-east-1")
    assert clean["tags"] == "env=dev; team=payments"
    assert [clean[t] for t in TASKS] == ["compliant", "compliant"]
    broken = by_id[shaped["broken"]]
    assert broken["strip-default-sg"] == "1 pending change, 1 destructive"
    assert broken["iam-password-policy"] == "failed"
    assert by_id[org.suspended_account_id]["strip-default-sg"] == "skipped"


class Page(HTMLParser):
    """What the tests read from the HTML page: account rows, their cells, and any external asset."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, Any]] = {}
        self.row: dict[str, Any] | None = None
        self.cell: str | None = None
        self.stack: list[str] = []
        self.external: list[str] = []
        self.scripts = 0
        self.sortable = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.stack.append(tag)
        for name in ("src", "href"):
            if a.get(name):
                self.external.append(f"{tag} {name}={a[name]}")
        if tag == "link":
            self.external.append("link")
        if tag == "script":
            self.scripts += 1
        if tag == "table" and "sortable" in (a.get("class") or ""):
            self.sortable += 1
        if tag == "tr" and a.get("data-account"):
            account = str(a["data-account"])
            assert account not in self.rows, f"{account} has two rows"
            self.row = self.rows[account] = {"cells": {}, "texts": [], "in_details": "details" in self.stack,
                                             "ou": a.get("data-ou")}
        if tag == "td" and self.row is not None:
            self.cell = a.get("data-task")
            if self.cell:
                self.row["cells"][self.cell] = {"status": a.get("data-status"), "changes": a.get("data-changes"),
                                                "destructive": a.get("data-destructive"), "text": ""}

    def handle_endtag(self, tag: str) -> None:
        while self.stack and self.stack.pop() != tag:
            pass
        if tag == "tr":
            self.row = None
        if tag == "td":
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.row is not None and "td" in self.stack:
            if self.cell:
                self.row["cells"][self.cell]["text"] += data
            else:
                self.row["texts"].append(data)


def test_html_is_one_self_contained_page_with_one_row_per_account(
        shaped: dict[str, str], configured: Cli, org: SandboxOrg) -> None:
    result = report(configured, "--format", "html", code=1)
    assert result.stdout.startswith("<!DOCTYPE html>")
    page = Page()
    page.feed(result.stdout)
    page.close()
    assert page.external == [], "no external asset of any kind"
    assert page.scripts == 1 and page.sortable >= 3  # the inline sorting script; every table sortable
    assert set(page.rows) == every_account(org)
    clean = page.rows[shaped["clean"]]
    assert clean["texts"][:2] == [shaped["clean"], "dev-app-1"]
    assert clean["in_details"], "an account compliant in every task is collapsed"
    assert clean["ou"] == "Root/Workloads/NonProd"
    assert {t: c["status"] for t, c in clean["cells"].items()} == dict.fromkeys(TASKS, "compliant")
    broken = page.rows[shaped["broken"]]
    assert not broken["in_details"]
    assert broken["cells"]["strip-default-sg"] == {"status": "pending", "changes": "1", "destructive": "1",
                                                   "text": "1 pending change, 1 destructive"}
    assert broken["cells"]["iam-password-policy"]["status"] == "failed"
    assert page.rows[org.management_account_id]["cells"]["strip-default-sg"]["status"] == "skipped"


def test_markdown_groups_by_ou_with_totals(shaped: dict[str, str], configured: Cli, org: SandboxOrg) -> None:
    text = report(configured, code=1).stdout  # markdown is the default
    assert text.startswith("# Organization compliance")
    assert "## Totals per task" in text and "## Totals per OU" in text
    for ou in ("Root/Workloads/Prod", "Root/Workloads/NonProd", "Root/Workloads/NonProd/Sandbox"):
        assert f"\n## {ou}\n" in text
    broken_line = next(line for line in text.splitlines() if line.startswith(f"| {shaped['broken']} "))
    assert "1 pending change, 1 destructive" in broken_line
    assert "failed: global: GetAccountPasswordPolicy: AccessDenied" in broken_line
    assert f"{shaped['clean']} (dev-app-1)" in text  # listed among the compliant, not as a row
    assert "| strip-default-sg | 1 | " in text


def test_the_baseline_is_every_task_in_its_order(configured: Cli, org: SandboxOrg) -> None:
    (configured.home / "config" / "baseline.yaml").write_text(
        "tasks:\n  - s3-account-public-access-block\n  - strip-default-sg\n")
    result = check(configured.run("report", "--format", "json", "--region", "us-east-1", "--account",
                                  org.accounts["prod-app-1"]))
    document = json.loads(result.stdout)
    assert document["tasks"] == ["s3-account-public-access-block", "strip-default-sg"]
    row = next(a for a in document["accounts"] if a["id"] == org.accounts["prod-app-1"])
    assert row["tasks"]["s3-account-public-access-block"]["status"] == "pending"


@pytest.mark.parametrize(("text", "expected"), [
    ("tasks:\n  - strip-default-sg\n  - no-such-task\n", "baseline.yaml:3: tasks.1: "),
    ("tasks:\n  - strip-default-sg\n  - strip-default-sg\n", "listed twice"),
    ("tasks: []\n", "baseline.yaml:1: tasks: "),
    ("tasks:\n  - strip-default-sg\nextra: 1\n", "baseline.yaml:3: extra: "),
])
def test_a_bad_baseline_is_one_line_with_file_and_line(configured: Cli, emulator: EmulatorClient, text: str,
                                                       expected: str) -> None:
    (configured.home / "config" / "baseline.yaml").write_text(text)
    mark = len(emulator.requests())
    result = check(configured.run("report"), 2)
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert emulator.requests()[mark:] == [], "checked before any AWS call"


def test_bad_report_options_are_one_line_before_any_aws_call(configured: Cli, emulator: EmulatorClient) -> None:
    mark = len(emulator.requests())
    for args, expected in ((["no-such-task"], "no-such-task"), (["--format", "pdf"], "--format"),
                           (["--publish", "wiki"], "--publish"), (["--page-id", "1"], "--publish confluence"),
                           (["--publish", "confluence", "--page-id", "1", "--confluence-url", "https://x.example"],
                            "needs a token")):
        result = check(configured.run("report", *args, env=configured.env(ORGRUNNER_CONFLUENCE_TOKEN="")), 2)
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert emulator.requests()[mark:] == []


@pytest.mark.parametrize("cloud", [True, False], ids=["cloud", "data-center"])
def test_publish_replaces_the_confluence_page_in_storage_format(cloud: bool, configured: Cli, org: SandboxOrg,
                                                                tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with Confluence(cloud=cloud, token=TOKEN, pages={"4711": StoredPage("AWS compliance", 3)}) as server:
        user = ["--confluence-user", server.user] if cloud else []
        result = check(configured.run("report", "strip-default-sg", "--region", "us-east-1", "--format", "json",
                                      "--publish", "confluence", "--page-id", "4711", "--confluence-url",
                                      server.base, "--confluence-token-file", str(token_file), *user))
    run_id = json.loads(result.stdout)["run_id"]
    assert "published to Confluence page 4711 (version 4)" in result.stderr
    put = server.requests[-1]
    assert put.method == "PUT" and put.body["version"] == {"number": 4, "message": f"orgrunner report {run_id}"}
    assert put.body["title"] == "AWS compliance" and put.body["body"]["storage"]["representation"] == "storage"
    storage = put.body["body"]["storage"]["value"]
    root = ET.fromstring('<page xmlns:ac="urn:confluence:ac" xmlns:ri="urn:confluence:ri">'
                         f"{storage}</page>")  # well-formed XHTML: Confluence refuses anything else
    statuses = [p.text for p in root.iter("{urn:confluence:ac}parameter") if p.get("{urn:confluence:ac}name") == "title"
                and p.text and ("pending" in p.text or p.text in compliance.STATUSES)]
    assert len(statuses) == len(every_account(org))  # one status per account (one task)
    assert run_id in storage
    everything = result.stdout + result.stderr + configured.audit_log.read_text()
    assert TOKEN not in everything


def test_publish_with_a_refused_token_still_writes_the_report_and_says_one_line(configured: Cli,
                                                                               org: SandboxOrg) -> None:
    with Confluence(cloud=False, token=TOKEN, pages={"4711": StoredPage("AWS compliance", 3)}) as server:
        result = check(configured.run("report", "strip-default-sg", "--region", "us-east-1", "--account",
                                      org.accounts["prod-app-1"], "--publish", "confluence", "--page-id", "4711",
                                      "--confluence-url", server.base,
                                      env=configured.env(ORGRUNNER_CONFLUENCE_TOKEN="wrong-token-value")), 1)
    assert result.stdout.startswith("# Organization compliance")
    last = result.stderr.strip().splitlines()[-1]
    assert "401" in last and "wrong-token-value" not in result.stderr
    assert server.pages["4711"].version == 3


def test_untrusted_text_cannot_break_out_of_any_format() -> None:
    """Account names and tags come from AWS: a formula, markup, a pipe or a control character
    stays text in every format."""
    evil = '=HYPERLINK("http://x")|<script>alert(1)</script>\x1b[2J'
    row = compliance.Row(id="111122223333", name=evil, ou_path="Root/<b>ou</b>", state="ACTIVE",
                         tags={"k": evil}, regions=["us-east-1"], targeted=True,
                         cells={"strip-default-sg": compliance.Cell("failed", detail=evil)})
    document = compliance.Document(run_id="20261202T000000Z-abcdef", generated="2026-12-02T00:00:00+00:00",
                                   organization_id="o-abc", tasks=["strip-default-sg"], rows=[row])
    for fmt in (*compliance.FORMATS, "storage"):
        text = compliance.render(document, fmt)
        assert "\x1b" not in text, fmt
        if fmt in ("html", "markdown", "storage"):  # markup stays text (CSV and JSON carry it as data)
            assert "<script>alert" not in text and "<b>ou" not in text, fmt
    (parsed,) = list(csv.DictReader(io.StringIO(compliance.render(document, "csv"))))
    assert parsed["name"].startswith("'=HYPERLINK")
    assert json.loads(compliance.render(document, "json"))["accounts"][0]["name"] == evil  # exact; JSON escapes it
    table_line = next(line for line in compliance.render(document, "markdown").splitlines()
                      if line.startswith("| 111122223333"))
    cells = re.split(r"(?<!\\)\|", table_line)[1:-1]
    assert len(cells) == 6, "a pipe in a name does not add a column (account, name, state, regions, tags, task)"


def test_each_task_plans_within_its_own_read_only_session_policy_in_worker_processes_too(
        configured: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    """With session policies enforced as AWS enforces them, and planning spread over processes,
    no call of the report is refused: each task ran under its own plan-phase policy."""
    emulator.enforce_session_policies(True)
    mark = len(emulator.requests())
    result = check(configured.run("report", *TASKS, "--region", "us-east-1", "--ou", org.ous["NonProd"],
                                  "--processes", "2", "--format", "json"))
    assert "planning in 2 processes" in result.stderr
    document = json.loads(result.stdout)
    targeted = [a for a in document["accounts"] if a["targeted"]]
    assert len(targeted) == 4 and all(c["status"] == "pending" for a in targeted for c in a["tasks"].values())
    assert [r for r in emulator.requests()[mark:] if r["status"] == 403] == []
