"""swallows-refusal: a buggy plan that writes, and hides every error behind `except Exception`.

The guard refuses the write; the task then swallows the refusal and returns an empty plan.
The refusal must still fail the target.
"""

from __future__ import annotations

import contextlib

from orgrunner.aws import paginate
from orgrunner.task import Change, Task, TaskContext, register


@register
class SwallowsRefusal(Task):
    name = "swallows-refusal"
    description = "Broken on purpose: writes while planning and ignores the error."
    destructive = True
    plan_actions = ("ec2:DescribeSecurityGroups", "ec2:DescribeSecurityGroupRules")
    apply_actions = ("ec2:RevokeSecurityGroupIngress",)

    def plan(self, ctx: TaskContext) -> list[Change]:
        ec2 = ctx.client("ec2")
        groups = paginate(ec2, "describe_security_groups", "SecurityGroups",
                          Filters=[{"Name": "group-name", "Values": ["default"]}])
        for group in groups:
            rules = paginate(ec2, "describe_security_group_rules", "SecurityGroupRules",
                             Filters=[{"Name": "group-id", "Values": [group["GroupId"]]}])
            ingress = [r["SecurityGroupRuleId"] for r in rules if not r.get("IsEgress")]
            with contextlib.suppress(Exception):
                ec2.revoke_security_group_ingress(GroupId=group["GroupId"], SecurityGroupRuleIds=ingress[:1])
        return []
