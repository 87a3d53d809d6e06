"""The command line behaves as people expect: `--version` alone, `--sandbox` before or after the
command, readable placeholders, each default said once, every command's help with examples and
the exit codes it can give, shell completion, `python -m orgrunner`, and a wheel that installs no
package under a name other projects use."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from orgrunner import __version__
from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli, orgrunner_command
from tests.emulator.client import EmulatorClient

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [("whoami",), ("accounts",), ("tasks",), ("policy",), ("describe",), ("run",), ("apply",), ("undo",),
            ("doctor",), ("sandbox", "serve"), ("runs",), ("runs", "show"), ("ous",), ("baseline",)]
RUNS = {("run",), ("apply",), ("undo",), ("baseline",)}


def test_version_alone_and_python_dash_m(cli: Cli, emulator: EmulatorClient) -> None:
    alone = cli.run("--version")
    assert (alone.returncode, alone.stdout.strip(), alone.stderr) == (0, f"orgrunner {__version__}", "")
    module = subprocess.run([sys.executable, "-m", "orgrunner", "--version"], capture_output=True, text=True,
                            env=cli.env(), cwd=cli.home, timeout=60)
    assert (module.returncode, module.stdout.strip()) == (0, f"orgrunner {__version__}")
    assert emulator.requests() == []


def test_sandbox_is_accepted_after_the_command_too(cli: Cli, org: SandboxOrg) -> None:
    state = cli.home / "state" / "orgrunner"
    state.mkdir(parents=True)
    (state / "sandbox.json").write_text(json.dumps({"url": cli.emulator.url, "token": cli.emulator.token}))
    (state / "sandbox.json").chmod(0o600)  # as `sandbox serve` writes it
    for args in (("--sandbox", "accounts", "--format", "json"), ("accounts", "--format", "json", "--sandbox")):
        result = cli.run(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert f"sandbox: using the emulated organization at {cli.emulator.url}" in result.stderr
        targets = {a["id"] for a in json.loads(result.stdout)["targets"]}
        assert targets == {i for n, i in org.accounts.items() if n != "retired-1"}, args


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_help_has_examples_exit_codes_and_plain_placeholders(cli: Cli, command: tuple[str, ...]) -> None:
    result = cli.run(*command, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "<list[" not in text and "<str>" not in text.split("Arguments:")[-1].split("Options:")[-1], text
    for option in re.split(r"\n  (?=--)", text.split("Options:", 1)[1]):
        assert " ".join(option.split()).count("default:") <= 1, option
    examples = text.split("Examples:", 1)[1].split("Exit codes:", 1)[0]
    lines = [line.strip() for line in examples.splitlines() if line.strip()]
    assert 2 <= len(lines) <= 3 and all(line.startswith("orgrunner ") for line in lines), lines
    codes = " ".join(text.split("Exit codes:", 1)[1].split())
    for code in (0, 2, 70):
        assert f"{code} " in codes, (code, codes)
    if command in RUNS:
        for code in (1, 3, 75, 130, 143):
            assert f"{code} " in codes, (code, codes)
    if command == ("run",):
        assert "4 changes pending" in codes


def test_format_takes_the_same_words_everywhere(cli: Cli, emulator: EmulatorClient) -> None:
    commands = (("accounts",), ("run", "strip-default-sg"), ("apply", "plan.json"), ("undo", "20261129T190000Z-1a2b3c"))
    for command in commands:
        help_text = cli.run(*command[:1], "--help").stdout
        assert "--format [text|json" in help_text, command
        bad = cli.run(*command, "--format", "xml")
        assert bad.returncode == 2 and "--format 'xml': expected text" in bad.stderr, (command, bad.stderr)
    assert emulator.requests() == []


def test_shell_completion_completes_commands_and_options(cli: Cli) -> None:
    def complete(words: str) -> list[str]:
        env = cli.env(_ORGRUNNER_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(len(words.split()) - 1))
        done = subprocess.run([orgrunner_command()], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("orgrunner ru") == ["run", "runs"] or complete("orgrunner ru") == ["run"]
    assert "--arm" in complete("orgrunner run strip-default-sg --ar")
    assert "--install-completion" in cli.run("--help").stdout


def test_the_wheel_installs_no_top_level_tasks_package(tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                            str(REPO)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("orgrunner-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/", 1)[0] for name in archive.namelist()}
        entry_points = archive.read(next(n for n in archive.namelist() if n.endswith("entry_points.txt"))).decode()
    assert {t for t in top if not t.endswith(".dist-info")} == {"orgrunner", "orgrunner_builtin_tasks"}
    assert "builtin = orgrunner_builtin_tasks" in entry_points

    # installed from the wheel (no checkout on the path), every built-in task loads from it
    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                                str(wheel)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    probe = ("import json; from orgrunner.task import load_tasks; t = load_tasks(); "
             "print(json.dumps({'errors': t.errors, 'files': sorted(__import__('sys').modules[c.__module__].__file__ "
             "for c in t.tasks.values())}))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    result = json.loads(loaded.stdout)
    assert result["errors"] == []
    assert len(result["files"]) == len([p for p in (REPO / "tasks").glob("*.py") if not p.name.startswith("_")])
    assert all(f.startswith(str(target / "orgrunner_builtin_tasks")) for f in result["files"])
