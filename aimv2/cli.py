"""The ``aimv2`` command.

Example:
    $ aimv2 parity aimv2-test-tiny
    $ aimv2 presets
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from . import presets, specs
from .bench import add_bench_parser

__all__ = ["main", "load_spec"]


def load_spec(text: str) -> specs.Spec:
    """:func:`aimv2.presets.load_spec` for the command line: a bad spec ends the command
    with a one-line message.

    Example:
        >>> load_spec("aimv2-test-tiny").encoder.width
        32
    """
    try:
        return presets.load_spec(text)
    except KeyError as err:
        raise SystemExit(f"aimv2: {err.args[0]}") from None
    except (FileNotFoundError, specs.SpecError) as err:
        raise SystemExit(f"aimv2: {err}") from None


def _cmd_presets(args: argparse.Namespace) -> int:
    for name in presets.names():
        enc = presets.get(name).encoder
        size = "native" if enc.native else "x".join(map(str, enc.image_size))
        print(f"{name:40s} width={enc.width:<5d} depth={enc.depth:<3d} image={size}")
    return 0


def _cmd_parity(args: argparse.Namespace) -> int:
    from .backend import available_backends
    from .testing import compare_backends, random_batch

    spec = load_spec(args.spec)
    backends = args.backend or available_backends()
    if not backends:
        print("aimv2 parity: no backend installed (pip install 'aimv2[torch]' or 'aimv2[mlx]')")
        return 2
    batch = random_batch(spec, args.seed, batch=args.batch)
    report = compare_backends(
        spec, batch=batch, backends=backends, seed=args.seed, check_grads=not args.no_grads
    )
    failed = 0
    for be, checks in report.items():
        print(f"== {be} (forward vs float64 reference; grads vs {backends[0]})")
        rows = sorted(checks.items(), key=lambda kv: -kv[1].error / max(kv[1].bound, 1e-30))
        shown = rows if args.all else rows[: args.top]
        for name, c in shown:
            flag = "ok  " if c.ok else "FAIL"
            print(f"  {flag} {name:55s} max|err|={c.error:.3e}  bound={c.bound:.3e}")
        if len(rows) > len(shown):
            print(f"  ... {len(rows) - len(shown)} more within tolerance (--all lists them)")
        failed += sum(not c.ok for _, c in rows)
    print("parity: " + ("FAILED" if failed else "ok") + f" ({failed} tensors past tolerance)")
    return 1 if failed else 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .training import PretrainConfig, TrainingError, pretrain

    spec = None
    if args.spec:
        spec = load_spec(args.spec)
    cfg = PretrainConfig(
        out=args.out,
        preset=args.preset,
        spec=spec,
        data=args.data,
        backend=args.backend,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        decay_mode=args.decay_mode,
        clip_norm=args.clip_norm if args.clip_norm > 0 else None,
        accumulate=args.accumulate,
        log_every=args.log_every,
        save_every=args.save_every,
        keep=args.keep,
        init=args.init,
        resume=args.resume,
        tokenizer=args.tokenizer,
        num_workers=args.workers,
        compile=args.compile,
        autocast=args.autocast,
        device=args.device,
        hflip=not args.no_hflip,
        crop_scale=(args.crop_scale_min, 1.0),
        progress=not args.quiet,
        stop_after=args.stop_after,
        shard=args.shard,
        dist_timeout=args.dist_timeout,
    )
    from .distributed import detect_launch

    launch = detect_launch()
    try:
        result = pretrain(cfg)
    except TrainingError as err:
        print(f"aimv2 pretrain: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if launch is None:
            raise
        # One rank of a launched run: its traceback, then one line that names it.
        import traceback

        traceback.print_exc()
        print(f"aimv2 pretrain: [rank {launch.rank}] {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if launch is None or launch.rank == 0:
        print(json.dumps(result))
    return 0


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from .data import open_source
    from .text import Tokenizer

    try:
        source = open_source(
            args.data, split="all" if args.data.startswith("builtin:") else "train"
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"aimv2 tokenizer train: --data {args.data!r}: {err}", file=sys.stderr)
        return 2
    captions = (s.caption for s in itertools.islice(source, args.max_captions))
    try:
        tok = Tokenizer.train(captions, args.vocab_size, args.out, model_type=args.model_type)
    except ValueError as err:
        print(f"aimv2 tokenizer train: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({tok.vocab_size} pieces)")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_metrics

    out = args.out or str(Path(args.dir) / "loss.png")
    try:
        path = plot_metrics(args.dir, out)
    except (FileNotFoundError, ValueError) as err:
        print(f"aimv2 plot: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def load_encoder(path: str, backend: str) -> object:
    """An encoder module from a checkpoint directory, a run directory (its newest
    checkpoint) or any weights format :func:`aimv2.from_pretrained` reads.

    Example:
        >>> load_encoder("/nonexistent", "torch")
        Traceback (most recent call last):
        ...
        SystemExit: aimv2: --checkpoint '/nonexistent' does not exist
    """
    from . import checkpoint
    from .backend import build

    p = Path(path)
    if not p.exists():
        raise SystemExit(f"aimv2: --checkpoint {path!r} does not exist")
    ck_dir = checkpoint.latest(p) if p.is_dir() and not (p / "state.json").exists() else p
    if ck_dir is not None and (Path(ck_dir) / "state.json").exists():
        try:
            spec, weights = checkpoint.encoder_of(checkpoint.load(ck_dir, optimizer=False))
        except checkpoint.CheckpointError as err:
            raise SystemExit(f"aimv2: {err}") from None
        return build(spec, backend, weights=weights)
    try:
        from .formats import from_pretrained
    except ImportError:  # pragma: no cover - formats ships with the package
        raise SystemExit(f"aimv2: {path!r} is not an aimv2 checkpoint") from None
    try:
        return from_pretrained(path, backend=backend)
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise SystemExit(f"aimv2: --checkpoint {path!r}: {err}") from None


def _cmd_probe(args: argparse.Namespace) -> int:
    from .backend import build
    from .probe import ProbeConfig, probe_encoder

    if bool(args.checkpoint) == bool(args.preset):
        print(
            "aimv2 probe: give exactly one of --checkpoint PATH or --preset NAME", file=sys.stderr
        )
        return 2
    if args.checkpoint:
        encoder = load_encoder(args.checkpoint, args.backend)
    else:
        spec = load_spec(args.preset)
        encoder = build(getattr(spec, "encoder", spec), args.backend, seed=args.seed)
    cfg = ProbeConfig(epochs=args.epochs, lr=args.lr, blocks=args.blocks, seed=args.seed,
                      normalize=not args.no_normalize)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = probe_encoder(encoder, args.data, args.backend, cfg, cache_dir=out / "features")
    except (ValueError, FileNotFoundError) as err:
        print(f"aimv2 probe: {err}", file=sys.stderr)
        return 2
    result = {k: v for k, v in result.items()}
    (out / "probe.json").write_text(json.dumps(result, indent=2))
    a, lin = result["attentive"], result["linear"]
    print(
        f"probe {args.data}: attentive {a['heldout']:.4f} (train {a['train']:.4f}), "
        f"linear {lin['heldout']:.4f} (train {lin['train']:.4f}) -> {out / 'probe.json'}"
    )
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    import glob

    import numpy as np

    from .backend import backend_of
    from .data import preprocess
    from .probe import extract_features

    encoder = load_encoder(args.checkpoint, args.backend)
    p = Path(args.images)
    if p.is_dir():
        files = sorted(str(f) for f in p.iterdir() if f.suffix.lower() in
                       (".jpg", ".jpeg", ".png", ".webp", ".bmp"))  # fmt: skip
    else:
        files = sorted(glob.glob(args.images))
    if not files:
        print(f"aimv2 extract: --images {args.images!r} matches no image files", file=sys.stderr)
        return 2
    be = backend_of(encoder)
    chunks = []
    for i in range(0, len(files), args.batch_size):
        feats = extract_features(encoder, preprocess(files[i : i + args.batch_size], encoder.spec),
                                 args.batch_size)  # fmt: skip
        if args.pool == "mean":
            feats = feats.mean(axis=1)
        elif args.pool == "attn":
            if getattr(encoder.spec, "head", None) is None:
                print("aimv2 extract: --pool attn needs an encoder with an attention-pooling "
                      "head (e.g. the -lit checkpoint)", file=sys.stderr)  # fmt: skip
                return 2
            feats = be.to_numpy(encoder.head(be.to_model(encoder, feats)))
        chunks.append(feats)
        done = min(i + args.batch_size, len(files))
        print(f"\rextract: {done}/{len(files)} images", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    out = np.concatenate(chunks)
    np.save(args.out, out)
    Path(args.out).with_suffix(".txt").write_text("\n".join(files) + "\n")
    print(f"wrote {args.out} {tuple(out.shape)} (+ {Path(args.out).with_suffix('.txt')})")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import format_report, run

    report = run(args.out, backend=args.backend, steps=args.steps, batch_size=args.batch_size,
                 seed=args.seed, probe_epochs=args.probe_epochs,
                 progress=not args.quiet)  # fmt: skip
    print(format_report(report))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``aimv2`` command.

    Example:
        >>> build_parser().parse_args(["parity", "aimv2-test-tiny"]).spec
        'aimv2-test-tiny'
    """
    parser = argparse.ArgumentParser(prog="aimv2", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the named specs")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser(
        "parity",
        help="forward, loss and gradient parity of every installed backend vs the reference",
    )
    p.add_argument("spec", help="preset name, spec JSON file, or inline JSON")
    p.add_argument("--backend", action="append", choices=["torch", "mlx"], help="repeatable")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--no-grads", action="store_true", help="skip the gradient comparison")
    p.add_argument("--top", type=int, default=12, help="rows shown per backend")
    p.add_argument("--all", action="store_true", help="show every tensor")
    p.set_defaults(func=_cmd_parity)

    p = sub.add_parser("pretrain", help="pre-train with the AIMv2 objective")
    p.add_argument("--preset", default="aimv2-small-patch4-16")
    p.add_argument("--spec", help="spec JSON file or inline JSON (overrides --preset)")
    p.add_argument(
        "--data",
        default="builtin:digits",
        help="builtin:digits, builtin:shapes, a caption folder, a .jsonl or .tar shards",
    )
    p.add_argument("--backend", default="torch", choices=["torch", "mlx"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="global batch per update; under torchrun/mlx.launch each of K ranks loads 1/K",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl)")
    p.add_argument("--init", help="start from these weights (checkpoint or .safetensors)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--lr", type=float, help="peak lr (default: the paper's for the size)")
    p.add_argument("--min-lr", type=float)
    p.add_argument("--warmup", type=int, help="warmup updates (default steps/10)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--decay-mode", choices=["decoupled", "torch"], default="decoupled")
    p.add_argument("--clip-norm", type=float, default=1.0, help="0 disables clipping")
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches per update")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    p.add_argument("--tokenizer", help="SentencePiece model (built-in data has its own)")
    p.add_argument("--workers", type=int, default=2, help="background data threads")
    p.add_argument("--compile", action="store_true", help="torch.compile / mx.compile")
    p.add_argument("--autocast", choices=["bf16"], help="bf16 autocast (torch)")
    p.add_argument("--device", help="torch device (default: cuda if available)")
    p.add_argument("--no-hflip", action="store_true", help="no horizontal-flip augmentation")
    p.add_argument(
        "--crop-scale-min", type=float, default=0.4, help="RandomResizedCrop minimum area fraction"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--stop-after",
        type=int,
        help="stop (and checkpoint) after this many steps; the schedule still "
        "plans for --steps; continue with --resume",
    )
    p.add_argument(
        "--shard",
        choices=["none", "full"],
        default="none",
        help="under torchrun: none = DDP (replicated model), full = FSDP2 fully_shard "
        "(parameters, gradients and optimizer state sharded over ranks)",
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=600.0,
        help="seconds a collective may wait for the other ranks before the run stops",
    )
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("tokenizer", help="SentencePiece tokenizers")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train a tokenizer from a data source's captions")
    t.add_argument("--data", required=True)
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    t.add_argument("--max-captions", type=int, default=1_000_000)
    t.set_defaults(func=_cmd_tokenizer_train)

    p = sub.add_parser("quickstart", help="the main job: pre-train on digits, probe, report")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--backend", default="torch", choices=["torch", "mlx"])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-epochs", type=int, default=100)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser("probe", help="attentive + linear probe of a frozen encoder")
    p.add_argument("--checkpoint", help="checkpoint dir, run dir or weights (any format)")
    p.add_argument("--preset", help="random-init encoder of this preset/spec instead")
    p.add_argument(
        "--data",
        default="builtin:digits",
        help="labelled source: builtin:digits, builtin:shapes, imagefolder:DIR, .jsonl",
    )
    p.add_argument("--backend", default="torch", choices=["torch", "mlx"])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--blocks", type=int, default=1, help="average the last k blocks")
    p.add_argument("--no-normalize", action="store_true", help="skip feature standardization")
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("extract", help="features of a folder or glob of images to .npy")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, help="a folder or a glob pattern")
    p.add_argument("--out", required=True, help="FILE.npy")
    p.add_argument("--pool", choices=["none", "mean", "attn"], default="none")
    p.add_argument("--backend", default="torch", choices=["torch", "mlx"])
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=_cmd_extract)

    from .formats import add_convert_parser

    add_convert_parser(sub)

    add_bench_parser(sub)

    p = sub.add_parser("plot", help="draw a run's loss curves to a PNG")
    p.add_argument("dir", help="run directory (or metrics.jsonl)")
    p.add_argument("--out", help="PNG path (default DIR/loss.png)")
    p.set_defaults(func=_cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aimv2`` command; returns the exit status.

    Example:
        >>> main(["presets"]) == 0  # doctest: +ELLIPSIS
        aimv2-...
        True
    """
    args = build_parser().parse_args(argv)
    if argv is None and mlx_only(args):
        # the command line of an MLX-only run: re-execute once on an optimized BLAS
        from . import blas

        blas.ensure_fast_blas("mlx")
    return int(args.func(args) or 0)


def mlx_only(args: argparse.Namespace) -> bool:
    """Whether a parsed ``aimv2`` command runs MLX and never torch in this process.

    Such a process may get an optimized BLAS preloaded (:mod:`aimv2.blas`); a process
    that runs torch must not (the preload slows torch). ``bench`` arranges its own
    processes and is never re-executed.

    Example:
        >>> mlx_only(build_parser().parse_args(["probe", "--backend", "mlx", "--out", "o"]))
        True
        >>> mlx_only(build_parser().parse_args(["parity", "aimv2-test-tiny"]))
        False
    """
    if args.command == "parity":
        return args.backend is not None and set(args.backend) == {"mlx"}
    if args.command in ("pretrain", "quickstart", "probe", "extract"):
        return args.backend == "mlx"
    return False


if __name__ == "__main__":
    sys.exit(main())
