"""Progress of long fits: one updating line with the iteration, the rate and an ETA.

The fit loops report every iteration to :class:`Progress`, which does nothing unless a
:func:`progress_bar` is active. The CLI activates one on stderr (``--quiet`` turns it off); in
Python or Jupyter::

    with dnmf_dask.progress_bar():
        model.fit(corpus)

(The tasks themselves are on the dask dashboard, whose link a started cluster prints.)
"""

from __future__ import annotations

import contextlib
import sys
import time

_active = []  # the stack of active bars' settings (stream, min_interval)


def _fmt(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


@contextlib.contextmanager
def progress_bar(stream=None, min_interval: float = 0.5):
    """Show fit progress on ``stream`` (default stderr) while the block runs.

    Parameters
    ----------
    stream : file-like, optional
    min_interval : float
        Seconds between redraws (the last state is always drawn when a loop ends).
    """
    _active.append((stream or sys.stderr, float(min_interval)))
    try:
        yield
    finally:
        _active.pop()


class Progress:
    """One loop's progress line: ``label i/total pct% elapsed ETA`` (no-op without a bar)."""

    def __init__(self, label: str, total: int, start: int = 0):
        self.label, self.total, self.start = label, int(total), int(start)
        self.on = bool(_active)
        self.t0 = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False
        self.i = start
        if self.on:
            self.stream, self.min_interval = _active[-1]

    def line(self, i: int, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        done = i - self.start
        el = now - self.t0
        pct = 100.0 * i / self.total if self.total else 100.0
        eta = (el / done) * (self.total - i) if done > 0 else float("nan")
        eta_s = _fmt(eta) if eta == eta else "?"
        return f"{self.label} {i}/{self.total} {pct:3.0f}% elapsed {_fmt(el)} ETA {eta_s}"

    def update(self, i: int):
        self.i = i
        if not self.on:
            return
        now = time.monotonic()
        if now - self._last_draw >= self.min_interval or i >= self.total:
            self._last_draw = now
            self.stream.write("\r" + self.line(i, now) + "  ")
            self.stream.flush()
            self._drawn = True

    def close(self):
        if self.on and self._drawn:
            self.stream.write("\r" + self.line(self.i) + "  \n")
            self.stream.flush()
