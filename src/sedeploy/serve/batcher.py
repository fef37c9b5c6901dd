"""Dynamic batching with Triton's semantics, in plain asyncio (testable without a socket).

Follows Triton Inference Server's dynamic batcher (model configuration docs, "Dynamic Batcher"):
- requests wait in one FIFO queue; a batch is formed from the front, in order, up to max_batch
  *images* (a request of batch n counts n; a request that does not fit closes the batch and
  waits for the next one, so order is kept);
- the oldest request is held at most max_delay for the batch to fill (0: take what is queued);
- the queue is bounded (default_queue_policy.max_queue_size, counted in requests): a request that
  finds it full is refused at once (QueueFull -> HTTP 503), so memory stays bounded under overload;
- the model runs in a worker thread (one instance, like instance_group count 1), off the event
  loop; each request gets its own slice of the batch's outputs back.
With batching off every request runs alone (Triton without dynamic_batching).
"""
from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional

import numpy as np

Tensors = Dict[str, np.ndarray]
RunFn = Callable[[Tensors], Tensors]


class QueueFull(Exception):
    """The queue holds max_queue requests already: refuse now (503) rather than grow without bound."""


class Stopped(Exception):
    """The batcher is stopped and takes no new requests."""


@dataclass
class _Request:
    inputs: Tensors
    n: int
    future: asyncio.Future
    arrived: float


@dataclass
class _Count:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchStats:
    """Counters in the shape of Triton's statistics extension (a subset): requests, executions, and time
    spent queued and computing, per batch size."""
    inference_count: int = 0          # images run
    execution_count: int = 0          # batches run
    success: _Count = field(default_factory=_Count)   # request total time, set by the HTTP layer
    fail: _Count = field(default_factory=_Count)
    queue: _Count = field(default_factory=_Count)
    compute: _Count = field(default_factory=_Count)            # per request: the run its batch took
    by_size: Dict[int, _Count] = field(default_factory=dict)   # images per batch -> runs, time
    last_inference_ms: int = 0

    def add_batch(self, images: int, queue_ns: List[int], compute_ns: int) -> None:
        self.inference_count += images
        self.execution_count += 1
        for q in queue_ns:
            self.queue.add(q)
            self.compute.add(compute_ns)
        self.by_size.setdefault(images, _Count()).add(compute_ns)
        self.last_inference_ms = int(time.time() * 1000)

    def to_triton(self, name: str, version: str) -> dict:
        c = lambda x: {"count": x.count, "ns": x.ns}  # noqa: E731
        return {"name": name, "version": version, "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {"success": c(self.success), "fail": c(self.fail), "queue": c(self.queue),
                                    "compute_infer": c(self.compute), "cache_hit": {"count": 0, "ns": 0},
                                    "cache_miss": {"count": 0, "ns": 0}},   # no response cache: never a hit
                "batch_stats": [{"batch_size": k, "compute_infer": c(v)} for k, v in sorted(self.by_size.items())]}


def take_batch(queue: Deque[_Request], max_batch: int, batching: bool = True) -> List[_Request]:
    """Pop the longest FIFO prefix of `queue` that fits max_batch images (at least one request).
    Requests whose caller has gone (future cancelled) are dropped on the way."""
    batch: List[_Request] = []
    size = 0
    while queue:
        r = queue[0]
        if r.future.done():          # cancelled by a client that disconnected: skip, no work for it
            queue.popleft()
            continue
        if batch and (not batching or size + r.n > max_batch):
            break
        batch.append(queue.popleft())
        size += r.n
    return batch


def split_outputs(outputs: Tensors, counts: List[int]) -> List[Tensors]:
    """Batch outputs (B, ...) -> one dict per request, request i getting its counts[i] rows."""
    parts, start = [], 0
    for n in counts:
        parts.append({k: v[start:start + n] for k, v in outputs.items()})
        start += n
    return parts


class DynamicBatcher:
    """submit(inputs, n) -> that request's outputs, run together with its neighbours in the queue."""

    def __init__(self, run: RunFn, max_batch: int = 8, max_delay_s: float = 0.0005, max_queue: int = 128,
                 batching: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_delay_s >= 0")
        self.run_fn, self.max_batch, self.max_delay_s = run, max_batch, max_delay_s
        self.max_queue, self.batching, self.clock = max_queue, batching, clock
        self.queue: Deque[_Request] = collections.deque()
        self.stats = BatchStats()
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._executor: Optional[ThreadPoolExecutor] = None
        self._stopping = False
        self.dead: Optional[str] = None        # why the batching loop ended unasked (then every request: Stopped)
        self.on_death: Optional[Callable[[str], None]] = None   # told once, with the reason

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sedeploy-infer")
        self._task = asyncio.get_running_loop().create_task(self._loop())
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        """The loop's done-callback: if it ended other than by stop(), nothing would ever answer the queue,
        so every waiting request fails now (503) and so does every later one, and the owner is told."""
        if self._stopping and not task.cancelled() and task.exception() is None:
            return
        err = "cancelled" if task.cancelled() else repr(task.exception() or "returned")
        self.dead = f"the batching loop stopped ({err[:200]})"
        while self.queue:
            r = self.queue.popleft()
            if not r.future.done():
                r.future.set_exception(Stopped(f"{self.dead}; the model is not serving"))
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        if self.on_death is not None:
            self.on_death(self.dead)

    async def submit(self, inputs: Tensors, n: int) -> Tensors:
        if self.dead is not None:
            raise Stopped(f"{self.dead}; the model is not serving")
        if self._task is None or self._stopping:
            raise Stopped("the model is not accepting requests (not started, or shutting down)")
        if n > self.max_batch:
            raise ValueError(f"batch size {n} exceeds the model's max batch size {self.max_batch}")
        if len(self.queue) >= self.max_queue:
            raise QueueFull(f"the queue is full ({self.max_queue} requests waiting); retry later")
        fut = asyncio.get_running_loop().create_future()
        self.queue.append(_Request(inputs, n, fut, self.clock()))
        self._wake.set()
        return await fut   # cancelled when the caller goes away: take_batch then skips it

    async def stop(self) -> None:
        """Refuse new requests, finish every queued and running one, then end the loop."""
        self._stopping = True
        if self._task is not None:
            self._wake.set()
            await asyncio.gather(self._task, return_exceptions=True)   # a loop that died has told on_death
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _fill(self) -> None:
        """Wait until the oldest request's delay has passed or max_batch images are queued."""
        while self.batching and self.queue:
            queued = sum(r.n for r in self.queue if not r.future.done())
            wait = self.queue[0].arrived + self.max_delay_s - self.clock()
            if queued >= self.max_batch or wait <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                return

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._fill()
            batch = take_batch(self.queue, self.max_batch, self.batching)
            if not batch:
                continue
            start = self.clock()
            try:
                outs = await loop.run_in_executor(self._executor, self._run, batch)
            except Exception as e:  # noqa: BLE001 - a failed run fails its own requests, not the server
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)
            else:
                self.stats.add_batch(sum(r.n for r in batch), [int((start - r.arrived) * 1e9) for r in batch],
                                     int((self.clock() - start) * 1e9))
                # a lone request keeps the whole output (a fixed-batch model's rows are all its own)
                parts = [outs] if len(batch) == 1 else split_outputs(outs, [r.n for r in batch])
                for r, part in zip(batch, parts):
                    if not r.future.done():
                        r.future.set_result(part)

    def _run(self, batch: List[_Request]) -> Tensors:
        """In the worker thread: concatenate the requests' inputs on the batch axis and run once."""
        if len(batch) == 1:
            return self.run_fn(batch[0].inputs)
        return self.run_fn({k: np.concatenate([r.inputs[k] for r in batch]) for k in batch[0].inputs})
