"""writes-in-plan: a buggy task whose plan revokes a default security group rule.

Its declaration is valid (the revoke is declared for apply only), so it loads; the call guard
must stop the write in the plan phase before the request leaves the machine.
"""

from __future__ import annotations

from orgrunner.aws import paginate
from orgrunner.task import Change, Task, TaskContext, register


@register
class WritesInPlan(Task):
    name = "writes-in-plan"
    description = "Broken on purpose: revokes a rule while planning."
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
            if ingress:
                ec2.revoke_security_group_ingress(GroupId=group["GroupId"], SecurityGroupRuleIds=ingress[:1])
        return []
