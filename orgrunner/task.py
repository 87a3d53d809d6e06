"""The task contract: `Task`, `Change`, `Target`, the contexts a task runs in, and the registry.

A task is a short declarative class: a name, a description, whether it is destructive, the IAM
actions it needs to plan (reads only) and to apply, a `plan` that reads and returns changes and
an `apply` that performs exactly one planned change. The engine does everything else.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import pkgutil
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel

from orgrunner.errors import TaskLoadError

Phase = Literal["plan", "apply"]
Scope = Literal["account", "organization"]
SCOPES = ("account", "organization")
GLOBAL_REGION = "global"
TASK_NAME = re.compile(r"\A[a-z][a-z0-9-]{1,48}[a-z0-9]\Z")


@dataclass(frozen=True, order=True)
class Target:
    """One unit of work: an account, and a region (or `global` for account-wide tasks)."""

    account_id: str
    region: str
    account_name: str = field(default="", compare=False)

    def __str__(self) -> str:
        return f"{self.account_id} {self.region}"


@dataclass(frozen=True)
class Change:
    """One planned change, as data: printable, JSON-serialisable and comparable.

    `summary` is one line, `details` the lines printed under it (one per rule, per field...).
    `before` is what the plan saw and `apply` must still find; `after` is the wanted state;
    `undo` holds what is needed to reverse the change once applied. `destructive` is decided by
    the plan: a change that relaxes security is destructive even in a task that usually tightens.
    `risk`, when not empty, says in a few words why a reviewer must look at this change first
    ("ingress open to the internet"): the task decides it; the plan shows such changes first.
    """

    account_id: str
    region: str
    resource: str
    action: str
    summary: str
    details: tuple[str, ...] = ()
    before: Any = None
    after: Any = None
    undo: Any = None
    destructive: bool = True
    risk: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        """SHA-256 of the change's canonical JSON (keys sorted, no spaces, UTF-8): the audit log keeps
        this for each applied change, the journal the change itself, so one can be checked against
        the other."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                               default=str)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def brief(self) -> dict[str, Any]:
        """What the audit log keeps of a change: where, what, in a line, and the digest of the whole."""
        return {"account": self.account_id, "region": self.region, "resource": self.resource,
                "action": self.action, "summary": self.summary, "destructive": self.destructive,
                **({"risk": self.risk} if self.risk else {}), "sha256": self.digest()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Change:
        return cls(**{**data, "details": tuple(data.get("details", ()))})


class Task:
    """Base class of every task. Subclass, fill in the declaration, register with `@register`."""

    name: ClassVar[str]
    description: ClassVar[str]
    destructive: ClassVar[bool]
    plan_actions: ClassVar[tuple[str, ...]]
    apply_actions: ClassVar[tuple[str, ...]]
    regional: ClassVar[bool] = True
    # "account": one target per selected account (x region). "organization": one target, the
    # management account (global), for tasks that change the organization itself (org-accounts).
    scope: ClassVar[Scope] = "account"
    version: ClassVar[str] = "1"
    config_file: ClassVar[str | None] = None
    Config: ClassVar[type[BaseModel] | None] = None
    undo_actions: ClassVar[tuple[str, ...]] = ()  # what reversing an applied change needs

    def __init__(self, config: BaseModel | None = None) -> None:
        self.config = config

    def plan(self, ctx: TaskContext) -> list[Change]:
        """Read the target's state and return the changes that would make it match. Reads only."""
        raise NotImplementedError

    def apply(self, ctx: ApplyContext, change: Change) -> str:
        """Perform exactly one planned change; return its outcome ("applied", "already done").

        Check that `change.before` still holds first, and raise `Drift` if it does not.
        """
        raise NotImplementedError

    def plan_undo(self, ctx: TaskContext, applied: list[Change]) -> list[Change]:
        """Changes that reverse `applied` (this target's changes from a run's journal); reads only.
        What has changed again since is left alone, with a `ctx.note` saying so (`ctx.restorable`).
        `apply` then performs the returned changes like any other. An undo works from the journal
        alone: `self.config` is None, whatever the config file says today."""
        raise NotImplementedError(f"task {self.name!r} does not support undo")


class Drift(Exception):
    """Raised by `apply` when the live state no longer matches the change's `before`."""


class Skip(Exception):
    """Raised by `plan` when the target does not apply (say, the service is not enabled in this
    region): the target is reported as skipped with this message, not failed."""


class TaskContext:
    """What a task sees of one target: the target, the phase, guarded clients, its config."""

    phase: Phase = "plan"

    def __init__(self, task: Task, target: Target, clients: Callable[[str, Phase], Any]) -> None:
        self.task = task
        self.target = target
        self._clients = clients
        self._cache: dict[str, Any] = {}
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        """A remark for the operator about this target (printed and reported with its result)."""
        self.notes.append(text)

    def restorable(self, done: Change, live: Any, what: str) -> bool:
        """For `plan_undo` of a task whose change sets a value: True when `live` is still what the
        run set (`done.after`), so that restoring `done.before` reverses exactly that run. Otherwise
        a note says why it is left alone (already as before the run, or changed since)."""
        if live == done.before:
            self.note(f"{what} is already as it was before the run; nothing to restore")
        elif live != done.after:
            self.note(f"{what} has changed since the run; not restored")
        return bool(live == done.after and live != done.before)

    @property
    def account_id(self) -> str:
        return self.target.account_id

    @property
    def region(self) -> str:
        return self.target.region

    def client(self, service: str) -> Any:
        """A botocore client for this target, guarded to the task's declared actions."""
        if service not in self._cache:
            self._cache[service] = self._clients(service, self.phase)
        return self._cache[service]

    def change(self, resource: str, action: str, summary: str, *, details: Iterable[str] = (),
               before: Any = None, after: Any = None, undo: Any = None, destructive: bool | None = None,
               risk: str = "") -> Change:
        """A `Change` for this target; `destructive` defaults to the task's declaration; `risk` is
        a few words saying why a reviewer must see this change first (empty: an ordinary change)."""
        return Change(
            account_id=self.target.account_id,
            region=self.target.region,
            resource=resource,
            action=action,
            summary=summary,
            details=tuple(details),
            before=before,
            after=after,
            undo=undo,
            destructive=self.task.destructive if destructive is None else destructive,
            risk=risk,
        )


class ApplyContext(TaskContext):
    """The context of the apply phase. Only an `Armed` value, made by the confirmation, opens one."""

    phase: Phase = "apply"

    def __init__(self, task: Task, target: Target, clients: Callable[[str, Phase], Any], armed: Any) -> None:
        from orgrunner.safety.confirm import Armed

        if not isinstance(armed, Armed) or not armed.covers(target.account_id) or armed.task != task.name:
            raise TypeError("an apply context needs the Armed value of a confirmation covering its task and account")
        super().__init__(task, target, clients)
        self.armed = armed
        self.applied: Change | None = None
        self.created: list[str] = []

    def created_account(self, account_id: str) -> None:
        """An organization-scope task created this member account (org-accounts' CreateAccount):
        the run's summary prints the `orgrunner baseline` command for the new accounts."""
        self.created.append(account_id)

    def narrow(self, change: Change) -> None:
        """Record what this apply really did when it is less than the planned change (say, some
        rules were already gone): the journal keeps this, so undo restores only what was done."""
        self.applied = change


def configure(cls: type[Task], config_dir: Path) -> Task:
    """An instance of the task with its YAML config (`config_dir / cls.config_file`) validated.

    A task with a `Config` whose file is absent runs with the model's defaults, if it has them."""
    if cls.Config is None:
        return cls()
    from orgrunner.config import configfile
    from orgrunner.errors import InputError

    path = config_dir / cls.config_file if cls.config_file else None
    if path is not None and path.is_file():
        return cls(configfile.load(path, cls.Config))
    try:
        return cls(cls.Config())
    except ValueError:
        raise InputError(f"task {cls.name!r} needs its config file {path}") from None


# --- registry -------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Task]] = {}
T = TypeVar("T", bound=type[Task])


def register(cls: T) -> T:
    """Class decorator: validate a task's declaration and add it to the registry."""
    from orgrunner.safety.policy import check_declaration

    check_declaration(cls)
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise TaskLoadError(
            f"task {cls.name!r} from {cls.__module__} duplicates the name of the task from {existing.__module__}"
        )
    _REGISTRY[cls.name] = cls
    return cls


@dataclass
class LoadedTasks:
    """The tasks that loaded, and one message for each source that failed to load."""

    tasks: dict[str, type[Task]]
    errors: list[str]

    def get(self, name: str) -> type[Task]:
        from orgrunner.errors import InputError

        if name in self.tasks:
            return self.tasks[name]
        broken = [e for e in self.errors if repr(name) in e]
        if broken:
            raise TaskLoadError(broken[0])
        known = ", ".join(sorted(self.tasks)) or "none"
        raise InputError(f"unknown task {name!r} (known tasks: {known})")


# The installed package of the built-in tasks (the repository's tasks/ folder, mapped in
# pyproject.toml under a name no other project uses). Only `builtin_modules` uses it.
BUILTIN_TASKS = "orgrunner_builtin_tasks"


def builtin_modules() -> Iterator[str]:
    """The module names of the built-in tasks: the one way to find them (the CLI and worker
    processes both come here)."""
    try:
        builtin = importlib.import_module(BUILTIN_TASKS)
    except ModuleNotFoundError as exc:
        if exc.name != BUILTIN_TASKS:
            raise
        raise TaskLoadError(f"the built-in tasks ({BUILTIN_TASKS}) are not installed; "
                            "reinstall orgrunner (pip install -e . in a checkout)") from None
    for info in pkgutil.iter_modules(builtin.__path__, prefix=f"{BUILTIN_TASKS}."):
        if not info.name.rsplit(".", 1)[-1].startswith("_"):
            yield info.name


def _import_file(path: Path) -> None:
    module_name = f"orgrunner_local_tasks.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise


def load_tasks(tasks_dir: Path | None = None) -> LoadedTasks:
    """Import built-in tasks, tasks of installed packages (entry point group `orgrunner.tasks`)
    and, if given, the task files of a folder. A source that fails is reported, never fatal."""
    errors: list[str] = []
    try:
        sources: list[tuple[str, Callable[[], object]]] = [
            (name, functools.partial(importlib.import_module, name)) for name in builtin_modules()
        ]
    except TaskLoadError as exc:
        sources, errors = [], [str(exc)]
    for ep in importlib.metadata.entry_points(group="orgrunner.tasks"):
        sources.append((f"entry point {ep.name} ({ep.value})", ep.load))
    if tasks_dir is not None:
        from orgrunner.errors import InputError

        if not tasks_dir.is_dir():
            raise InputError(f"--tasks-dir {tasks_dir}: not a folder")
        for path in sorted(tasks_dir.glob("*.py")):
            if not path.name.startswith("_"):
                sources.append((str(path), functools.partial(_import_file, path)))
    for source, load in sources:
        try:
            load()
        except TaskLoadError as exc:
            errors.append(f"{source}: {exc}")
        except Exception as exc:  # a broken third-party module must not hide the others
            errors.append(f"{source}: failed to import: {type(exc).__name__}: {exc}")
    return LoadedTasks(tasks=dict(sorted(_REGISTRY.items())), errors=errors)


# --- declarations as data ---------------------------------------------------------------------

@dataclass(frozen=True)
class TaskSpec:
    """A task's declaration as data: what a worker process tells the parent about a task it loaded.
    The parent never imports task code; it builds session policies, confirmations and records from
    this, after checking it as it checks a task class (`policy.check_declaration`)."""

    name: str
    description: str
    destructive: bool
    regional: bool
    version: str
    plan_actions: tuple[str, ...]
    apply_actions: tuple[str, ...]
    undo_actions: tuple[str, ...] = ()
    config_file: str | None = None
    doc: str = ""
    module: str = ""
    undoable: bool = False
    defaults: str = ""  # the task's config with every default, as YAML, for when its file is absent
    scope: Scope = "account"

    @classmethod
    def of(cls, task: type[Task]) -> TaskSpec:
        module = sys.modules.get(task.__module__)
        return cls(
            name=task.name, description=task.description, destructive=bool(task.destructive),
            regional=bool(task.regional), version=str(task.version), plan_actions=tuple(task.plan_actions),
            apply_actions=tuple(task.apply_actions), undo_actions=tuple(task.undo_actions),
            config_file=task.config_file, doc=((module.__doc__ or "") if module else "").strip(),
            module=task.__module__, undoable=bool(task.undo_actions) and task.plan_undo is not Task.plan_undo,
            defaults=_defaults(task), scope=task.scope,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> TaskSpec:
        """A declaration sent by a worker: every field checked for its type, then the declaration
        itself as `register` checks a class. Raises ValueError."""
        from orgrunner.safety.policy import check_declaration

        if not isinstance(data, dict) or set(data) != {f for f in cls.__dataclass_fields__}:
            raise ValueError("not a task declaration")
        text = ("name", "description", "version", "doc", "module", "defaults", "scope")
        flags = ("destructive", "regional", "undoable")
        lists = ("plan_actions", "apply_actions", "undo_actions")
        if not all(isinstance(data[k], str) for k in text) or not all(isinstance(data[k], bool) for k in flags) \
                or not all(isinstance(data[k], list) and all(isinstance(a, str) for a in data[k]) for k in lists) \
                or not (data["config_file"] is None or isinstance(data["config_file"], str)):
            raise ValueError("a task declaration with a field of the wrong type")
        spec = cls(**{**data, **{k: tuple(data[k]) for k in lists}})
        check_declaration(spec)
        config = Path(spec.config_file) if spec.config_file is not None else None
        if config is not None and (config.is_absolute() or ".." in config.parts):
            raise ValueError(f"task {spec.name!r}: config_file must be a file name under the config folder")
        return spec


def _defaults(task: type[Task]) -> str:
    """The task's config as its built-in defaults make it (YAML), or "" when it has none."""
    if task.Config is None:
        return ""
    try:
        values = task.Config().model_dump(mode="json")
    except ValueError:  # a required field: the task cannot run without its file
        return ""
    import yaml

    return str(yaml.safe_dump(values, sort_keys=False, default_flow_style=False))


def builtin_package_paths() -> list[Path]:
    """Where the built-in tasks live, found without importing them (a worker must be able to read it)."""
    spec = importlib.util.find_spec(BUILTIN_TASKS)
    if spec is None or spec.submodule_search_locations is None:
        return []
    return [Path(p) for p in spec.submodule_search_locations]
