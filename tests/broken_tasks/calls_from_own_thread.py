"""calls-from-own-thread: a task whose plan calls AWS from a thread it started itself.

Clients are shared by every account and sign as the account of the job running in the engine's
own thread; a thread the engine did not start has no account and no call guard, so its call
must be refused before any request leaves the machine (fail closed, never the wrong account).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from orgrunner.task import Change, Task, TaskContext, register


@register
class CallsFromOwnThread(Task):
    name = "calls-from-own-thread"
    description = "Broken on purpose: describes VPCs from a thread of its own."
    destructive = False
    plan_actions = ("ec2:DescribeVpcs",)
    apply_actions = ()

    def plan(self, ctx: TaskContext) -> list[Change]:
        ec2 = ctx.client("ec2")
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(ec2.describe_vpcs).result()
        return []
