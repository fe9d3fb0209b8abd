"""Wall and CPU seconds together. A record times each phase both ways: wall seconds are what the run took beside
whatever else shared its cores (2-4x more on a busy machine), the process's CPU seconds (over all its threads) what
it would take on cores of its own, which is what CPU-hours count (grid.hours)."""
from __future__ import annotations

import time


class Clock:
    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def add(self, spent: tuple[float, float]) -> None:
        """Count (wall, CPU) seconds spent before the start: a resumed run's before its kill."""
        self.wall, self.cpu = self.wall - spent[0], self.cpu - spent[1]

    def read(self) -> tuple[float, float]:
        """(wall, CPU) seconds since the start."""
        return time.perf_counter() - self.wall, time.process_time() - self.cpu
