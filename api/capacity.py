"""A fixed number of concurrent runs; past it, requests are refused with 503 busy."""
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from api.errors import busy
from api.metrics import SLOTS_IN_USE


class Capacity:
    """Slots for concurrent runs in this process."""

    def __init__(self, slots: int, wait_s: float, retry_after_s: int) -> None:
        self._slots = threading.BoundedSemaphore(slots)
        self._wait_s, self._retry_after_s = wait_s, retry_after_s

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for one run, waiting at most wait_s for one; else 503 busy."""
        if not self._slots.acquire(timeout=self._wait_s):
            raise busy("the service is at capacity", self._retry_after_s)
        SLOTS_IN_USE.inc()
        try:
            yield
        finally:
            SLOTS_IN_USE.dec()
            self._slots.release()
