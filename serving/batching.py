"""Adaptive micro-batching of single-face requests inside one server worker.

``/classify`` receives one face per request; the model is far cheaper per face in a batch.
BentoML's own adaptive batching sits behind its batchable API (``/classify_batch``), but a
FastAPI route can only reach it through ``self.to_async``, which in BentoML 1.4 sends each
call through an in-process HTTP client with a JSON-encoded array — about 6.6 ms of CPU per
request here, more than the model itself. This batcher groups the faces in memory instead:

- no timer: a face that arrives while the model is idle starts a batch after a few event-loop
  turns (:meth:`MicroBatcher._settle`: requests already at the server join it), so a lone
  request waits microseconds; faces that arrive while a batch runs wait and go together in
  the next one, up to ``max_batch_size`` — so the batch size adapts to the load by itself;
- bounded: past ``max_queue`` waiting faces a request is refused with :class:`Overloaded`
  (the route answers 503) instead of queueing without limit;
- a failing batch fails only its own requests; a client that went away is skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio
import numpy as np


class Overloaded(Exception):
    """More faces are waiting than ``max_queue``."""


class MicroBatcher:
    # Turns without a new face that end the settling; a request that is already readable on
    # its socket needs two (read and parse, then its handler runs up to submit()).
    SETTLE_QUIET_TURNS = 2
    SETTLE_MAX_SECONDS = 0.005  # a bound on settling while faces keep arriving every turn

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

        When a large batch returns, its clients send their next requests at once, and the
        event loop takes them in over a few turns while it still writes the responses. Starting
        on the first arrival alone split each such cohort in two: a batch of 1-8 faces, then
        one of the rest, who waited for it (half of all batches at concurrency 32). So: yield
        the loop until a turn passes with no new face (or the batch is full). At low load that
        is a few loop turns, microseconds; no timer, so an idle model never waits on a clock.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.SETTLE_MAX_SECONDS
        quiet, before = 0, len(self._waiting)
        while (
            quiet < self.SETTLE_QUIET_TURNS
            and len(self._waiting) < self.max_batch_size
            and loop.time() < deadline
        ):
            await asyncio.sleep(0)
            quiet = quiet + 1 if len(self._waiting) == before else 0
            before = len(self._waiting)

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
