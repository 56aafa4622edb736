"""What ``aimv2 bench`` found: one :class:`Row` per timed subject, and the
:class:`BenchReport` that prints them as Markdown (the form to paste into an issue) or
writes them as JSON.

Example:
    >>> BenchReport("aimv2 bench", "t", {}, {}, {}, [], [], [], {}).text().splitlines()[2]
    '    aimv2 bench'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Row", "BenchReport"]


@dataclass
class Row:
    """One subject's result, medians over the interleaved rounds.

    ``relative``: this subject's throughput ÷ the aimv2 row's of the chosen backend in
    the same mode (median of per-round ratios). ``of_matmul``: achieved FLOP rate ÷ the
    same backend's square-matmul rate in the same round. ``data_wait``: the share of a
    training step spent waiting for the loader.

    Example:
        >>> row = Row("forward", "aimv2 torch", "", 4, 1.0, 4.0, 184.5, 0.96, None, 1.0, None)
        >>> BenchReport("c", "t", {}, {}, {}, [row], [], [], {}).text().splitlines()[7]
        '| forward | aimv2 torch | 4 | 1000 | 184.5 | 96% | — | 1.00× | — |'
    """

    mode: str
    impl: str
    note: str
    batch: int
    seconds: float
    images_per_s: float
    gflops: float | None
    of_matmul: float | None
    peak_bytes: int | None
    relative: float | None
    data_wait: float | None
    times: list[float] = field(default_factory=list)


@dataclass
class BenchReport:
    """Everything ``aimv2 bench`` found; :meth:`text` is the form to paste into an issue.

    ``matmul_dtypes`` (backend → the dtype its square matmul ran in) labels the matmul
    lines of :meth:`text`; it is not part of :meth:`to_dict` (the JSON keeps its fields).

    Example:
        >>> BenchReport("aimv2 bench", "t", {}, {}, {}, [], [], [], {}).to_dict()["rows"]
        []
    """

    command: str
    title: str
    machine: dict[str, Any]
    flops: dict[str, int]
    matmul: dict[str, float]
    rows: list[Row]
    skipped: list[tuple[str, str]]
    summary: list[str]
    settings: dict[str, Any]
    matmul_dtypes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole report.

        Example:
            >>> sorted(BenchReport("c", "t", {}, {}, {}, [], [], [], {}).to_dict())[:3]
            ['command', 'flops', 'machine']
        """
        out = dataclasses.asdict(self)
        del out["matmul_dtypes"]
        return out

    def text(self) -> str:
        """Markdown: the command, the machine, FLOPs, the table, skips and the summary.

        Example:
            >>> BenchReport("aimv2 bench", "t", {}, {}, {}, [], [], [], {}).text().split()[:2]
            ['###', 't']
        """
        batch = max(int(self.settings.get("batch_size", 1)), 1)
        size = self.settings.get("matmul_size", 2048)
        lines = [f"### {self.title}", "", f"    {self.command}", ""]
        lines += [f"- {key}: {value}" for key, value in self.machine.items()]
        lines += [
            f"- matmul {size}×{size} {self.matmul_dtypes.get(backend, 'float32')}, {backend}: "
            f"{rate:.1f} GFLOP/s (median)"
            for backend, rate in self.matmul.items()
        ]
        lines += [
            f"- model FLOPs, {mode}: {value / 1e9:.4g} G per batch, "
            f"{value / batch / 1e9:.4g} G per image"
            for mode, value in self.flops.items()
        ]
        lines += [
            "",
            "| mode | implementation | img/s | ms/batch | GFLOP/s | of matmul | peak mem "
            "| relative | data wait |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            cells = [
                r.mode,
                r.impl,
                f"{r.images_per_s:.3g}",
                _ms(r.seconds),
                _fmt(r.gflops, ".4g"),
                _fmt(r.of_matmul, ".0%"),
                _bytes(r.peak_bytes),
                _fmt(r.relative, ".2f", "×"),
                _fmt(r.data_wait, ".0%"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        notes = dict.fromkeys(f"- {r.impl}: {r.note}" for r in self.rows if r.note)
        if notes:
            lines += ["", *notes]
        if self.skipped:
            lines += ["", "Skipped:", *dict.fromkeys(f"- {n}: {why}" for n, why in self.skipped)]
        if self.summary:
            lines += ["", *[f"**{line}**" for line in self.summary]]
        lines += [
            "",
            "relative = throughput ÷ the first aimv2 row's (median of per-round ratios, "
            "rounds interleaved); of matmul = achieved GFLOP/s ÷ the same round's square "
            "matmul; data wait = share of a training step spent waiting for the loader.",
        ]
        return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
    """Milliseconds with 4 significant digits, never in exponent notation."""
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 1000 else f"{ms:.4g}"


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else format(value, spec) + suffix


def _bytes(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
