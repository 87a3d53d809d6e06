"""The plan phase spread over worker processes, one shard of the accounts each.

One process plans at most a few hundred targets a second: botocore spends about 1.6 ms of CPU
on each request, and Python runs one thread at a time. Past that, more threads only wait for
the interpreter. `ShardedPlanner` forks N processes (each with its own thread pool of
concurrency / N workers and its own role assumer), gives process i the accounts i, i+N, ...,
and merges what they plan back into this process as a stream: results are sent one at a time
through a pipe and handed on, never collected. Everything that writes (the terminal, the
report, the audit log, the lock) stays in this process; the apply phase, which calls AWS for
the few targets with changes only, stays in one process too.

Interrupts: SIGINT/SIGTERM in a worker set its stop flag (no exception): it starts nothing new,
finishes what is in flight, sends those results and exits. This process, interrupted, signals
every worker the same way and keeps reading until each has sent its last result. A worker that
dies (killed, out of memory) fails the accounts it had not reported, by name.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from orgrunner import aws
from orgrunner.accounts import Account
from orgrunner.runner import ALL_REGIONS, Runner, TargetResult, describe_error
from orgrunner.task import Target

# A runner for the worker process, built there (after the fork) with its share of the workers
# and its own stop flag.
RunnerFactory = Callable[[int, threading.Event], Runner]

# Below this many accounts per process, more processes are not worth their start (~50 ms each).
MIN_ACCOUNTS_PER_PROCESS = 50
MAX_AUTO_PROCESSES = 4
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def auto_processes(accounts: int) -> int:
    """One process per CPU this process may use (at most 4), each with at least 50 accounts; Linux
    only (fork on macOS is unsafe once system frameworks are loaded, and Windows has none)."""
    if not sys.platform.startswith("linux"):
        return 1
    cpus = len(os.sched_getaffinity(0))
    return max(1, min(cpus, MAX_AUTO_PROCESSES, accounts // MIN_ACCOUNTS_PER_PROCESS))


@dataclass
class _Shard:
    index: int
    process: Any  # multiprocessing.Process (fork context)
    conn: Connection
    accounts: list[Account]
    seen: set[str] = field(default_factory=set)  # accounts with at least one result
    discovered: int = 0
    retries: tuple[int, int] = (0, 0)
    done: bool = False  # sent its end marker
    closed: bool = False  # pipe at its end


class ShardedPlanner:
    """The plan phase of `Runner` over `processes` worker processes; same surface for the pipeline
    (`plan`, `finish`, `discovered`)."""

    def __init__(self, make_runner: RunnerFactory, processes: int, concurrency: int) -> None:
        if not can_fork():
            raise RuntimeError("worker processes need fork(), which this platform lacks")
        self._make_runner = make_runner
        self._concurrency = concurrency
        self.processes = processes
        self._shards: list[_Shard] = []
        self.discovered = 0

    @property
    def workers(self) -> int:
        """Each process's share of the workers (rounded up)."""
        return max(1, -(-self._concurrency // self.processes))

    def start(self, accounts: list[Account], regions: list[str] | None,
              only: dict[str, list[str] | None] | None = None) -> None:
        """Fork the workers. Call before any other thread starts (a progress display), so the
        children inherit no lock another thread held."""
        self.discovered = len(accounts) * (len(regions) if regions else 1)
        self.processes = max(1, min(self.processes, len(accounts)))  # never a process without accounts
        context = multiprocessing.get_context("fork")
        sys.stdout.flush()  # nothing buffered here may be written again by a child
        sys.stderr.flush()
        # An interrupt between the fork and the worker's own handlers would raise in the child
        # (a traceback); blocked here, it waits, and is delivered once the handlers are in place.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            for i in range(self.processes):
                shard = accounts[i::self.processes]
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_worker, name=f"orgrunner-shard-{i}", daemon=True,
                                          args=(send, self._make_runner, self.workers, shard, regions, only))
                process.start()
                send.close()
                self._shards.append(_Shard(i, process, receive, shard,
                                           discovered=len(shard) * (len(regions) if regions else 1)))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def plan(self, accounts: list[Account], regions: list[str] | None,
             only: dict[str, list[str] | None] | None = None) -> Iterator[TargetResult]:
        if not self._shards:
            self.start(accounts, regions, only)
        try:
            yield from self._merge()
        except KeyboardInterrupt:
            yield from self.finish()
            raise

    def finish(self) -> Iterator[TargetResult]:
        """Stop every worker (they finish what is in flight) and yield what they still send."""
        for shard in self._shards:
            if not shard.closed and shard.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(shard.process.pid, signal.SIGTERM)
        yield from self._merge()

    def _merge(self) -> Iterator[TargetResult]:
        while True:
            live = {s.conn: s for s in self._shards if not s.closed}
            if not live:
                return
            for conn in wait(list(live)):
                shard = live[conn]  # type: ignore[index]
                try:
                    message = shard.conn.recv()
                except (EOFError, OSError):
                    yield from self._ended(shard)
                    continue
                yield from self._receive(shard, message)

    def _receive(self, shard: _Shard, message: tuple[Any, ...]) -> Iterator[TargetResult]:
        kind = message[0]
        if kind == "result":
            _, result, discovered, retries = message
            self._progress(shard, discovered, retries)
            shard.seen.add(result.target.account_id)
            yield result
        elif kind == "done":
            _, discovered, retries = message
            self._progress(shard, discovered, retries)
            shard.done = True
        elif kind == "error":  # the worker failed outside any target
            shard.done = True
            yield from self._unreported(shard, f"worker process {shard.index} failed: {message[1]}")

    def _progress(self, shard: _Shard, discovered: int, retries: tuple[int, int]) -> None:
        self.discovered += discovered - shard.discovered
        shard.discovered = discovered
        aws.RETRIES.add(botocore=retries[0] - shard.retries[0], backoff=retries[1] - shard.retries[1])
        shard.retries = retries

    def _ended(self, shard: _Shard) -> Iterator[TargetResult]:
        shard.closed = True
        shard.conn.close()
        shard.process.join()
        if not shard.done:
            code = shard.process.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            yield from self._unreported(shard, f"worker process {shard.index} ended ({how}) before planning "
                                               "this account")

    @staticmethod
    def _unreported(shard: _Shard, error: str) -> Iterator[TargetResult]:
        for account in shard.accounts:
            if account.id not in shard.seen:
                shard.seen.add(account.id)
                yield TargetResult(Target(account.id, ALL_REGIONS, account.name), "plan", "failed", error=error)


def _worker(conn: Connection, make_runner: RunnerFactory, workers: int, accounts: list[Account],
            regions: list[str] | None, only: dict[str, list[str] | None] | None) -> None:
    """A worker process: plan its accounts, send each result as it completes, then an end marker."""
    stop = threading.Event()
    for sig in _STOP_SIGNALS:  # stop scheduling; finish and send what is in flight
        signal.signal(sig, lambda *_: stop.set())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (the parent owns the terminal)
    try:
        runner = make_runner(workers, stop)
        for result in runner.plan(accounts, regions, only):
            conn.send(("result", result, runner.discovered, (aws.RETRIES.botocore, aws.RETRIES.backoff)))
        conn.send(("done", runner.discovered, (aws.RETRIES.botocore, aws.RETRIES.backoff)))
    except (BrokenPipeError, ConnectionResetError):  # the parent is gone: stop quietly
        stop.set()
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", describe_error(exc)))
    finally:
        conn.close()
