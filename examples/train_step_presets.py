"""Build each released preset and run one full pre-training step (batch 1, CPU, float32),
each in its own process, reporting time and peak memory — to find the largest preset
that trains on this machine.

Run: python examples/train_step_presets.py [--backend torch] [PRESET ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(name: str, backend: str) -> dict:
    """One training step of preset ``name`` in this process."""
    import importlib

    import numpy as np

    import aimv2
    from aimv2.optim import OptimConfig
    from aimv2.testing import random_batch

    spec = aimv2.presets.get(name)
    t0 = time.perf_counter()
    model = aimv2.build(spec, backend, seed=0)
    trainer = importlib.import_module(f"aimv2.backends.{backend}.train").Trainer(
        model, OptimConfig(lr=1e-3, warmup_steps=1, total_steps=10)
    )
    built = time.perf_counter() - t0
    batch = random_batch(spec, 0, batch=1)
    t1 = time.perf_counter()
    losses = trainer.step([batch], 1e-3)
    step = time.perf_counter() - t1
    params = sum(int(np.prod(i.shape)) for i in aimv2.weights.parameters(spec).values())
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "preset": name,
        "backend": backend,
        "params_M": params / 1e6,
        "build_s": built,
        "step_s": step,
        "peak_rss_GiB": peak_gib,
        "loss": losses["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*")
    parser.add_argument("--backend", default="torch", choices=["torch", "mlx"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one(args.presets[0], args.backend)))
        return
    names = args.presets or [
        f"aimv2-{s}-patch14-224" for s in ("base", "large", "huge", "1B", "3B")
    ]
    for name in names:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", "--backend", args.backend, name],
            capture_output=True,
            text=True,
        )
        if proc.returncode == 0:
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"{name:28s} {r['params_M']:8.0f}M params  build {r['build_s']:6.1f}s  "
                f"step {r['step_s']:6.1f}s  peak {r['peak_rss_GiB']:5.1f} GiB  loss {r['loss']:.3f}"
            )
        else:
            tail = (proc.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
            print(f"{name:28s} FAILED (exit {proc.returncode}): {tail}")


if __name__ == "__main__":
    main()
