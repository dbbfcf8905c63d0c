"""serving.batching.MicroBatcher: grouping, order, back-pressure and failure isolation."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from serving.batching import MicroBatcher, Overloaded


class SlowModel:
    """Doubles its input; blocks until released so requests pile up behind a running batch."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.release = threading.Event()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(len(x))
        self.release.wait(5)
        return x * 2


def test_concurrent_requests_share_model_calls_and_keep_their_rows() -> None:
    model = SlowModel()
    batcher = MicroBatcher(model, max_batch_size=8)

    async def run() -> list[np.ndarray]:
        first = asyncio.create_task(batcher.submit(np.full(3, -1.0)))
        await asyncio.sleep(0.05)  # the first call is now running alone in the model
        rest = [asyncio.create_task(batcher.submit(np.full(3, float(i)))) for i in range(20)]
        await asyncio.sleep(0.05)
        model.release.set()
        return [await first, *[await t for t in rest]]

    out = asyncio.run(run())
    assert model.batches == [1, 8, 8, 4]  # 20 waiting faces in batches of at most 8
    np.testing.assert_array_equal(out[0], np.full(3, -2.0))
    for i, row in enumerate(out[1:]):
        np.testing.assert_array_equal(row, np.full(3, 2.0 * i))


def test_faces_arriving_over_a_few_loop_turns_share_one_batch() -> None:
    """A cohort of requests reaches the handlers over several event-loop turns (the loop reads
    and parses them one by one); starting the model on the first alone would split it."""
    model = SlowModel()
    model.release.set()
    batcher = MicroBatcher(model, max_batch_size=64)

    async def arrive_after(turns: int) -> np.ndarray:
        for _ in range(turns):
            await asyncio.sleep(0)
        return await batcher.submit(np.full(2, float(turns)))

    async def run() -> list[np.ndarray]:
        return await asyncio.gather(*[arrive_after(turns) for turns in range(6)])

    out = asyncio.run(run())
    assert model.batches == [6]
    for turns, row in enumerate(out):
        np.testing.assert_array_equal(row, np.full(2, 2.0 * turns))


def test_a_busy_event_loop_does_not_end_the_settling() -> None:
    """A loop turn spent on other requests (writing responses, parsing new ones) is not quiet:
    a face that arrives just after it still joins the batch."""
    model = SlowModel()
    model.release.set()
    batcher = MicroBatcher(model, max_batch_size=64)
    batcher.SETTLE_QUIET_SECONDS = 0.01  # shorter than the busy turn, long for an idle one
    batcher.SETTLE_MAX_SECONDS = 1.0

    async def busy_then_submit() -> np.ndarray:
        for _ in range(3):  # the first face is settling now
            await asyncio.sleep(0)
        time.sleep(0.02)  # one long turn of other work
        await asyncio.sleep(0)
        return await batcher.submit(np.ones(1))

    async def run() -> None:
        await asyncio.gather(batcher.submit(np.zeros(1)), busy_then_submit())

    asyncio.run(run())
    assert model.batches == [2]


def test_a_lone_face_is_not_held_back() -> None:
    model = SlowModel()
    model.release.set()
    batcher = MicroBatcher(model, max_batch_size=64)

    async def run() -> list[np.ndarray]:
        first = await batcher.submit(np.zeros(1))  # alone: runs after the settling turns
        await asyncio.sleep(0.01)
        return [first, await batcher.submit(np.ones(1))]

    out = asyncio.run(run())
    assert model.batches == [1, 1]
    np.testing.assert_array_equal(out[1], np.full(1, 2.0))


def test_a_full_queue_refuses_instead_of_growing() -> None:
    model = SlowModel()
    batcher = MicroBatcher(model, max_batch_size=4, max_queue=3)

    async def run() -> int:
        tasks = [asyncio.create_task(batcher.submit(np.zeros(1))) for _ in range(3)]
        await asyncio.sleep(0)  # queued, the worker has not started a batch yet
        with pytest.raises(Overloaded):
            await batcher.submit(np.zeros(1))
        model.release.set()
        return len(await asyncio.gather(*tasks))

    assert asyncio.run(run()) == 3


def test_a_failing_batch_fails_only_its_requests() -> None:
    calls = 0

    def flaky(x: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("bad batch")
        return x + 1

    batcher = MicroBatcher(flaky)

    async def run() -> None:
        with pytest.raises(ValueError, match="bad batch"):
            await batcher.submit(np.zeros(2))
        np.testing.assert_array_equal(await batcher.submit(np.zeros(2)), np.ones(2))

    asyncio.run(run())


def test_wrong_row_count_is_an_error_not_a_mixup() -> None:
    batcher = MicroBatcher(lambda x: x[:0])

    async def run() -> None:
        with pytest.raises(RuntimeError, match="0 rows for 1 faces"):
            await batcher.submit(np.zeros(2))

    asyncio.run(run())


def test_works_again_on_a_new_event_loop() -> None:
    batcher = MicroBatcher(lambda x: x * 3)
    for _ in range(2):
        out = asyncio.run(batcher.submit(np.ones(2)))
        np.testing.assert_array_equal(out, np.full(2, 3.0))
