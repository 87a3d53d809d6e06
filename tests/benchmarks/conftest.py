"""The benchmarks are scripts (`python -m tests.benchmarks.bench_scale`), never collected by pytest."""

collect_ignore_glob = ["*"]
