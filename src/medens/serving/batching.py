"""Adaptive micro-batching: concurrent requests share one model forward.

Requests put preprocessed images on an asyncio queue and await their rows. One collector task
forms batches; the forward runs in one dedicated worker thread, off the event loop, so health
checks and ``/metrics`` are answered while a slow batch computes, and forwards never run two at
a time (torch already uses every core). The batch size adapts to the load:

- The collector remembers how many images were in flight when the last forward ended (those in
  it plus those queued meanwhile). With ``c`` closed-loop clients that is ``c``.
- A batch takes everything queued, and while it holds fewer images than that expectation it
  waits for the rest, at most ``min(max_wait_ms, recent forward time)``: the clients just
  answered come back within a round trip, and waiting longer than one forward never pays.
- A lone client therefore never waits (expectation 1), and under load the batches do not split
  into two alternating halves (one computing while the other queues), which costs a lot where a
  batch of ``2k`` takes little longer than a batch of ``k``.

``max_batch`` caps a batch; ``max_batch=1`` turns batching off (every image is its own forward);
``max_wait_ms=0`` takes whatever is queued and never waits.

``workers`` forwards may run at once, each in its own thread (ONNX Runtime, whose sessions may
be run from several threads; PyTorch keeps one, see :func:`torch_thread`). Then a batch waits for
its share of the images expected, ``expected / workers``: with ``c`` closed-loop clients and two
workers, two batches of ``c / 2`` alternate, one computing while the other's clients are answered
and send again. With one worker a batch's clients are answered, and their next images decoded,
while no forward runs: at concurrency 32 and ``max_batch`` 32 that idle time was a fifth of the
run (``benchmarks/serve.py``, ``forward_busy_fraction``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def torch_thread() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread a server runs torch in: load the model and run every forward there.

    OpenMP (libgomp) keeps one worker team per thread that runs parallel torch ops; once two
    teams exist on a machine with as many cores as threads, its spin-waiting is throttled and a
    forward uses about 1.35 of 2 cores instead of 2 (measured: 36 vs 44 images/s on the serving
    benchmark's ensemble at batch 8). Keeping every torch op of the process in one thread keeps
    one team.
    """
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="medens-torch")


class MicroBatcher:
    """Batch ``(C, H, W)`` inputs across requests into ``forward((N, C, H, W)) -> rows``.

    ``forward`` returns a sequence with one item per row; each caller gets its rows back in order.
    An exception in ``forward`` (or a result of the wrong length) fails exactly the requests of
    that batch; the batcher keeps serving.
    """

    def __init__(self, forward: Callable[[np.ndarray], Any], *, max_batch: int = 32, max_wait_ms: float = 50.0,
                 on_batch: Callable[[int, float], None] | None = None,
                 on_queue: Callable[[int], None] | None = None,
                 executor: concurrent.futures.ThreadPoolExecutor | None = None, workers: int = 1) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.forward = forward
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.on_batch = on_batch
        self.on_queue = on_queue
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # one thread runs every forward (pass the thread that loaded the model: see torch_thread)
        self._executor = executor or torch_thread()
        self.workers = int(workers)
        # the forwards' threads: the one thread above, or a pool of ``workers`` for concurrent forwards
        self._forward_executor = self._executor if self.workers == 1 else concurrent.futures.ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="medens-forward")
        self._running: set[asyncio.Task] = set()
        self._in_forward = 0  # images in the forwards running now
        self._pending = 0
        self.expected = 1  # images in flight when the last forward ended
        self.forward_seconds: float | None = None  # moving average of the forward time

    def _ensure_started(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._collect(), name="medens-micro-batcher")
        return self._queue

    async def submit(self, items: np.ndarray) -> list[Any]:
        """Queue ``(n, C, H, W)`` inputs and return their ``n`` result rows."""
        queue = self._ensure_started()
        loop = asyncio.get_running_loop()
        futures = []
        for row in items:
            fut = loop.create_future()
            futures.append(fut)
            queue.put_nowait((row, fut))
        self._pending += len(futures)
        self._report_queue()
        return list(await asyncio.gather(*futures))

    def _report_queue(self) -> None:
        if self.on_queue is not None:
            self.on_queue(self._pending)

    def patience(self) -> float:
        """Seconds a partial batch may wait for the images expected: ``min(max_wait, forward time)``."""
        if self.forward_seconds is None:
            return self.max_wait
        return min(self.max_wait, self.forward_seconds)

    async def _collect(self) -> None:
        queue = self._queue
        assert queue is not None
        slots = asyncio.Semaphore(self.workers)
        while True:
            await slots.acquire()  # a batch is formed only when a worker is free to run it
            try:
                live = await self._next_batch(queue)
            except BaseException:
                slots.release()
                raise
            if not live:
                slots.release()
                continue
            self._in_forward += len(live)
            if self.workers == 1:
                await self._run_then_release(live, slots)
            else:
                task = asyncio.get_running_loop().create_task(self._run_then_release(live, slots))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _run_then_release(self, live: list[tuple[np.ndarray, asyncio.Future]],
                                slots: asyncio.Semaphore) -> None:
        try:
            await self._run(live)
        finally:
            assert self._queue is not None
            # images in flight as this forward ends: it, the others running, and those queued meanwhile
            self.expected = self._in_forward + self._queue.qsize()
            self._in_forward -= len(live)
            slots.release()

    async def _next_batch(self, queue: asyncio.Queue) -> list[tuple[np.ndarray, asyncio.Future]]:
        """The next batch: what is queued, waiting (:meth:`patience`) for this worker's share of the
        images expected; the requests still waiting for an answer (cancelled ones dropped)."""
        loop = asyncio.get_running_loop()
        batch = [await queue.get()]
        target = min(self.max_batch, max(1, -(-self.expected // self.workers)))
        # one worker takes all that is queued; several take their share of the expected or queued
        # images (a request of many images is split between them), leaving the rest to the next
        share = max(target, -(-(self._in_forward + 1 + queue.qsize()) // self.workers))
        limit = self.max_batch if self.workers == 1 else min(self.max_batch, share)
        deadline = loop.time() + self.patience()
        while len(batch) < limit:
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if len(batch) >= target or remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        live = [(x, f) for x, f in batch if not f.cancelled()]
        self._pending -= len(batch)
        self._report_queue()
        return live

    async def _run(self, batch: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()

        def timed(x: np.ndarray) -> tuple[Any, float]:
            start = time.perf_counter()  # in the torch thread: not the wait behind an explain
            return self.forward(x), time.perf_counter() - start

        try:
            rows, seconds = await loop.run_in_executor(self._forward_executor, timed, np.stack([b[0] for b in batch]))
            if len(rows) != len(batch):
                raise RuntimeError(f"the forward returned {len(rows)} rows for {len(batch)} inputs")
            self.forward_seconds = seconds if self.forward_seconds is None else \
                0.8 * self.forward_seconds + 0.2 * seconds
            if self.on_batch is not None:
                self.on_batch(len(batch), seconds)
        except Exception as e:  # fail this batch's requests, keep serving
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        for i, (_, fut) in enumerate(batch):
            if not fut.done():
                fut.set_result(rows[i])

    async def run_exclusive(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in the forward thread (after any batch in progress), off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def aclose(self) -> None:
        for task in [self._task, *self._running]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                    await task
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._forward_executor is not self._executor:
            self._forward_executor.shutdown(wait=False, cancel_futures=True)
