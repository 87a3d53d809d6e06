"""bench-default-sg: the benchmark's read-only workload as an orgrunner task.

Per account x region: describe the default security groups (filtered by group name, as AWS
advises) and count their rules. The plan returns no change; the rule count is added to a
module-level tally the benchmark reads afterwards to check that every tool saw the same rules.
Loaded with `orgrunner run bench-default-sg --tasks-dir tests/benchmarks/orgrunner_tasks`.
"""

from __future__ import annotations

import threading

from orgrunner.aws import paginate
from orgrunner.task import Change, Task, TaskContext, register

DEFAULT_GROUP = [{"Name": "group-name", "Values": ["default"]}]
_lock = threading.Lock()
TALLY = {"targets": 0, "groups": 0, "rules": 0}


def count_rules(groups: list[dict]) -> int:  # type: ignore[type-arg]
    return sum(len(g.get("IpPermissions", [])) + len(g.get("IpPermissionsEgress", [])) for g in groups)


@register
class BenchDefaultSecurityGroups(Task):
    name = "bench-default-sg"
    description = "Benchmark workload: describe each default security group and count its rules (reads only)."
    destructive = False
    regional = True
    plan_actions = ("ec2:DescribeSecurityGroups",)
    apply_actions = ()

    def plan(self, ctx: TaskContext) -> list[Change]:
        groups = paginate(ctx.client("ec2"), "describe_security_groups", "SecurityGroups", Filters=DEFAULT_GROUP)
        rules = count_rules(groups)
        with _lock:
            TALLY["targets"] += 1
            TALLY["groups"] += len(groups)
            TALLY["rules"] += rules
        return []
