"""A tiny progress bar with ETA on stderr (no dependency).

On a terminal the bar redraws in place; otherwise (logs, CI) it prints a line at most every
``interval`` seconds and at the end. The ETA counts only work done in this run, so items
answered from the cache do not make it look faster than it is.

Example:
    >>> import io
    >>> out = io.StringIO()
    >>> bar = Progress(2, label="demo", stream=out, interval=0)
    >>> bar.advance(cached=True); bar.advance(note="moa"); bar.close()
    >>> "2/2" in out.getvalue()
    True
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``"1h02m"``, ``"3m05s"`` or ``"42s"``.

    Example:
        >>> format_duration(3725), format_duration(185), format_duration(4.2)
        ('1h02m', '3m05s', '4s')
    """
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Counts finished units of work out of ``total`` and shows rate and ETA.

    Args:
        total: units of work in all.
        label: printed before the bar.
        stream: where to write (default ``sys.stderr``); ``None`` disables output.
        interval: seconds between lines when the stream is not a terminal.
    """

    def __init__(
        self,
        total: int,
        *,
        label: str = "",
        stream: TextIO | None = sys.stderr,
        interval: float = 10.0,
        width: int = 24,
    ) -> None:
        self.total = total
        self.label = label
        self.stream = stream
        self.interval = interval
        self.width = width
        self.done = 0
        self.cached = 0
        self.started = time.perf_counter()
        self._last_draw = -float("inf")
        self._tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    def eta(self) -> float | None:
        """Seconds left, from the mean time of the units computed (not cached) so far."""
        if self.done >= self.total:
            return 0.0
        computed = self.done - self.cached
        if computed <= 0:
            return None
        per_unit = (time.perf_counter() - self.started) / computed
        return per_unit * (self.total - self.done)

    def render(self, note: str = "") -> str:
        """The progress line (without a line ending)."""
        fraction = self.done / self.total if self.total else 1.0
        filled = round(fraction * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = format_duration(time.perf_counter() - self.started)
        eta = self.eta()
        parts = [
            f"{self.label} [{bar}] {self.done}/{self.total} {fraction:4.0%}",
            f"elapsed {elapsed}",
            f"ETA {format_duration(eta)}" if eta is not None else "ETA ?",
        ]
        if self.cached:
            parts.append(f"{self.cached} cached")
        if note:
            parts.append(note)
        return " | ".join(parts).strip()

    def advance(self, *, cached: bool = False, note: str = "") -> None:
        """Count one finished unit (``cached``: taken from the cache, not computed)."""
        self.done += 1
        self.cached += int(cached)
        self._draw(note, final=self.done >= self.total)

    def _draw(self, note: str, *, final: bool = False) -> None:
        if self.stream is None:
            return
        now = time.perf_counter()
        if self._tty:
            self.stream.write("\r\x1b[2K" + self.render(note))
        elif final or now - self._last_draw >= self.interval:
            self.stream.write(self.render(note) + "\n")
        else:
            return
        self._last_draw = now
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line on a terminal."""
        if self.stream is not None and self._tty:
            self.stream.write("\n")
            self.stream.flush()
