"""The dynamic batcher's bookkeeping (serve/batcher.py) without a socket or a model: Triton-shaped
statistics, output splitting, option checks, the single named worker, start/stop edges. Ordering and
timing semantics are in test_serve.py (checked by batch contents and counters, not wall time)."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from sedeploy.serve.batcher import BatchStats, DynamicBatcher, Stopped, _Count, split_outputs


def test_counts_accumulate():
    c = _Count()
    c.add(5)
    c.add(7, count=3)
    assert (c.count, c.ns) == (4, 12)


def test_stats_in_tritons_shape():
    s = BatchStats()
    before = int(time.time() * 1000)
    s.add_batch(3, [10, 20], 100)
    s.add_batch(1, [5], 40)
    s.add_batch(3, [1], 60)
    after = int(time.time() * 1000)
    s.success.add(1000)
    s.fail.add(9, count=2)
    t = s.to_triton("fm", "1")
    assert before <= t.pop("last_inference") <= after                     # milliseconds since the epoch
    assert t == {"name": "fm", "version": "1", "inference_count": 7, "execution_count": 3,
                 "inference_stats": {"success": {"count": 1, "ns": 1000}, "fail": {"count": 2, "ns": 9},
                                     "queue": {"count": 4, "ns": 36},
                                     "compute_infer": {"count": 4, "ns": 100 + 100 + 40 + 60},
                                     "cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0}},
                 "batch_stats": [{"batch_size": 1, "compute_infer": {"count": 1, "ns": 40}},
                                 {"batch_size": 3, "compute_infer": {"count": 2, "ns": 160}}]}
    assert BatchStats().to_triton("m", "2")["last_inference"] == 0


def test_split_outputs_gives_each_request_its_rows():
    out = {"y": np.arange(6).reshape(6, 1), "z": np.arange(6) * 10}
    parts = split_outputs(out, [1, 3, 2])
    assert [p["y"][:, 0].tolist() for p in parts] == [[0], [1, 2, 3], [4, 5]]
    assert [p["z"].tolist() for p in parts] == [[0], [10, 20, 30], [40, 50]]


@pytest.mark.parametrize("kw", [dict(max_batch=0), dict(max_queue=0), dict(max_delay_s=-0.001)])
def test_options_checked_one_at_a_time(kw):
    with pytest.raises(ValueError) as e:
        DynamicBatcher(lambda x: x, **kw)
    assert str(e.value) == "max_batch and max_queue must be >= 1, max_delay_s >= 0"


def test_smallest_options_are_valid():
    b = DynamicBatcher(lambda x: x, max_batch=1, max_queue=1, max_delay_s=0.0)
    assert (b.max_batch, b.max_queue, b.max_delay_s, b.batching) == (1, 1, 0.0, True)


def test_submit_and_stop_outside_a_run():
    async def main():
        b = DynamicBatcher(lambda x: x)
        await b.stop()                                     # never started: nothing to stop, no error
        with pytest.raises(Stopped) as e:
            await b.submit({"x": np.zeros((1, 1))}, 1)
        assert str(e.value) == "the model is not accepting requests (not started, or shutting down)"
        b.start()
        await b.stop()
        with pytest.raises(Stopped):
            await b.submit({"x": np.zeros((1, 1))}, 1)
        await b.stop()                                     # stopping twice is harmless
    asyncio.run(main())


def test_one_named_worker_thread_off_the_event_loop():
    names, loop_threads = [], []

    threads = []

    def run(inputs):
        names.append(threading.current_thread().name)
        threads.append(threading.current_thread())
        return {"y": inputs["x"] * 2}

    async def main():
        loop_threads.append(threading.current_thread().name)
        b = DynamicBatcher(run, max_batch=2, max_delay_s=0.0)
        b.start()
        outs = await asyncio.gather(*[b.submit({"x": np.full((1, 1), i, np.float32)}, 1) for i in range(5)])
        await b.stop()
        return outs
    outs = asyncio.run(main())
    assert [o["y"][0, 0] for o in outs] == [0, 2, 4, 6, 8]
    assert set(names) == {"sedeploy-infer_0"} and loop_threads[0] not in names
    assert not threads[0].is_alive()                       # stop() joined the worker


def test_a_cancelled_request_does_not_cut_the_batch():
    from collections import deque
    from sedeploy.serve.batcher import _Request, take_batch
    loop = asyncio.new_event_loop()
    reqs = [_Request({}, 1, loop.create_future(), 0.0) for _ in range(3)]
    reqs[1].future.cancel()                             # its client went away
    q = deque(reqs)
    assert take_batch(q, 4) == [reqs[0], reqs[2]] and not q
    loop.close()


def test_without_batching_the_delay_does_not_apply():
    async def main():
        b = DynamicBatcher(lambda x: {"y": x["x"]}, max_batch=8, max_delay_s=3600.0, batching=False)
        b.start()
        out = await asyncio.wait_for(b.submit({"x": np.ones((1, 1))}, 1), 10)   # a waiting batcher times out
        await b.stop()
        return out
    assert asyncio.run(main())["y"].tolist() == [[1.0]]


def test_queue_and_compute_times_on_the_batchers_clock():
    """A fake clock that the model advances by 2 s per run: exact nanoseconds, no wall time involved."""
    now = [10.0]
    gate = threading.Event()

    def run(inputs):
        gate.wait(10)
        now[0] += 2.0
        return {"y": inputs["x"]}

    async def main():
        b = DynamicBatcher(run, max_batch=1, max_delay_s=0.0, clock=lambda: now[0])
        b.start()
        first = asyncio.create_task(b.submit({"x": np.zeros((1, 1))}, 1))     # arrives at 10, runs 10 -> 12
        await asyncio.sleep(0.05)
        second = asyncio.create_task(b.submit({"x": np.ones((1, 1))}, 1))     # arrives at 10, waits until 12
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, second), 10)
        await b.stop()
        return b.stats
    st = asyncio.run(main())
    assert (st.queue.count, st.queue.ns) == (2, 2_000_000_000)
    assert (st.compute.count, st.compute.ns) == (2, 4_000_000_000)
    assert {k: (v.count, v.ns) for k, v in st.by_size.items()} == {1: (2, 4_000_000_000)}


def test_a_lone_request_keeps_a_fixed_batch_models_whole_output():
    async def main():
        b = DynamicBatcher(lambda x: {"y": np.arange(4.0)[:, None]}, max_batch=4, max_delay_s=0.0)
        b.start()
        out = await b.submit({"x": np.zeros((1, 1))}, 1)
        await b.stop()
        return out
    assert asyncio.run(main())["y"][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_queue_of_cancelled_requests_does_not_stop_the_loop():
    gate = threading.Event()

    def run(inputs):
        gate.wait(10)
        return {"y": inputs["x"]}

    async def main():
        b = DynamicBatcher(run, max_batch=1, max_delay_s=0.0)
        b.start()
        running = asyncio.create_task(b.submit({"x": np.zeros((1, 1))}, 1))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(b.submit({"x": np.ones((1, 1))}, 1))
        await asyncio.sleep(0.01)
        gone.cancel()                                   # the next batch the loop forms is empty
        gate.set()
        await running
        await asyncio.sleep(0.05)
        out = await asyncio.wait_for(b.submit({"x": np.full((1, 1), 2.0)}, 1), 10)   # still served
        await b.stop()
        return out
    assert asyncio.run(main())["y"].tolist() == [[2.0]]


def test_defaults_are_the_one_place_for_them():
    """DynamicBatcher's defaults are Triton config's (core.tritonconfig.BatchingDefaults), not a second copy."""
    from sedeploy.core.tritonconfig import BatchingDefaults
    d, b = BatchingDefaults(), DynamicBatcher(lambda x: x)
    assert (b.max_batch, b.max_delay_s, b.max_queue) == (d.max_batch, d.max_delay_us / 1e6, d.max_queue)
