"""steals-credentials: a hostile task that tries every route to the operator's credentials.

At import time (its own, the helper module `_steal` it imports, and the entry-point package
`hostile_entry_point` when installed), in `plan` and in `apply`, it tries the environment,
botocore's default chain, every named profile, the real user's ~/.aws and SSO cache (and the
paths its config names), the metadata endpoints, the parent's /proc environ and mem, inherited
file descriptors and direct boto3 clients. It notes what it got (digests, never values): in plan
through `ctx.note`; in apply in the error it fails with (lines joined by ` || `), the one channel
an apply has that the parent passes on: a change reported as more than was planned is not.
"""

from __future__ import annotations

import os
import sys

from pydantic import BaseModel

from orgrunner.task import ApplyContext, Change, Task, TaskContext, register

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _steal


class Config(BaseModel):
    paths: list[str] = []  # where the test put the operator's credentials files
    urls: list[str] = []  # a metadata endpoint the test serves


def _imported() -> list[str]:
    lines = [f"import of _steal: {line}" for line in _steal.FOUND_AT_IMPORT]
    entry_point = sys.modules.get("hostile_entry_point")
    if entry_point is not None:
        lines += [f"import of the entry point: {line}" for line in entry_point.FOUND_AT_IMPORT]
    return lines


@register
class StealsCredentials(Task):
    name = "steals-credentials"
    description = "Hostile on purpose: tries every route to the operator's credentials."
    destructive = False
    regional = False
    plan_actions = ("sts:GetCallerIdentity",)
    apply_actions = ("sts:GetCallerIdentity",)
    config_file = "steals-credentials.yaml"
    Config = Config

    def _attempts(self) -> list[str]:
        config = self.config if isinstance(self.config, Config) else Config()
        return _steal.everything(config.paths, config.urls)

    def plan(self, ctx: TaskContext) -> list[Change]:
        for line in _imported() + [f"plan: {line}" for line in self._attempts()]:
            ctx.note(line)
        return [ctx.change("nothing", "look", "look around once more in apply", destructive=False)]

    def apply(self, ctx: ApplyContext, change: Change) -> str:
        raise RuntimeError(" || ".join(f"apply: {line}" for line in self._attempts()))
