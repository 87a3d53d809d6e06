"""The typed confirmation, and `Armed`: the value only a confirmation can make.

Applying needs an `Armed` value (an `ApplyContext` cannot be opened without one covering its
account), so no code path reaches a write without passing through here.

Interactive: the operator types the ids of the accounts that have planned changes (any order,
spaces or commas); with more than ten, the number of accounts and the task name. Never "yes".
Non-interactive: `--confirm-accounts` must hold every account with planned changes, and only
accounts that are targets of the run (checked whenever it is given, by plan or not); `apply` also
takes `--confirm-plan DIGEST`, the reviewed saved plan's digest. Anything else refuses the whole run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from orgrunner.cli.escape import visible
from orgrunner.engine.accounts import ACCOUNT_ID
from orgrunner.errors import InputError, SafetyRefusal

MAX_IDS_TO_TYPE = 10
_KEY = object()


class Armed:
    """Proof that the operator confirmed applying `task` to exactly `accounts`."""

    def __init__(self, key: object, task: str, accounts: Iterable[str]) -> None:
        if key is not _KEY:
            raise TypeError("Armed is made only by orgrunner.safety.confirm")
        self.task = task
        self.accounts = frozenset(accounts)

    def covers(self, account_id: str) -> bool:
        return account_id in self.accounts

    def __repr__(self) -> str:
        return f"Armed(task={self.task!r}, accounts={len(self.accounts)})"


def parse_account_list(text: str, flag: str = "--confirm-accounts") -> set[str]:
    ids = {p for p in re.split(r"[\s,]+", text.strip()) if p}
    if not ids:
        raise InputError(f"{flag}: no account ids given")
    bad = sorted(i for i in ids if not ACCOUNT_ID.match(i))
    if bad:
        raise InputError(f"{flag}: {bad[0]!r} is not a 12-digit account id")
    return ids


def expected_answer(task: str, accounts: set[str]) -> str:
    if len(accounts) > MAX_IDS_TO_TYPE:
        return f"{len(accounts)} {task}"
    return " ".join(sorted(accounts))


def prompt_text(task: str, accounts: set[str]) -> str:
    if len(accounts) > MAX_IDS_TO_TYPE:
        return (f"To apply, type the number of accounts and the task name ({len(accounts)} accounts): "
                f"'<count> {task}': ")
    return "To apply, type the ids of the accounts with planned changes (any order): "


MAX_ATTEMPTS = 3


def mismatch(task: str, accounts: set[str], answer: str) -> str | None:
    """What is wrong with a typed confirmation (None: it names exactly these accounts)."""
    if len(accounts) > MAX_IDS_TO_TYPE:
        if " ".join(answer.split()) == expected_answer(task, accounts):
            return None
        return f"expected the number of accounts and the task name, '<count> {task}'"
    words = set(re.split(r"[\s,]+", answer)) - {""}
    if words == accounts:
        return None
    ids = {w for w in words if ACCOUNT_ID.match(w)}
    missing, extra, other = sorted(accounts - ids), sorted(ids - accounts), len(words - ids)
    parts = ([f"missing {len(missing)}: {', '.join(missing)}"] if missing else []) + (
        [f"not to be changed {len(extra)}: {', '.join(extra)}"] if extra else []) + (
        [f"{other} word(s) that are not account ids"] if other else [])
    return "; ".join(parts) or "no account ids typed"


def confirm_interactive(task: str, accounts: set[str], ask: Callable[[str], str],
                        tell: Callable[[str], None] | None = None,
                        on_attempt: Callable[[int, str | None], None] | None = None) -> Armed:
    """Ask up to MAX_ATTEMPTS times (the plan stays as it is); the answer must name exactly these
    accounts (or the count and the task name). A wrong answer is explained (`tell`: which ids are
    missing or extra); `on_attempt(number, problem)` records every attempt. End of input refuses."""
    problem: str | None = "no answer"
    for attempt in range(1, MAX_ATTEMPTS + 1):
        raw = ask(prompt_text(task, accounts))
        problem = mismatch(task, accounts, raw.strip()) if raw else "no answer (end of input)"
        if on_attempt is not None:
            on_attempt(attempt, problem)
        if problem is None:
            return Armed(_KEY, task, accounts)
        if not raw or attempt == MAX_ATTEMPTS:
            break
        if tell is not None:
            tell(f"That does not match: {problem}. {MAX_ATTEMPTS - attempt} attempt(s) left.")
    raise SafetyRefusal(f"confirmation did not match the accounts with planned changes ({problem}); "
                        "nothing applied")


def confirm_listed(task: str, accounts: set[str], targets: set[str], listed: set[str]) -> Armed:
    """Non-interactive confirmation by the exact account set stated by the operator."""
    missing = sorted(accounts - listed)
    if missing:
        raise SafetyRefusal(
            f"--confirm-accounts does not include {len(missing)} account(s) with planned changes: "
            f"{', '.join(missing[:10])}; nothing applied"
        )
    strangers = sorted(listed - targets)
    if strangers:
        raise SafetyRefusal(
            f"--confirm-accounts names {len(strangers)} account(s) that are not targets of this run: "
            f"{', '.join(strangers[:10])}; nothing applied"
        )
    return Armed(_KEY, task, accounts)


def confirm_protected(protected: dict[str, str], ask: Callable[[str], str] | None,
                      listed: set[str] | None) -> None:
    """Protected accounts with planned changes need their own confirmation: their names typed
    (or their ids) at the terminal, or their ids in `--confirm-protected`. Raises SafetyRefusal otherwise."""
    if not protected:
        return
    if listed is not None:
        if listed != set(protected):
            raise SafetyRefusal(
                "--confirm-protected must name exactly the protected accounts with planned changes: "
                f"{', '.join(sorted(protected))}; nothing applied")
        return
    if ask is None:
        raise SafetyRefusal(
            f"{len(protected)} protected account(s) have planned changes; without a terminal, confirm them "
            f"with --confirm-protected {','.join(sorted(protected))}; nothing applied")
    names = sorted(protected.values())
    shown = ", ".join(f"{visible(protected[i])} ({i})" for i in sorted(protected))
    answer = ask(f"Protected accounts will change: type their names, or their ids ({shown}): ")
    typed = sorted(w for w in re.split(r"[\s,]+", answer.strip()) if w)
    words = sorted(w for name in names for w in re.split(r"[\s,]+", name) if w)
    if typed != words and typed != sorted(protected):  # the ids: a name may hold what no one can type
        raise SafetyRefusal("protected accounts were not confirmed by name or id; nothing applied")


def confirm_plan(task: str, accounts: set[str], digest: str) -> Armed:
    """`apply --confirm-plan DIGEST`: the operator approved the saved plan whose digest this is, and
    the caller has checked that the file applied is that plan and the live plan still equals it."""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise SafetyRefusal("--confirm-plan: not a plan digest; nothing applied")
    return Armed(_KEY, task, accounts)


def confirm_unguarded(task: str, accounts: set[str]) -> Armed:
    """`--arm` alone: only for plans whose every change merely tightens a setting."""
    return Armed(_KEY, task, accounts)


def share_of(armed: Armed, task: str, accounts: Iterable[str]) -> Armed:
    """One task's share of a confirmation that covered several tasks (a baseline's): the accounts
    this task changes, every one of them confirmed; never one more."""
    wanted = frozenset(accounts)
    if not wanted <= armed.accounts:
        raise SafetyRefusal(f"{task}: {len(wanted - armed.accounts)} account(s) with planned changes were not "
                            "confirmed; nothing applied")
    return Armed(_KEY, task, wanted)


def relayed(task: str, accounts: Iterable[str]) -> Armed:
    """In a worker process: the parent's confirmation, relayed with the apply work it hands over.
    The worker holds no other way to write: the parent sends apply-phase credentials only for the
    accounts its own confirmation covers (orgrunner.engine.workers)."""
    return Armed(_KEY, task, accounts)


# --- closing accounts -------------------------------------------------------------------------------

NO_REOPEN = "AWS Support can reopen a closed account within 90 days of the closure, never after"


def parse_names(text: str, flag: str = "--confirm-close") -> list[str]:
    """`--confirm-close NAMES`: account names, comma separated (a name may hold spaces)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InputError(f"{flag}: no account names given")
    return names


def _closure_mismatch(closing: dict[str, str], typed: list[str]) -> str | None:
    """What is wrong with names typed to confirm closing `closing` (id -> name); None: exact."""
    wanted = sorted(closing.values())
    if sorted(typed) == wanted:
        return None
    ids = [t for t in typed if ACCOUNT_ID.match(t) and t not in wanted]
    missing = [n for n in wanted if n not in typed]
    extra = [t for t in typed if t not in wanted and t not in ids]
    parts = ([f"{len(ids)} account id(s) typed: type the account names, not ids"] if ids else []) + (
        [f"missing {', '.join(visible(n) for n in missing)}"] if missing else []) + (
        [f"not closed by this plan: {', '.join(visible(n) for n in extra)}"] if extra else [])
    return "; ".join(parts) or "a name typed more or fewer times than planned"


def confirm_closures(closing: dict[str, str], ask: Callable[[str], str] | None, listed: list[str] | None) -> None:
    """Closing accounts (id -> name, as the organization lists them) needs its own confirmation, on
    top of the accounts': their names typed at the terminal, or in `--confirm-close NAMES`; exactly
    those, not their ids (an id typed from a plan is easily the wrong one). Raises SafetyRefusal."""
    if not closing:
        if listed is not None:
            raise SafetyRefusal("--confirm-close names accounts, but the plan closes none; nothing applied")
        return
    shown = ", ".join(f"{visible(name)} ({i})" for i, name in sorted(closing.items(), key=lambda x: (x[1], x[0])))
    if listed is None and ask is None:
        raise SafetyRefusal(f"the plan CLOSES {len(closing)} account(s): {shown}. Without a terminal, confirm "
                            "with --confirm-close and their names; nothing applied")
    how = "--confirm-close" if listed is not None else "the names typed"
    if listed is None:
        assert ask is not None
        answer = ask(f"The plan CLOSES {len(closing)} account(s): {shown}. {NO_REOPEN}. "
                     "Type their names, comma separated: ")
        listed = [n.strip() for n in answer.split(",") if n.strip()]
    problem = _closure_mismatch(closing, listed)
    if problem is not None:
        raise SafetyRefusal(f"{how} must name exactly the accounts the plan closes, by name: {shown} "
                            f"({problem}); nothing applied")
