"""huge-policy: a task declaring ~300 distinct read actions; its session policy is far over
AWS's limit, so it must fail to load (and never reach AssumeRole)."""

from __future__ import annotations

from orgrunner.task import Change, Task, TaskContext, register

_SERVICES = ("ec2", "iam", "s3", "rds", "lambda", "cloudtrail")
_VERBS = ("Describe", "Get", "List")
_NOUNS = tuple(f"Resource{i:02d}Configuration" for i in range(17))


@register
class HugePolicy(Task):
    name = "huge-policy"
    description = "Broken on purpose: declares far too many actions."
    destructive = False
    plan_actions = tuple(f"{s}:{v}{n}" for s in _SERVICES for v in _VERBS for n in _NOUNS)  # 306 actions
    apply_actions = ()

    def plan(self, ctx: TaskContext) -> list[Change]:
        return []
