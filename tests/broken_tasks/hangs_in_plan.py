"""hangs-in-plan: a task whose plan never returns in eu-west-1 (a hung call, a deadlock).

Its worker stops making progress; the parent ends it after `worker_timeout` and fails every
target the worker had not reported, by name (tests/test_processes.py).
"""

from __future__ import annotations

import threading

from orgrunner.task import Change, Task, TaskContext, register


@register
class HangsInPlan(Task):
    name = "hangs-in-plan"
    description = "Broken on purpose: never returns from plan in eu-west-1."
    destructive = False
    plan_actions = ("ec2:DescribeVpcs",)
    apply_actions = ()

    def plan(self, ctx: TaskContext) -> list[Change]:
        ctx.client("ec2").describe_vpcs()
        if ctx.region == "eu-west-1":
            threading.Event().wait()
        return []
