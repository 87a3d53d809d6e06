"""What an operator sees (issue #12): one console owns the terminal while the progress display is
live, checked on the rendered screen of a pseudo-terminal; a plan that reads at a glance (summary
first, details grouped, the changes that need a look first, `--details`, `--format markdown`);
final lines that name the run and the true next step."""

from __future__ import annotations

import re
from pathlib import Path

import pexpect
import pyte

from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli, orgrunner_command
from tests.emulator.client import EmulatorClient

TASK = "strip-default-sg"
SEEDED = "us-east-1"  # the sandbox seeds SSH, RDP and all-traffic rules open to the internet here
PLAIN = "ap-south-1"  # only the default egress rule here
APPLIED = re.compile(r"\A\d{12} \S+ +[a-z0-9-]+ +(applied|already done): sg-[0-9a-f]+ revoke-rules\Z")


def rendered(raw: str, columns: int = 160, lines: int = 40) -> list[str]:
    """Every line a terminal shows after `raw`: the scroll-back, then the screen."""
    screen = pyte.HistoryScreen(columns, lines, history=100_000, ratio=0.001)
    pyte.Stream(screen).feed(raw)
    history = ["".join(line[col].data for col in range(columns)).rstrip() for line in screen.history.top]
    return history + [line.rstrip() for line in screen.display]


def test_results_print_whole_above_the_progress_display_and_the_display_goes(cli: Cli, org: SandboxOrg) -> None:
    accounts = sorted(a for n, a in org.accounts.items() if n != "retired-1")
    child = pexpect.spawn(orgrunner_command(), ["run", TASK, "--arm", "--details", "none",
                                                "--confirm-accounts", ",".join(accounts)],
                          env=cli.env(COLUMNS="160", LINES="40", NO_COLOR="1"), cwd=str(cli.home),
                          encoding="utf-8", timeout=600, dimensions=(40, 160))
    raw = child.read()
    child.close()
    assert child.exitstatus == 0, raw[-3000:]

    screen = rendered(raw)
    results = [line for line in screen if re.match(r"\d{12} ", line)]
    glued = [line for line in results if not APPLIED.match(line)]
    assert glued == [], glued[:5]
    total = int(re.search(r"Apply: (\d+) target\(s\)", "\n".join(screen)).group(1))  # type: ignore[union-attr]
    assert len(results) == total and total >= len(accounts) * 2
    leftovers = [line for line in screen if "━" in line or "-:--:--" in line or re.search(r"\d+/\d+ +\d+ failed", line)]
    assert leftovers == [], leftovers[:5]
    assert screen[-1] == "" or "undo" in "\n".join(screen[-4:])


def run_plan(cli: Cli, *extra: str) -> tuple[str, str]:
    result = cli.run("run", TASK, "--region", SEEDED, "--region", PLAIN, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, result.stderr


def test_summary_first_then_the_changes_that_need_a_look(cli: Cli, org: SandboxOrg) -> None:
    members = len(org.accounts)
    out, _ = run_plan(cli)
    lines = out.splitlines()
    first_detail = next(i for i, line in enumerate(lines) if line.startswith("Needs a look first"))
    summary = lines[:first_detail]
    assert summary[0].startswith(f"Plan: {members} account(s), 2 region(s)")
    assert sum(1 for line in summary if re.match(r"  \d{12} ", line)) == members  # one row per account
    assert re.search(rf"  revoke-rules +{2 * members} +{2 * members} +{members}\b", out), out
    # the default (--details risky): the exposed groups only, each saying why, and what is left out
    assert lines[first_detail] == f"Needs a look first ({members} change(s)):"
    risky = [line for line in lines if line.startswith("    ! ")]
    assert len(risky) == members and all("open to the internet" in line for line in risky)
    assert not [line for line in lines if line.startswith("    ~ ")]
    assert f"{members} other change(s) not shown (--details all shows every change)" in out
    for line in lines:
        if re.match(r" +- sgr-", line):
            exposed = "ingress from 0.0.0.0/0" in line or "ingress from ::/0" in line
            assert line.endswith("(open to the internet)") == exposed, line


def test_details_all_groups_by_account_and_region_and_none_lists_nothing(cli: Cli, org: SandboxOrg) -> None:
    out, _ = run_plan(cli, "--details", "all")
    lines = out.splitlines()
    risky = [i for i, line in enumerate(lines) if line.startswith("    ! ")]
    ordinary = [i for i, line in enumerate(lines) if line.startswith("    ~ ")]
    assert len(risky) == len(ordinary) == len(org.accounts)
    assert max(risky) < min(ordinary)
    other = lines.index(f"Other changes ({len(ordinary)}):")
    headers = [line for line in lines[other:] if re.match(r"\d{12} ", line)]
    assert len(headers) == len(set(headers)) == len(ordinary)  # each account once, its regions under it
    assert all(lines[i - 1] == f"  {PLAIN}" for i in ordinary)

    quiet, _ = run_plan(cli, "--details", "none")
    assert not re.search(r"^    [!~] ", quiet, re.M)
    assert "change(s) not shown: --details risky or --details all shows them" in quiet

    bad = cli.run("run", TASK, "--details", "some")
    assert bad.returncode == 2 and "--details 'some': expected none, risky or all" in bad.stderr


def test_markdown_is_one_document_for_a_change_ticket(cli: Cli, org: SandboxOrg) -> None:
    out, err = run_plan(cli, "--format", "markdown")
    assert out.startswith(f"## orgrunner plan: {TASK} (dry run ")
    assert "| account | name | changes | destructive | need a look | failed |" in out
    assert "| kind of change | changes | destructive | need a look |" in out
    assert out.index("### Needs a look first") > out.index("| kind of change")
    assert "caller:" not in out and "caller:" in err  # the ticket holds the plan only
    assert "open to the internet" in out and "Next: to apply, run the same command with --arm" in out


def test_final_lines_name_the_run_and_the_true_next_step(cli: Cli, org: SandboxOrg, emulator: EmulatorClient,
                                                         tmp_path: Path) -> None:
    account = org.accounts["dev-app-1"]
    one = ("--account", account, "--region", SEEDED)
    dry = cli.run("run", TASK, *one)
    run_id = re.search(r"Run (\S+): 1 change\(s\) planned", dry.stdout).group(1)  # type: ignore[union-attr]
    assert dry.stdout.rstrip().endswith("Next: to apply, run the same command with --arm instead of --dry-run.")
    assert f"run {run_id}:" in dry.stderr

    saved = cli.run("run", TASK, *one, "--plan-out", str(tmp_path / "plan.json"))
    assert f"then: orgrunner apply {tmp_path / 'plan.json'}" in saved.stdout and "--arm" not in saved.stdout

    armed = cli.run("run", TASK, *one, "--arm", "--confirm-accounts", account)
    assert armed.returncode == 0, armed.stderr
    armed_id = re.search(r"Run (\S+): 1 change\(s\) applied in 1 account\(s\)\.", armed.stdout).group(1)  # type: ignore[union-attr]
    assert f"reverse: orgrunner undo {armed_id}" in armed.stdout

    clean = cli.run("run", TASK, *one)
    assert "nothing to do, no target needs a change" in clean.stdout and "--arm" not in clean.stdout

    emulator.add_rule(operation="AssumeRole", target_account=account, code="AccessDenied",
                      message="User is not authorized to perform sts:AssumeRole", status=403)
    report = tmp_path / "report.jsonl"
    failed = cli.run("run", TASK, *one, "--report", str(report))
    assert failed.returncode == 1
    assert f"Next: fix what failed above, then orgrunner run {TASK} --retry-failed {report}." in failed.stdout
    assert "--arm instead" not in failed.stdout


def test_runs_lists_past_runs_and_runs_show_what_one_changed(cli: Cli, org: SandboxOrg) -> None:
    pair = sorted([org.accounts["dev-app-1"], org.accounts["dev-app-2"]])
    selectors = ("--account", pair[0], "--account", pair[1], "--region", SEEDED)
    cli.run("run", TASK, *selectors)
    armed = cli.run("run", TASK, *selectors, "--arm", "--confirm-accounts", ",".join(pair))
    assert armed.returncode == 0, armed.stderr
    run_id = re.search(r"Run (\S+): 2 change\(s\) applied", armed.stdout).group(1)  # type: ignore[union-attr]
    # records from a newer writer (more fields) and a line torn by a crash are read around
    with cli.audit_log.open("a") as log:
        log.write('{"ts": "2026-12-02T00:00:00", "run_id": "x", "event": "run-start", "prev": "ab", "hash": "cd"}\n')
        log.write('{"ts": "2026-12-02T00:0\n')

    listed = cli.run("runs", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    runs = {r["run_id"]: r for r in __import__("json").loads(listed.stdout)}
    mine = runs[run_id]
    assert (mine["task"], mine["mode"], mine["status"], mine["undoable"]) == (TASK, "armed", "ok", True)
    assert mine["accounts_changed"] == pair and mine["operator"]
    dry = [r for r in runs.values() if r["mode"] == "dry-run"]
    assert len(dry) == 1 and dry[0]["accounts_changed"] == [] and not dry[0]["undoable"]
    table = cli.run("runs").stdout
    assert re.search(rf"^{run_id} .* {TASK} +armed +2 +yes +ok ", table, re.M), table

    shown = cli.run("runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    lines = [line for line in shown.stdout.splitlines() if re.match(r"\d{12} ", line)]
    assert sorted(line.split()[0] for line in lines) == pair and all(" applied " in line for line in lines)
    assert f"Reverse: orgrunner undo {run_id}" in shown.stdout
    assert "orgrunner runs" in cli.run("undo", "--help").stdout
    undone = cli.run("undo", run_id, "--arm", "--confirm-accounts", ",".join(pair))
    assert undone.returncode == 0, undone.stderr
    latest = __import__("json").loads(cli.run("runs", "--format", "json").stdout)[0]
    assert latest["command"] == f"undo {run_id}" and latest["accounts_changed"] == pair and not latest["undoable"]
    unknown = cli.run("runs", "show", "20261129T190000Z-1a2b3c")
    assert unknown.returncode == 2 and "not in the audit log" in unknown.stderr


def test_the_config_file_read_or_its_absence_is_said(cli: Cli, org: SandboxOrg) -> None:
    described = cli.run("describe", "iam-password-policy")  # from a folder without config/
    assert described.returncode == 0, described.stderr
    assert "config file: config/password-policy.yaml not found: the task's built-in defaults apply:" in described.stdout
    assert "\n  minimum_password_length: 14\n" in described.stdout  # the defaults themselves, printed
    ran = cli.run("run", "iam-password-policy", "--account", org.accounts["dev-app-1"])
    assert ran.returncode == 0, ran.stderr
    assert "config/password-policy.yaml not found: the task's built-in defaults apply" in ran.stderr
    assert "\n  password_reuse_prevention: 24\n" in ran.stderr

    (cli.home / "config").mkdir()
    (cli.home / "config" / "password-policy.yaml").write_text("minimum_password_length: 16\n")
    described = cli.run("describe", "iam-password-policy")
    assert "config file: config/password-policy.yaml\n" in described.stdout and "not found" not in described.stdout
    # the task worker runs in a scratch folder of its own: it still reads ./config, not its own folder's
    ran = cli.run("run", "iam-password-policy", "--account", org.accounts["dev-app-1"], "--details", "all")
    assert ran.returncode == 0 and "not found" not in ran.stderr, ran.stderr
    assert "MinimumPasswordLength: (no policy) -> 16" in ran.stdout, ran.stdout


def test_the_guides_test_example_runs_as_written_in_a_fresh_folder(tmp_path: Path) -> None:
    guide = (Path(__file__).resolve().parents[1] / "docs" / "writing-a-task.md").read_text()
    task, conftest, test = re.findall(r"```python\n(.*?)```", guide, re.S)
    assert task.startswith('"""kms-key-rotation') and "pytest_plugins" in conftest and "def test_" in test
    folder = tmp_path / "my-org-tasks"  # nothing of this repository on the path
    (folder / "mytasks").mkdir(parents=True)
    (folder / "mytasks" / "kms_key_rotation.py").write_text(task)
    (folder / "conftest.py").write_text(conftest)
    (folder / "test_kms_key_rotation.py").write_text(test)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home")}
    done = __import__("subprocess").run([__import__("sys").executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                                        cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout
    assert not (tmp_path / "home" / ".local" / "state" / "orgrunner").exists()  # the state stayed private


def test_ous_and_accounts_show_the_tree_paths_and_tags(cli: Cli, org: SandboxOrg) -> None:
    import json

    tree = cli.run("ous", "--format", "json")
    assert tree.returncode == 0, tree.stderr
    units = {u["name"]: u for u in json.loads(tree.stdout)}
    assert {units[name]["id"] for name in org.ous} == set(org.ous.values())
    root = next(u for u in units.values() if u["parent"] is None)
    assert root["accounts_in_all"] == len(org.accounts) + 2  # the members, the management account, the suspended
    text = cli.run("ous").stdout
    assert re.search(rf"^  Workloads  {org.ous['Workloads']}  0 account\(s\) directly, \d+ in all$", text, re.M), text

    listed = json.loads(cli.run("accounts", "--format", "json").stdout)["targets"]
    assert all(a["ou_path"].startswith(root["name"]) and a["ou_id"] for a in listed)
    assert all("tags" not in a for a in listed)  # not read: not shown as {}
    dev = next(a for a in listed if a["id"] == org.accounts["dev-app-1"])
    assert dev["ou_path"].endswith("/Workloads/NonProd") and dev["ou_id"] == org.ous["NonProd"]
    tagged = json.loads(cli.run("accounts", "--format", "json", "--tags").stdout)["targets"]
    assert all(a["tags"].get("env") for a in tagged)
    # the README's --ou example can now be followed with an id `ous` printed
    under = json.loads(cli.run("accounts", "--format", "json", "--ou", units["NonProd"]["id"]).stdout)["targets"]
    assert {a["id"] for a in under} == {a["id"] for a in listed if "/NonProd" in a["ou_path"]}
