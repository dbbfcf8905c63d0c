"""Adaptive micro-batching of single-face requests inside one server worker.

``/classify`` receives one face per request; the model is far cheaper per face in a batch.
BentoML's own adaptive batching sits behind its batchable API (``/classify_batch``), but a
FastAPI route can only reach it through ``self.to_async``, which in BentoML 1.4 sends each
call through an in-process HTTP client with a JSON-encoded array — about 6.6 ms of CPU per
request here, more than the model itself. This batcher groups the faces in memory instead:

- no timer: a face that arrives while the model is idle starts a batch once the event loop
  has taken in what already reached the server (:meth:`MicroBatcher._settle`), so a lone
  request waits 0.2 ms; faces that arrive while a batch runs wait and go together in the
  next one, up to ``max_batch_size`` — so the batch size adapts to the load by itself;
- bounded: past ``max_queue`` waiting faces a request is refused with :class:`Overloaded`
  (the route answers 503) instead of queueing without limit;
- a failing batch fails only its own requests; a client that went away is skipped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import anyio
import numpy as np


class Overloaded(Exception):
    """More faces are waiting than ``max_queue``."""


class MicroBatcher:
    SETTLE_IDLE_TURN_SECONDS = 50e-6  # a loop turn this short ran no request work
    SETTLE_QUIET_SECONDS = 0.0002
    # A bound on settling while faces keep coming. The loop's work for 32 responses and their
    # follow-up requests takes longer than 5 ms on 2 cores: a 5 ms bound split cohorts.
    SETTLE_MAX_SECONDS = 0.02

    def __init__(
        self,
        infer: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int = 64,
        max_queue: int = 1024,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.infer = infer
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._waiting: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, face: np.ndarray) -> np.ndarray:
        """The model output row for one input ``face`` (batched with concurrent callers)."""
        if len(self._waiting) >= self.max_queue:
            raise Overloaded(f"{len(self._waiting)} faces already waiting")
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._loop is not loop:
            self._loop, self._wake = loop, asyncio.Event()
            self._waiting = [(f, fut) for f, fut in self._waiting if fut.get_loop() is loop]
            self._worker = loop.create_task(self._run())
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._waiting.append((face, future))
        assert self._wake is not None
        self._wake.set()
        return await future

    async def _settle(self) -> None:
        """Let requests that have already reached the server join before a batch starts.

        When a batch returns, its clients send their next requests at once, and the event
        loop takes them in over several turns while it still writes the responses. Starting on
        whatever is queued when the model frees up split a cohort of 32 clients into two
        batches that then alternate (or into a batch of 1-8 and one of the rest), and on two
        cores the model and the loop slowed each other down. So: yield the loop until it has
        been idle (turns of under ``SETTLE_IDLE_TURN_SECONDS``, no new face) for
        ``SETTLE_QUIET_SECONDS``, the batch is full, or ``SETTLE_MAX_SECONDS`` passed. A lone
        request waits that quiet time, a fraction of a millisecond.
        """
        start = time.perf_counter()  # not loop.time(): uvloop's advances in milliseconds
        before, idle_since = len(self._waiting), None
        while len(self._waiting) < self.max_batch_size:
            turn_start = time.perf_counter()
            if turn_start - start > self.SETTLE_MAX_SECONDS:
                break
            await asyncio.sleep(0)
            turn_end = time.perf_counter()
            if len(self._waiting) != before or turn_end - turn_start > self.SETTLE_IDLE_TURN_SECONDS:
                before, idle_since = len(self._waiting), None  # a face came, or the loop had work
            elif idle_since is None:
                idle_since = turn_start
            elif turn_end - idle_since >= self.SETTLE_QUIET_SECONDS:
                break

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                await self._settle()
                batch = self._waiting[: self.max_batch_size]
                del self._waiting[: self.max_batch_size]
                batch = [(face, fut) for face, fut in batch if not fut.done()]  # drop cancelled
                if not batch:
                    continue
                if self.on_batch is not None:
                    self.on_batch(len(batch))
                try:
                    out = await anyio.to_thread.run_sync(self.infer, np.stack([f for f, _ in batch]))
                    if len(out) != len(batch):
                        raise RuntimeError(f"model returned {len(out)} rows for {len(batch)} faces")
                except Exception as exc:  # handed to the callers, who answer it
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), row in zip(batch, out, strict=True):
                    if not fut.done():
                        fut.set_result(row)
