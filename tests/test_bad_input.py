"""Bad input: each is refused with its exit code and one clear line on stderr, before any AWS call.

These tests do not seed an organization: the emulator is freshly reset, so `emulator.requests()`
must still be empty afterwards. Any AWS call, even one that fails, would be recorded there.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from orgrunner.sandbox.org import SandboxOrg, seed_organization
from tests.cli import Cli
from tests.emulator.client import EmulatorClient

RUN = ("run", "strip-default-sg", "--region", "us-east-1")
MEMBER = "111122223333"  # a well-formed account id


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_refused(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Exit `code`, exactly one line on stderr naming the problem (all `words` in it), no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("orgrunner: "), line
    for word in words:
        assert word in line, (word, line)
    assert "Traceback" not in result.stderr + result.stdout
    assert "internal error" not in line
    return line


def assert_no_aws_call(emulator: EmulatorClient) -> None:
    assert emulator.requests() == [], [f"{r['service']}:{r['operation']}" for r in emulator.requests()]


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- flags and arguments ------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(("run", "no-such-task", "--region", "us-east-1"), ("unknown task", "no-such-task"),
                     id="unknown-task"),
        pytest.param((*RUN, "--account", "123"), ("--account", "'123'", "12 digits"), id="account-too-short"),
        pytest.param((*RUN, "--exclude", "abc"), ("--exclude", "'abc'", "12 digits"), id="exclude-not-an-id"),
        pytest.param((*RUN, "--arm", "--confirm-accounts", "12x"), ("--confirm-accounts", "'12x'"),
                     id="confirm-accounts-not-an-id"),
        pytest.param((*RUN, "--arm", "--confirm-accounts", f"{MEMBER},12x"), ("--confirm-accounts", "'12x'"),
                     id="confirm-accounts-one-bad-id"),
        pytest.param(("run", "strip-default-sg", "--region", "mars-east-1"), ("--region", "mars-east-1", "unknown"),
                     id="unknown-region"),
        pytest.param((*RUN, "--tag", "env"), ("--tag", "'env'", "KEY=VALUE"), id="tag-without-equals"),
        pytest.param((*RUN, "--ou", "Workloads"), ("--ou", "'Workloads'", "OU id"), id="ou-by-name"),
        pytest.param((*RUN, "--ou", "ou-12"), ("--ou", "'ou-12'"), id="ou-malformed"),
        pytest.param((*RUN, "--dry-run", "--arm"), ("--dry-run", "--arm"), id="dry-run-and-arm"),
        pytest.param((*RUN, "--concurrency", "0"), ("--concurrency", "0"), id="concurrency-zero"),
        pytest.param((*RUN, "--role-name", "bad role!"), ("--role-name", "bad role!"), id="role-name-bad-chars"),
        pytest.param((*RUN, "--role-name", ""), ("--role-name",), id="role-name-empty"),
        pytest.param((*RUN, "--confirm-accounts", MEMBER), ("--confirm-accounts", "--arm"),
                     id="confirm-accounts-without-arm"),
        pytest.param(("accounts", "--account", "123"), ("--account", "'123'"), id="accounts-bad-account"),
        pytest.param(("accounts", "--ou", "nope"), ("--ou", "'nope'"), id="accounts-bad-ou"),
        pytest.param(("accounts", "--format", "xml"), ("--format", "'xml'"), id="accounts-bad-format"),
    ],
)
def test_bad_flag_is_refused_before_any_aws_call(cli: Cli, emulator: EmulatorClient,
                                                  args: tuple[str, ...], words: tuple[str, ...]) -> None:
    assert_refused(cli.run(*args), 2, *words)
    assert_no_aws_call(emulator)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param((*RUN, "--concurrency", "many"), ("--concurrency", "integer"), id="concurrency-not-a-number"),
        pytest.param(("run",), ("Missing argument", "TASK"), id="no-task"),
        pytest.param((*RUN, "--bogus"), ("--bogus",), id="unknown-flag"),
    ],
)
def test_usage_errors_exit_2_with_one_error_line(cli: Cli, emulator: EmulatorClient,
                                                 args: tuple[str, ...], words: tuple[str, ...]) -> None:
    """Errors the command line parser finds itself: one line too, not a usage screen."""
    assert_refused(cli.run(*args), 2, *words)
    assert_no_aws_call(emulator)


def test_unknown_task_lists_the_known_ones(cli: Cli, emulator: EmulatorClient) -> None:
    line = assert_refused(cli.run("run", "strip-default-sgs", "--region", "us-east-1"), 2, "unknown task")
    assert "strip-default-sg" in line.replace("'strip-default-sgs'", "")
    assert_no_aws_call(emulator)


# --- the settings file --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param("role_name: [unclosed\n", ("invalid YAML",), id="malformed-yaml"),
        pytest.param("concurrency: 4\ncolour: blue\n", (":2", "colour", "Extra inputs"), id="unknown-key"),
        pytest.param("role_name: OrganizationAccountAccessRole\nconcurrency: many\n",
                     (":2", "concurrency", "integer", "'many'"), id="wrong-type"),
        pytest.param("concurrency: 0\n", ("concurrency", "greater than or equal to 1"), id="out-of-range"),
        pytest.param("protected_accounts:\n  ids: ['12']\n", ("protected_accounts", "'12'", "12-digit"),
                     id="protected-bad-id"),
        pytest.param("- role_name\n", ("mapping",), id="not-a-mapping"),
        pytest.param("concurrency: 1\nconcurrency: 2\n", (":2", "duplicate key"), id="duplicate-key"),
    ],
)
def test_bad_config_file_names_file_line_and_key(cli: Cli, emulator: EmulatorClient, tmp_path: Path,
                                                 text: str, words: tuple[str, ...]) -> None:
    path = write(tmp_path, "settings.yaml", text)
    assert_refused(cli.run(*RUN, "--config", path), 2, path, *words)
    assert_no_aws_call(emulator)


def test_bad_config_file_is_refused_by_accounts_too(cli: Cli, emulator: EmulatorClient, tmp_path: Path) -> None:
    path = write(tmp_path, "settings.yaml", "concurrency: many\n")
    assert_refused(cli.run("accounts", "--config", path), 2, path, "concurrency", "'many'")
    assert_no_aws_call(emulator)


def test_bad_protected_account_id_names_its_line_and_key_path(cli: Cli, emulator: EmulatorClient,
                                                               tmp_path: Path) -> None:
    path = write(tmp_path, "settings.yaml", "concurrency: 4\nprotected_accounts:\n  ids: ['12']\n")
    line = assert_refused(cli.run(*RUN, "--config", path), 2, path)
    assert f"{path}:3: protected_accounts.ids" in line
    assert "ProtectedAccounts" not in line and "more]" not in line
    assert_no_aws_call(emulator)


def test_missing_config_file(cli: Cli, emulator: EmulatorClient, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    assert_refused(cli.run(*RUN, "--config", missing), 2, "nope.yaml")
    assert_no_aws_call(emulator)


def test_config_from_environment_variable_is_validated(cli: Cli, emulator: EmulatorClient, tmp_path: Path) -> None:
    path = write(tmp_path, "env.yaml", "concurrency: many\n")
    assert_refused(cli.run(*RUN, env=cli.env(ORGRUNNER_CONFIG=path)), 2, "concurrency", "'many'")
    assert_no_aws_call(emulator)


# --- credentials --------------------------------------------------------------------------------

def without_credentials(cli: Cli) -> dict[str, str]:
    env = cli.env()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE"):
        env.pop(name, None)
    return env


@pytest.mark.parametrize("command", [RUN, ("accounts",), ("whoami",)], ids=["run", "accounts", "whoami"])
def test_no_credentials_and_no_profile_refuses_the_default_profile(
        cli: Cli, emulator: EmulatorClient, command: tuple[str, ...]) -> None:
    result = cli.run(*command, env=without_credentials(cli))
    assert_refused(result, 3, "refusing to fall back to the default profile")
    assert_no_aws_call(emulator)


def test_key_id_without_secret_is_not_credentials(cli: Cli, emulator: EmulatorClient) -> None:
    env = without_credentials(cli)
    env["AWS_ACCESS_KEY_ID"] = "ASIAONLYTHEKEYID0001"
    assert_refused(cli.run(*RUN, env=env), 3, "refusing to fall back to the default profile")
    assert_no_aws_call(emulator)


@pytest.mark.parametrize("how", ["flag", "env", "flag-beside-keys"])
def test_profile_that_does_not_exist(cli: Cli, emulator: EmulatorClient, how: str) -> None:
    """A named profile is used or the run stops; keys in the environment are not a fallback."""
    env = without_credentials(cli) if how != "flag-beside-keys" else cli.env()
    if how.startswith("flag"):
        result = cli.run(*RUN, "--profile", "no-such-profile", env=env)
    else:
        env["AWS_PROFILE"] = "no-such-profile"
        result = cli.run(*RUN, env=env)
    assert_refused(result, 2, "no-such-profile")
    assert_no_aws_call(emulator)


# --- needs the organization ---------------------------------------------------------------------

@pytest.fixture
def org(emulator: EmulatorClient) -> SandboxOrg:
    """The seeded organization without the security group rules: faster."""
    return seed_organization(emulator.url, regions=())


def test_no_account_matches(cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    mark = len(emulator.requests())
    result = cli.run(*RUN, "--tag", "env=nowhere")
    assert result.returncode == 0, result.stderr
    assert "no accounts match the selectors" in result.stderr
    assert not [r for r in emulator.requests()[mark:] if r["operation"] == "AssumeRole"]


# --- help ---------------------------------------------------------------------------------------

def test_top_level_help_mentions_exit_codes(cli: Cli, emulator: EmulatorClient) -> None:
    result = cli.run("--help")
    assert result.returncode == 0, result.stderr
    assert "Exit codes" in result.stdout
    text = " ".join(result.stdout.split())
    for fragment in ("0 success", "1 one or more targets failed", "2 bad usage or input", "3 refused"):
        assert fragment in text, fragment
    assert_no_aws_call(emulator)


def test_run_help_names_the_safety_options_and_exit_codes(cli: Cli, emulator: EmulatorClient) -> None:
    result = cli.run("run", "--help")
    assert result.returncode == 0, result.stderr
    assert "--confirm-accounts" in result.stdout and "--arm" in result.stdout
    text = " ".join(result.stdout.split())
    assert "Exit codes" in text
    for fragment in ("0 success", "1 one or more targets failed", "2 bad usage or input", "3 refused"):
        assert fragment in text, fragment
    assert_no_aws_call(emulator)
