"""A stand-in for time.monotonic/time.time and time.sleep: seconds that move only when something sleeps on
them or the test moves them (`clock.now += ...`). (tests/ is on sys.path: its conftest.)"""

from __future__ import annotations

import threading


class FakeClock:
    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start
        self.slept: list[float] = []
        self._lock = threading.Lock()   # a simulator thread may read it while the client sleeps

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.now += seconds
