"""From the seconds of every subject in every round to a :class:`~.report.BenchReport`:
medians, per-round ratios (against the same round's matmul, against aimv2 on the chosen
backend, against the fastest peer) and the summary lines.

Every ratio is the median of per-round ratios: rounds interleave the subjects, so a
background load that slows one round slows every subject of it alike.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any

from .. import specs as S
from .flops import MODES, encoder_of
from .plan import Config
from .report import BenchReport, Row
from .subject import Desc

__all__ = ["make_report"]

Times = list[dict[int, float]]  # per subject: round -> seconds per call


def make_report(
    cfg: Config,
    spec: S.Spec,
    flops: dict[str, int],
    subjects: Sequence[tuple[Desc, dict[str, Any]]],
    times: Times,
    waits: list[list[float]],
    skipped: list[tuple[str, str]],
    machine: dict[str, Any],
    command: str | None,
) -> BenchReport:
    """The report of a run: ``subjects`` (description, prepared info) in plan order,
    ``times[i]`` (round → seconds) and ``waits[i]`` (loader-wait shares) per subject.

    Example:
        >>> import aimv2
        >>> cfg = Config(repeats=2)
        >>> d = Desc("aimv2", "torch", "forward", "aimv2 torch", {}, 4)
        >>> m = Desc("matmul", "torch", "matmul", "matmul (torch)", {}, 4)
        >>> r = make_report(cfg, aimv2.presets.get("aimv2-test-tiny"), {"forward": 8e9},
        ...                 [(m, {"flops": 2e11}), (d, {})], [{0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.0}],
        ...                 [[], [0.0, 0.0]], [], {}, None)
        >>> r.matmul["torch"], r.rows[0].images_per_s, r.rows[0].of_matmul
        (150.0, 5.333333333333333, 0.08)
    """
    matmul_rounds: dict[str, dict[int, float]] = {}
    dtypes: dict[str, str] = {}
    for (desc, info), ts in zip(subjects, times, strict=True):
        if desc.impl == "matmul":
            matmul_rounds[desc.backend] = {r: info["flops"] / t / 1e9 for r, t in ts.items()}
            dtypes[desc.backend] = info.get("dtype", "float32")
    matmul = {b: statistics.median(v.values()) for b, v in matmul_rounds.items() if v}
    ours = {}  # mode -> index of the chosen backend's aimv2 subject
    for i, (desc, _) in enumerate(subjects):
        if desc.impl == "aimv2" and desc.backend == cfg.backend and not desc.reference_blas:
            ours.setdefault(desc.mode, i)
    rows = []
    for i, (desc, info) in enumerate(subjects):
        ts = times[i]
        if desc.impl == "matmul" or not ts:
            continue
        seconds = statistics.median(ts.values())
        fl = flops.get(desc.mode) or None
        roof = None
        rates = matmul_rounds.get(desc.backend, {})
        if fl and not desc.reference_blas:
            per = [fl / t / 1e9 / rates[r] for r, t in ts.items() if r in rates]
            roof = statistics.median(per) if per else None
        rel = None
        if desc.mode in ours:
            base = times[ours[desc.mode]]
            per = [base[r] / t for r, t in ts.items() if r in base]
            rel = statistics.median(per) if per else None
        note = info.get("note", "")
        if "max_abs_diff" in info:
            note += f"; same weights as aimv2, max |Δ output| {info['max_abs_diff']:.1e}"
        rows.append(
            Row(
                mode=desc.mode,
                impl=desc.label,
                note=note,
                batch=desc.batch,
                seconds=seconds,
                images_per_s=desc.batch / seconds,
                gflops=fl / seconds / 1e9 if fl else None,
                of_matmul=roof,
                peak_bytes=info.get("peak_bytes"),
                relative=rel,
                data_wait=statistics.median(waits[i]) if desc.mode == "train" else None,
                times=[ts[r] for r in sorted(ts)],
            )
        )
    rows.sort(key=lambda row: MODES.index(row.mode))
    return BenchReport(
        command=command or "aimv2.bench.run(...)",
        title=_title(cfg, spec),
        machine=machine,
        flops={k: v for k, v in flops.items() if v},
        matmul=matmul,
        rows=rows,
        skipped=skipped,
        summary=_summary(cfg, rows, [d for d, _ in subjects], times),
        settings={
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()
        },
        matmul_dtypes=dtypes,
    )


def _title(cfg: Config, spec: S.Spec) -> str:
    enc = encoder_of(spec)
    hw = cfg.image_hw or enc.image_size
    name = getattr(spec, "name", "") or "custom spec"
    return (
        f"aimv2 bench: {name}: encoder {enc.width} wide × {enc.depth} blocks, "
        f"{enc.trunk.block.attn.heads} heads, {hw[0]}×{hw[1]} px, batch {cfg.batch_size}, "
        f"{cfg.precision}"
        + (", compiled" if cfg.compile else "")
        + (", activation checkpointing" if cfg.checkpoint else "")
    )


def _summary(cfg: Config, rows: list[Row], descs: list[Desc], times: Times) -> list[str]:
    out = []
    me = f"aimv2 {cfg.backend}"
    index = {(d.label, d.mode): i for i, d in enumerate(descs)}
    for mode in cfg.modes:
        mine = next((r for r in rows if r.mode == mode and r.impl == me), None)
        if mine is None:
            continue
        if mine.of_matmul is not None:
            out.append(f"{mode}: {me} reaches {mine.of_matmul:.0%} of the measured matmul rate")
        others = [r for r in rows if r.mode == mode and r is not mine]
        peers = [r for r in others if descs[index[(r.impl, mode)]].impl != "aimv2"]
        if peers:  # per round: aimv2 against the fastest peer of that round
            my_times = times[index[(me, mode)]]
            per = []
            for r, t in my_times.items():
                theirs = [times[index[(p.impl, mode)]].get(r) for p in peers]
                theirs = [x for x in theirs if x is not None]
                if theirs:
                    per.append(min(theirs) / t)
            if per:
                out.append(
                    f"{mode}: {me} throughput ÷ the fastest peer's = "
                    f"{statistics.median(per):.2f}× (median of {len(per)} interleaved "
                    f"rounds; lowest {min(per):.2f}×)"
                )
        for r in others:
            if r.relative is None:
                continue
            desc = descs[index[(r.impl, mode)]]
            if desc.reference_blas:
                out.append(
                    f"{mode}: {me} is {1 / r.relative:.1f}× as fast as on the "
                    "reference BLAS bundled with mlx[cpu]"
                )
            elif desc.impl == "aimv2" and desc.backend != cfg.backend:
                out.append(f"{mode}: {r.impl} is {r.relative:.2f}× as fast as {me}")
    return out
