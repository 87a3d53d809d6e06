"""forges-protocol: a task that writes to its worker's protocol socket itself.

In us-east-1 it reports a result for an account it was never handed; in eu-west-1 it asks for the
credentials of another account. The parent checks every message against what it handed the
worker: either ends the worker and fails the targets it held (tests/test_attacks.py).
"""

from __future__ import annotations

import json
import os
import stat

from orgrunner.task import Change, Task, TaskContext, register

STRANGER = "000000000000"


def _socket() -> int:
    return next(fd for fd in range(3, 256) if _is_socket(fd))


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


@register
class ForgesProtocol(Task):
    name = "forges-protocol"
    description = "Hostile on purpose: forges messages to the parent."
    destructive = False
    plan_actions = ("ec2:DescribeVpcs",)
    apply_actions = ()

    def plan(self, ctx: TaskContext) -> list[Change]:
        if ctx.region == "us-east-1":
            message = {"op": "result", "account": STRANGER, "region": "us-east-1", "phase": "plan", "status": "ok",
                       "changes": [], "outcomes": [], "error": None, "notes": []}
        else:
            message = {"op": "creds?", "account": STRANGER}
        os.write(_socket(), json.dumps(message).encode() + b"\n")
        ctx.client("ec2").describe_vpcs()
        return []
