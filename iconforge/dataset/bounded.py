"""Worker processes for untrusted items: a time bound per task (pebble kills a worker that overruns)
and an address-space bound per worker (RLIMIT_AS), so one hostile image or SVG costs a reject with a
reason, never the run. Workers fork from a clean forkserver, not from the caller: their limit must not
count what the caller has mapped (torch alone maps ~3 GB)."""
from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import resource
import signal
from typing import Callable, Iterable, Iterator

from pebble import ProcessExpired, ProcessPool

IN_FLIGHT_PER_WORKER = 8  # tasks scheduled per worker at once: memory stays flat whatever the item count


def _limit_memory(max_memory_mb: int) -> None:
    limit = max_memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def error_reason(e: Exception, max_memory_mb: int) -> str:
    """The reject reason for an unexpected exception in a worker (a MemoryError is the RLIMIT_AS bound)."""
    if isinstance(e, MemoryError):
        return f"out of memory (limit {max_memory_mb} MB)"
    return f"error: {type(e).__name__}: {' '.join(str(e).split())[:200]}"


def _crash_reason(exitcode: int, max_memory_mb: int) -> str:
    if exitcode == -signal.SIGABRT:  # Rust (resvg) aborts when an allocation fails
        return f"worker crashed (SIGABRT: out of memory? limit {max_memory_mb} MB)"
    return f"worker crashed (exit code {exitcode})"  # a segfault, or killed from outside


def imap(fn: Callable, batches: Iterable[list], args: Callable[[list], tuple], workers: int, max_memory_mb: int,
         timeout_s: float, preload: list[str]) -> Iterator[tuple[list, list | str]]:
    """fn(*args(batch)) for each batch (a list of items) in `workers` bounded processes (`preload`:
    modules the forkserver imports once); yields (batch, what fn returned) as tasks finish. A batch
    that overruns timeout_s or kills its worker is retried one item per task, so that only the
    culprit fails: it comes back as (batch of one, the reason)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload)
    tasks = collections.deque(batches)
    with ProcessPool(max_workers=workers, initializer=_limit_memory, initargs=(max_memory_mb,),
                     context=context) as pool:
        futures: dict = {}
        while tasks or futures:
            while tasks and len(futures) < workers * IN_FLIGHT_PER_WORKER:
                batch = tasks.popleft()
                futures[pool.schedule(fn, args=args(batch), timeout=timeout_s)] = batch
            done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
            for fut in done:
                batch = futures.pop(fut)  # let the future and its results be freed
                try:
                    result = fut.result()
                except concurrent.futures.TimeoutError:  # pebble killed the worker
                    result = f"timeout (over {timeout_s:g} s)"
                except ProcessExpired as e:
                    result = _crash_reason(e.exitcode, max_memory_mb)
                if isinstance(result, str) and len(batch) > 1:
                    tasks.extend([item] for item in batch)
                    continue
                yield batch, result
