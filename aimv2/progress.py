"""Progress of long work: a tqdm bar on a terminal, plain lines in a log, or nothing.

On a terminal the bar is tqdm's, redrawn in place. Anywhere else (a CI log, a pipe, a
file) a redrawn bar is noise, so the same information goes out as plain lines instead:
one per ``interval`` seconds at most, and always the last one (``interval=0``: one per
update). ``enabled=False`` writes nothing. Reaching ``total`` closes it (a bar ends its
line), so a caller that cannot wrap its work in ``with`` still ends cleanly. Training, probing, ``aimv2 extract`` and
``aimv2 convert`` all report through :class:`Progress`; it imports no framework.

Example:
    >>> import io
    >>> log = io.StringIO()
    >>> with Progress(3, "extract", unit="images", file=log, interval=0) as p:
    ...     for _ in range(3):
    ...         p.update(1)
    >>> [line.split(" (")[0] for line in log.getvalue().splitlines()]
    ['extract: 1/3 images', 'extract: 2/3 images', 'extract: 3/3 images']
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from tqdm import tqdm

__all__ = ["OWN_ETA_FORMAT", "Progress", "is_terminal"]

#: A bar for callers that put their own rate and eta in the status (training: its eta
#: counts only this run's steps, where tqdm's would count a resumed run's first jump).
OWN_ETA_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def is_terminal(file: TextIO) -> bool:
    """Whether ``file`` is an interactive terminal (where a redrawn bar makes sense).

    Example:
        >>> import io
        >>> is_terminal(io.StringIO())
        False
    """
    isatty = getattr(file, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


class Progress:
    """Progress of ``total`` units of work (``None``: unknown), shown as ``desc``.

    Args:
        total: units of work in all, or None when unknown.
        desc: what is being done, e.g. ``"features train"``.
        unit: what is counted (``"images"``, ``"epochs"``, ``"tensors"``).
        enabled: False shows nothing at all.
        interval: seconds between plain lines (off a terminal); 0 writes one per update.
        file: where to write (default: ``sys.stderr`` at construction).
        bar_format: tqdm's ``bar_format`` on a terminal (default: tqdm's own, with its
            rate and eta; :data:`OWN_ETA_FORMAT` leaves both to the status).

    Example:
        >>> import io
        >>> log = io.StringIO()
        >>> p = Progress(10, "probe", unit="epochs", file=log, interval=3600)
        >>> p.update(4, "loss 0.5")  # within the interval: no line yet
        >>> p.close()  # the last state is always written
        >>> log.getvalue().startswith("probe: 4/10 epochs loss 0.5 (")
        True
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "it",
        enabled: bool = True,
        interval: float = 10.0,
        file: TextIO | None = None,
        bar_format: str | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.interval = interval
        self.file = sys.stderr if file is None else file
        self.tty = enabled and is_terminal(self.file)
        self.closed = not enabled
        self.n = 0
        self._t0 = time.perf_counter()
        self._last_line = self._t0
        self._pending: str | None = None  # a plain line not written yet (interval)
        self._bar: tqdm | None = None
        if self.tty:
            self._bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                file=self.file,
                dynamic_ncols=True,
                bar_format=bar_format,
            )

    def update(self, n: int = 1, status: str = "", *, line: str | None = None) -> None:
        """Advance by ``n`` units and show ``status`` after the count.

        ``line`` replaces the whole plain line (for callers whose log format is fixed).
        """
        self.moveto(self.n + n, status, line=line)

    def moveto(self, n: int, status: str = "", *, line: str | None = None) -> None:
        """Set the count to ``n`` (e.g. a training step) and show ``status``."""
        if self.closed:
            return
        delta, self.n = n - self.n, n
        finished = self.total is not None and n >= self.total
        if self._bar is not None:
            self._bar.set_postfix_str(status, refresh=False)
            self._bar.update(delta)
        else:
            self._pending = line if line is not None else self._plain(status)
            now = time.perf_counter()
            if finished or self.interval <= 0 or now - self._last_line >= self.interval:
                self._write_pending(now)
        if finished:
            self.close()

    def _plain(self, status: str) -> str:
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        elapsed = time.perf_counter() - self._t0
        timing = f"{elapsed:.0f}s"
        if self.total and 0 < self.n < self.total:
            timing += f", eta {elapsed / self.n * (self.total - self.n):.0f}s"
        return f"{self.desc}: {count} {self.unit}{' ' + status if status else ''} ({timing})"

    def _write_pending(self, now: float) -> None:
        if self._pending is not None:
            self.file.write(self._pending + "\n")
            self.file.flush()
            self._pending, self._last_line = None, now

    def close(self) -> None:
        """End the bar, or write the last plain line if the interval held it back."""
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        else:
            self._write_pending(time.perf_counter())

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
