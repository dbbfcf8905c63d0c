"""Bounding a worker's memory under large uploads: a budget of decoded pixels, and handing
freed memory back to the system after a spike.

A 25 MP image (the default pixel limit) fits in a 73 KB PNG and decodes to ~75 MB per RGB copy;
several of them decoding at once pushed a worker past 1.9 GB. :class:`PixelBudget` lets large
images (over ``min_pixels``) decode only while the pixels in flight stay within the budget; the
others wait their turn on the event loop (holding no thread and no CPU slot). Small images, the
common case, never wait.

glibc keeps memory that large requests freed inside the process (its arenas and the heap top,
and its mmap threshold rises after the first large free), so RSS stayed high long after a spike.
:func:`trim` asks glibc to return it (``malloc_trim``); the budget calls it when the last large
decode in flight ends.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import platform
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def trim() -> bool:
    """Return freed heap memory to the system (glibc ``malloc_trim(0)``); False elsewhere."""
    func = _malloc_trim()
    if func is None:
        return False
    func(0)
    return True


class PixelBudget:
    """At most ``budget`` decoded pixels of large images in flight; an image larger than the
    whole budget runs alone."""

    def __init__(self, budget: int, min_pixels: int) -> None:
        self.budget = budget
        self.min_pixels = min_pixels
        self.in_flight = 0
        self._changed: asyncio.Condition | None = None

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        if pixels < self.min_pixels:
            yield
            return
        need = min(pixels, self.budget)
        if self._changed is None:  # created in the running loop
            self._changed = asyncio.Condition()
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight + need <= self.budget)
            self.in_flight += need
        try:
            yield
        finally:
            async with self._changed:
                self.in_flight -= need
                self._changed.notify_all()
            if self.in_flight == 0:  # the spike is over: give its memory back
                await anyio.to_thread.run_sync(trim)
