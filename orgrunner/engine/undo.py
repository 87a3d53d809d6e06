"""Undo: a run's journal turned into a task whose plan reverses what that run applied.

The reversal is an ordinary task for the engine (plan, confirm, apply), so undo gets the same
dry run, session policies, call guard and typed confirmation as any run. Its apply phase may use
only the task's declared `undo_actions`. Restoring what a run removed usually relaxes security,
so a reversal is always destructive: it needs `--arm` and the typed confirmation.
"""

from __future__ import annotations

from orgrunner.errors import InputError
from orgrunner.safety.policy import check_declaration
from orgrunner.task import ApplyContext, Change, Task, TaskContext


def reversal(task: Task, applied: list[Change]) -> Task:
    cls = type(task)
    if not cls.undo_actions or cls.plan_undo is Task.plan_undo:
        raise InputError(f"task {cls.name!r} does not support undo")
    by_target: dict[tuple[str, str], list[Change]] = {}
    for change in applied:
        by_target.setdefault((change.account_id, change.region), []).append(change)

    class Reversal(Task):
        name = f"{cls.name}-undo"
        description = f"Reverse what a run of {cls.name} applied."
        destructive = True
        regional = cls.regional
        scope = cls.scope
        version = cls.version
        plan_actions = cls.plan_actions
        apply_actions = cls.undo_actions

        def plan(self, ctx: TaskContext) -> list[Change]:
            return task.plan_undo(ctx, by_target.get((ctx.account_id, ctx.region), []))

        def apply(self, ctx: ApplyContext, change: Change) -> str:
            return task.apply(ctx, change)

    check_declaration(Reversal)
    return Reversal(task.config)
