"""Pre-train a small AIMv2 on the built-in digits from Python, then continue the same run
on the other backend — what ``aimv2 pretrain`` does, as a library call.

Run: python examples/pretrain.py [--backend torch|mlx] [--steps 200] [--out runs/example]
"""

from __future__ import annotations

import argparse
import json

from aimv2.training import PretrainConfig, pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="torch", choices=["torch", "mlx"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--preset", default="aimv2-small-patch4-16")
    parser.add_argument("--out", default="runs/example")
    args = parser.parse_args()

    other = "mlx" if args.backend == "torch" else "torch"
    common = dict(
        out=args.out,
        preset=args.preset,
        data="builtin:digits",
        steps=args.steps,
        batch_size=args.batch_size,
        seed=0,
        log_every=10,
        save_every=max(1, args.steps // 2),
    )
    # First half on one backend (the schedule is planned for all steps) ...
    first_result = pretrain(
        PretrainConfig(**common, backend=args.backend, stop_after=args.steps // 2)
    )
    # ... then resume the same run on the other backend.
    rest = pretrain(PretrainConfig(**common, backend=other, resume=True))
    print(json.dumps({"first_half": first_result, "second_half": rest}, indent=2))


if __name__ == "__main__":
    main()
