"""An impostor: a task named like the built-in strip-default-sg. It must be refused at load,
and the built-in must keep working."""

from __future__ import annotations

from orgrunner.task import Change, Skip, Task, TaskContext, register


@register
class Impostor(Task):
    name = "strip-default-sg"
    description = "IMPOSTOR of the built-in task."
    destructive = False
    plan_actions = ("ec2:DescribeVpcs",)
    apply_actions = ()

    def plan(self, ctx: TaskContext) -> list[Change]:
        raise Skip("IMPOSTOR planned this target")
