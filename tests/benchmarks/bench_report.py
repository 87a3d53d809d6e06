"""Report rendering at scale: how long `orgrunner report` takes after planning, at 1,000 accounts.

    .venv/bin/python -m tests.benchmarks.bench_report [--accounts 1000] [--tasks 5] [--regions 4]

A benchmark, not a test. Planning is not measured here (it is the dry run's engine, measured by
bench_scale); this is the part the report adds: the matrix filled from the stream of plan
results (accounts x tasks x regions of them, some with changes, some failed), then the document
rendered in every format (and Confluence's storage format). Prints seconds and sizes.
"""

from __future__ import annotations

import argparse
import random
import time

from orgrunner.engine.runner import TargetResult
from orgrunner.publish import compliance
from orgrunner.task import GLOBAL_REGION, Change, Target, TaskSpec

REGIONS = ["us-east-1", "eu-west-1", "us-west-2", "ap-southeast-2", "eu-central-1", "sa-east-1"]
OUS = ["Root/Workloads/Prod", "Root/Workloads/NonProd", "Root/Workloads/NonProd/Sandbox", "Root/Security",
       "Root/Infrastructure", "Root/Suspended"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--regions", type=int, default=4)
    args = parser.parse_args()
    rng = random.Random(14)
    tasks = [TaskSpec(name=f"task-{i + 1}", description="", destructive=False, regional=i % 2 == 0, version="1",
                      plan_actions=(), apply_actions=()) for i in range(args.tasks)]
    accounts = [(f"{100000000000 + i:012d}", f"account-{i:04d}") for i in range(args.accounts)]
    regions = REGIONS[: args.regions]

    started = time.perf_counter()
    matrix = compliance.Matrix()
    results = 0
    for index, task in enumerate(tasks):
        for account_id, name in accounts:
            for region in (regions if index % 2 == 0 else [GLOBAL_REGION]):
                target = Target(account_id, region, name)
                roll = rng.random()
                if roll < 0.02:
                    result = TargetResult(target, "plan", "failed", error="AccessDenied: injected")
                else:
                    changes = tuple(Change(account_id, region, f"sg-{n}", "revoke", "revoke a rule",
                                           destructive=roll < 0.3) for n in range(int(roll * 4) if roll < 0.5 else 0))
                    result = TargetResult(target, "plan", "ok", changes=changes)
                matrix.observe(task, result)
                results += 1
    observed = time.perf_counter() - started

    names = [t.name for t in tasks]
    rows = [compliance.Row(id=a, name=n, ou_path=OUS[i % len(OUS)], state="ACTIVE",
                           tags={"env": rng.choice(["prod", "dev"]), "team": f"team-{i % 17}"},
                           regions=sorted(matrix.regions.get(a, ())), targeted=True,
                           cells={t: matrix.cell(a, t) for t in names}) for i, (a, n) in enumerate(accounts)]
    document = compliance.Document(run_id="20261202T000000Z-000000", generated="2026-12-02T00:00:00+00:00",
                                   organization_id="o-benchmark", tasks=names, rows=rows)
    print(f"{args.accounts} accounts x {args.tasks} tasks ({results} plan results): matrix filled in "
          f"{observed:.2f} s")
    for fmt in (*compliance.FORMATS, "storage"):
        started = time.perf_counter()
        text = compliance.render(document, fmt)
        took = time.perf_counter() - started
        print(f"  {fmt:<9} {took:6.2f} s  {len(text.encode()) / 1024:8.0f} KiB")


if __name__ == "__main__":
    main()
