"""Output safety: no access key id, secret key or session token appears in anything orgrunner prints
or writes: stdout, stderr, reports, the audit log (and its rotated files), journals, saved plans.

orgrunner is pointed at the emulator through `FaultProxy` (tests/test_faults_partial.py), which keeps
every credential the emulator issued in an AssumeRole answer, so the scan looks for the real
secrets, not only for their shapes.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orgrunner.sandbox.org import SANDBOX_ENV_CREDENTIALS, SandboxOrg
from tests.cli import Cli
from tests.emulator.client import EmulatorClient
from tests.test_faults_partial import FaultProxy

REGION = "us-east-1"
KEY_ID = re.compile(r"(?:AKIA|ASIA)[A-Z0-9]{16}")
SECRET_LIKE = re.compile(r"[A-Za-z0-9/+=]{40,}")
DIGEST = re.compile(r"[0-9a-f]{64}")  # a SHA-256 digest (a saved plan's): lowercase hex, never a credential


@pytest.fixture
def issuer(emulator: EmulatorClient) -> Iterator[FaultProxy]:
    running = FaultProxy(emulator.url)
    yield running
    running.close()


def secrets(proxy: FaultProxy) -> dict[str, str]:
    """Every secret in play: the caller's, and each member credential the emulator issued."""
    found = {f"caller {k}": v for k, v in SANDBOX_ENV_CREDENTIALS.items()
             if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    for n, issued in enumerate(proxy.issued):
        found |= {f"issued {n} key id": issued.access_key_id, f"issued {n} secret": issued.secret_access_key,
                  f"issued {n} token": issued.session_token}
    return found


def leaks(texts: dict[str, str], proxy: FaultProxy) -> list[str]:
    """Where any secret, or anything shaped like a key id or a secret, appears."""
    found = []
    known = secrets(proxy)
    for where, text in texts.items():
        for name, value in known.items():
            if value in text:
                found.append(f"{where}: {name}")
        found += [f"{where}: key id {m[:4]}..." for m in KEY_ID.findall(text)]
        found += [f"{where}: secret-like {m[:6]}...({len(m)})" for m in SECRET_LIKE.findall(text)
                  if not DIGEST.fullmatch(m)]
    return found


def everything_written(cli: Cli) -> dict[str, str]:
    return {str(p.relative_to(cli.home)): p.read_text(errors="replace")
            for p in sorted(cli.home.rglob("*")) if p.is_file()}


def ran(outputs: dict[str, str], name: str, result: subprocess.CompletedProcess[str], code: int) -> None:
    outputs[f"{name} stdout"], outputs[f"{name} stderr"] = result.stdout, result.stderr
    assert result.returncode == code, (name, result.returncode, result.stdout[-2000:], result.stderr[-2000:])


def test_nothing_a_full_run_printed_or_wrote_holds_a_credential(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient, issuer: FaultProxy) -> None:
    good = sorted([org.accounts["dev-app-1"], org.accounts["sandbox-1"], org.accounts["prod-app-1"]])
    failing = org.accounts["dev-app-2"]
    # an AWS error that echoes a full access key id: the scrubber must catch it on every path
    emulator.add_rule(service="sts", operation="AssumeRole", target_account=failing, code="AccessDenied",
                      status=403, message=f"The security token of key {SANDBOX_ENV_CREDENTIALS['AWS_ACCESS_KEY_ID']} "
                                          f"is not authorized to perform sts:AssumeRole")
    env = cli.env(AWS_ENDPOINT_URL=issuer.url, ORGRUNNER_RETRY_ATTEMPTS="1")
    accounts = [x for a in good for x in ("--account", a)]
    out: dict[str, str] = {}

    ran(out, "whoami", cli.run("whoami", env=env), 0)
    ran(out, "accounts", cli.run("accounts", "--format", "json", env=env), 0)
    ran(out, "doctor", cli.run("doctor", *accounts, "--account", failing, env=env), 1)
    ran(out, "plan", cli.run("run", "strip-default-sg", *accounts, "--region", REGION, "--plan-out", "plan.json",
                             "--report", "plan.jsonl", env=env), 0)
    ran(out, "apply", cli.run("apply", "plan.json", "--confirm-accounts", ",".join(good), "--report", "apply.jsonl",
                              env=env), 0)
    (journal,) = (cli.home / "state" / "orgrunner" / "journal").glob("*.jsonl")
    ran(out, "undo", cli.run("undo", journal.stem, "--arm", "--confirm-accounts", ",".join(good),
                             "--report", "undo.jsonl", env=env), 0)
    ran(out, "failing", cli.run("run", "strip-default-sg", "--arm", *accounts, "--account", failing,
                                "--region", REGION, "--confirm-accounts", ",".join(good), "--format", "json",
                                "--report", "failing.jsonl", env=env), 1)

    written = everything_written(cli)
    # what should be there is there: reports, plan, audit log, journals (undo's and the last run's too)
    assert {"plan.json", "plan.jsonl", "apply.jsonl", "undo.jsonl", "failing.jsonl",
            "state/orgrunner/audit.jsonl"} <= set(written)
    assert len([p for p in written if p.startswith("state/orgrunner/journal/")]) == 3
    assert "[redacted]" in out["failing stdout"] + out["failing stderr"]  # the echoed key id, scrubbed
    assert len(issuer.issued) >= 3 * len(good)  # plan, apply and undo sessions at least
    assert leaks({**out, **written}, issuer) == []
    json.loads(out["failing stdout"])  # the JSON summary is intact after scrubbing


def truncate_after_secret(body: bytes) -> bytes:
    """An AssumeRole answer cut off inside the session token: unparseable, secret key included."""
    cut = body.index(b"<SessionToken>") + len(b"<SessionToken>") + 20
    return body[:cut]


def test_an_unparseable_assume_role_answer_does_not_leak_the_secret_it_held(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient, issuer: FaultProxy) -> None:
    account = org.accounts["dev-app-1"]
    issuer.add("rewrite", "AssumeRole", target_account=account, rewrite=truncate_after_secret)
    result = cli.run("run", "strip-default-sg", "--account", account, "--region", REGION, "--report", "r.jsonl",
                     env=cli.env(AWS_ENDPOINT_URL=issuer.url))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "unreadable answer from AWS" in result.stdout
    assert leaks({"stdout": result.stdout, "stderr": result.stderr, **everything_written(cli)}, issuer) == []


def test_the_scan_would_see_a_leak(tmp_path: Path, emulator: EmulatorClient) -> None:
    """The scanner itself: a written secret or key id is found."""
    proxy = FaultProxy(emulator.url)
    try:
        found = leaks({"x": f"key {SANDBOX_ENV_CREDENTIALS['AWS_SECRET_ACCESS_KEY']}",
                       "y": "id AKIAABCDEFGHIJKLMNOP", "z": "tok " + "Ab1/" * 12}, proxy)
    finally:
        proxy.close()
    assert found == ["x: caller AWS_SECRET_ACCESS_KEY", "y: key id AKIA...", "z: secret-like Ab1/Ab...(48)"]
