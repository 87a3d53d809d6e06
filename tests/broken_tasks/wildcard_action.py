"""wildcard-action: plan_actions holds `ec2:Describe*`; it must fail to load."""

from __future__ import annotations

from orgrunner.task import Change, Task, TaskContext, register


@register
class WildcardAction(Task):
    name = "wildcard-action"
    description = "Broken on purpose: an action wildcard."
    destructive = False
    plan_actions = ("ec2:Describe*",)
    apply_actions = ()

    def plan(self, ctx: TaskContext) -> list[Change]:
        return []
