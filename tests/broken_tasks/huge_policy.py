"""huge-policy: a task declaring 300 distinct, real read actions; its session policy is far over
AWS's limit, so it must fail to load (and never reach AssumeRole)."""

from __future__ import annotations

from orgrunner.safety import iamdata
from orgrunner.task import Change, Task, TaskContext, register

_READS = [a for a in iamdata.service_actions("ec2") if iamdata.is_read(a)][:300]


@register
class HugePolicy(Task):
    name = "huge-policy"
    description = "Broken on purpose: declares far too many actions."
    destructive = False
    plan_actions = tuple(_READS)
    apply_actions = ()

    def plan(self, ctx: TaskContext) -> list[Change]:
        return []
