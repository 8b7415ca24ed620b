"""A dependency-free progress bar with frames/s and ETA, for long bags."""
from __future__ import annotations

import threading
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1m15s"``, ``4000`` -> ``"1h06m"``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class Progress:
    """Prints ``done/total``, a bar, frames/s and the ETA to a stream.

    On a terminal the line is redrawn in place (at most every ``interval`` s); otherwise (a log
    file, CI) a plain line is printed every ``log_interval`` s so logs stay short.

    Args:
        total: Expected number of frames (0: unknown, no bar or ETA).
        stream: Output stream (usually stderr).
        enabled: False turns every call into a no-op.
        label: First word of the line (the command).
    """

    def __init__(self, total: int, *, stream: TextIO, enabled: bool = True, width: int = 28,
                 interval: float = 0.25, log_interval: float = 10.0, label: str = "replay") -> None:
        self.label = label
        self.total = max(int(total), 0)
        self.stream = stream
        self.enabled = enabled
        self.width = width
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else log_interval
        self.start = time.perf_counter()
        self._last = 0.0
        self._done = 0
        self._lock = threading.Lock()
        self._drawn = False

    def line(self, done: int, now: float | None = None) -> str:
        """The progress text for ``done`` frames (exposed for tests)."""
        elapsed = (now if now is not None else time.perf_counter()) - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = []
        if self.total:
            frac = min(done / self.total, 1.0)
            filled = int(frac * self.width)
            parts.append(f"{done}/{self.total} frames {frac * 100:5.1f}% "
                         f"|{'#' * filled}{'.' * (self.width - filled)}|")
        else:
            parts.append(f"{done} frames")
        parts.append(f"{rate:.1f} frames/s")
        if self.total and rate > 0:
            parts.append(f"ETA {format_duration(max(self.total - done, 0) / rate)}")
        parts.append(f"elapsed {format_duration(elapsed)}")
        return f"{self.label} " + "  ".join(parts)

    def update(self, done: int) -> None:
        """Record progress; redraws when the interval has passed."""
        if not self.enabled:
            return
        with self._lock:
            self._done = done
            now = time.perf_counter()
            if now - self._last < self.interval:
                return
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        text = self.line(self._done, now)
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        """Draw the final state and end the line."""
        if not self.enabled:
            return
        with self._lock:
            self._draw(time.perf_counter())
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
