"""MicroBatcher: rows come back to the right caller, batches form under concurrency, failures stay local."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from medens.serving.batching import MicroBatcher


def doubling(calls: list[int]):
    def forward(x: np.ndarray) -> list[float]:
        calls.append(len(x))
        return [float(v) * 2 for v in x[:, 0]]
    return forward


def rows(*values: float) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.float32)


def test_concurrent_requests_share_forwards_and_get_their_own_rows():
    calls: list[int] = []
    seen: list[tuple[int, float]] = []

    async def main():
        b = MicroBatcher(doubling(calls), max_batch=8, max_wait_ms=50,
                         on_batch=lambda n, secs: seen.append((n, secs)))
        results = await asyncio.gather(*(b.submit(rows(i, i + 0.5)) for i in range(10)))
        await b.aclose()
        return results

    results = asyncio.run(main())
    assert results == [[2 * i, 2 * i + 1] for i in range(10)]
    assert sum(calls) == 20 and max(calls) == 8 and len(calls) == 3  # 8 + 8 + 4 images
    assert [n for n, _ in seen] == calls and all(secs >= 0 for _, secs in seen)


def test_max_batch_one_is_one_forward_per_image():
    calls: list[int] = []

    async def main():
        b = MicroBatcher(doubling(calls), max_batch=1, max_wait_ms=50)
        out = await asyncio.gather(*(b.submit(rows(i)) for i in range(5)))
        await b.aclose()
        return out

    assert asyncio.run(main()) == [[0.0], [2.0], [4.0], [6.0], [8.0]]
    assert calls == [1, 1, 1, 1, 1]


async def _until(condition, guard_s: float = 30.0) -> None:
    """Yield to the event loop until ``condition()``; the guard only stops a hang."""
    deadline = asyncio.get_running_loop().time() + guard_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never met"
        await asyncio.sleep(0)


def test_lone_client_never_waits():
    """With one request in flight the collector forwards it at once rather than waiting max_wait for
    company: a second request that arrives while the first is already taken (well within the
    500 ms max_wait) makes a forward of its own. A collector that waited would batch the two."""
    calls: list[int] = []

    async def main():
        b = MicroBatcher(doubling(calls), max_batch=32, max_wait_ms=500)
        for i in range(3):  # one after the other: one forward each
            assert await b.submit(rows(i)) == [2.0 * i]
        assert b.expected == 1
        first = asyncio.create_task(b.submit(rows(10)))
        await _until(lambda: b._pending == 1)  # queued
        await _until(lambda: b._queue.qsize() == 0)  # and taken by the collector: now it decides
        second = await b.submit(rows(20))
        out = [await first, second]
        await b.aclose()
        return out

    assert asyncio.run(main()) == [[20.0], [40.0]]
    assert calls == [1, 1, 1, 1, 1]


def closed_loop(max_wait_ms: float, clients: int = 8, rounds: int = 8,
                patience_s: float | None = None) -> list[int]:
    """``clients`` closed-loop clients (1 image, the next request as soon as the answer is in), in
    two groups: the second starts once the first group's first forward is running. Each forward
    lasts until every client not in it has queued its next request (a forward slow against the
    clients' round trip, without a clock), so greedy batching alternates the halves. Returns the
    batch sizes. ``patience_s`` fixes the collector's wait bound (``None``: the batcher's own)."""
    sizes: list[int] = []
    served = [0] * clients
    second_group = threading.Event()

    class Batcher(MicroBatcher):
        def patience(self) -> float:
            return super().patience() if patience_s is None else patience_s

    async def main():
        loop = asyncio.get_running_loop()
        started = asyncio.Event()

        def forward(x):
            sizes.append(len(x))
            if not second_group.is_set():
                second_group.set()
                loop.call_soon_threadsafe(started.set)
            inside = [int(v) for v in x[:, 0]]
            for c in inside:
                served[c] += 1
            others = sum(1 for c in range(clients) if c not in inside and served[c] < rounds)
            deadline = time.monotonic() + 30  # only against a hang
            while b._pending < others:
                assert time.monotonic() < deadline, f"clients never queued: {b._pending} of {others}"
                time.sleep(0.001)
            return list(x[:, 0])

        b = Batcher(forward, max_batch=32, max_wait_ms=max_wait_ms)

        async def client(i):
            if i >= clients // 2:
                await started.wait()
            for _ in range(rounds):
                assert await b.submit(rows(i)) == [float(i)]

        await asyncio.gather(*(client(i) for i in range(clients)))
        await b.aclose()

    asyncio.run(main())
    return sizes


def test_batches_do_not_split_into_alternating_halves():
    # greedy (no wait): one half computes while the other queues, for ever
    assert closed_loop(max_wait_ms=0) == [4] * 16
    # adaptive: after the first forward the expectation is 8 and the halves merge; the last
    # half-round waits out the patience (made long here so that a loaded machine cannot cut the
    # wait short; the bound itself is test_patience_is_bounded_by_the_forward_time's)
    assert closed_loop(max_wait_ms=40, patience_s=2.0) == [4] + [8] * 7 + [4]


def test_patience_is_bounded_by_the_forward_time():
    b = MicroBatcher(lambda x: list(x), max_batch=8, max_wait_ms=50)
    assert b.patience() == 0.05
    b.forward_seconds = 0.002
    assert b.patience() == 0.002


def test_a_failing_forward_fails_only_its_batch_and_serving_goes_on():
    calls: list[int] = []

    def forward(x):
        calls.append(len(x))
        if (x < 0).any():
            raise RuntimeError("bad batch")
        return list(x[:, 0])

    async def main():
        b = MicroBatcher(forward, max_batch=4, max_wait_ms=0)
        with pytest.raises(RuntimeError, match="bad batch"):
            await b.submit(rows(-1))
        ok = await b.submit(rows(3))
        await b.aclose()
        return ok

    assert asyncio.run(main()) == [3.0]


def test_forward_runs_off_the_event_loop():
    """While a forward computes, the loop keeps running other coroutines (health checks): the
    forward here finishes only after the loop has ticked five times, which it could not do if the
    forward blocked the loop."""
    loop_thread = []
    forward_thread = []
    ticked = threading.Event()

    def slow(x):
        forward_thread.append(threading.get_ident())
        assert ticked.wait(30), "the event loop did not run while the forward computed"
        return list(x[:, 0])

    async def main():
        loop_thread.append(threading.get_ident())
        b = MicroBatcher(slow, max_batch=4, max_wait_ms=0)
        task = asyncio.create_task(b.submit(rows(1)))
        await _until(lambda: bool(forward_thread))
        for _ in range(5):
            await asyncio.sleep(0)
        ticks_before_answer = task.done()
        ticked.set()
        out = await task
        await b.aclose()
        return ticks_before_answer, out

    answered_early, out = asyncio.run(main())
    assert not answered_early and out == [1.0]
    assert forward_thread[0] != loop_thread[0]


def test_bad_settings():
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        MicroBatcher(lambda x: x, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms must be >= 0"):
        MicroBatcher(lambda x: x, max_wait_ms=-1)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        MicroBatcher(lambda x: x, workers=0)


def _meeting_forward(parties: int, sizes: list[int], inside: list[int]):
    """A forward that returns only once ``parties`` forwards are inside it at the same time (a
    barrier; with fewer workers it breaks after 30 s and the batch fails), recording batch sizes
    and the most forwards seen running at once."""
    barrier = threading.Barrier(parties, timeout=30)
    lock = threading.Lock()
    running = [0]

    def forward(x):
        with lock:
            sizes.append(len(x))
            running[0] += 1
            inside.append(running[0])
        try:
            barrier.wait()
        finally:
            with lock:
                running[0] -= 1
        return [float(v) * 2 for v in x[:, 0]]

    return forward


def test_two_workers_run_two_forwards_at_once():
    """Two lone requests (twice) become two forwards that run at the same time (each waits for the other
    inside the forward: one worker would break the barrier), each gets its own rows back, and a
    third forward never runs beside them."""
    sizes: list[int] = []
    inside: list[int] = []

    async def main():
        b = MicroBatcher(_meeting_forward(2, sizes, inside), max_batch=8, max_wait_ms=0, workers=2)
        out = [await asyncio.gather(*(b.submit(rows(2 * k + i)) for i in range(2))) for k in range(2)]
        await b.aclose()
        return out

    assert asyncio.run(main()) == [[[0.0], [2.0]], [[4.0], [6.0]]]
    assert sizes == [1, 1, 1, 1] and max(inside) == 2


def test_two_workers_split_the_expected_load_into_two_batches():
    """Eight images expected in flight and two workers: each forward takes its share, four, and the
    two run at once; one worker takes all eight in one forward."""
    def run(workers: int) -> list[int]:
        sizes: list[int] = []

        async def main():
            forward = _meeting_forward(2, sizes, []) if workers == 2 else doubling(sizes)
            b = MicroBatcher(forward, max_batch=32, max_wait_ms=0, workers=workers)
            b.expected = 8
            out = await asyncio.gather(*(b.submit(rows(i)) for i in range(8)))
            await b.aclose()
            assert out == [[2.0 * i] for i in range(8)]

        asyncio.run(main())
        return sizes

    assert run(2) == [4, 4]
    assert run(1) == [8]


def test_two_workers_split_one_large_request_between_them():
    """Nothing in flight before, one request of six images: each worker takes half of what is queued."""
    sizes: list[int] = []

    async def main():
        b = MicroBatcher(_meeting_forward(2, sizes, []), max_batch=32, max_wait_ms=0, workers=2)
        out = await b.submit(rows(*range(6)))
        await b.aclose()
        return out

    assert asyncio.run(main()) == [2.0 * i for i in range(6)]
    assert sizes == [3, 3]


def test_wrong_row_count_or_failing_callback_fails_the_batch_only():
    state = {"short": True, "raise_cb": False}

    def forward(x):
        return list(x[:, 0])[:-1] if state["short"] else list(x[:, 0])

    def on_batch(n, secs):
        if state["raise_cb"]:
            raise RuntimeError("callback broke")

    async def main():
        b = MicroBatcher(forward, max_batch=4, max_wait_ms=0, on_batch=on_batch)
        with pytest.raises(RuntimeError, match="returned 1 rows for 2 inputs"):
            await b.submit(rows(1, 2))
        state.update(short=False, raise_cb=True)
        with pytest.raises(RuntimeError, match="callback broke"):
            await b.submit(rows(3))
        state["raise_cb"] = False
        ok = await asyncio.wait_for(b.submit(rows(5, 6)), 5)
        await b.aclose()
        return ok

    assert asyncio.run(main()) == [5.0, 6.0]


def test_request_guard_counts_unhandled_errors_as_internal():
    from prometheus_client import REGISTRY

    from medens.serving.server import RequestGuard

    async def broken_app(scope, receive, send):
        raise KeyError("boom")

    guard = RequestGuard(broken_app, max_bytes=100, model_name="guard-test")

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        pass

    labels = {"model": "guard-test", "reason": "internal"}
    before = REGISTRY.get_sample_value("medens_request_errors_total", labels) or 0.0
    with pytest.raises(KeyError):
        asyncio.run(guard({"type": "http", "method": "POST", "headers": []}, receive, send))
    assert REGISTRY.get_sample_value("medens_request_errors_total", labels) == before + 1
