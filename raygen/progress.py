"""Progress for long work: a live line on a terminal, a periodic line in logs and CI."""

from __future__ import annotations

import sys
import time


class Progress:
    """`already`: work done by an earlier run (a resume); counted as done, not in the rate."""

    def __init__(self, total: int, what: str, *, every_s: float = 5.0, stream=None, already: int = 0):
        self.total, self.what, self.every_s = total, what, every_s
        self.stream = stream or sys.stderr
        self.done = self.already = already
        self.start = self._last = time.monotonic()
        self.live = self.stream.isatty()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.live or now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            self._print(now)

    def rate(self) -> float:
        return (self.done - self.already) / max(time.monotonic() - self.start, 1e-9)

    def _print(self, now: float) -> None:
        pct = 100.0 * self.done / max(self.total, 1)
        line = f"{self.what}: {self.done}/{self.total} ({pct:.0f}%, {self.rate():.1f}/s, {now - self.start:.0f}s)"
        end = "" if self.live and self.done < self.total else "\n"
        self.stream.write(("\r" if self.live else "") + line + end)
        self.stream.flush()
