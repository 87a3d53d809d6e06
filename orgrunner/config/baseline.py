"""The baseline: the tasks whose desired state the organization is held to, in order.

`config/baseline.yaml` (beside the settings file, like every task config) holds one key:

```yaml
tasks:                       # task names, in the order reports show them; each once
  - strip-default-sg
  - iam-password-policy
```

`orgrunner report` plans every task of the baseline (unless tasks are named on its command
line). It is validated on load like every config file (unknown keys, a name that is not a
registered task, a duplicate: one line with the file and line), and this is the one loader:
whatever else uses the baseline reads it through `load`.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

from orgrunner.config import configfile
from orgrunner.task import TASK_NAME

FILE = "baseline.yaml"


def _task_name(name: str, info: ValidationInfo) -> str:
    """One entry: a task name, registered (when the caller knows the registry), listed once.
    Checked per entry, so an error names the entry's own line."""
    context = info.context if isinstance(info.context, dict) else {}
    known: Collection[str] | None = context.get("known")
    seen: set[str] = context.setdefault("seen", set())
    if not TASK_NAME.match(name):
        raise ValueError(f"{name!r} is not a task name")
    if known is not None and name not in known:
        raise ValueError(f"{name!r} is not a registered task (see `orgrunner tasks`)")
    if name in seen:
        raise ValueError(f"{name!r} is listed twice")
    seen.add(name)
    return name


class Baseline(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: tuple[Annotated[str, AfterValidator(_task_name)], ...] = Field(min_length=1)


def path_in(config_dir: Path) -> Path:
    return config_dir / FILE


def load(path: Path, known: Collection[str] | None = None) -> Baseline:
    """The baseline at `path`, each name checked against `known` task names when given."""
    return configfile.load(path, Baseline, {"known": known, "seen": set()})
