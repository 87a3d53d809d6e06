"""Attacks on the credential boundary: task code never reaches the operator's credentials.

A hostile task (tests/broken_tasks/steals_credentials.py), a module it imports
(tests/broken_tasks/_steal.py) and an entry-point package (the same module installed as
`hostile_entry_point`, in a throwaway venv so the shared test venv stays clean) try, at import
time, in plan and in apply, every route to the operator's credentials: the environment, botocore's
default chain, every named profile, credential files and the SSO cache, the metadata endpoints,
the parent's /proc environ and mem, inherited file descriptors, direct boto3 clients.

What must hold: they get nothing, and every request the emulator saw signed with the operator's
key is one the engine made (Organizations listing, AssumeRole, GetCallerIdentity). With the
fences switched off (the test-only switch), the same task does get the operator's key: the test
can fail.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orgrunner.safety.fence import UNFENCED_ENV, landlock_abi
from orgrunner.sandbox.org import SANDBOX_ENV_CREDENTIALS, SandboxOrg
from tests.cli import Cli
from tests.emulator.client import EmulatorClient
from tests.test_faults_interrupt import records
from tests.test_run_dry import new_requests, snapshot, writes

BROKEN_TASKS = Path(__file__).resolve().parent / "broken_tasks"
OPERATOR_KEY = SANDBOX_ENV_CREDENTIALS["AWS_ACCESS_KEY_ID"]
OPERATOR_SECRET = SANDBOX_ENV_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
IMDS_SECRET = "imds-secret-access-key-of-the-instance-role"
SSO_TOKEN = "sso-cached-access-token-of-the-operator"
# What the engine itself calls with the operator's credentials
ENGINE_OPERATIONS = {"GetCallerIdentity", "AssumeRole", "DescribeOrganization", "ListAccounts", "ListRoots",
                     "ListOrganizationalUnitsForParent", "ListAccountsForParent", "ListChildren", "ListParents",
                     "ListTagsForResource", "DescribeAccount", "DescribeOrganizationalUnit"}
ROUTES = ("environment", "botocore default chain", "named profiles", "credential files", "metadata endpoints",
          "/proc/", "file descriptors", "boto3.client('organizations')", "boto3.client('iam')",
          "boto3.client('sts')")


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


@pytest.fixture
def hostile_python(tmp_path: Path) -> Path:
    """A throwaway venv seeing the test venv's packages plus the hostile entry-point package."""
    venv = tmp_path / "hostile-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    real = sysconfig.get_paths()["purelib"]
    (site / "test-venv.pth").write_text(f"import site; site.addsitedir({real!r})\n")
    shutil.copy(BROKEN_TASKS / "_steal.py", site / "hostile_entry_point.py")
    dist = site / "orgrunner_hostile-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: orgrunner-hostile\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[orgrunner.tasks]\nhostile = hostile_entry_point\n")
    (dist / "RECORD").write_text("")
    return python


@pytest.fixture
def metadata_url() -> Iterator[str]:
    """A metadata endpoint on this machine serving instance-role credentials."""
    body = json.dumps({"AccessKeyId": "ASIAIMDSINSTANCEROLE", "SecretAccessKey": IMDS_SECRET}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/latest/meta-data/iam/security-credentials/role"
    server.shutdown()
    server.server_close()


def run_hostile(cli: Cli, python: Path, org: SandboxOrg, emulator: EmulatorClient, metadata_url: str,
                **env: str) -> tuple[subprocess.CompletedProcess[str], list[str], list[dict[str, Any]]]:
    """An armed run of steals-credentials over two accounts: (result, every line the task noted in
    plan and reported in apply, the requests signed with the operator's key)."""
    aws_dir = cli.home / "operator-aws"
    (aws_dir / "sso" / "cache").mkdir(parents=True)
    (aws_dir / "credentials").write_text(f"[operator]\naws_access_key_id = {OPERATOR_KEY}\n"
                                         f"aws_secret_access_key = {OPERATOR_SECRET}\n")
    (aws_dir / "config").write_text("[profile operator]\nregion = us-east-1\n")
    (aws_dir / "sso" / "cache" / "token.json").write_text(json.dumps({"accessToken": SSO_TOKEN}))
    config = cli.home / "config"
    config.mkdir()
    (config / "orgrunner.yaml").write_text("concurrency: 2\n")
    (config / "steals-credentials.yaml").write_text(json.dumps({"paths": [str(aws_dir)], "urls": [metadata_url]}))
    accounts = [org.accounts["dev-app-1"], org.accounts["prod-app-1"]]
    mark = len(emulator.requests())
    result = subprocess.run(
        [str(python), "-c", "from orgrunner.cli.app import main; main()", "run", "steals-credentials", "--arm",
         "--tasks-dir", str(BROKEN_TASKS), "--config", str(config / "orgrunner.yaml"),
         "--confirm-accounts", ",".join(accounts), "--report", str(cli.home / "report.jsonl"),
         *(a for account in accounts for a in ("--account", account))],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=cli.home, timeout=180,
        env=cli.env(AWS_SHARED_CREDENTIALS_FILE=str(aws_dir / "credentials"),
                    AWS_CONFIG_FILE=str(aws_dir / "config"), **env))
    lines = [note for r in records(cli.home / "report.jsonl") for note in r["notes"]]
    for r in records(cli.home / "report.jsonl"):
        if r["phase"] == "apply" and r["error"]:  # apply fails on purpose, carrying what it found
            lines += r["error"].removeprefix("RuntimeError: ").split(" || ")
    signed = [r for r in emulator.requests()[mark:] if r.get("access_key_sha256") == sha(OPERATOR_KEY)]
    return result, lines, signed


@pytest.mark.skipif(landlock_abi() < 4, reason="needs Landlock with network rules (ABI 4+)")
def test_hostile_task_code_gets_nothing_and_the_operator_key_signs_only_engine_calls(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient, hostile_python: Path, metadata_url: str) -> None:
    result, lines, signed = run_hostile(cli, hostile_python, org, emulator, metadata_url)
    assert result.returncode == 1, result.stderr[-3000:]  # its apply fails on purpose
    fences = [line for line in result.stderr.splitlines() if line.startswith("fences: ")]
    assert len(fences) == 1 and "Landlock ABI" in fences[0] and "TCP connect to port" in fences[0], fences
    assert "not dumpable" in fences[0]
    # every route was tried: at the import of the module the task imports, of the entry-point
    # package, in plan and in apply
    for stage in ("import of _steal: ", "import of the entry point: ", "plan: ", "apply: "):
        tried = [line for line in lines if line.startswith(stage)]
        assert all(any(route in line for line in tried) for route in ROUTES), (stage, tried)
    got = [line for line in lines if " GOT " in line]
    assert got == [], got
    # the only descriptors a worker inherits: its standard streams (/dev/null) and the protocol
    # socket, seen at import, before it opens anything itself. Later (plan, apply) its own threads
    # hold what they opened (pooled connections, botocore's model files, the IAM table), which is a
    # race to list; what matters there is that nothing it can read holds a credential (`got` above).
    at_import = [line for line in lines if line.startswith("import of") and "file descriptors" in line]
    assert at_import and all(re.search(r"file descriptors \(0=char 1=char 2=file \d+=socket\)", line)
                             for line in at_import), at_import
    # the operator's key signed only the engine's own calls: one AssumeRole per account and phase
    assert {r["operation"] for r in signed} <= ENGINE_OPERATIONS, signed
    assert sorted(r["target_account"] for r in signed if r["operation"] == "AssumeRole") == \
        sorted([org.accounts["dev-app-1"], org.accounts["prod-app-1"]] * 2)
    assert result.stdout.count("steals-credentials") >= 0 and "Traceback" not in result.stderr
    audit = [e for e in cli.audit() if e["event"] == "run-start"]
    assert audit and audit[-1]["fences"] == fences[0].removeprefix("fences: ")


def test_with_the_fences_off_the_same_task_gets_the_operator_key(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient, hostile_python: Path, metadata_url: str) -> None:
    """The switch that turns the fences off proves the test above can fail."""
    result, lines, signed = run_hostile(cli, hostile_python, org, emulator, metadata_url, **{UNFENCED_ENV: "1"})
    assert result.returncode == 1, result.stderr[-3000:]  # its apply fails on purpose
    assert f"fences: OFF: {UNFENCED_ENV} is set" in result.stderr
    got = " ".join(line for line in lines if " GOT " in line)
    assert sha(OPERATOR_SECRET) in got and sha(IMDS_SECRET) in got
    assert {r["operation"] for r in signed} - ENGINE_OPERATIONS, "the task's own calls were signed by the operator"


def test_a_change_whose_intent_the_parent_cannot_make_durable_is_not_applied(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    """The worker announces each change and waits: with a file where the journal folder goes (a
    real ENOTDIR), the parent cannot record the intent, says no, and the worker never calls AWS;
    the target fails with the reason and the run exits 1."""
    state = cli.home / "state" / "orgrunner"
    state.mkdir(parents=True, mode=0o700)
    (state / "journal").write_text("")
    account = org.accounts["dev-app-1"]
    before = snapshot(emulator.url, [account], ("us-east-1",))
    mark = len(emulator.requests())
    report = cli.home / "armed.jsonl"
    result = cli.run("run", "strip-default-sg", "--arm", "--account", account, "--region", "us-east-1",
                     "--confirm-accounts", account, "--report", str(report))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert writes(new_requests(emulator, mark)) == []
    assert snapshot(emulator.url, [account], ("us-east-1",)) == before
    applied = [r for r in records(report) if r["phase"] == "apply"]
    assert [r["status"] for r in applied] == ["failed"]
    assert "not applied" in applied[0]["error"] and "journal" in applied[0]["error"], applied[0]["error"]
    end = [e for e in cli.audit() if e["event"] == "run-end"]
    assert end and end[-1]["status"] == "failed"


def test_tasks_describe_and_policy_never_import_task_code_where_the_credentials_are(
        cli: Cli, emulator: EmulatorClient, hostile_python: Path) -> None:
    """These commands read declarations from a worker: the hostile modules' import-time clients
    find nothing to sign with, so the emulator sees no request signed with the operator's key."""
    mark = len(emulator.requests())
    for command, shown in ((("tasks",), "steals-credentials"),
                           (("describe", "steals-credentials"), "steals-credentials"),
                           (("policy", "steals-credentials"), "sts:GetCallerIdentity")):
        result = subprocess.run([str(hostile_python), "-m", "orgrunner", *command, "--tasks-dir", str(BROKEN_TASKS)],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=cli.home, timeout=120,
                                env=cli.env())
        assert result.returncode == 0 and shown in result.stdout, (command, result.stderr[-2000:])
    signed = [r for r in emulator.requests()[mark:] if r.get("access_key_sha256") == sha(OPERATOR_KEY)]
    assert signed == []


def test_the_unfenced_switch_set_to_0_keeps_every_fence(cli: Cli, org: SandboxOrg) -> None:
    """Attack: `ORGRUNNER_TEST_ONLY_UNFENCED_WORKERS=0` (an operator turning the switch "off") must not
    turn the fences off, as any non-empty value once did."""
    result = cli.run("run", "strip-default-sg", "--account", org.accounts["dev-app-1"], "--region", "us-east-1",
                     env=cli.env(**{UNFENCED_ENV: "0"}))
    assert result.returncode == 0, result.stderr[-2000:]
    fences = [line for line in result.stderr.splitlines() if line.startswith("fences: ")]
    assert len(fences) == 1 and "OFF" not in fences[0] and "no credential source" in fences[0] \
        and ("Landlock ABI" in fences[0] or landlock_abi() == 0), fences
