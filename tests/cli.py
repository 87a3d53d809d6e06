"""Run the installed `orgrunner` command as a user would: a subprocess, or a pseudo-terminal."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect

from tests.emulator.client import EmulatorClient


def orgrunner_command() -> str:
    """The console script installed beside this Python (falls back to PATH)."""
    candidate = Path(sys.executable).parent / "orgrunner"
    found = str(candidate) if candidate.exists() else shutil.which("orgrunner")
    assert found, "the orgrunner command is not installed (pip install -e '.[test]')"
    return found


@dataclass
class Cli:
    """Runs orgrunner against the emulator with a private state folder (audit log, locks)."""

    emulator: EmulatorClient
    home: Path

    @property
    def audit_log(self) -> Path:
        return self.home / "state" / "orgrunner" / "audit.jsonl"

    def env(self, **extra: str) -> dict[str, str]:
        return {**self.emulator.env(), "XDG_STATE_HOME": str(self.home / "state"), "NO_COLOR": "1",
                "COLUMNS": "200", **extra}

    def run(self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run without a terminal (stdin is a pipe or /dev/null), as cron would."""
        return subprocess.run(
            [orgrunner_command(), *args], input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True, text=True, env=env or self.env(), cwd=self.home, timeout=timeout,
        )

    def spawn(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> pexpect.spawn:
        """Run in a pseudo-terminal, as an operator at a shell would."""
        return pexpect.spawn(orgrunner_command(), list(args), env=env or self.env(), cwd=str(self.home),
                             encoding="utf-8", timeout=timeout, dimensions=(50, 200))

    def audit(self) -> list[dict[str, Any]]:
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]
