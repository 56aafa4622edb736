"""``aimv2.bench.run``: check the options, plan the subjects, prepare each in its
process, time them in interleaved rounds and report.

Example:
    >>> r = run("aimv2-test-tiny", "torch", repeats=2, matmul_size=64, settle=0.0)
    >>> [len(row.times) for row in r.rows], list(r.matmul)
    ([2], ['torch'])
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from .. import blas
from .. import specs as S
from ..backend import BACKENDS, BackendUnavailable
from .data import run_data
from .flops import MODES, count_flops, encoder_of
from .machine import loadavg, machine, optimized_blas
from .plan import Config, plan, process_for, resolve_spec
from .report import BenchReport
from .subject import Desc, Local, Skip, bench_module
from .summary import make_report
from .worker import Remote, Worker

__all__ = ["DEFAULT_SPEC", "run"]

DEFAULT_SPEC = "aimv2-base-patch14-224"

Prepared = list[tuple[Desc, Any, dict[str, Any]]]  # (description, subject, info)


def run(
    spec: Any = DEFAULT_SPEC,
    backend: str = "torch",
    *,
    modes: Sequence[str] = ("forward",),
    batch_size: int = 4,
    repeats: int = 5,
    warmup: int = 1,
    compare: bool = False,
    device: str | None = None,
    precision: str = "fp32",
    compile: bool = False,
    checkpoint: bool = False,
    data: str = "builtin:shapes",
    tokenizer: str | None = None,
    workers: int | Sequence[int] = 2,
    image_size: int | tuple[int, int] | None = None,
    decoder_depth: int | None = None,
    threads: int | None = None,
    matmul_size: int = 2048,
    reference_repeats: int = 1,
    tune_alloc: bool = True,
    settle: float = 0.2,
    seed: int = 0,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Time ``modes`` of ``spec`` (preset name, spec JSON or spec) on ``backend``.

    Each subject gets ``warmup`` untimed calls, then ``repeats`` interleaved rounds (a
    call under 50 ms is repeated within its round and averaged). ``compare`` adds the
    peers that the backend offers (:mod:`aimv2.bench`); MLX on the reference BLAS is
    timed in the first ``reference_repeats`` rounds only (0 leaves it out).
    ``precision="bf16"``: autocast on torch, bfloat16 weights on MLX (forward,
    backward). ``compile``: ``torch.compile`` / ``mx.compile``. ``checkpoint``:
    activation checkpointing. ``data`` feeds ``train``: a source for
    :class:`aimv2.data.Loader` (``builtin:shapes``) or ``"synthetic"``. ``tune_alloc``:
    :func:`aimv2.backends.torch.cpu.tune_cpu_allocator` in torch processes.
    ``decoder_depth``: replace the decoder depth of a pre-training spec (e.g. a base
    encoder with a 4-block decoder). ``settle``: seconds of quiet before each timed
    round. ``progress`` gets one line per step of the run.

    Example:
        >>> r = run("aimv2-test-tiny", "torch", modes=["forward", "backward"], repeats=1)
        >>> [row.mode for row in r.rows]
        ['forward', 'backward']
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected {' or '.join(map(repr, BACKENDS))}")
    modes = list(dict.fromkeys([modes] if isinstance(modes, str) else modes))
    data_mode = "data" in modes  # the loader alone: aimv2.bench.data
    modes = [m for m in modes if m != "data"]
    if (not modes and not data_mode) or any(m not in MODES for m in modes):
        raise ValueError(f"modes={modes!r}: expected some of {(*MODES, 'data')}")
    counts = [workers] if isinstance(workers, int) else list(workers)
    if not counts:
        raise ValueError("workers=[]: expected at least one worker count")
    workers = counts[-1]
    for name, value, low in (
        ("batch_size", batch_size, 1),
        ("repeats", repeats, 1),
        ("warmup", warmup, 0),
        *(("workers", n, 0) for n in counts),
        ("matmul_size", matmul_size, 1),
        ("reference_repeats", reference_repeats, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}={value!r}: expected an integer >= {low}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision={precision!r}: expected 'fp32' or 'bf16'")
    resolved = _with_decoder_depth(resolve_spec(spec), decoder_depth)
    image_hw = _image_hw(encoder_of(resolved), image_size)
    say = progress or (lambda _line: None)
    loader_report = None
    if data_mode:
        loader_report = run_data(
            encoder_of(resolved),
            data,
            backend,
            workers=counts,
            batch=batch_size,
            repeats=repeats,
            seed=seed,
            settle=settle,
            command=command,
            machine_info=machine([backend], backend, device, False),
            progress=say,
        )
        if not modes:
            return loader_report
    flops = {}
    for mode in modes:
        try:
            flops[mode] = count_flops(resolved, mode, batch_size, image_hw)
        except ValueError:
            if mode != "train":
                raise
            flops[mode] = 0  # an encoder-only spec: the train subject says why it skips
    cfg = Config(
        backend,
        modes,
        batch_size,
        repeats,
        warmup,
        compare,
        device,
        precision,
        compile,
        checkpoint,
        data,
        tokenizer,
        workers,
        image_hw,
        threads,
        matmul_size,
        reference_repeats,
        tune_alloc,
        settle,
        seed,
    )
    descs = plan(cfg, resolved)
    info = machine([d.backend for d in descs], backend, device, compare)
    subjects, skipped, pool = _prepare(descs, say)
    try:
        times, waits = _rounds(cfg, subjects, skipped, say)
    finally:
        for _, subject, _ in subjects:
            subject.close()
        for worker in pool.values():
            worker.close()
    if hasattr(os, "getloadavg"):
        info["load average (1, 5, 15 min) at end"] = loadavg()
    prepared = [(desc, subject_info) for desc, _, subject_info in subjects]
    report = make_report(cfg, resolved, flops, prepared, times, waits, skipped, info, command)
    if loader_report is not None:
        report.rows += loader_report.rows
        report.skipped += loader_report.skipped
        report.summary += loader_report.summary
    return report


def _with_decoder_depth(spec: S.Spec, depth: int | None) -> S.Spec:
    if depth is None:
        return spec
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"decoder_depth={depth!r}: expected an integer >= 1")
    if not isinstance(spec, S.ModelSpec) or spec.decoder is None:
        raise ValueError("decoder_depth: the spec has no decoder (give a pre-training spec)")
    return dataclasses.replace(spec, decoder=dataclasses.replace(spec.decoder, depth=depth))


def _image_hw(
    enc: S.EncoderSpec, image_size: int | tuple[int, int] | None
) -> tuple[int, int] | None:
    if image_size is None:
        if enc.image_size is None:
            raise ValueError("image_size: a native-resolution encoder needs one (e.g. 224)")
        return None
    image_hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if enc.image_size is not None and tuple(image_hw) != tuple(enc.image_size):
        raise ValueError(
            f"image_size={image_size!r}: this encoder takes {enc.image_size} "
            "only (only native-resolution encoders take another size)"
        )
    return image_hw


def _prepare(
    descs: list[Desc], say: Callable[[str], None]
) -> tuple[Prepared, list[tuple[str, str]], dict[str, Worker]]:
    """Build every subject in its process (workers started as needed); the prepared
    subjects, the skipped ones with their reasons, and the workers."""
    main_preloaded = blas.preloaded_blas() is not None
    lib = optimized_blas()
    workers: dict[str, Worker] = {}
    subjects: Prepared = []
    skipped: list[tuple[str, str]] = []
    for desc in descs:
        name = desc.label if desc.impl == "matmul" else f"{desc.label}, {desc.mode}"
        if desc.reference_blas and blas.bundled_reference_blas() is None:
            skipped.append((name, "this MLX install bundles no reference BLAS"))
            continue
        if desc.reference_blas and not (main_preloaded or lib):
            skipped.append(
                (name, f"no optimized BLAS here: the aimv2 {desc.backend} row runs on it")
            )
            continue
        try:
            preload = bench_module(desc.backend).PRELOAD_BLAS
        except BackendUnavailable as err:
            skipped.append((name, str(err)))
            continue
        where = process_for(desc, preload, main_preloaded, lib)
        say(f"preparing {name} ({'this process' if where == 'main' else where + ' worker'})")
        try:
            if where == "main":
                subject: Any = Local(desc)
            else:
                if where not in workers:
                    env = blas.without_preload()
                    env[blas.ENV_LIBRARY] = "none"
                    if where == "optimized" and lib:
                        env["LD_PRELOAD"] = lib
                    workers[where] = Worker(env)
                subject = Remote(desc, workers[where])
            info = subject.prepare()
        except Skip as err:
            skipped.append((name, str(err)))
            continue
        except Exception as err:
            if desc.impl == "aimv2" or desc.impl == "matmul":
                raise
            skipped.append((name, f"{type(err).__name__}: {err}"))  # a peer's own failure
            continue
        subjects.append((desc, subject, info))
    return subjects, skipped, workers


def _rounds(
    cfg: Config, subjects: Prepared, skipped: list[tuple[str, str]], say: Callable[[str], None]
) -> tuple[list[dict[int, float]], list[list[float]]]:
    """Time every subject once per round, in a rotating order; seconds per call by round
    and the loader-wait shares, per subject. A subject whose worker fails is skipped
    from then on."""
    times: list[dict[int, float]] = [{} for _ in subjects]
    waits: list[list[float]] = [[] for _ in subjects]
    for r in range(cfg.repeats):
        shift = r % max(len(subjects), 1)
        for i in [*range(shift, len(subjects)), *range(shift)]:
            desc, subject, _ = subjects[i]
            if desc.max_rounds is not None and r >= desc.max_rounds:
                continue
            say(f"round {r + 1}/{cfg.repeats}: {desc.label}, {desc.mode}")
            time.sleep(cfg.settle)  # let the last subject's BLAS/OpenMP threads stop spinning
            try:
                out = subject.run()
            except Skip as err:
                skipped.append((f"{desc.label}, {desc.mode}", str(err)))
                desc.max_rounds = r
                continue
            times[i][r] = out["seconds"]
            waits[i].append(out.get("wait", 0.0) / max(out["seconds"], 1e-12))
    return times, waits
