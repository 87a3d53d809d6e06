"""The attack list: each test is one attack tried against orgrunner, and what must hold.

Sections are appended by the branch that closes them; a reviewer adds an attack by adding a case.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect
import pyte
import pytest

from orgrunner.sandbox.org import SandboxOrg, created_account_id, seed_organization
from tests.cli import Cli, orgrunner_command
from tests.emulator.client import EmulatorClient, aws_client, create_role, default_rule_ids, member_client

# === Records are evidence (issue #17) ===========================================================
# Section 3: nothing from AWS, a file or task code reaches the terminal raw.

REGION = "us-east-1"
CLEAR_AND_FORGE = "evil\x1b[2J\x1b[H\x1b[32mALL CLEAR: Plan: 0 change(s) in 0 account(s)\x1b[0m"


def rendered(text: str, columns: int = 250, lines: int = 200) -> list[str]:
    """What a VT100 terminal shows after printing `text` (newlines as a terminal in cooked mode)."""
    screen = pyte.Screen(columns, lines)
    stream = pyte.Stream(screen)
    stream.feed(text.replace("\r\n", "\n").replace("\n", "\r\n"))
    return [line.rstrip() for line in screen.display]


def hidden(text: str) -> list[str]:
    """The cells a terminal draws invisibly (SGR 8, conceal), as the text they hold, per line."""
    screen = pyte.Screen(250, 200)
    pyte.Stream(screen).feed(text.replace("\r\n", "\n").replace("\n", "\r\n"))
    found = []
    for row in range(screen.lines):
        line = screen.buffer[row]
        chars = "".join(line[col].data for col in range(screen.columns) if getattr(line[col], "conceal", False))
        if chars.strip():
            found.append(chars)
    return found


def add_account(emulator: EmulatorClient, name: str) -> str:
    """A member account whose name is `name` (botocore lets AccountName hold any character)."""
    orgs = aws_client(emulator.url, "organizations")
    return created_account_id(orgs, orgs.create_account(AccountName=name, Email="evil@sandbox.example"))


def test_an_account_name_cannot_clear_the_screen_of_orgrunner_accounts(cli: Cli, emulator: EmulatorClient,
                                                                        org: SandboxOrg) -> None:
    evil = add_account(emulator, CLEAR_AND_FORGE)
    result = cli.run("accounts")
    assert result.returncode == 0, result.stderr
    screen = rendered(result.stdout)
    shown = "\n".join(screen)
    for name, account_id in org.accounts.items():  # the other accounts are still on the screen
        assert any(line.startswith(account_id) and name in line for line in screen), (name, shown)
    assert any(line.startswith(evil) and "\\x1b[2J" in line for line in screen), shown  # the name, made visible


def test_an_account_name_cannot_wipe_another_accounts_plan_or_forge_the_summary(cli: Cli, emulator: EmulatorClient,
                                                                                 org: SandboxOrg) -> None:
    victim = org.accounts["dev-app-1"]
    evil = add_account(emulator, CLEAR_AND_FORGE)
    result = cli.run("run", "strip-default-sg", "--account", victim, "--account", evil, "--region", REGION,
                     "--concurrency", "1", "--details", "all")
    assert result.returncode == 0, result.stderr
    screen = rendered(result.stdout)
    shown = "\n".join(screen)
    assert any(line.startswith(f"  {victim} dev-app-1 ") and " 1 " in line for line in screen), shown  # summary row
    assert any(line.startswith(f"{victim} ") for line in screen), shown  # its details
    assert sum(1 for line in screen if line.strip().startswith("- sgr-") and " ingress from " in line) == 4, shown
    assert [line for line in screen if line.startswith("Plan:")] == [
        line for line in screen if line.startswith("Plan: 2 account(s)")], shown  # only the real summary
    assert "\\x1b[2J" in shown


def test_an_account_name_cannot_hide_text_in_the_protected_prompt_and_the_id_confirms_it(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    name = "prod-\x1b[8mhidden text\x1b[0m-x"
    account = add_account(emulator, name)
    orgs = aws_client(emulator.url, "organizations")
    assert orgs.describe_account(AccountId=account)["Account"]["Name"] == name
    config = tmp_path / "config" / "orgrunner.yaml"
    config.parent.mkdir(exist_ok=True)
    config.write_text("protected_accounts: {name_patterns: ['prod-*']}\n")
    seed_default_group(emulator, account)
    child = cli.spawn("run", "strip-default-sg", "--arm", "--account", account, "--region", REGION,
                      "--include-protected", "--config", str(config))
    child.expect("type their names")
    child.expect(": ")
    prompt = str(child.before)
    assert not hidden(prompt), prompt  # nothing drawn invisibly
    assert "\\x1b[8m" in "\n".join(rendered(prompt)), prompt
    child.sendline(account)  # the id stands for a name no one could type
    child.expect("type the ids")
    child.sendline(account)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert len(default_rule_ids(emulator.url, account, REGION)) <= 1  # applied: only the self-reference left


def seed_default_group(emulator: EmulatorClient, account: str) -> None:
    from orgrunner.sandbox.org import _open_default_security_group
    from tests.emulator.client import member_client

    _open_default_security_group(member_client(emulator.url, account, "ec2", REGION))


def test_a_task_modules_import_error_cannot_forge_another_failed_to_load_line(cli: Cli, tmp_path: Path) -> None:
    tasks = tmp_path / "evil_tasks"
    tasks.mkdir()
    (tasks / "evil.py").write_text(
        "raise ImportError('broken\\nfailed to load: tasks/strip_default_sg.py: forged\\x1b[2K')\n")
    result = cli.run("tasks", "--tasks-dir", str(tasks))
    screen = rendered(result.stderr)
    failed = [line for line in screen if "failed to load" in line]
    assert len(failed) == 1 and "\\n" in failed[0] and "\\x1b[2K" in failed[0], screen


def test_errors_and_notes_from_aws_are_printed_escaped_and_kept_exact_in_the_report(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    evil = add_account(emulator, "bad\rname\x1b]0;owned\x07")
    report = tmp_path / "report.jsonl"
    result = cli.run("run", "strip-default-sg", "--account", evil, "--region", REGION, "--report", str(report))
    assert "\x1b" not in result.stdout + result.stderr and "\r" not in result.stdout + result.stderr
    assert "bad\\rname\\x1b]0;owned\\x07" in result.stdout + result.stderr
    records: list[dict[str, Any]] = [json.loads(line) for line in report.read_text().splitlines()]
    assert records and all(r["account"] == evil for r in records)
    assert any(r.get("account_name") == "bad\rname\x1b]0;owned\x07" for r in records) or not any(
        "account_name" in r for r in records)



def test_visible_leaves_no_character_a_terminal_would_obey() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from orgrunner.cli.escape import visible

    @given(st.text())
    def check(text: str) -> None:
        shown = visible(text)
        assert shown.isprintable(), repr(shown)
        shown.encode("utf-8")  # a lone surrogate cannot reach the terminal either
        assert visible(shown) == shown

    check()
    assert visible("a\x1b[2J\r\n\t\x7f\x9b\u202e\u2066b") == "a\\x1b[2J\\r\\n\\t\\x7f\\x9b\\u202e\\u2066b"


# === The report and its publishing (issue #14) ==================================================
# `orgrunner report` is read-only and its document is read by people in browsers, spreadsheets
# and Confluence: a task cannot write through it, and nothing from AWS can script the page.


def test_a_task_that_writes_while_planning_cannot_write_through_a_report(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    account = org.accounts["dev-app-1"]
    before = default_rule_ids(emulator.url, account, "us-east-1")
    mark = len(emulator.requests())
    result = cli.run("report", "writes-in-plan", "strip-default-sg", "--tasks-dir",
                     str(Path(__file__).parent / "broken_tasks"), "--account", account, "--region", "us-east-1",
                     "--format", "json")
    assert result.returncode == 1, result.stderr  # the writing task's target failed; the document is written
    row = next(a for a in json.loads(result.stdout)["accounts"] if a["id"] == account)
    assert row["tasks"]["writes-in-plan"]["status"] == "failed"
    assert "RevokeSecurityGroupIngress" in row["tasks"]["writes-in-plan"]["detail"]
    assert row["tasks"]["strip-default-sg"]["status"] == "pending"
    assert [r for r in emulator.requests()[mark:] if r["operation"].startswith(("Revoke", "Authorize"))] == []
    assert default_rule_ids(emulator.url, account, "us-east-1") == before


def test_an_account_name_cannot_script_the_html_report_or_run_in_a_spreadsheet(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg) -> None:
    evil = '=HYPERLINK("http://x")<img src=x onerror=alert(1)><script>alert(2)</script>'
    account = add_account(emulator, evil)
    html_page = cli.run("report", "strip-default-sg", "--account", account, "--region", "us-east-1",
                        "--format", "html")
    assert html_page.returncode == 0, html_page.stderr
    assert "<img" not in html_page.stdout and "<script>alert" not in html_page.stdout
    assert html_page.stdout.count("<script>") == 1  # only the page's own sorting script
    table = cli.run("report", "strip-default-sg", "--account", account, "--region", "us-east-1", "--format", "csv")
    (row,) = [r for r in csv.DictReader(io.StringIO(table.stdout)) if r["account_id"] == account]
    assert row["name"] == "'" + evil  # shown as text by a spreadsheet, never run as a formula


# === Records are evidence (issue #17), continued ===============================================
# Section 2: the state folder is ours alone; output paths are what they claim to be.

TASK = "strip-default-sg"


def state(cli: Cli) -> Path:
    return cli.home / "state" / "orgrunner"


def dry_run(cli: Cli, org: SandboxOrg, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return cli.run("run", TASK, "--account", org.accounts["dev-app-1"], "--region", REGION, *args, timeout=timeout)


def one_line_refusal(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("orgrunner:")]
    assert len(lines) == 1 and all(w in lines[0] for w in words), result.stderr


def victim_file(tmp_path: Path) -> Path:
    """A root-only file outside the state folder that an attacker wants truncated or appended to."""
    victim = tmp_path / "victim" / "shadow"
    victim.parent.mkdir()
    victim.write_text("root:secret-hash:19000::::::\n")
    victim.chmod(0o600)
    return victim


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o773], ids=oct)
def test_a_state_folder_others_can_write_to_is_refused_before_any_aws_call(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg, mode: int) -> None:
    state(cli).mkdir(parents=True)
    state(cli).chmod(mode)
    mark = len(emulator.requests())
    result = dry_run(cli, org)
    one_line_refusal(result, 3, str(state(cli)), "writable by others", "chmod o-w", "docs/operations.md")
    assert emulator.requests()[mark:] == []
    assert not (state(cli) / "locks").exists() and not (state(cli) / "audit.jsonl").exists()


def test_a_state_folder_owned_by_another_user_is_refused(cli: Cli, emulator: EmulatorClient,
                                                          org: SandboxOrg) -> None:
    state(cli).mkdir(parents=True, mode=0o700)
    os.chown(state(cli), 4242, 4242)
    result = dry_run(cli, org)
    one_line_refusal(result, 3, "belongs to another user", "uid 4242", "docs/operations.md")
    assert list(state(cli).iterdir()) == []


def test_the_documented_shared_folder_group_owned_0770_is_accepted(cli: Cli, org: SandboxOrg) -> None:
    state(cli).mkdir(parents=True)
    os.chown(state(cli), 4242, os.getegid())  # another user's folder, shared with our group
    state(cli).chmod(0o770)
    result = dry_run(cli, org)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((state(cli) / "audit.jsonl").stat().st_mode) == 0o660
    assert stat.S_IMODE((state(cli) / "locks").stat().st_mode) == 0o770


def test_state_files_are_private_whatever_the_umask(cli: Cli, org: SandboxOrg) -> None:
    command = subprocess.list2cmdline([orgrunner_command(), "run", TASK, "--account", org.accounts["dev-app-1"],
                                       "--region", REGION, "--arm", "--confirm-accounts",
                                       org.accounts["dev-app-1"]])
    result = subprocess.run(["sh", "-c", f"umask 000; exec {command}"], env=cli.env(), cwd=cli.home,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for path in [state(cli), *state(cli).rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    assert stat.S_IMODE(state(cli).parent.stat().st_mode) == 0o700  # a parent orgrunner made, too


@pytest.mark.parametrize(("lock", "armed"), [("apply.lock", False), ("lock", True)],
                         ids=["dry-run-shared-lock", "armed-run-exclusive-lock"])
def test_a_symlink_planted_at_the_lock_path_does_not_truncate_its_target(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path, lock: str, armed: bool) -> None:
    """Each kind of run opens its own lock file (dry runs the shared apply lock, armed runs the
    exclusive one): a link planted at either is refused, and its target is left whole."""
    victim = victim_file(tmp_path)
    (state(cli) / "locks").mkdir(parents=True, mode=0o700)
    state(cli).chmod(0o700)
    (state(cli) / "locks" / f"{org.organization_id}.{TASK}.{lock}").symlink_to(victim)
    member = org.accounts["dev-app-1"]
    result = dry_run(cli, org, *(("--arm", "--confirm-accounts", member) if armed else ()))
    one_line_refusal(result, 3, "symbolic link")
    assert victim.read_text() == "root:secret-hash:19000::::::\n"


def test_a_symlink_planted_at_audit_jsonl_does_not_receive_the_audit_lines(
        cli: Cli, org: SandboxOrg, tmp_path: Path) -> None:
    victim = victim_file(tmp_path)
    state(cli).mkdir(parents=True, mode=0o700)
    (state(cli) / "audit.jsonl").symlink_to(victim)
    result = dry_run(cli, org)
    one_line_refusal(result, 3, "audit.jsonl", "symbolic link")
    assert victim.read_text() == "root:secret-hash:19000::::::\n"


def test_a_fifo_at_audit_jsonl_does_not_hang_the_run_holding_the_lock(cli: Cli, org: SandboxOrg) -> None:
    state(cli).mkdir(parents=True, mode=0o700)
    os.mkfifo(state(cli) / "audit.jsonl")
    try:
        result = dry_run(cli, org, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the run hung on a FIFO at audit.jsonl")
    one_line_refusal(result, 3, "audit.jsonl", "not a regular file")
    again = dry_run(cli, org, "--audit-log", str(cli.home / "elsewhere.jsonl"), timeout=60)
    assert again.returncode == 0, again.stderr  # the lock was not left held


@pytest.mark.parametrize("flag", ["--report", "--audit-log", "--plan-out"])
def test_an_output_path_that_is_a_symlink_is_refused_before_any_aws_call(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path, flag: str) -> None:
    victim = victim_file(tmp_path)
    link = tmp_path / "out.jsonl"
    link.symlink_to(victim)
    mark = len(emulator.requests())
    result = dry_run(cli, org, flag, str(link))
    one_line_refusal(result, 2, flag, "symbolic link", "--follow-symlinks")
    assert emulator.requests()[mark:] == []
    assert victim.read_text() == "root:secret-hash:19000::::::\n"


def test_follow_symlinks_writes_through_an_output_symlink_on_purpose(cli: Cli, org: SandboxOrg,
                                                                     tmp_path: Path) -> None:
    target = tmp_path / "reports" / "real.jsonl"
    target.parent.mkdir()
    link = tmp_path / "latest.jsonl"
    link.symlink_to(target)
    result = dry_run(cli, org, "--report", str(link), "--follow-symlinks")
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and [json.loads(x)["account"] for x in target.read_text().splitlines()] == [
        org.accounts["dev-app-1"]]


@pytest.mark.parametrize("flag", ["--report", "--audit-log", "--plan-out"])
@pytest.mark.parametrize("kind", ["fifo", "/dev/full", "/dev/null"])
def test_a_fifo_or_device_as_output_path_is_refused_up_front(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path, flag: str, kind: str) -> None:
    path = Path(kind) if kind.startswith("/dev/") else tmp_path / "pipe"
    if kind == "fifo":
        os.mkfifo(path)
    mark = len(emulator.requests())
    try:
        result = dry_run(cli, org, flag, str(path), timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{flag} {kind} hung the run")
    one_line_refusal(result, 2, flag, "not a regular file")
    assert emulator.requests()[mark:] == []


# Section 4 (sandbox): the emulator is ours, and runs only its own code.


class _Impostor:
    """Another user's HTTP server on a port: answers everything 200 and remembers what it was sent."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.paths: list[str] = []
        impostor = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                impostor.paths.append(f"{self.command} {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_sandbox_serve_never_takes_another_users_server_on_its_port_for_its_emulator(cli: Cli) -> None:
    impostor = _Impostor()
    try:
        result = cli.run("sandbox", "serve", "--port", str(impostor.port), timeout=90)
    finally:
        impostor.close()
    one_line_refusal(result, 2, f"port {impostor.port}", "not this sandbox's emulator")
    assert "export AWS_ENDPOINT_URL" not in result.stdout
    assert [p for p in impostor.paths if not p.startswith("GET /_orgrunner/")] == []  # no AWS call sent to it


def test_the_sandbox_emulator_does_not_import_from_the_current_folder(cli: Cli, tmp_path: Path) -> None:
    marker = tmp_path / "argparse-ran"
    (cli.home / "argparse.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                          "raise SystemExit('planted argparse ran')\n")
    env = {k: v for k, v in cli.env().items() if k != "AWS_ENDPOINT_URL"}
    result = cli.run("--sandbox", "accounts", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()


def test_a_stale_sandbox_address_now_answered_by_another_server_is_not_used(cli: Cli) -> None:
    impostor = _Impostor()
    folder = cli.home / "state" / "orgrunner"
    folder.mkdir(parents=True, mode=0o700)
    (folder / "sandbox.json").write_text(json.dumps({"url": f"http://127.0.0.1:{impostor.port}", "token": "old"}))
    (folder / "sandbox.json").chmod(0o600)
    env = {k: v for k, v in cli.env().items() if k != "AWS_ENDPOINT_URL"}
    try:
        result = cli.run("--sandbox", "accounts", env=env, timeout=120)
    finally:
        impostor.close()
    assert result.returncode == 0, result.stderr
    assert "starting a fresh emulated organization" in result.stderr
    assert [p for p in impostor.paths if not p.startswith("GET /_orgrunner/")] == []


# Section 4: every input has bounds.


def _limited_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (3 * 1024**3, 3 * 1024**3))  # a bug must not take the machine


def run_bounded(cli: Cli, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([orgrunner_command(), *args], env=cli.env(**env), cwd=cli.home, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, preexec_fn=_limited_memory)


def test_a_config_file_that_never_ends_is_refused_at_1_mb(cli: Cli, emulator: EmulatorClient) -> None:
    result = run_bounded(cli, "accounts", ORGRUNNER_CONFIG="/dev/zero")
    one_line_refusal(result, 2, "/dev/zero", "larger than 1 MB")
    assert emulator.requests() == []


def test_a_huge_settings_file_is_refused_before_parsing(cli: Cli, emulator: EmulatorClient, tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("protected_accounts:\n" + "  - '123456789012'\n" * 120_000)  # about 2 MB
    result = run_bounded(cli, "accounts", "--config", str(big))
    one_line_refusal(result, 2, str(big), "larger than 1 MB")
    assert emulator.requests() == []


@pytest.mark.parametrize(("name", "value"), [
    ("ORGRUNNER_RETRY_ATTEMPTS", "abc"), ("ORGRUNNER_RETRY_ATTEMPTS", "0"), ("ORGRUNNER_RETRY_ATTEMPTS", "1e9"),
    ("ORGRUNNER_CONNECT_TIMEOUT", "0"), ("ORGRUNNER_CONNECT_TIMEOUT", "nan"), ("ORGRUNNER_CONNECT_TIMEOUT", "inf"),
    ("ORGRUNNER_READ_TIMEOUT", "-1"), ("AWS_MAX_ATTEMPTS", "abc"), ("AWS_MAX_ATTEMPTS", "0"),
    ("ORGRUNNER_DEBUG", "maybe"),
    # a test-only switch with a typo is refused, never taken as "on"
    ("ORGRUNNER_TEST_ONLY_UNFENCED_WORKERS", "maybe"), ("ORGRUNNER_TEST_FAIL_RECORD_WRITE", "two"),
])
def test_a_bad_environment_variable_is_one_line_and_exit_2_before_any_aws_call(
        cli: Cli, emulator: EmulatorClient, name: str, value: str) -> None:
    result = run_bounded(cli, "accounts", **{name: value})
    one_line_refusal(result, 2, f"{name}={value!r}", "expected")
    assert emulator.requests() == []


@pytest.mark.parametrize(("value", "on"), [("0", False), ("", False), ("false", False), ("1", True), ("yes", True)])
def test_orgrunner_debug_0_means_off(cli: Cli, value: str, on: bool) -> None:
    probe = "from orgrunner.config import environment; print(environment.current().debug)"
    result = subprocess.run([str(Path(orgrunner_command()).parent / "python"), "-c", probe], capture_output=True,
                            text=True, env=cli.env(ORGRUNNER_DEBUG=value), timeout=60)
    assert result.stdout.strip() == str(on), result.stderr


# === Task code never reaches the operator's credentials (issue #11) =============================
# The hostile task that tries every route to the operator's credentials, with and without the
# fences, is in tests/test_safety_workers.py; here, a task that speaks the protocol itself.

BROKEN_TASKS = Path(__file__).resolve().parent / "broken_tasks"


@pytest.mark.parametrize(("region", "violation"), [("us-east-1", "which it was not handed"),
                                                   ("eu-west-1", "credentials asked for account 000000000000")])
def test_a_worker_forging_results_or_asking_for_another_accounts_credentials_is_ended(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient, region: str, violation: str) -> None:
    """Everything a worker sends is checked against what the parent handed it: a result for an
    account it was never given, or a request for another account's credentials, ends the worker,
    and the target it held fails by name; nothing is reported for the stranger account."""
    account = org.accounts["dev-app-1"]
    report = cli.home / "plan.jsonl"
    result = cli.run("run", "forges-protocol", "--tasks-dir", str(BROKEN_TASKS), "--account", account,
                     "--region", region, "--report", str(report))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    records = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(r["account"], r["region"], r["status"]) for r in records] == [(account, region, "failed")]
    assert "broke the protocol" in records[0]["error"] and violation in records[0]["error"], records[0]["error"]



def test_a_task_reporting_it_did_more_than_planned_cannot_put_that_in_the_journal(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    """A task's apply may narrow its change to what it really did (the journal then holds that, for
    undo); one that 'narrows' to MORE (an undo holding a rule open to the world, never planned nor
    confirmed) must not get it into the journal, where undo would later authorize it: the parent
    records the planned change and the target fails."""
    account = org.accounts["dev-app-1"]
    result = cli.run("run", "widens-what-it-did", "--tasks-dir", str(BROKEN_TASKS), "--account", account, "--arm")
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "more than the planned change" in result.stdout + result.stderr
    journal = [json.loads(line) for path in (state(cli) / "journal").glob("*.jsonl")
               for line in path.read_text().splitlines()]
    recorded = [e["change"]["undo"] for e in journal if e.get("status") == "applied"]
    assert recorded == [{"rules": [{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "CidrIpv4": "10.0.0.0/8"}]}]
    assert "0.0.0.0/0" not in json.dumps(journal)

# === Records are evidence (issue #17), continued ===============================================
# Section 1: `undo` acts only on what a run really did.

OPEN_TO_ALL = {"SecurityGroupRuleId": "sgr-0forgedforged0001", "IsEgress": False, "IpProtocol": "tcp",
               "FromPort": 0, "ToPort": 65535, "CidrIpv4": "0.0.0.0/0"}


def armed_strip(cli: Cli, account: str, *extra: str) -> str:
    result = cli.run("run", TASK, "--arm", "--account", account, "--region", REGION, "--confirm-accounts", account,
                     *extra)
    assert result.returncode == 0, result.stderr
    run_id: str = [e for e in cli.audit() if e["event"] == "run-start"][-1]["run_id"]
    return run_id


def journal_of(cli: Cli, run_id: str) -> Path:
    return state(cli) / "journal" / f"{run_id}.jsonl"


def authorized_since(emulator: EmulatorClient, mark: int) -> list[dict[str, Any]]:
    return [r for r in emulator.requests()[mark:] if r["operation"].startswith("Authorize")]


def add_rule_to_undo(path: Path, rechain: bool = False) -> None:
    """The attacker's edit: one more rule in the first applied change's `undo.rules`; with
    `rechain`, every `prev` recomputed so the journal's own chain is whole again."""
    import hashlib

    records = [json.loads(line) for line in path.read_text().splitlines()]
    target = next(r for r in records if r["status"] == "applied")
    target["change"]["undo"]["rules"].append(OPEN_TO_ALL)
    for r in records:
        if r["change"]["resource"] == target["change"]["resource"]:
            r["change"] = target["change"]
    lines = []
    previous = records[0].get("prev")
    for r in records:
        if rechain and previous is not None:
            r["prev"] = previous
        line = json.dumps(r)
        lines.append(line)
        previous = hashlib.sha256(line.encode()).hexdigest()
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("rechain", [False, True], ids=["edited", "edited-and-rechained"])
def test_a_rule_added_by_hand_to_the_journal_is_never_authorized_by_undo(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg, rechain: bool) -> None:
    account = org.accounts["dev-app-1"]
    run_id = armed_strip(cli, account)
    add_rule_to_undo(journal_of(cli, run_id), rechain)
    mark = len(emulator.requests())
    dry = cli.run("undo", run_id)
    assert dry.returncode == 3, (dry.stdout, dry.stderr)
    assert "restore" not in dry.stdout and "BROKEN" in dry.stderr and "undo refused" in dry.stderr
    armed = cli.run("undo", run_id, "--arm", "--confirm-accounts", account)
    assert armed.returncode == 3, armed.stderr
    assert authorized_since(emulator, mark) == []
    assert emulator.requests()[mark:] == []  # refused before any AWS call
    verify = cli.run("verify", run_id)
    assert verify.returncode == 3 and verify.stderr.count("BROKEN") >= 1, verify.stderr


def test_a_journal_made_up_for_a_run_that_never_happened_drives_nothing(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg) -> None:
    account = org.accounts["dev-app-1"]
    real = armed_strip(cli, account)
    forged_id = "20261201T000000Z-abcdef"
    records = [json.loads(line) for line in journal_of(cli, real).read_text().splitlines()]
    for r in records:
        r["run_id"] = forged_id
        r["change"]["account_id"] = org.management_account_id
        r["change"]["undo"]["rules"] = [{**OPEN_TO_ALL, "SecurityGroupRuleId": "sgr-1\r\x1b[2K\x1b[1Atcp 443 from "
                                         "10.0.0.0/8"}]
    journal_of(cli, forged_id).write_text("".join(json.dumps(r) + "\n" for r in records))
    mark = len(emulator.requests())
    for args in ((), ("--arm", "--confirm-accounts", org.management_account_id)):
        result = cli.run("undo", forged_id, *args)
        assert result.returncode == 3, (result.stdout, result.stderr)
        assert "no record of this run" in result.stderr
        assert "\x1b" not in result.stdout + result.stderr
    assert emulator.requests()[mark:] == []
    assert cli.run("verify", forged_id).returncode == 3


def test_a_genuine_run_verifies_and_each_kind_of_tampering_with_the_audit_log_is_one_line(
        cli: Cli, org: SandboxOrg) -> None:
    run_id = armed_strip(cli, org.accounts["dev-app-1"])
    ok = cli.run("verify", run_id)
    assert ok.returncode == 0 and f"run {run_id}: verified" in ok.stdout, ok.stderr
    whole = cli.audit_log.read_text().splitlines()
    ours = [i for i, line in enumerate(whole) if run_id in line]
    # the run-end alone removed reads as a run killed before its end: said, and what remains must agree
    cli.audit_log.write_text("\n".join(x for i, x in enumerate(whole) if i != ours[-1]) + "\n")
    killed = cli.run("verify", run_id)
    assert killed.returncode == 0 and "has no run-end" in killed.stderr, killed.stderr
    for name, kept in {"a middle record removed": [x for i, x in enumerate(whole) if i != ours[2]],
                       "run-end and the applied record removed": [x for i, x in enumerate(whole)
                                                                  if i not in (ours[-1], ours[-2])],
                       "two records swapped": [*whole[:ours[1]], whole[ours[2]], whole[ours[1]], *whole[ours[2] + 1:]],
                       }.items():
        cli.audit_log.write_text("\n".join(kept) + "\n")
        broken = cli.run("verify", run_id)
        assert broken.returncode == 3, (name, broken.stdout, broken.stderr)
        assert "BROKEN" in broken.stderr and "Traceback" not in broken.stderr, name
    cli.audit_log.write_text("\n".join(whole) + "\n")
    assert cli.run("verify", run_id).returncode == 0


def test_undo_of_a_change_to_the_management_account_needs_include_management(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg) -> None:
    management = org.management_account_id
    create_role(emulator.url, management, "OrganizationAccountAccessRole")  # deployed there separately, as on AWS
    before = default_rule_ids(emulator.url, management, REGION)
    assert before, "the management account's default group has rules to strip"
    run_id = armed_strip(cli, management, "--include-management")
    assert default_rule_ids(emulator.url, management, REGION) == []
    refused = cli.run("undo", run_id, "--arm", "--confirm-accounts", management)
    assert "management account (use --include-management)" in refused.stderr, refused.stderr
    assert default_rule_ids(emulator.url, management, REGION) == []  # nothing restored without the flag
    done = cli.run("undo", run_id, "--arm", "--confirm-accounts", management, "--include-management")
    assert done.returncode == 0, done.stderr
    assert len(default_rule_ids(emulator.url, management, REGION)) == len(before)


def test_retry_failed_with_a_hand_written_line_naming_the_management_account_needs_the_flag(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    report = tmp_path / "report.jsonl"
    report.write_text(json.dumps({"account": org.management_account_id, "region": REGION, "task": TASK,
                                  "status": "failed"}) + "\n")
    mark = len(emulator.requests())
    result = cli.run("run", TASK, "--retry-failed", str(report))
    assert "management account (use --include-management)" in result.stderr, result.stderr
    assumed = {r["target_account"] for r in emulator.requests()[mark:] if r["operation"] == "AssumeRole"}
    assert org.management_account_id not in assumed


# === Fail closed: saved plans, records, interrupts (issue #16, w16) =============================
# Each case drives the installed `orgrunner` against the emulated organization and checks what it
# printed, what it recorded and what the emulated accounts now contain. docs/reliability.md lists
# the same attacks and the behaviour that holds.

IAM_TASK = "iam-password-policy"
SG_TASK = "strip-default-sg"
CIS = {"MinimumPasswordLength": 14, "RequireSymbols": True, "RequireNumbers": True,
       "RequireUppercaseCharacters": True, "RequireLowercaseCharacters": True,
       "AllowUsersToChangePassword": True, "PasswordReusePrevention": 24}


def check(result: subprocess.CompletedProcess[str], code: int) -> subprocess.CompletedProcess[str]:
    assert result.returncode == code, (result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    return result


def writes_since(emulator: EmulatorClient, mark: int) -> list[dict[str, Any]]:
    """Every call since `mark` that could have changed something in an emulated account."""
    reads = ("Get", "List", "Describe", "AssumeRole")
    return [r for r in emulator.requests()[mark:] if not r["operation"].startswith(reads)]


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one `orgrunner:` line a refused command printed."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("orgrunner: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def digest(document: dict[str, Any]) -> str:
    """The documented digest of a plan, computed here independently of orgrunner's code:
    SHA-256 of the sorted-key, whitespace-free JSON, UTF-8."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_iam_plan(cli: Cli, path: Path, *args: str) -> dict[str, Any]:
    check(cli.run("run", IAM_TASK, "--dry-run", "--plan-out", str(path), *args), 0)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def password_policy(emulator: EmulatorClient, account: str) -> dict[str, Any] | None:
    iam = member_client(emulator.url, account, "iam")
    try:
        policy: dict[str, Any] = iam.get_account_password_policy()["PasswordPolicy"]
    except iam.exceptions.NoSuchEntityException:
        return None
    return policy


# =================================================================================================
# 1. A saved plan is a reviewed document, not a set of instructions (issue #16, w16)
# =================================================================================================

def test_a_hand_edited_plan_cannot_add_the_management_account_or_another_role(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    """Attack: take a dry-run plan of iam-password-policy for one member, add the management account
    (with the change copied from another dry run) and `role_name: SomeOtherRole`, then
    `orgrunner apply plan.json` with no confirmation, no terminal, no --include-management.
    Must hold: refused (exit 3) in one line naming what differs from the plan its run saved;
    no write reaches any account, the management account least of all."""
    member, management = org.accounts["dev-app-1"], org.management_account_id
    create_role(emulator.url, management, "OrganizationAccountAccessRole")  # deployed there, as on AWS
    plan = save_iam_plan(cli, tmp_path / "plan.json", "--account", member)
    other = save_iam_plan(cli, tmp_path / "other.json", "--account", management, "--include-management")
    plan["targets"] += other["targets"]
    plan["changes"] += other["changes"]
    plan["role_name"] = "SomeOtherRole"
    (tmp_path / "plan.json").write_text(json.dumps(plan, indent=2))
    mark = len(emulator.requests())

    result = check(cli.run("apply", str(tmp_path / "plan.json")), 3)

    line = refusal(result)
    assert f"differs from the plan run {plan['run_id']} saved" in line
    assert "role_name SomeOtherRole (saved OrganizationAccountAccessRole)" in line and f"+{management}" in line
    assert "nothing applied" in line
    assert writes_since(emulator, mark) == []
    assert password_policy(emulator, management) is None and password_policy(emulator, member) is None


def test_apply_never_applies_a_non_destructive_plan_without_a_confirmation(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    """Attack: a genuine saved plan whose every change only tightens (a run would need `--arm`
    alone), applied with no confirmation and no terminal.
    Must hold: `apply` is the write step and always wants a confirmation: refused, exit 3."""
    account = org.accounts["sandbox-1"]
    save_iam_plan(cli, tmp_path / "plan.json", "--account", account)
    mark = len(emulator.requests())
    result = check(cli.run("apply", str(tmp_path / "plan.json"), stdin=f"{account}\n"), 3)
    assert "--confirm-accounts or --confirm-plan" in refusal(result)
    assert writes_since(emulator, mark) == [] and password_policy(emulator, account) is None
    # confirmed, it applies
    check(cli.run("apply", str(tmp_path / "plan.json"), "--confirm-accounts", account), 0)
    assert password_policy(emulator, account) is not None


def test_a_plan_saved_elsewhere_applies_only_with_its_reviewed_digest(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    """Attack: apply a plan file in a state folder that never saw it (another machine, a pipeline),
    first without any digest, then with the digest of another plan, then after editing one value.
    Must hold: each refused (exit 3, one line); only `--confirm-plan` with the digest the saving dry
    run printed (sha256 of the canonical JSON) applies, and it counts as the confirmation."""
    account = org.accounts["dev-app-2"]
    path = tmp_path / "plan.json"
    plan = save_iam_plan(cli, path, "--account", account)
    saving = [e for e in cli.audit() if e["event"] == "plan-saved"]
    assert len(saving) == 1 and saving[0]["digest"] == digest(plan)
    assert {k: saving[0][k] for k in ("task", "task_version", "role_name", "regions", "targets")} == {
        "task": IAM_TASK, "task_version": plan["task_version"], "role_name": "OrganizationAccountAccessRole",
        "regions": None, "targets": [account]}
    elsewhere = cli.env(XDG_STATE_HOME=str(tmp_path / "pipeline-state"))
    mark = len(emulator.requests())

    line = refusal(check(cli.run("apply", str(path), "--confirm-accounts", account, env=elsewhere), 3))
    assert "not saved by a dry run recorded in this state folder" in line and "--confirm-plan" in line
    line = refusal(check(cli.run("apply", str(path), "--confirm-plan", "0" * 64, env=elsewhere), 3))
    assert f"has digest {digest(plan)}, not the --confirm-plan digest {'0' * 64}" in line
    reviewed = digest(plan)
    path.write_text(json.dumps({**plan, "role_name": "SomeOtherRole"}))
    line = refusal(check(cli.run("apply", str(path), "--confirm-plan", reviewed, env=elsewhere), 3))
    assert "not the --confirm-plan digest" in line
    assert writes_since(emulator, mark) == [] and password_policy(emulator, account) is None

    # presentation is not content: the reviewed plan re-indented, keys reordered, still applies
    path.write_text(json.dumps(dict(reversed(list(plan.items())))))
    result = check(cli.run("apply", str(path), "--confirm-plan", f"sha256:{reviewed}", env=elsewhere), 0)
    assert f"confirmed by --confirm-plan {reviewed}" in result.stderr
    assert password_policy(emulator, account) is not None


def test_apply_applies_the_target_rules_of_run_again(cli: Cli, emulator: EmulatorClient, org: SandboxOrg,
                                                    tmp_path: Path) -> None:
    """Attack: a plan that legitimately included the management account (saved with
    --include-management), applied without --include-management.
    Must hold: refused (exit 3) naming the management account; applied only when the flag is given
    again."""
    management = org.management_account_id
    create_role(emulator.url, management, "OrganizationAccountAccessRole")  # deployed there, as on AWS
    save_iam_plan(cli, tmp_path / "plan.json", "--account", management, "--include-management")
    mark = len(emulator.requests())
    line = refusal(check(cli.run("apply", str(tmp_path / "plan.json"), "--confirm-accounts", management), 3))
    assert management in line and "--include-management" in line and "nothing applied" in line
    assert writes_since(emulator, mark) == [] and password_policy(emulator, management) is None
    check(cli.run("apply", str(tmp_path / "plan.json"), "--confirm-accounts", management, "--include-management"), 0)
    assert password_policy(emulator, management) is not None


def test_apply_refuses_protected_accounts_without_their_own_confirmation(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    """Attack: a plan saved with --include-protected for a protected account, applied without
    --include-protected, then with it but without the protected accounts' own confirmation.
    Must hold: both refused (exit 3), nothing written; applied with both."""
    config = tmp_path / "settings.yaml"
    config.write_text("protected_accounts:\n  name_patterns: ['prod-app-*']\n")
    account = org.accounts["prod-app-1"]
    save_iam_plan(cli, tmp_path / "plan.json", "--account", account, "--include-protected", "--config", str(config))
    apply = ("apply", str(tmp_path / "plan.json"), "--config", str(config), "--confirm-accounts", account)
    mark = len(emulator.requests())
    line = refusal(check(cli.run(*apply), 3))
    assert account in line and "--include-protected" in line
    line = refusal(check(cli.run(*apply, "--include-protected"), 3))
    assert "--confirm-protected" in line
    assert writes_since(emulator, mark) == [] and password_policy(emulator, account) is None
    check(cli.run(*apply, "--include-protected", "--confirm-protected", account), 0)
    assert password_policy(emulator, account) is not None


@pytest.mark.parametrize("who", ["suspended", "unknown"])
def test_a_reviewed_plan_naming_a_suspended_or_unknown_account_is_refused(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path, who: str) -> None:
    """Attack: a plan whose digest was approved (`--confirm-plan`) but which names a SUSPENDED account,
    or an account id that is not in the organization.
    Must hold: the digest confirms the document, not the targets: refused, exit 3, naming the account."""
    member = org.accounts["dev-app-1"]
    plan = save_iam_plan(cli, tmp_path / "plan.json", "--account", member)
    stranger = org.suspended_account_id if who == "suspended" else "999999999999"
    target = {**plan["targets"][0], "account": stranger, "account_name": "x"}
    change = {**plan["changes"][0], "account_id": stranger}
    plan = {**plan, "targets": [*plan["targets"], target], "changes": [*plan["changes"], change]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    mark = len(emulator.requests())
    line = refusal(check(cli.run("apply", str(tmp_path / "plan.json"), "--confirm-plan", digest(plan)), 3))
    assert stranger in line and ("SUSPENDED" in line if who == "suspended" else "not in this organization" in line)
    assert writes_since(emulator, mark) == [] and password_policy(emulator, member) is None


def test_confirm_accounts_is_checked_on_a_run_that_needs_no_confirmation(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg) -> None:
    """Attack: `run --arm` of a plan that only tightens (where `--arm` alone would do), with a
    --confirm-accounts that names the wrong account.
    Must hold: a stated confirmation is always checked with the exact-set rules: refused, exit 3."""
    account, other = org.accounts["sandbox-2"], org.accounts["sandbox-1"]
    mark = len(emulator.requests())
    line = refusal(check(cli.run("run", IAM_TASK, "--arm", "--account", account, "--confirm-accounts", other), 3))
    assert account in line and "does not include" in line
    assert writes_since(emulator, mark) == [] and password_policy(emulator, account) is None


# =================================================================================================
# 2. Records fail closed (issue #16, w16)
# =================================================================================================
# Faults are real where the kernel gives them: a file in place of the journal folder (ENOTDIR),
# /dev/full as the journal file (ENOSPC). To fail a record write at every point of a run, the one
# test-only switch ORGRUNNER_TEST_FAIL_RECORD_WRITE=N (N+: that write and every later one) makes the
# Nth record write of the process (journal lines and audit events, in the order made) fail with
# ENOSPC where it would reach the file; unset, it does nothing. No orgrunner internals are patched.

FAULT = "ORGRUNNER_TEST_FAIL_RECORD_WRITE"
PROMPT = r"To apply, type [^\n]*: "


def state_folder(cli: Cli) -> Path:
    return cli.home / "state" / "orgrunner"


def journal_entries(cli: Cli) -> list[dict[str, Any]]:
    folder = state_folder(cli) / "journal"
    if not folder.is_dir():
        return []
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()
            if line.strip()]


def revokes_since(emulator: EmulatorClient, mark: int) -> list[dict[str, Any]]:
    """The revokes that reached AWS and succeeded: what was really changed."""
    return [r for r in emulator.requests()[mark:] if r["operation"].startswith("Revoke") and r["status"] == 200]


def run_end(cli: Cli) -> dict[str, Any]:
    return [e for e in cli.audit() if e["event"] == "run-end"][-1]


def assert_no_phantom(result: subprocess.CompletedProcess[str]) -> None:
    """Every result line names a real target: never the `? - ?` of a job that raised."""
    for line in (result.stdout + result.stderr).splitlines():
        assert not line.startswith("? "), line


def test_a_file_in_place_of_the_journal_folder_applies_nothing_and_fails_the_run(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg) -> None:
    """Attack: the journal folder is replaced by a file (ENOTDIR), then an armed run.
    Must hold: no change is applied without its durable `applying` record: every target fails
    naming the journal, nothing reaches AWS, no phantom `?` line, `run-end: failed`, exit 1."""
    accounts = [org.accounts["dev-app-1"], org.accounts["sandbox-1"]]
    state_folder(cli).mkdir(parents=True)
    (state_folder(cli) / "journal").write_text("not a folder\n")
    mark = len(emulator.requests())
    args = [x for a in accounts for x in ("--account", a)]
    result = cli.run("run", SG_TASK, "--arm", *args, "--region", "us-east-1", "--confirm-accounts", ",".join(accounts))
    check(result, 1)
    assert_no_phantom(result)
    failed = [line for line in result.stdout.splitlines() if " FAILED: " in line]
    assert sorted(line.split()[0] for line in failed) == sorted(accounts), result.stdout
    assert all("not applied: " in line and "journal" in line for line in failed), failed
    assert "Apply: 2 target(s) in 2 account(s): " in result.stdout and "; 2 target(s) failed." in result.stdout
    assert revokes_since(emulator, mark) == []
    assert run_end(cli)["status"] == "failed"


def test_dev_full_as_the_journal_file_applies_nothing(cli: Cli, emulator: EmulatorClient, org: SandboxOrg) -> None:
    """Attack: the run's journal file is made a link to /dev/full (every write: ENOSPC) while the
    armed run waits at its prompt. Must hold: the change is not applied (the link is refused, as
    state files are never opened through one; followed, the write would fail), the target fails
    naming the journal file, exit 1."""
    account = org.accounts["dev-app-2"]
    child = cli.spawn("run", SG_TASK, "--arm", "--account", account, "--region", "us-east-1", timeout=90)
    child.expect(r"run (\d{8}T\d{6}Z-[0-9a-f]{6}): ")
    run_id = child.match.group(1)
    child.expect(r"To apply, type [^\n]*: ")
    (state_folder(cli) / "journal").mkdir(parents=True, exist_ok=True)
    (state_folder(cli) / "journal" / f"{run_id}.jsonl").symlink_to("/dev/full")
    mark = len(emulator.requests())
    child.sendline(account)
    child.expect(r"Apply: [^\n]*\n")
    output = child.before + child.after
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1, output
    assert "not applied: " in output and run_id in output
    assert revokes_since(emulator, mark) == []
    assert run_end(cli)["status"] == "failed"


def test_an_unwritable_audit_log_stops_the_run_before_anything_exit_70(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg) -> None:
    """Attack: an audit log that cannot be written (every write fails from the first one).
    Must hold: the run stops at once, one line naming the audit log, exit 70; nothing reaches AWS
    but the reads that found the caller and the organization."""
    account = org.accounts["dev-app-1"]
    mark = len(emulator.requests())
    result = check(cli.run("run", SG_TASK, "--arm", "--account", account, "--region", "us-east-1",
                           "--confirm-accounts", account, env=cli.env(**{FAULT: "1+"})), 70)
    line = refusal(result)
    assert "audit log" in line and "run-start could not be written" in line and "No space left on device" in line
    assert writes_since(emulator, mark) == []
    assert [r for r in emulator.requests()[mark:] if r["operation"] == "AssumeRole"] == []


def test_a_record_write_failing_at_any_point_never_loses_a_change_or_exits_0(
        cli: Cli, emulator: EmulatorClient) -> None:
    """Attack: fail the Nth record write (journal line or audit event) of an armed run over two
    targets applied in parallel, for every N from the first write to the last.
    Must hold, for every N: never exit 0; no phantom target; every revoke that reached AWS has its
    `applying` line in the journal (the intent was durable first); a change whose outcome or audit
    event could not be written after AWS applied it is named on the output; a failure before apply
    (run-start, planned, confirmed) stops the run (exit 70) with nothing written."""
    org = seed_organization(emulator.url, member_count=12, regions=("us-east-1", "eu-west-1"))
    accounts = sorted(org.accounts.values())
    # writes of one run: run-start, 2 planned, confirmed, 2 x (intent, outcome, applied), run-end
    total = 11
    for n in range(1, total + 2):
        account = accounts[n - 1]
        mark = len(emulator.requests())
        result = cli.run("run", SG_TASK, "--arm", "--account", account, "--region", "us-east-1", "--region",
                         "eu-west-1", "--concurrency", "2", "--confirm-accounts", account,
                         env=cli.env(**{FAULT: str(n)}))
        why = (n, result.returncode, result.stdout[-2000:], result.stderr[-2000:])
        assert "Traceback" not in result.stderr, why
        assert_no_phantom(result)
        revoked = revokes_since(emulator, mark)
        groups = {(r["account"], r["region"]) for r in revoked}
        entries = [e for e in journal_entries(cli) if e["change"]["account_id"] == account]
        intents = {(e["change"]["account_id"], e["change"]["region"]) for e in entries if e["status"] == "applying"}
        assert groups <= intents, why  # nothing reached AWS without its durable intent
        if n > total:  # past the last write: a clean run
            assert result.returncode == 0 and len(groups) == 2, why
            continue
        assert result.returncode != 0, why
        if n <= 4:  # run-start, planned, confirmed: the audit log stops the run before any write
            assert result.returncode == 70 and revoked == [], why
            continue
        outcomes = {(e["change"]["account_id"], e["change"]["region"]) for e in entries if e["status"] == "applied"}
        audited = {(e["account"], e["region"]) for e in cli.audit() if e["event"] == "applied"
                   and e["account"] == account}
        for region in {r for _, r in groups - (outcomes & audited)}:  # applied, record lost: said
            assert any(account in line and region in line and "but not recorded" in line
                       for line in result.stdout.splitlines()), why


# =================================================================================================
# 4. Smaller holes (issue #16, w16)
# =================================================================================================

def test_an_armed_value_of_another_task_opens_no_apply_context(org: SandboxOrg) -> None:
    """Attack: hand the apply phase of one task the `Armed` value a confirmation made for another
    task covering the same account. Must hold: no ApplyContext opens (it checks the task too)."""
    from orgrunner.safety.confirm import confirm_unguarded
    from orgrunner.task import ApplyContext, Target, configure, load_tasks

    account = org.accounts["dev-app-1"]
    task = configure(load_tasks().get(SG_TASK), Path(__file__).resolve().parents[1] / "config")
    with pytest.raises(TypeError, match="covering its task"):
        ApplyContext(task, Target(account, "us-east-1"), lambda service, phase: None,
                     confirm_unguarded(IAM_TASK, {account}))
    ApplyContext(task, Target(account, "us-east-1"), lambda service, phase: None,
                 confirm_unguarded(SG_TASK, {account}))  # its own task's value does


def test_a_dry_run_is_not_blocked_by_an_armed_run_waiting_at_its_prompt(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg) -> None:
    """Attack (on availability): an operator leaves an armed run at its prompt; the nightly drift
    check (a dry run) and a `--plan-out` of the same task start meanwhile, and a second writer too.
    Must hold: both dry runs complete (exit 0), a dry run takes a shared lock; the second writer is
    refused (75), writers hold an exclusive one; the operator's run then applies as confirmed."""
    account, other = org.accounts["sandbox-1"], org.accounts["sandbox-2"]
    child = cli.spawn("run", SG_TASK, "--arm", "--account", account, "--region", "us-east-1", timeout=90)
    child.expect(PROMPT)
    check(cli.run("run", SG_TASK, "--account", other, "--region", "us-east-1", "--fail-on-changes"), 4)
    check(cli.run("run", SG_TASK, "--account", other, "--plan-out", str(cli.home / "p.json")), 0)
    line = refusal(check(cli.run("run", SG_TASK, "--arm", "--account", other, "--confirm-accounts", other), 75))
    assert "another armed run, apply or undo holds the lock" in line
    child.sendline(account)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert {r["account"] for r in revokes_since(emulator, 0)} == {account}


BUG = "ORGRUNNER_TEST_BUG_AT"  # the one test-only switch that puts a bug (RuntimeError) in the parent


@pytest.mark.parametrize("point, armed", [("after-plan", False), ("after-plan", True), ("after-confirm", True)])
def test_an_unexpected_exception_is_an_error_exit_70_never_interrupted_and_nothing_is_written(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg, point: str, armed: bool) -> None:
    """Attack: a fault nothing else catches (a bug) after planning, or after the confirmation just
    before apply. Must hold: one line (no traceback), exit 70, the run recorded as `error` (not
    `interrupted`, which would tell an operator the run was stopped on purpose), nothing written."""
    account = org.accounts["dev-app-1"]
    mark = len(emulator.requests())
    args = ("--arm", "--confirm-accounts", account) if armed else ()
    result = check(cli.run("run", SG_TASK, "--account", account, "--region", "us-east-1", *args,
                           env=cli.env(**{BUG: point})), 70)
    line = refusal(result)
    assert line.startswith("orgrunner: internal error: RuntimeError: injected bug at " + point), line
    assert run_end(cli)["status"].startswith("error: RuntimeError: injected bug"), run_end(cli)
    assert writes_since(emulator, mark) == []
    check(cli.run("run", SG_TASK, "--account", account, env=cli.env(**{BUG: "after-planning"})), 2)


def test_an_account_whose_describe_regions_fails_leaves_the_window_and_its_credentials_go(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg) -> None:
    """Attack: DescribeRegions refused in two of three accounts, one account at a time
    (`--concurrency 1`). Must hold: those accounts fail with AWS's reason and leave the window the
    way every account does when its work is done, their credentials forgotten (one step: the
    engine's `done_account`); were one kept, the accounts after it would never start and the run
    would hang, whatever order they are taken in. The third account is planned; exit 1."""
    refused = [org.accounts["dev-app-1"], org.accounts["prod-app-1"]]
    fine = org.accounts["dev-app-2"]
    for account in refused:
        emulator.add_rule(operation="DescribeRegions", account=account, code="UnauthorizedOperation",
                          message="You are not authorized to perform this operation.", status=403)
    report = cli.home / "report.jsonl"
    result = check(cli.run("run", SG_TASK, *(a for account in [*refused, fine] for a in ("--account", account)),
                           "--concurrency", "1", "--report", str(report), timeout=120), 1)
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    for account in refused:
        failed = [r for r in lines if r["account"] == account]
        assert [r["status"] for r in failed] == ["failed"] and "UnauthorizedOperation" in failed[0]["error"], failed
    assert {r["status"] for r in lines if r["account"] == fine} == {"ok"}
    assert "Traceback" not in result.stderr


# =================================================================================================
# 5. An interrupt between planning and apply always ends the run (issue #16, w16)
# =================================================================================================


@contextlib.contextmanager
def cpus_kept_busy(count: int = 2) -> Iterator[None]:
    """`count` busy loops in the background: the scheduler is as contended as on a loaded machine."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


@dataclass
class Delivery:
    point: str  # after the last plan result, at the prompt, or just after the answer
    delay: float
    account: str
    state: Path
    code: int | None = None
    seconds: float = 0.0
    output: str = ""


def deliver(cli: Cli, delivery: Delivery) -> None:
    """Run an armed strip-default-sg at a terminal and send it SIGINT at `delivery`'s instant."""
    env = cli.env(XDG_STATE_HOME=str(delivery.state))
    child = pexpect.spawn(orgrunner_command(), ["run", SG_TASK, "--arm", "--account", delivery.account, "--region",
                                                "us-east-1"], env=env, cwd=str(cli.home), encoding="utf-8",
                          timeout=120, dimensions=(50, 200))
    try:
        if delivery.point == "after-plan":
            child.expect(r"Plan: 1 account\(s\)")  # the summary, printed once planning is over
        else:
            child.expect(PROMPT)
            if delivery.point == "after-answer":
                child.sendline(delivery.account)
        time.sleep(delivery.delay)
        sent = time.monotonic()
        child.kill(signal.SIGINT)
        try:
            child.expect(pexpect.EOF, timeout=20)
        except pexpect.TIMEOUT:
            delivery.output = child.before + f"\n[no exit 20 s after SIGINT; threads: {threads_of(child.pid)}]"
            Path("/tmp/w16_hang.txt").write_text(delivery.output)
            child.kill(signal.SIGKILL)
            return
        delivery.seconds = time.monotonic() - sent
        delivery.output = child.before
        child.close()
        delivery.code = child.exitstatus
    finally:
        if child.isalive():
            child.kill(signal.SIGKILL)


def threads_of(pid: int) -> list[str]:
    folder = Path(f"/proc/{pid}/task")
    return [(folder / t / "comm").read_text().strip() for t in os.listdir(folder)] if folder.exists() else []


def test_sigint_at_any_instant_between_plan_and_apply_exits_130_at_once_applying_nothing(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg) -> None:
    """Attack: Ctrl-C (SIGINT) at many instants between the end of planning and the start of apply
    (as the last plan result is printed, while the progress display stops, at the prompt, just
    after the answer), with both CPUs kept busy, 8 runs at a time.
    Must hold, every time: exit 130 within seconds (a hang is caught at 20 s and its threads shown);
    nothing applied unless the apply had started, and then every applied change is in the journal."""
    accounts = sorted(org.accounts.values())
    rng = random.Random(16)
    deliveries = []
    with cpus_kept_busy():
        for batch in range(6):
            if batch:
                org = seed_organization_again(emulator)
                accounts = sorted(org.accounts.values())
            points = ["after-plan"] * 3 + ["at-prompt"] * 3 + ["after-answer"] * 2
            wave = [Delivery(point, rng.uniform(0, 0.25 if point != "after-answer" else 0.05), accounts[i],
                             cli.home / f"state-{batch}-{i}") for i, point in enumerate(points)]
            mark = len(emulator.requests())
            threads = [threading.Thread(target=deliver, args=(cli, d)) for d in wave]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            revoked = {r["account"] for r in revokes_since(emulator, mark)}
            for d in wave:
                why = (d.point, round(d.delay, 3), d.code, d.output[-1500:])
                assert d.code == 130, why
                assert "Traceback" not in d.output, why
                if d.account in revoked:  # the apply had started: what it applied is on record
                    assert d.point == "after-answer", why
                    journal = [json.loads(line) for p in (d.state / "orgrunner" / "journal").glob("*.jsonl")
                               for line in p.read_text().splitlines()]
                    assert any(e["status"] == "applied" for e in journal), why
            deliveries += wave
    seconds = sorted(d.seconds for d in deliveries)
    print(f"\n{len(deliveries)} SIGINTs: exit after {seconds[len(seconds) // 2]:.2f} s (median), "
          f"{seconds[-1]:.2f} s (slowest)")


def seed_organization_again(emulator: EmulatorClient) -> SandboxOrg:
    emulator.reset()
    return seed_organization(emulator.url)
