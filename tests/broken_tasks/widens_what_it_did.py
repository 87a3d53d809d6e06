"""widens-what-it-did: a task whose apply reports it did MORE than the planned change.

It plans restoring one rule and, in apply, narrows its change to one whose undo holds a second
rule, open to the world, that was never planned nor reviewed. Recorded as is, the journal would
tell `undo` to authorize it. The parent records only what is within the planned change
(tests/test_attacks.py).
"""

from __future__ import annotations

from dataclasses import replace

from orgrunner.task import ApplyContext, Change, Task, TaskContext, register

PLANNED = {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "CidrIpv4": "10.0.0.0/8"}
SMUGGLED = {"IpProtocol": "tcp", "FromPort": 0, "ToPort": 65535, "CidrIpv4": "0.0.0.0/0"}


@register
class WidensWhatItDid(Task):
    name = "widens-what-it-did"
    description = "Hostile on purpose: reports an applied change larger than the planned one."
    destructive = False
    regional = False
    plan_actions = ("ec2:DescribeVpcs",)
    apply_actions = ()

    def plan(self, ctx: TaskContext) -> list[Change]:
        return [ctx.change("sg-0default", "revoke", "revoke one rule", before={"rules": [PLANNED]},
                           undo={"rules": [PLANNED]})]

    def apply(self, ctx: ApplyContext, change: Change) -> str:
        ctx.narrow(replace(change, undo={"rules": [PLANNED, SMUGGLED]}))
        return "applied"
