"""The folder pipeline: command-line inputs -> image paths, per-image work on every core, in input
order, with bounded memory, batched for the model (the standard library, and core.decode's names
for image files and errors).

Folder inference is decode-bound: one 640x480 JPEG costs ~6 ms of Pillow decoding and resizing,
the model well under 1 ms per image (docs/BENCHMARKS.md, "Edge throughput"). Pillow releases the
GIL while it decodes, converts and resizes, so a pool of threads (no processes: nothing to pickle,
no start-up) runs that work on every core while the main thread runs the model.

`ordered_map` is `concurrent.futures.Executor.map` with two differences that matter for a folder
of 100,000 images: it submits lazily, keeping at most `window` items submitted and not yet taken
(Executor.map submits everything at once and so holds every result), and closing the generator
cancels what has not started (a consumer that stops, e.g. `| head`, stops the work).
`ordered_batches` puts the model behind it: prepared items are run in batches, results still
come in input order, each as soon as its batch is done.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Deque, Iterable, Iterator, List, Sequence, Tuple, TypeVar, Union

from ..core.decode import IMAGE_SUFFIXES, ImageError

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")
E = TypeVar("E", bound=Exception)


def expand_inputs(items: Sequence[str]):
    """Files, directories (their images, sorted) and globs -> (paths, errors as ImageError)."""
    import glob
    paths, errors = [], []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(ImageError(f"{p}: directory has no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)", p))
            paths += found
        elif any(ch in item for ch in "*?[") and not p.exists():
            found = sorted(Path(q) for q in glob.glob(item, recursive=True) if Path(q).is_file())
            if not found:
                errors.append(ImageError(f"{item}: pattern matches no files", item))
            paths += found
        else:
            paths.append(p)  # missing files are reported when loaded
    return paths, errors


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int) -> Iterator[R]:
    """fn(item) for every item, run on `workers` threads, yielded in input order.

    At most `window` items are submitted and not yet yielded, and `items` is read only as far as
    that window reaches. fn must catch its own per-item errors (an exception it raises stops the
    iteration, as a plain loop would). workers=0 runs fn inline, one item at a time.
    """
    if workers < 0 or window < 1:
        raise ValueError(f"workers must be >= 0 and window >= 1, got {workers}, {window}")
    if workers == 0:
        for item in items:
            yield fn(item)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sedeploy-decode")
    pending: Deque[Future] = deque()
    it = iter(items)
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < window:
                item = next(it, _END)
                if item is _END:
                    exhausted = True
                else:
                    pending.append(pool.submit(fn, item))
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        # Reached on exhaustion, on an error, and when the consumer closes the generator early:
        # drop what has not started; let the running ones finish (they hold no locks of ours).
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True)


_END = object()


def ordered_batches(prepare: Callable[[T], Union[P, E]], run: Callable[[List[P]], List[R]], items: Iterable[T],
                    batch_size: int, workers: int, window: int) -> Iterator[Union[R, E]]:
    """run(batch of prepared items) -> one result each, for every item, yielded in input order.

    prepare(item) runs on `workers` threads (ordered_map, at most `window` ahead) and returns its
    per-item failure (an Exception) instead of raising it: a failure is yielded in its place, the
    rest go to `run` in batches of `batch_size`. A result is yielded as soon as every input before
    it is resolved, so only the batch being filled waits.
    """
    # queue: one slot per input not yet yielded, in order; a slot is filled with its failure at
    # once, with its result when its batch has run. Only the batch being filled is unresolved.
    queue: Deque[List[Union[R, E, None]]] = deque()
    batch: List[Tuple[list, P]] = []

    def run_batch() -> None:
        for (slot, _), res in zip(batch, run([p for _, p in batch])):
            slot[0] = res
        batch.clear()

    for prepared in ordered_map(prepare, items, workers, window):
        slot: list = [prepared if isinstance(prepared, Exception) else None]
        queue.append(slot)
        if slot[0] is None:
            batch.append((slot, prepared))
            if len(batch) >= batch_size:
                run_batch()
        while queue and queue[0][0] is not None:
            yield queue.popleft()[0]
    if batch:
        run_batch()
    while queue:
        yield queue.popleft()[0]
