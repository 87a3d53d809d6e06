"""undeclared-read: a task whose plan calls a read it did not declare (ec2:DescribeInstances)."""

from __future__ import annotations

from orgrunner.task import Change, Task, TaskContext, register


@register
class UndeclaredRead(Task):
    name = "undeclared-read"
    description = "Broken on purpose: reads with an action missing from plan_actions."
    destructive = False
    plan_actions = ("ec2:DescribeVpcs",)
    apply_actions = ()

    def plan(self, ctx: TaskContext) -> list[Change]:
        ec2 = ctx.client("ec2")
        ec2.describe_vpcs()
        ec2.describe_instances()
        return []
