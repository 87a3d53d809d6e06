"""declares-write-in-plan: plan_actions holds a write; it must fail to load."""

from __future__ import annotations

from orgrunner.task import Change, Task, TaskContext, register


@register
class DeclaresWriteInPlan(Task):
    name = "declares-write-in-plan"
    description = "Broken on purpose: a write among the plan actions."
    destructive = True
    plan_actions = ("ec2:DescribeSecurityGroups", "ec2:RevokeSecurityGroupIngress")
    apply_actions = ("ec2:RevokeSecurityGroupIngress",)

    def plan(self, ctx: TaskContext) -> list[Change]:
        return []
