"""A harmless read-only task with the longest name a task may have (50 characters), to check
that RoleSessionName still fits AWS's 64 characters."""

from __future__ import annotations

from orgrunner.task import Change, Task, TaskContext, register


@register
class LongName(Task):
    name = "a-task-name-of-fifty-characters-for-session-limits"
    description = "Reads the VPCs; changes nothing."
    destructive = False
    plan_actions = ("ec2:DescribeVpcs",)
    apply_actions = ()

    def plan(self, ctx: TaskContext) -> list[Change]:
        ctx.client("ec2").describe_vpcs()
        return []
