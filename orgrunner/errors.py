"""The errors orgrunner raises, and the exit code each maps to.

```
OrgrunnerError                  base; carries the exit code the CLI uses
 +-- InputError          (2)    bad usage or input: unknown task, malformed config,
 |    |                         invalid account id or region; raised before any AWS write
 |    +-- TaskLoadError  (2)    a task whose declaration is invalid (reported, others still load)
 +-- SafetyRefusal       (3)    a safety rule refused the run: no or wrong confirmation,
 |                              implicit default profile, long-term keys on an armed run
 +-- CallNotAllowed      (-)    the call guard stopped an undeclared or mutating call;
 |                              fails the one target, never the run
 +-- TargetError         (-)    one account x region failed (role missing, access denied...)
 +-- RecordError        (70)    the journal or the audit log could not be written: the records
                                fail closed (a change whose intent is not durable is not applied)
```
Exit codes: 0 success, 1 one or more targets failed, 2 bad input, 3 refused by safety,
4 changes pending (a dry run with --fail-on-changes), 70 internal error, 75 another run holds the
lock (orgrunner.safety.lock), 130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_TARGETS_FAILED = 1
EXIT_INPUT = 2
EXIT_SAFETY = 3
EXIT_CHANGES_PENDING = 4
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: nothing new starts, work in flight finishes and is recorded."""


class OrgrunnerError(Exception):
    """Base of every error orgrunner raises on purpose."""

    exit_code = EXIT_TARGETS_FAILED


class InputError(OrgrunnerError):
    """Bad usage or input; the message is one line naming the problem."""

    exit_code = EXIT_INPUT


class TaskLoadError(InputError):
    """A task could not be loaded: bad declaration, duplicate name, policy too large."""


class SafetyRefusal(OrgrunnerError):
    """A safety rule refused the run; nothing was applied."""

    exit_code = EXIT_SAFETY


class CallNotAllowed(OrgrunnerError):
    """The client-side call guard refused an API call before it left the machine."""


class TargetError(OrgrunnerError):
    """One target (account or account x region) failed; the run goes on."""


class ConfigMismatch(TargetError):
    """A task's config file names what the live organization does not have (an OU path that does
    not exist): found while planning, it is bad input like any other, so the run applies nothing
    and exits 2 with the entry named. Raise it from `plan`."""

    exit_code = EXIT_INPUT


class RecordError(OrgrunnerError):
    """The journal or the audit log could not be written (disk full, folder gone...)."""

    exit_code = EXIT_INTERNAL
