"""What a run writes while it trains: ``metrics.jsonl`` and a progress line.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> m = Metrics(Path(tempfile.mkdtemp()) / "metrics.jsonl", None)
    >>> m.write({"step": 1, "loss": 2.0})
    >>> [json.loads(line) for line in m.path.read_text().splitlines()]
    [{'step': 1, 'loss': 2.0}]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from .. import atomic
from .. import progress as _progress

__all__ = ["Metrics", "Progress"]


class Metrics:
    """``metrics.jsonl``: one JSON object per logged step, truncated on resume."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        kept = []
        if resume_step is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and row.get("step", 1 << 60) <= resume_step:
                    kept.append(line)
        atomic.write_text(path, "".join(f"{line}\n" for line in kept))

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (flushed, so a killed run keeps every row written)."""
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()


class Progress:
    """Training progress: a tqdm bar on a terminal, one plain line per log interval otherwise.

    Both show step/total, the loss with its pixel and text terms, the learning rate,
    images per second and the estimated time left; the plain line keeps the format
    CI logs and the tests read (``... 5/10 loss 1.2345 (pixel ... text ...) ...``).

    Example:
        >>> import io
        >>> log = io.StringIO()
        >>> p = Progress(10, True, file=log)
        >>> row = {"loss": 1.5, "pixel_loss": 0.5, "text_loss": 1.3, "lr": 1e-3,
        ...        "images_per_s": 512.0}
        >>> p.update(5, row, eta=12.0); p.close()
        >>> log.getvalue()
        '[############------------] 5/10 loss 1.5000 (pixel 0.5000 text 1.3000) lr 1.00e-03 512 img/s eta 12s\\n'
    """

    def __init__(self, total: int, enabled: bool, *, file: TextIO | None = None) -> None:
        self.total, self.enabled = total, enabled
        # The loop's eta counts only this run's steps (a resumed run starts mid-way),
        # so the bar shows it rather than tqdm's own estimate.
        self._shown = _progress.Progress(
            total,
            "pretrain",
            unit="steps",
            enabled=enabled,
            interval=0,
            file=file,
            bar_format=_progress.OWN_ETA_FORMAT,
        )
        self.tty = self._shown.tty

    def update(self, step: int, row: dict[str, Any], eta: float) -> None:
        """Show ``row`` at ``step`` with the estimated seconds left."""
        if not self.enabled:
            return
        status = (
            f"loss {row['loss']:.4f} (pixel {row['pixel_loss']:.4f} text {row['text_loss']:.4f}) "
            f"lr {row['lr']:.2e} {row['images_per_s']:.0f} img/s"
        )
        if self.tty:
            self._shown.moveto(step, f"{status} eta {tqdm.format_interval(eta)}")
            return
        width = 24
        done = int(width * step / max(self.total, 1))
        bar = "#" * done + "-" * (width - done)
        line = f"[{bar}] {step}/{self.total} {status} eta {eta:.0f}s"
        self._shown.moveto(step, line=line)

    def close(self) -> None:
        """End the status line."""
        self._shown.close()
