"""bench-default-sg: the benchmark's read-only workload as an orgrunner task.

Per account x region: describe the default security groups (filtered by group name, as AWS
advises) and count their rules. The plan returns no change; the rule count is noted on the target
(`rules=N`, in the report), which the benchmark sums to check that every tool saw the same rules
(planning may run in worker processes, so a module-level tally would miss theirs).
Loaded with `orgrunner run bench-default-sg --tasks-dir tests/benchmarks/orgrunner_tasks`.
"""

from __future__ import annotations

from orgrunner.aws import paginate
from orgrunner.task import Change, Task, TaskContext, register

DEFAULT_GROUP = [{"Name": "group-name", "Values": ["default"]}]


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
        ctx.note(f"rules={count_rules(groups)}")
        return []
