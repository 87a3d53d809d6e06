"""Bad input, fuzzed: over the command line and every config file's YAML, orgrunner never shows a
traceback, exits 2 with the problem named, and makes no AWS call before rejecting the input.

The generators only make invalid input: every argument list holds at least one invalid option
(among valid ones, in any order), every settings or task config file at least one invalid entry.
They run in-process through `orgrunner.cli.app.main` (what the installed command runs), so that
hundreds of examples stay fast; a few fixed cases run the installed command itself. The emulator
is reset before each test and never seeded here, so `emulator.requests()` must stay empty: any AWS
call, even a failed one, would be recorded.

Invalid input the engine once accepted is pinned by the fixed-case tests
at the end: non-ASCII digits and trailing newlines in ids, non-ASCII role names, YAML alias
bombs, bad lines in a `--retry-failed` report, unwritable output paths, and usage errors (one
line, not click's usage block).
"""

from __future__ import annotations

import contextlib
import io
import re
import signal
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orgrunner import aws
from orgrunner.cli import app as cli
from orgrunner.config.settings import Settings
from orgrunner.task import load_tasks
from tests.cli import Cli, orgrunner_command
from tests.emulator.client import EmulatorClient

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.filter_too_much])
VALID_ACCOUNT = "111122223333"
TASKS = load_tasks().tasks
KNOWN_REGIONS = aws.known_regions()
COMMAND = typer.main.get_command(cli.app)


# --- running orgrunner in-process -----------------------------------------------------------------

@dataclass
class Outcome:
    code: int | str | None
    out: str
    err: str


def invoke(args: list[str]) -> Outcome:
    """`orgrunner ARGS` through `orgrunner.cli.app.main`, as the installed command runs it."""
    sigterm = signal.getsignal(signal.SIGTERM)
    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["orgrunner", *args]
    code: int | str | None = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
        signal.signal(signal.SIGTERM, sigterm)  # main() installs its own
    return Outcome(code, out.getvalue(), err.getvalue())


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder without config/, and a private state folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for name in ("ORGRUNNER_CONFIG", "ORGRUNNER_DEBUG", "ORGRUNNER_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def assert_rejected(outcome: Outcome, emulator: EmulatorClient, *words: str) -> str:
    """Exit 2, nothing on stdout, no traceback, no AWS call, and the problem on stderr: one
    `orgrunner: ...` line, or click's usage block ending in its one `Error: ...` line. Returns
    the line naming the problem."""
    assert outcome.code == 2, outcome
    assert "Traceback" not in outcome.out + outcome.err, outcome.err
    assert outcome.out == "", outcome
    lines = [line for line in outcome.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("orgrunner: "), outcome.err
    problem = lines[0]
    assert "internal error" not in problem
    for word in words:
        assert word in problem, (word, problem)
    assert emulator.requests() == [], [f"{r['service']}:{r['operation']}" for r in emulator.requests()]
    return problem


# --- what the engine accepts (the generators stay outside it) -------------------------------------

def engine_accepts_account(text: str) -> bool:
    return re.match(r"^\d{12}$", text) is not None  # orgrunner.engine.accounts.ACCOUNT_ID (Unicode \d, "$" before \n)


def engine_accepts_ou(text: str) -> bool:
    return re.match(r"^(ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}|r-[0-9a-z]{4,32})$", text) is not None


def engine_accepts_role_arn(text: str) -> bool:
    return re.match(r"^arn:aws[\w-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$", text) is not None


# --- argument lists ---------------------------------------------------------------------------------

def options_of(command: str) -> set[str]:
    params = COMMAND.commands[command].params  # type: ignore[attr-defined]
    return {o for p in params for o in (*p.opts, *p.secondary_opts)} | {"--help"}


TEXT = st.text(max_size=40)
BIG_TEXT = st.text(min_size=200, max_size=3000)
BAD_ACCOUNT = st.one_of(TEXT, st.from_regex(r"[0-9]{1,11}|[0-9]{13,40}|[0-9]{4}-[0-9]{4}-[0-9]{4}", fullmatch=True),
                        st.integers(max_value=-1).map(str)).filter(lambda s: not engine_accepts_account(s))
BAD_OU = st.one_of(TEXT, st.from_regex(r"ou-[0-9a-z]{1,40}(-[a-zA-Z0-9_]{0,40})?|r-[A-Z0-9]{0,40}", fullmatch=True)
                   ).filter(lambda s: not engine_accepts_ou(s))
BAD_TAG = st.one_of(TEXT.filter(lambda s: "=" not in s), TEXT.map(lambda s: "=" + s))
BAD_INT = st.one_of(st.integers(max_value=0), st.integers(min_value=257),
                    st.from_regex(r"[0-9]*[a-zA-Z][0-9a-zA-Z.]*", fullmatch=True)).map(str)
BAD_ROLE = st.one_of(st.just(""), st.text(min_size=65, max_size=300, alphabet="abc"),
                     st.tuples(TEXT, st.sampled_from(" !#$%^&*()/\\|;:'\"<>?~`[]{}"), TEXT).map("".join))
BAD_REGION = st.one_of(TEXT, st.from_regex(r"[a-z]{2}-[a-z]{3,9}-[0-9]{1,2}", fullmatch=True)).filter(
    lambda s: s not in KNOWN_REGIONS)
BAD_TASK = st.one_of(TEXT, BIG_TEXT).filter(lambda s: s not in TASKS and not s.startswith("-"))
BAD_ARN = st.one_of(TEXT, st.from_regex(r"arn:aws:iam::[0-9]{1,14}:(role|user)/[a-z*]{0,10}", fullmatch=True)).filter(
    lambda s: not engine_accepts_role_arn(s))


def unknown_option(command: str) -> st.SearchStrategy[list[str]]:
    names = st.one_of(st.from_regex(r"--[a-z][a-z0-9-]{0,24}", fullmatch=True),
                      st.from_regex(r"-[a-zA-Z]", fullmatch=True), st.text(min_size=1, max_size=20).map("--".__add__))
    return names.filter(lambda o: o not in options_of(command) and "=" not in o).map(lambda o: [o])


def option(name: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    """`--name VALUE` or `--name=VALUE`."""
    return st.tuples(values, st.booleans()).map(lambda v: [f"{name}={v[0]}"] if v[1] else [name, v[0]])


def bad_account_list(text: str) -> bool:
    """Some id of the list is bad (an empty list has its own test below)."""
    ids = [p for p in re.split(r"[\s,]+", text.strip()) if p]
    return any(not engine_accepts_account(i) for i in ids)


def poisons(command: str, scratch: Path) -> st.SearchStrategy[list[str]]:
    missing = str(scratch / "no-such-dir" / "file")
    common = [option("--account", BAD_ACCOUNT), option("--exclude", BAD_ACCOUNT), option("--ou", BAD_OU),
              option("--tag", BAD_TAG), option("--config", st.just(missing + ".yaml")), unknown_option(command),
              option("--mfa-serial", st.just("arn:aws:iam::111122223333:mfa/me")),
              option("--operator-role-arn", BAD_ARN)]
    if command in ("run", "doctor"):
        common += [option("--concurrency", BAD_INT), option("--role-name", BAD_ROLE)]
    if command == "accounts":
        common.append(option("--format", TEXT.filter(lambda s: s not in ("text", "table", "json"))))
    if command == "run":
        common += [
            option("--format", TEXT.filter(lambda s: s not in ("text", "json", "markdown"))),
            option("--region", BAD_REGION),
            st.just(["--dry-run", "--arm"]),
            st.just(["--arm", "--plan-out", str(scratch / "plan.json")]),
            st.just(["--arm", "--fail-on-changes"]),
            option("--confirm-accounts", st.just(VALID_ACCOUNT)),  # without --arm
            st.tuples(st.just(["--arm"]), option("--confirm-accounts", BAD_ACCOUNT.filter(bad_account_list))).map(
                lambda t: t[0] + t[1]),
            option("--retry-failed", st.just(missing + ".jsonl")),
            st.just(["--retry-failed", missing, "--account", VALID_ACCOUNT]),
            option("--wait-for-lock", st.one_of(st.floats(max_value=-0.001), st.just("nan")).map(str)),
            option("--tasks-dir", st.just(missing)),
        ]
    return st.one_of(common)


def fillers(command: str) -> st.SearchStrategy[list[str]]:
    valid = [["--account", VALID_ACCOUNT], ["--exclude", "444455556666"], ["--ou", "ou-ab12-cd34ef56"],
             ["--tag", "env=prod"], ["--tag", "clé=välue=x"], ["--include-management"]]
    if command == "run":
        valid += [["--region", "us-east-1"], ["--region=eu-west-1"], ["--dry-run"], ["--concurrency", "4"],
                  ["--format", "json"], ["--report", "report.jsonl"]]
    if command == "accounts":
        valid += [["--format", "json"]]
    if command == "doctor":
        valid += [["--role-name", "OrgRunnerRole"], ["--concurrency=8"]]
    return st.sampled_from(valid)


@st.composite
def bad_command_lines(draw: st.DrawFn, scratch: Path) -> list[str]:
    command = draw(st.sampled_from(["run", "run", "run", "accounts", "doctor"]))
    groups = draw(st.lists(poisons(command, scratch), min_size=1, max_size=3))
    groups += draw(st.lists(fillers(command), max_size=4))
    groups = draw(st.permutations(groups))
    head = [command]
    if command == "run":
        head.append(draw(st.one_of(st.sampled_from(sorted(TASKS)), BAD_TASK)))
    return head + [arg for group in groups for arg in group]


def test_fuzzed_command_lines_are_refused_with_exit_2_and_no_aws_call(
        emulator: EmulatorClient, scratch: Path) -> None:
    @FUZZ
    @given(args=bad_command_lines(scratch))
    def check(args: list[str]) -> None:
        assert_rejected(invoke(args), emulator)

    check()


# --- config files ---------------------------------------------------------------------------------

def one_line(text: str) -> bool:
    return len(f"x{text}x".splitlines()) == 1


# mapping keys without line breaks: a key is named raw in the error (line breaks have their own test below)
KEY = st.one_of(TEXT, BIG_TEXT).filter(one_line)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**18, max_value=10**120),
                    st.floats(allow_nan=True, allow_infinity=True), TEXT, BIG_TEXT)
ANY_VALUE = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                          st.dictionaries(KEY, inner, max_size=6)), max_leaves=30)
CONTAINER = st.one_of(st.lists(ANY_VALUE, max_size=5), st.dictionaries(KEY, ANY_VALUE, max_size=5))
NOT_INT = st.one_of(TEXT.filter(lambda s: re.search(r"[^0-9\s+\-._eE]", s) is not None), CONTAINER,
                    st.floats().filter(lambda f: not f.is_integer()))
SETTINGS_FIELDS = set(Settings.model_fields)
# a value each field refuses (None is fine for the optional ones, so never None there)
BAD_SETTING = {
    "role_name": st.one_of(st.none(), st.integers(), CONTAINER, BAD_ROLE),
    "concurrency": st.one_of(NOT_INT, st.integers(max_value=0), st.integers(min_value=257)),
    "session_duration": st.one_of(NOT_INT, st.integers(max_value=899), st.integers(min_value=43201)),
    "external_id": st.one_of(st.integers(), CONTAINER),
    "audit_log": st.one_of(st.integers(), CONTAINER),
    "regions": st.one_of(TEXT, st.integers(), st.dictionaries(KEY, ANY_VALUE, max_size=3),
                         st.lists(st.one_of(st.integers(), CONTAINER), min_size=1, max_size=3)),
    "protected_accounts": st.one_of(TEXT, st.integers(),
                                    st.fixed_dictionaries({"ids": st.lists(BAD_ACCOUNT, min_size=1, max_size=3)}),
                                    st.lists(BAD_ACCOUNT, min_size=1, max_size=3),
                                    st.dictionaries(KEY.filter(lambda k: k not in ("ids", "name_patterns")),
                                                    ANY_VALUE, min_size=1, max_size=3)),
}
GOOD_SETTING = {"role_name": st.just("OrgRunnerRole"), "concurrency": st.integers(1, 256),
                "session_duration": st.integers(900, 43200), "regions": st.just(["us-east-1"]),
                "protected_accounts": st.just({"ids": [VALID_ACCOUNT], "name_patterns": ["*prod*"]})}


def unknown_key(known: set[str]) -> st.SearchStrategy[str]:
    return KEY.filter(lambda k: k not in known)


@st.composite
def bad_mapping(draw: st.DrawFn, known: set[str], bad: dict[str, st.SearchStrategy[Any]],
                good: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    """A mapping with at least one invalid entry among valid ones."""
    data: dict[str, Any] = {k: draw(v) for k, v in good.items() if draw(st.booleans())}
    poisoned = draw(st.lists(st.sampled_from(["unknown-key", *sorted(bad)]), min_size=1, max_size=3))
    for which in poisoned:
        if which == "unknown-key":
            data[draw(unknown_key(known))] = draw(ANY_VALUE)
        else:
            data[which] = draw(bad[which])
    return data


def dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@st.composite
def bad_yaml(draw: st.DrawFn, known: set[str], bad: dict[str, st.SearchStrategy[Any]],
             good: dict[str, st.SearchStrategy[Any]]) -> bytes:
    """A config file that must be refused: a mapping with a bad entry, another top-level value, a
    duplicate key, or an unknown key followed by random text or bytes."""
    key = draw(st.sampled_from(sorted(known)))
    kind = draw(st.sampled_from(["mapping", "mapping", "mapping", "not-a-mapping", "duplicate", "text", "bytes"]))
    if kind == "mapping":
        return dump(draw(bad_mapping(known, bad, good))).encode()
    if kind == "not-a-mapping":
        top = draw(st.one_of(SCALARS.filter(lambda v: v is not None), st.lists(ANY_VALUE, min_size=1, max_size=5)))
        return dump(top).encode()
    if kind == "duplicate":
        first, second = dump({key: draw(ANY_VALUE)}), dump({key: draw(ANY_VALUE)})
        return (first + draw(st.sampled_from(["", dump({"x-other": 1})])) + second).encode()
    poison = dump({draw(unknown_key(known)): 1}).encode()
    if kind == "text":
        tokens = st.sampled_from([*"[]{}:,-?&*!|>'\"%@`#\t\n ab1é", "\n  ", ": ", "---", "...", "<<: ", "!!str "])
        noise = "".join(draw(st.lists(tokens, max_size=40)))
        return poison + noise.encode()
    return poison + draw(st.binary(max_size=80))


def test_fuzzed_settings_files_are_refused_naming_the_file(emulator: EmulatorClient, scratch: Path) -> None:
    path = scratch / "conf" / "orgrunner.yaml"
    path.parent.mkdir()

    @FUZZ
    @given(content=bad_yaml(SETTINGS_FIELDS, BAD_SETTING, GOOD_SETTING),
           command=st.sampled_from([["run", "strip-default-sg", "--region", "us-east-1"], ["accounts"], ["doctor"]]))
    def check(content: bytes, command: list[str]) -> None:
        path.write_bytes(content)
        assert_rejected(invoke([*command, "--config", str(path)]), emulator, f"orgrunner: {path}")

    check()


def task_config_poisons(cls: type[Any]) -> tuple[set[str], dict[str, st.SearchStrategy[Any]]]:
    """The fields of a task's Config model, and for each a value of the wrong kind."""
    fields = cls.model_fields
    bad: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in fields.items():
        if typing.get_origin(info.annotation) is dict:
            bad[name] = st.one_of(st.lists(ANY_VALUE, max_size=3), TEXT, st.integers())
        elif typing.get_origin(info.annotation) is list:  # an empty list is a list: a mapping or text is not
            bad[name] = st.one_of(st.dictionaries(TEXT, ANY_VALUE, min_size=1, max_size=3), TEXT, st.integers())
        else:
            bad[name] = CONTAINER
    return set(fields), bad


CONFIGURABLE = sorted(name for name, cls in TASKS.items() if cls.Config is not None and cls.config_file)


@pytest.mark.parametrize("task", CONFIGURABLE)
def test_fuzzed_task_config_files_are_refused_naming_the_file(emulator: EmulatorClient, scratch: Path,
                                                              task: str) -> None:
    cls = TASKS[task]
    folder = scratch / "conf"
    folder.mkdir()
    (folder / "orgrunner.yaml").write_text("concurrency: 4\n")
    path = folder / str(cls.config_file)
    known, bad = task_config_poisons(cls.Config)

    @FUZZ
    @given(content=bad_yaml(known, bad, {}))
    def check(content: bytes) -> None:
        path.write_bytes(content)
        assert_rejected(invoke(["run", task, "--config", str(folder / "orgrunner.yaml"), "--region", "us-east-1"]),
                        emulator, f"orgrunner: {path}")

    check()


# --- the installed command, a few fixed cases ------------------------------------------------------

def run_installed(cli_: Cli, *args: str | bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run([orgrunner_command(), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          errors="replace", env=cli_.env(), cwd=cli_.home, timeout=60)


@pytest.mark.parametrize(("args", "words"), [
    pytest.param(("run", "strip-default-sg", "--region", b"\xff\xfe"), ("--region", "unknown region"),
                 id="undecodable-region"),
    pytest.param(("run", b"t\xe9\xff"), ("unknown task",), id="undecodable-task"),
    pytest.param(("run", "strip-default-sg", "--tag", "clé"), ("--tag", "KEY=VALUE"), id="unicode-tag"),
    pytest.param(("accounts", "--ou", "ou-" + "x" * 5000), ("--ou",), id="huge-ou"),
    pytest.param(("run", "strip-default-sg", "--account", "1" * 5000), ("--account", "12 digits"), id="huge-account"),
    pytest.param(("doctor", "--role-name", "r" * 65), ("--role-name",), id="long-role-name"),
])
def test_the_installed_command_refuses_odd_arguments_in_one_line(cli: Cli, emulator: EmulatorClient,
                                                                  args: tuple[str | bytes, ...],
                                                                  words: tuple[str, ...]) -> None:
    result = run_installed(cli, *args)
    assert_rejected(Outcome(result.returncode, result.stdout, result.stderr), emulator, *words)


# --- engine bugs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["run", "strip-default-sg", "--no-such-option"],
                                  ["run", "strip-default-sg", "--concurrency", "many"],
                                  ["run"], ["no-such-command"]], ids=["option", "value", "argument", "command"])
def test_usage_errors_are_one_line(emulator: EmulatorClient, scratch: Path, args: list[str]) -> None:
    outcome = invoke(args)
    assert_rejected(outcome, emulator)
    assert len(outcome.err.strip().splitlines()) == 1, outcome.err


def digits(zero: int, ascii_digits: str = "123456789012") -> str:
    """An account id written with another script's digits (zero: that script's code point for 0)."""
    return "".join(chr(zero + int(d)) for d in ascii_digits)


@pytest.mark.parametrize("args", [
    pytest.param(["run", "strip-default-sg", "--account", digits(0x0660)], id="arabic-indic-digits"),
    pytest.param(["run", "strip-default-sg", "--account", digits(0xFF10)], id="fullwidth-digits"),
    pytest.param(["run", "strip-default-sg", "--account", "123456789012\n"], id="account-newline"),
    pytest.param(["accounts", "--exclude", "123456789012\n"], id="exclude-newline"),
    pytest.param(["accounts", "--ou", "ou-ab12-cd34ef56\n"], id="ou-newline"),
    pytest.param(["whoami", "--operator-role-arn", f"arn:aws:iam::{digits(0x0660)}:role/ops"], id="arn-digits"),
    pytest.param(["run", "strip-default-sg", "--role-name", "rôle-accès"], id="role-name-unicode"),
    pytest.param(["doctor", "--role-name", "Rolle\u00e4"], id="role-name-umlaut"),
])
def test_near_miss_ids_and_names_are_refused_before_any_aws_call(emulator: EmulatorClient, scratch: Path,
                                                                  args: list[str]) -> None:
    assert_rejected(invoke(args), emulator)


def test_a_yaml_alias_bomb_is_refused_quickly(cli: Cli, emulator: EmulatorClient) -> None:
    lines = ['x0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    lines.append("regions: [*a9]")
    config = cli.home / "bomb.yaml"
    config.write_text("\n".join(lines) + "\n")
    assert config.stat().st_size < 600
    try:
        result = subprocess.run([orgrunner_command(), "run", "strip-default-sg", "--config", str(config)],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, env=cli.env(), cwd=cli.home,
                                timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("still validating after 10 seconds")
    assert_rejected(Outcome(result.returncode, result.stdout, result.stderr), emulator, str(config))


@pytest.mark.parametrize("line", [
    '{"task": "strip-default-sg", "account": "12345", "region": "us-east-1", "status": "failed"}',
    '{"task": "strip-default-sg", "account": "111122223333", "region": "mars-east-9", "status": "failed"}',
], ids=["malformed-account", "unknown-region"])
def test_a_retry_report_naming_bad_targets_is_refused_before_any_aws_call(emulator: EmulatorClient, scratch: Path,
                                                                           line: str) -> None:
    report = scratch / "report.jsonl"
    report.write_text(line + "\n")
    assert_rejected(invoke(["run", "strip-default-sg", "--retry-failed", str(report)]), emulator, str(report))


@pytest.mark.parametrize("flag", ["--report", "--plan-out", "--audit-log"])
def test_an_unwritable_output_path_is_refused_before_any_aws_call(emulator: EmulatorClient, scratch: Path,
                                                                   flag: str) -> None:
    (scratch / "a-file").write_text("")
    args = ["run", "strip-default-sg", "--region", "us-east-1", flag, str(scratch / "a-file" / "out")]
    assert_rejected(invoke(args), emulator, flag)


def test_an_empty_confirmation_list_is_refused_before_any_aws_call(emulator: EmulatorClient, scratch: Path) -> None:
    assert_rejected(invoke(["run", "strip-default-sg", "--arm", "--confirm-accounts", " , "]), emulator,
                    "--confirm-accounts")


@pytest.mark.parametrize("key", ["colour\rblue", "a\nb", "line\u2028separator"], ids=["cr", "lf", "u2028"])
def test_a_config_key_with_a_line_break_is_named_on_one_line(emulator: EmulatorClient, scratch: Path,
                                                             key: str) -> None:
    path = scratch / "settings.yaml"
    path.write_text(dump({"concurrency": 4, key: 1}))
    assert_rejected(invoke(["accounts", "--config", str(path)]), emulator, str(path), "Extra inputs")
