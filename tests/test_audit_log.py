"""The audit log: JSON lines through concurrent-log-handler, rotated by size, whole when several
processes write at once across rotations; a run's log records it in full and holds no secret."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from orgrunner.records.audit import AuditLog
from orgrunner.sandbox.org import SANDBOX_ENV_CREDENTIALS, SandboxOrg
from orgrunner.task import Change
from tests.cli import Cli
from tests.emulator.client import EmulatorClient

WRITERS = 4
EVENTS = 400
MAX_BYTES = 20_000
BACKUPS = 50
ACCESS_KEY = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")

# One writer process: waits for the starting gun (a file), then writes EVENTS events as fast as it can.
WRITER = """
import sys, time
from pathlib import Path
from orgrunner.records.audit import AuditLog

path, writer, count, gun = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
log = AuditLog(path, f"writer-{writer}", max_bytes=int(sys.argv[5]), backups=int(sys.argv[6]))
deadline = time.monotonic() + 60
while not gun.exists():
    if time.monotonic() > deadline:
        sys.exit("no starting gun")
    time.sleep(0.001)
for seq in range(count):
    log.event("probe", writer=writer, seq=seq, pad=f"w{writer} " * (20 + seq % 30))
log.close()
"""


def log_files(path: Path) -> list[Path]:
    """The log and its rotated copies, oldest first (path.N is older than path.N-1)."""
    rotated = sorted((p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()),
                     key=lambda p: int(p.suffix[1:]), reverse=True)
    return [*rotated, path]


def test_concurrent_writers_across_rotations_lose_and_tear_no_line(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.jsonl"
    gun = tmp_path / "go"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), str(EVENTS), str(gun),
                                 str(MAX_BYTES), str(BACKUPS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for w in range(WRITERS)]
    time.sleep(0.5)  # let every writer open the log and wait at the line
    gun.touch()
    for process in writers:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()[-3000:]

    files = log_files(path)
    assert len(files) > 2, f"expected rotations, found {[p.name for p in files]}"
    assert len(files) <= BACKUPS + 1
    seen: dict[str, list[int]] = defaultdict(list)
    longest = 0
    mixed = 0  # files holding lines of several writers: the writers really did overlap
    for file in files:
        writers_here: set[str] = set()
        raw = file.read_bytes()
        assert raw == b"" or raw.endswith(b"\n"), f"{file.name} ends in a partial line"
        for number, line in enumerate(raw.decode("utf-8").split("\n")[:-1], 1):
            longest = max(longest, len(line) + 1)
            try:
                event: dict[str, Any] = json.loads(line)  # a torn or interleaved line would not parse
            except ValueError:
                raise AssertionError(f"{file.name}:{number}: not one JSON object: {line[:200]!r}") from None
            assert event["event"] == "probe" and event["run_id"] == f"writer-{event['writer']}"
            assert event["pad"] == f"w{event['writer']} " * (20 + event["seq"] % 30)  # whole, unmixed
            seen[event["writer"]].append(event["seq"])
            writers_here.add(event["writer"])
        mixed += len(writers_here) > 1
    assert mixed >= 2, "the writers did not overlap; the test proves nothing"
    # every line of every writer, once, in the order it was written (oldest file first)
    assert sorted(seen) == [str(w) for w in range(WRITERS)]
    for writer, seqs in seen.items():
        assert len(seqs) == EVENTS, (writer, len(seqs))
        assert seqs == list(range(EVENTS)), f"writer {writer}: lines out of order or repeated"
    # the log is bounded: no file outgrows the limit by more than a line
    for file in files:
        assert file.stat().st_size <= MAX_BYTES + longest, (file.name, file.stat().st_size)


def test_one_process_rotates_and_keeps_only_the_backups_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, "solo", max_bytes=2_000, backups=3)
    for seq in range(200):
        log.event("probe", seq=seq, pad="x" * 100)
    log.close()
    files = log_files(path)
    assert [p.name for p in files] == ["audit.jsonl.3", "audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"]
    seqs = [json.loads(line)["seq"] for p in files for line in p.read_text().splitlines()]
    assert seqs == list(range(seqs[0], 200))  # the newest, contiguous; the oldest were rotated away


def test_secrets_are_scrubbed_from_events(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, "scrub")
    blob = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY" * 3
    log.event("probe", key="AKIAIOSFODNN7EXAMPLE", session="ASIAY34FZKBOKMUTVV7A", token=blob)
    log.close()
    text = path.read_text()
    assert "AKIAIOSFODNN7EXAMPLE" not in text and "ASIAY34FZKBOKMUTVV7A" not in text and blob not in text
    event = json.loads(text)
    assert event["key"] == event["session"] == event["token"] == "[redacted]"


def test_a_run_is_recorded_in_full_and_without_secrets(cli: Cli, emulator: EmulatorClient, org: SandboxOrg,
                                                       tmp_path: Path) -> None:
    account = org.accounts["dev-app-1"]
    selectors = ["--account", account, "--region", "us-east-1"]
    report = tmp_path / "report.jsonl"
    for args in (("--dry-run",), ("--arm", "--confirm-accounts", account)):
        result = cli.run("run", "strip-default-sg", *args, *selectors, "--report", str(report))
        assert result.returncode == 0, result.stderr[-3000:]
    run_id = [e for e in cli.audit() if e["event"] == "run-start"][-1]["run_id"]
    cli.run("undo", run_id)

    events = cli.audit()
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        runs[event["run_id"]].append(event)
    assert len(runs) == 3
    for run in runs.values():  # each run starts and ends, with the same run id throughout
        assert run[0]["event"] == "run-start" and run[-1]["event"] == "run-end"
        assert run[0]["role_session_name"] and run[0]["role_session_name"].startswith("or.")
    armed = runs[run_id]
    assert armed[0]["mode"] == "armed" and armed[-1]["status"] == "ok"
    assert [e["accounts"] for e in armed if e["event"] == "confirmed"] == [[account]]
    (planned,) = [e for e in armed if e["event"] == "planned"]
    (applied,) = [e for e in armed if e["event"] == "applied"]
    assert applied["status"] == "applied" and applied["account"] == account
    # the audit log keeps what an auditor reads and the digest; the journal the change in full
    assert "change" not in applied and "change" not in planned and applied["summary"] == planned["summary"]
    journal = [json.loads(line) for line in
               (cli.home / "state" / "orgrunner" / "journal" / f"{run_id}.jsonl").read_text().splitlines()]
    (done,) = [e for e in journal if e["status"] == "applied"]
    assert Change.from_dict(done["change"]).digest() == applied["sha256"] == planned["sha256"]
    removed = done["change"]["before"]["rules"]
    assert len(removed) == 5
    assert all({"SecurityGroupRuleId", "IpProtocol", "FromPort", "ToPort", "IsEgress"} <= set(r) for r in removed)

    state = cli.home / "state" / "orgrunner"
    texts = {"audit log": cli.audit_log.read_text(), "report": report.read_text(),
             **{f"journal {p.name}": p.read_text() for p in (state / "journal").glob("*.jsonl")}}
    assert any(name.startswith("journal") for name in texts)
    secrets = [SANDBOX_ENV_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], SANDBOX_ENV_CREDENTIALS["AWS_SESSION_TOKEN"]]
    for name, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"{name} holds a secret"
        assert not ACCESS_KEY.search(text), f"{name} holds an access key id: {ACCESS_KEY.search(text)}"
        assert "SecretAccessKey" not in text and "SessionToken" not in text, name
