"""Dynamic batching: requests queue on the event loop (HTTP) or straight from the thread that
decoded them (gRPC's pool threads, :meth:`Batcher.submit_direct`); one worker thread merges what is
queued along the batch axis (up to ``max_batch_size``), runs onnxruntime once and hands each
request its rows back: on the event loop for the loop's requests, from the worker itself for direct
ones (their ``done`` is thread-safe).

The batcher does not wait for company when the worker is idle: it takes whatever is queued
(greedy), with two exceptions: ``max_queue_delay`` > 0 waits up to that long (counted from the
oldest request's arrival) for the batch to fill, and the follow-up wait gives the last run's clients
a short time (a fraction of that run's compute time) to come back. Requests merge only when their
non-batch dimensions agree. onnxruntime releases the GIL while it runs, so the event loop keeps
parsing the next requests. onnxruntime never runs on the event loop: a run's time can depend on
the input (dynamic shapes, loops), and the loop must keep answering health checks and timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np
from inferstack.runtime.errors import HTTPError, InternalError, ModelFailed, ServiceUnavailable
from inferstack.runtime.metrics import Metrics, ModelMetrics, ModelStats
from inferstack.runtime.model import Model

log = logging.getLogger("inferstack.runtime")

#: a request's outputs by name
Outputs = dict[str, np.ndarray]
#: done(outputs, error): exactly one of them is None
Done = Callable[[Outputs | None, HTTPError | None], None]


class Job:
    """One admitted request: its inputs, how many rows it has, and where its answer goes."""

    __slots__ = ("inputs", "rows", "key", "done", "enqueued", "cancelled", "answered", "deadline", "direct",
                 "owner")

    def __init__(self, inputs: dict[str, np.ndarray], rows: int, key: tuple[Any, ...], done: Done) -> None:
        self.inputs = inputs
        self.rows = rows
        self.key = key  # requests merge only when their keys (non-batch shapes) agree
        self.done = done
        self.enqueued = 0.0
        self.deadline = 0.0
        self.cancelled = False  # timed out: its queue place is given back, the worker skips it
        self.answered = False
        self.direct = False  # submitted off the event loop: answered from the worker thread
        self.owner: Batcher | None = None  # the batcher it was submitted to


_STOP = None
_WAKE: list[Job | None] = []  # (put on the queue to wake the worker: carries nothing)
_MAX_STAGE_S = 0.005  # longest a request waits on the event loop before the worker sees it


class _RowsChanged(Exception):
    """A merged run's output has another row count than its inputs (message: which, one line)."""


class Batcher:
    def __init__(self, model: Model, metrics: Metrics | ModelMetrics, max_queue_delay_s: float = 0.0,
                 follow_wait: float = 0.25, stats: ModelStats | None = None) -> None:
        self.model = model
        self.metrics = metrics
        self.stats = stats or ModelStats(model.name, model.version)
        self.max_rows = model.max_batch_size
        self.delay = max_queue_delay_s if model.batching else 0.0
        self.follow_wait = follow_wait if model.batching else 0.0
        # the last run
        self._last_rows = 0  # its rows
        self._last_compute = 1.0  # its onnxruntime seconds (unknown at first: as if long)
        # lists of jobs, one per turn of the event loop; [None] stops the worker
        self._queue: queue.SimpleQueue[list[Job | None]] = queue.SimpleQueue()
        self._carry: deque[Job | None] = deque()  # taken from the queue, not yet run (worker only)
        self._running = 0  # jobs in the worker's current run (written by the worker)
        self._staged: list[Job] = []
        # direct jobs not yet taken by the worker (under ``lock``), their rows, and how many rows
        # the blocked worker waits for (0: it is not blocked on the queue)
        self._inbox: dict[Job, None] = {}  # (in order; a cancelled job leaves it at once)
        self._inbox_rows = 0
        self._want = 0
        self._staged_rows = 0
        self._staged_at = 0.0
        # finished runs waiting for the event loop: (jobs, each job's outputs, error); appended by
        # the worker
        self._finished: deque[tuple[list[Job], list[Outputs] | None, HTTPError | None]] = deque()
        self._wake_pending = False  # a deliver_finished call is scheduled on the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        #: admitted and not yet answered (waiting or running); written under ``lock`` (from the
        #: event loop, the worker, and direct submitters), read anywhere
        self.pending = 0
        #: guards ``pending``, ``stopped`` and direct jobs' ``answered`` / ``cancelled``
        self.lock = threading.Lock()
        self.stopped = False  # stop() was called: direct submissions are refused

    def queue_depth(self) -> int:
        """Admitted requests not (yet) in an onnxruntime run (read at scrape time)."""
        return max(0, self.pending - self._running)

    # -- event-loop side ---------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._work, name="inferstack-ort", daemon=True)
        self._thread.start()

    def submit(self, job: Job, admit: Callable[[int], None] | None = None) -> None:
        """Queue ``job`` (on the event loop); ``job.done`` is called exactly once, on the loop.
        Under :attr:`lock`, ``admit(pending)`` may raise to refuse it (the queue limit, looked at
        and counted in one step: direct submitters count from other threads meanwhile); a stopped
        batcher raises :class:`ServiceUnavailable`."""
        # Requests parsed in one turn of the event loop reach the worker together: it wakes once
        # and finds them all queued (a larger batch at no added latency). A long turn (a flood of
        # requests) hands them over early: once a full batch is staged, or after _MAX_STAGE_S.
        job.enqueued = now = time.perf_counter()
        job.owner = self
        with self.lock:
            self._take_place(admit)
        staged = self._staged
        staged.append(job)
        self._staged_rows += job.rows
        if len(staged) == 1:
            self._staged_at = now
            assert self._loop is not None
            self._loop.call_soon(self._flush)
        elif self._staged_rows >= self.max_rows or now - self._staged_at >= _MAX_STAGE_S:
            self._flush()

    def submit_direct(self, job: Job, admit: Callable[[int], None]) -> None:
        """Queue ``job`` from any thread, straight to the worker (no event-loop turn): under
        :attr:`lock`, ``admit(pending)`` may raise to refuse it (the queue limit: the look and the
        count are one step, so the limit holds exactly); a stopped batcher raises
        :class:`ServiceUnavailable`. ``job.done`` is then called exactly once, from the worker
        thread, unless the caller claims the job first with :meth:`cancel`."""
        job.direct = True
        job.owner = self
        job.enqueued = time.perf_counter()
        with self.lock:
            self._take_place(admit)
            self._inbox[job] = None
            self._inbox_rows += job.rows
            wake = 0 < self._want <= self._inbox_rows
            if wake:
                self._want = 0
        if wake:
            self._queue.put(_WAKE)

    def _take_place(self, admit: Callable[[int], None] | None) -> None:
        """Under :attr:`lock`: a queue place for one more request, or the refusal (a stopped
        batcher: ServiceUnavailable; ``admit(pending)`` raising: the queue limit)."""
        if self.stopped:
            raise ServiceUnavailable(f"model {self.model.name!r} is not ready")
        if admit is not None:
            admit(self.pending)
        self.pending += 1

    def cancel(self, job: Job) -> bool:
        """Claim a job that has not been answered (its deadline passed: its caller answers it
        itself); True when claimed: its ``done`` will never be called and its queue place is
        given back now (not when the worker passes it: the next request must not be refused for
        a queue full of requests nobody waits for), and a direct job the worker has not taken
        leaves its inbox. False when the worker answered it first. Any thread (an event-loop
        job: on the loop)."""
        with self.lock:
            if job.answered:
                return False
            job.answered = job.cancelled = True
            self.pending -= 1
            if job.direct and self._inbox.pop(job, False) is None:
                self._inbox_rows -= job.rows
            return True

    def _flush(self) -> None:
        staged = self._staged
        if not staged:
            return
        self._staged = []
        self._staged_rows = 0
        self._queue.put(staged)  # type: ignore[arg-type]

    def stop(self, timeout: float = 10.0) -> None:
        with self.lock:
            self.stopped = True
        self._queue.put([_STOP])
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def has_finished(self) -> bool:
        return bool(self._finished)

    def deliver_finished(self) -> None:
        """Answer every finished run. Scheduled by the worker, and also called by the server
        before it reads each new request: under a flood of requests one turn of the event loop can
        take many milliseconds, and answers (which free queue places) must not wait for its end."""
        self._wake_pending = False
        finished = self._finished
        while finished:
            self._deliver(*finished.popleft())

    def _deliver(self, jobs: list[Job], results: list[Outputs] | None, error: HTTPError | None) -> None:
        with self.lock:  # (a cancelled job gave its place back when it was cancelled)
            self.pending -= sum(1 for job in jobs if not job.cancelled)
        for i, job in enumerate(jobs):
            if job.cancelled:
                continue
            job.answered = True
            if error is not None or results is None:
                job.done(None, error or InternalError("no outputs"))
            else:
                job.done(results[i], None)

    # -- worker thread -----------------------------------------------------------------------
    def _next(self, block: bool, timeout: float | None = None, want: int = 1) -> Job | None:
        """The next job: carried over, queued by the event loop, or in the direct inbox. Blocking,
        the worker asks direct submitters to wake it once ``want`` rows are in the inbox (one
        wake-up for what it waits for, not one per request); with ``timeout``, raises queue.Empty
        when nothing came (or a stale wake-up did)."""
        carry = self._carry
        woken = False
        while not carry:
            try:
                carry.extend(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            with self.lock:
                self._want = 0
                if self._inbox:
                    carry.extend(self._inbox)
                    self._inbox = {}
                    self._inbox_rows = 0
                    break
                if not block or (woken and timeout is not None):
                    raise queue.Empty
                self._want = max(1, want)
            carry.extend(self._queue.get(timeout=timeout) if timeout is not None else self._queue.get())
            woken = True
        return carry.popleft()

    def _collect(self, first: Job) -> list[Job]:
        batch = [first]
        if not self.model.batching:
            return batch
        rows = first.rows
        deadline = first.enqueued + self.delay
        # the last run's clients are likely to come back soon (closed-loop load): while fewer rows
        # than it had are here, wait for them up to a fraction of its compute time
        target = min(self._last_rows, self.max_rows)
        follow = time.perf_counter() + self.follow_wait * self._last_compute if target > rows else 0.0
        while rows < self.max_rows:
            try:
                job = self._next(block=False)
            except queue.Empty:
                until = deadline if rows >= target else max(deadline, follow)
                remaining = until - time.perf_counter()
                if remaining <= 0:
                    break
                want = (target if rows < target else self.max_rows) - rows
                try:
                    job = self._next(block=True, timeout=remaining, want=want)
                except queue.Empty:
                    break
            if job is _STOP:
                self._carry.appendleft(_STOP)  # seen again after this batch
                break
            if job.cancelled:  # (answered and counted when it was cancelled)
                continue
            if job.key != first.key or rows + job.rows > self.max_rows:
                self._carry.appendleft(job)  # first in line for the next batch
                break
            batch.append(job)
            rows += job.rows
        return batch

    def _post(self, jobs: list[Job], outputs: list[Outputs] | None, error: HTTPError | None) -> None:
        assert self._loop is not None
        self._running = 0
        if any(j.direct for j in jobs):
            # direct jobs: answered here (their waiters are other threads); the rest on the loop
            loop_jobs: list[Job] = []
            loop_outputs: list[Outputs] | None = None if outputs is None else []
            answer: list[tuple[Job, Outputs | None]] = []
            with self.lock:
                for i, job in enumerate(jobs):
                    if not job.direct:
                        loop_jobs.append(job)
                        if loop_outputs is not None and outputs is not None:
                            loop_outputs.append(outputs[i])
                        continue
                    if job.cancelled:  # (its place was given back when it was cancelled)
                        continue
                    self.pending -= 1
                    if not job.answered:
                        job.answered = True
                        answer.append((job, None if outputs is None else outputs[i]))
            for job, out in answer:
                if out is None:
                    job.done(None, error or InternalError("no outputs"))
                else:
                    job.done(out, None)
            if not loop_jobs:
                return
            jobs, outputs = loop_jobs, loop_outputs
        self._finished.append((jobs, outputs, error))
        if not self._wake_pending:  # one wake-up for however many runs finish before the loop looks
            self._wake_pending = True
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                self._loop.call_soon_threadsafe(self.deliver_finished)

    def _work(self) -> None:
        while True:
            try:
                if not self._serve_one():
                    return
            except Exception:  # a bug: keep the worker alive, the jobs involved were answered 500
                log.exception("batcher worker error")

    def _serve_one(self) -> bool:
        first = self._next(block=True)
        if first is not _STOP and first.direct and not self._carry:
            # woken by one direct request: let the threads holding decoded ones queue them (one
            # yield of the GIL) so that they join this run
            time.sleep(0)
        if first is _STOP:
            self._refuse_left()
            return False
        if first.cancelled:
            return True
        jobs = self._collect(first)
        self._running = len(jobs)
        self._execute(jobs, self._post)
        return True

    def _refuse_left(self) -> None:
        """At the stop: answer every job still queued (taken from the queue or the inbox, not
        run) 503, each once (a direct one queued just before the stop, whose caller waits)."""
        left = [job for job in self._carry if job is not _STOP]
        self._carry.clear()
        while True:
            try:
                left.extend(job for job in self._queue.get_nowait() if job is not _STOP)
            except queue.Empty:
                break
        with self.lock:
            left.extend(self._inbox)
            self._inbox = {}
            self._inbox_rows = 0
        if left:
            self._post(left, None, ServiceUnavailable(f"model {self.model.name!r} is not ready"))

    def _run_each_alone(self, jobs: list[Job], answer: Callable[[list[Job], list[Outputs] | None,
                                                                 HTTPError | None], None],
                        taken: float) -> None:
        """Run and answer every job of a failed merged run on its own, so that only a request that
        fails alone gets an error."""
        for job in jobs:
            try:
                one, one_times = self._run([job])
            except HTTPError as e:
                answer([job], None, e)
                continue
            answer([job], one, None)
            self._record([job], job.rows, taken, one_times)

    def _execute(self, jobs: list[Job], answer: Callable[[list[Job], list[Outputs] | None,
                                                          HTTPError | None], None]) -> None:
        """One onnxruntime run of ``jobs`` (answered through ``answer``) and its bookkeeping."""
        metrics = self.metrics
        taken = time.perf_counter()
        rows = sum(j.rows for j in jobs)
        metrics.batch_size.observe(len(jobs))
        metrics.batch_rows.observe(rows)
        try:
            results, times = self._run(jobs)
        except _RowsChanged as e:
            # never slice an output that lost or gained rows (a model that filters rows): answer
            # each request from its own run, and merge no more for this model
            self._stop_merging(str(e))
            self._run_each_alone(jobs, answer, taken)
            return
        except HTTPError as e:
            if len(jobs) > 1:
                # one request's values may have upset the model: run each alone, so only it fails
                self._run_each_alone(jobs, answer, taken)
            else:
                answer(jobs, None, e)
            return
        except BaseException as e:
            answer(jobs, None, InternalError(f"internal error: {type(e).__name__}: {e}"))
            raise
        answer(jobs, results, None)  # answer first, then bookkeeping
        self._last_rows = rows
        self._last_compute = times[2] - taken
        metrics.compute_seconds.observe(times[2] - taken)
        self._record(jobs, rows, taken, times)

    def _row_mismatch(self, outputs: list[np.ndarray], rows: int) -> str | None:
        """None when every output has ``rows`` rows on axis 0; else what is wrong, one line."""
        for name, out in zip(self.model.output_names, outputs, strict=True):
            if np.ndim(out) == 0 or out.shape[0] != rows:
                return f"output {name!r} has shape {list(np.shape(out))} for {rows} merged rows"
        return None

    def _stop_merging(self, why: str) -> None:
        self.model.max_batch_size = 0
        self.model.batch_decision = f"off: {why} (seen in a merged run)"
        self.delay = self.follow_wait = 0.0
        log.warning("serving without batching from now on: %s (seen in a merged run)", why)

    def _record(self, jobs: list[Job], rows: int, taken: float,
                times: tuple[float, float, float, float]) -> None:
        observe_queue = self.metrics.queue_seconds.observe
        queue = self.stats.queue
        for job in jobs:
            waited = taken - job.enqueued
            observe_queue(waited)
            queue.add(waited)
        start, merged, computed, split = times
        self.stats.executed(len(jobs), rows, merged - start, computed - merged, split - computed, time.time())

    def _run(self, jobs: list[Job]) -> tuple[list[Outputs], tuple[float, float, float, float]]:
        """Merge, run, split: each job's outputs, and the times (perf_counter) at the start and
        after each step."""
        start = time.perf_counter()
        if len(jobs) == 1:
            feeds = jobs[0].inputs
        else:
            feeds = {name: np.concatenate([j.inputs[name] for j in jobs]) for name in jobs[0].inputs}
        merged = time.perf_counter()
        try:
            outputs = self.model.run(feeds)
        except Exception as e:
            self._failed(e)
        computed = time.perf_counter()
        names = self.model.output_names
        if len(jobs) == 1:  # (a merged run is always sliced, even after merging stops)
            results = [dict(zip(names, outputs, strict=True))]
        else:
            bad = self._row_mismatch(outputs, sum(j.rows for j in jobs))
            if bad is not None:
                raise _RowsChanged(bad)
            results = []
            at = 0
            for job in jobs:
                end = at + job.rows
                results.append({n: o[at:end] for n, o in zip(names, outputs, strict=True)})
                at = end
        return results, (start, merged, computed, time.perf_counter())

    def _failed(self, e: Exception) -> NoReturn:
        kind = type(e).__name__
        if kind in ("InvalidArgument", "Fail", "InvalidGraph", "NotImplemented"):
            raise ModelFailed(f"model {self.model.name!r} could not run on this input: {e}") from None
        log.exception("onnxruntime run failed")
        raise InternalError(f"model {self.model.name!r} failed: {kind}: {e}") from None
