"""Worker processes for untrusted items: a time bound per task (pebble kills a worker that overruns)
and an address-space bound per worker (RLIMIT_AS), so one hostile image or SVG costs a reject with a
reason, never the run. Workers fork from a clean forkserver, not from the caller: their limit must not
count what the caller has mapped (torch alone maps ~3 GB)."""
from __future__ import annotations

import multiprocessing
import resource
import signal

from pebble import ProcessPool


def _limit_memory(max_memory_mb: int) -> None:
    limit = max_memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def pool(workers: int, max_memory_mb: int, preload: list[str]) -> ProcessPool:
    """A pebble pool of `workers` processes limited to max_memory_mb each (`preload`: modules the
    forkserver imports once, so workers start warm)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload)
    return ProcessPool(max_workers=workers, initializer=_limit_memory, initargs=(max_memory_mb,), context=context)


def crash_reason(exitcode: int, max_memory_mb: int) -> str:
    """The reject reason for an item whose worker died."""
    if exitcode == -signal.SIGABRT:  # Rust (resvg) aborts when an allocation fails
        return f"worker crashed (SIGABRT: out of memory? limit {max_memory_mb} MB)"
    return f"worker crashed (exit code {exitcode})"
