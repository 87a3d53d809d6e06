"""What a new user sees: `orgrunner sandbox serve` (the shipped emulator layer, not the tests'
middleware) tells the truth about its regions, refuses a role that does not exist, and runs all
five built-in tasks dry and armed end to end, with session policies enforced."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.cli import orgrunner_command

REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS = ("strip-default-sg", "iam-password-policy", "ebs-default-encryption", "s3-account-public-access-block",
         "securityhub-controls")


@pytest.mark.slow
def test_a_new_users_sandbox_says_no_where_aws_says_no_and_runs_every_task(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ORGRUNNER_"))}
    env |= {"XDG_STATE_HOME": str(tmp_path / "state"), "NO_COLOR": "1", "COLUMNS": "200"}
    serve = subprocess.Popen([orgrunner_command(), "sandbox", "serve"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, cwd=tmp_path)
    try:
        assert serve.stdout is not None
        banner = serve.stdout.readline()  # printed once the organization is seeded
        assert "17 regions enabled" in banner and "opt-in regions not opted in" in banner, banner
        while "Ctrl-C" not in serve.stdout.readline():
            pass

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([orgrunner_command(), "--sandbox", *args], env=env, capture_output=True, text=True,
                                  cwd=REPO_ROOT, timeout=300, check=False)

        missing = run("doctor", "--role-name", "NoSuchRole")
        assert missing.returncode == 1 and "0 of 8 account(s) ok" in missing.stdout, missing.stdout + missing.stderr
        assert run("doctor").returncode == 0
        ids = ",".join(a["id"] for a in json.loads(run("accounts", "--format", "json").stdout)["targets"])
        for task in TASKS:
            dry = run("run", task, "--dry-run")
            assert dry.returncode == 0, (task, dry.stdout + dry.stderr)
            assert "0 failed" in dry.stdout and "change(s) in" in dry.stdout, (task, dry.stdout)
            assert not any(r in dry.stdout for r in ("cn-north-1", "us-gov-west-1", "af-south-1")), task
            armed = run("run", task, "--arm", "--confirm-accounts", ids)
            assert armed.returncode == 0, (task, armed.stdout + armed.stderr)
            assert "0 target(s) failed" in armed.stdout, (task, armed.stdout)
            again = run("run", task, "--dry-run")
            assert again.returncode == 0 and " 0 change(s)" in again.stdout, (task, again.stdout)
    finally:
        serve.send_signal(signal.SIGTERM)  # as a service manager stops it
        serve.wait(timeout=60)
        if serve.stdout is not None:
            serve.stdout.close()
