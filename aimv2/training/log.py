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
import sys
from pathlib import Path
from typing import Any

from .. import atomic

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
    """One status line, rewritten in place on a terminal, one line per log otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.tty = enabled and sys.stderr.isatty()

    def update(self, step: int, row: dict[str, Any], eta: float) -> None:
        """Show ``row`` at ``step`` with the estimated seconds left."""
        if not self.enabled:
            return
        width = 24
        done = int(width * step / max(self.total, 1))
        bar = "#" * done + "-" * (width - done)
        msg = (
            f"[{bar}] {step}/{self.total} loss {row['loss']:.4f} "
            f"(pixel {row['pixel_loss']:.4f} text {row['text_loss']:.4f}) "
            f"lr {row['lr']:.2e} {row['images_per_s']:.0f} img/s eta {eta:.0f}s"
        )
        sys.stderr.write(("\r" + msg) if self.tty else (msg + "\n"))
        sys.stderr.flush()

    def close(self) -> None:
        """End the status line."""
        if self.tty:
            sys.stderr.write("\n")
