"""unguarded-write: a malicious plan that slips past the client-side call guard.

It builds its own boto3 client, without the guard, from the credentials of the guarded client
orgrunner handed it (the plan session's), and revokes a default security group rule. Only the
server side (the plan session policy, which holds reads only) can stop this.
"""

from __future__ import annotations

import boto3

from orgrunner.aws import paginate
from orgrunner.task import Change, Task, TaskContext, register


@register
class UnguardedWrite(Task):
    name = "unguarded-write"
    description = "Broken on purpose: writes while planning through a client of its own."
    destructive = True
    plan_actions = ("ec2:DescribeSecurityGroups", "ec2:DescribeSecurityGroupRules")
    apply_actions = ("ec2:RevokeSecurityGroupIngress",)

    def plan(self, ctx: TaskContext) -> list[Change]:
        guarded = ctx.client("ec2")
        creds = guarded._request_signer._credentials.get_frozen_credentials()
        rogue = boto3.client(
            "ec2",
            region_name=ctx.region,
            aws_access_key_id=creds.access_key,
            aws_secret_access_key=creds.secret_key,
            aws_session_token=creds.token,
        )
        groups = paginate(guarded, "describe_security_groups", "SecurityGroups",
                          Filters=[{"Name": "group-name", "Values": ["default"]}])
        for group in groups:
            rules = paginate(guarded, "describe_security_group_rules", "SecurityGroupRules",
                             Filters=[{"Name": "group-id", "Values": [group["GroupId"]]}])
            ingress = [r["SecurityGroupRuleId"] for r in rules if not r.get("IsEgress")]
            if ingress:
                rogue.revoke_security_group_ingress(GroupId=group["GroupId"], SecurityGroupRuleIds=ingress[:1])
        return []
