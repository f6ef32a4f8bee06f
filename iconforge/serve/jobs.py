"""Jobs around one generator: a bounded queue, one worker thread that owns the model (one
accelerator draws one request at a time), per-client caps, and finished results kept for a TTL
and up to a count, so memory stays bounded however long the service runs."""
from __future__ import annotations

import collections
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from enum import Enum

from iconforge.generate.generator import Cancelled, GeneratedImage, Generator, Settings
from iconforge.generate.request import GenerateRequest

log = logging.getLogger("iconforge.serve")


def _knob(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServiceConfig:
    """The service's bounds; `python -m iconforge.serve` has a flag for each (--queue-size, ...)."""

    queue_size: int = _knob(16, "jobs waiting behind the running one; a submission beyond it gets 429")
    per_client: int = _knob(2, "queued + running jobs of one client (address + X-Client-Id); beyond it 429")
    result_ttl_s: float = _knob(3600.0, "seconds a finished job and its images are kept")
    max_results: int = _knob(256, "finished jobs kept at most (the oldest are dropped first)")

    def __post_init__(self):
        for name in ("queue_size", "per_client", "result_ttl_s", "max_results"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)!r}")


class State(str, Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE = (State.queued, State.running)


@dataclass(eq=False)  # identity: a job is removed from the queue as itself
class Job:
    id: str
    client: str
    settings: Settings
    created: float
    state: State = State.queued
    steps_done: int = 0
    finished: float | None = None
    images: list[GeneratedImage] = field(default_factory=list)
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def steps_total(self) -> int:
        return self.settings.n * self.settings.steps


class Busy(Exception):
    """The queue or the client's cap is full; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class JobService:
    def __init__(self, generator: Generator, cfg: ServiceConfig = ServiceConfig()):
        self.generator, self.cfg = generator, cfg
        self._jobs: dict[str, Job] = {}  # insertion order = submission order
        self._queue: collections.deque[Job] = collections.deque()
        self._lock = threading.Condition()
        self._job_seconds = 1.0  # running mean of a job's duration, for Retry-After
        self._stopping = False
        self._worker = threading.Thread(target=self._work, name="iconforge-worker", daemon=True)

    def start(self) -> "JobService":
        self._worker.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            for job in self._queue:
                job.cancel.set()
            self._lock.notify_all()
        self._worker.join(timeout=30)
        if not self._worker.is_alive():  # the tracer's only user is done with it
            self.generator.close()

    # --- requests -------------------------------------------------------------------------
    def submit(self, req: GenerateRequest, client: str) -> tuple[Job, int]:
        """Queue a job; returns it and its 1-based place in the queue. Raises Busy."""
        settings = self.generator.settings(req)
        with self._lock:
            self._prune()
            if len(self._queue) >= self.cfg.queue_size:
                raise Busy(f"queue full ({self.cfg.queue_size} jobs waiting)", self._eta(len(self._queue)))
            active = sum(1 for j in self._jobs.values() if j.client == client and j.state in ACTIVE)
            if active >= self.cfg.per_client:
                raise Busy(f"you have {active} active job(s), the limit is {self.cfg.per_client}",
                           self._eta(len(self._queue)))
            job = Job(id=secrets.token_urlsafe(12), client=client, settings=settings, created=time.time())
            self._jobs[job.id] = job
            self._queue.append(job)
            self._lock.notify_all()
            return job, len(self._queue)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            self._prune()
            return self._jobs.get(job_id)

    def wait(self, job: Job, timeout_s: float) -> None:
        """Block until `job` has finished or `timeout_s` has passed (long polling: a client learns of the
        end at once instead of at its next poll)."""
        with self._lock:
            self._lock.wait_for(lambda: job.state not in ACTIVE or self._stopping, timeout=timeout_s)

    def position(self, job: Job) -> int | None:
        """1 = next to run; None once it has started."""
        with self._lock:
            return next((i + 1 for i, j in enumerate(self._queue) if j is job), None)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job at once, a running one at its next step; finished jobs stay as they are."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state not in ACTIVE:
                return job
            job.cancel.set()
            if job.state is State.queued:
                self._queue.remove(job)
                self._finish(job, State.cancelled)
            return job

    def stats(self) -> dict:
        with self._lock:
            self._prune()
            running = sum(1 for j in self._jobs.values() if j.state is State.running)
            return {"queued": len(self._queue), "running": running, "kept": len(self._jobs)}

    # --- worker ---------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                job = self._queue.popleft()
                job.state = State.running
            t0 = time.perf_counter()
            try:
                images = self.generator.generate(job.settings, cancelled=job.cancel.is_set,
                                              progress=lambda done, total: setattr(job, "steps_done", done))
                state, error = State.done, None
            except Cancelled:
                images, state, error = [], State.cancelled, None
            except Exception as e:  # a bug or an exhausted device: this job fails, the service stays up
                log.exception("job %s failed", job.id)
                images, state, error = [], State.failed, f"generation failed: {type(e).__name__}"
            with self._lock:
                job.images, job.error = images, error
                self._finish(job, state)
                self._job_seconds = 0.8 * self._job_seconds + 0.2 * (time.perf_counter() - t0)

    # --- bookkeeping (lock held) ----------------------------------------------------------
    def _finish(self, job: Job, state: State) -> None:
        job.state, job.finished = state, time.time()
        self._lock.notify_all()  # long polls (and the worker, which re-checks its queue)

    def _eta(self, ahead: int) -> int:
        return max(1, math.ceil(self._job_seconds * (ahead + 1)))

    def _prune(self) -> None:
        now = time.time()
        done = sorted((j for j in self._jobs.values() if j.finished is not None), key=lambda j: j.finished)
        excess = len(done) - self.cfg.max_results  # the oldest beyond the count cap
        for i, j in enumerate(done):
            if i < excess or now - j.finished > self.cfg.result_ttl_s:
                del self._jobs[j.id]
