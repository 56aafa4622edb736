"""LoRA fine-tuning: train rank-r adapters on every block's attention and feed-forward
projections (and a classifier head) of a frozen encoder, on either backend; the saved
model has the adapters merged into its weights, so it loads anywhere (here: on the other
backend) with no LoRA code.

Run: python examples/lora_finetune.py [--checkpoint runs/quickstart/pretrain]
     [--backend torch] [--rank 8] [--epochs 5] [--out runs/lora]
"""

from __future__ import annotations

import argparse
import tempfile

import aimv2
from aimv2.data import open_source
from aimv2.finetune import FinetuneConfig, accuracy, finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a run or checkpoint directory (default: random)")
    parser.add_argument("--preset", default="aimv2-small-patch4-16")
    parser.add_argument("--backend", default="torch", choices=["torch", "mlx"])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    out = args.out or tempfile.mkdtemp()
    source = {"checkpoint": args.checkpoint} if args.checkpoint else {"preset": args.preset}
    cfg = FinetuneConfig(
        out=out, **source, data="builtin:digits", backend=args.backend, epochs=args.epochs,
        lora_rank=args.rank, lora_alpha=2.0 * args.rank, lr=2e-3, hflip=False,
        crop_scale=(0.6, 1.0), num_workers=0, progress=False,
    )  # fmt: skip
    result = finetune(cfg)
    print(f"LoRA rank {args.rank}: trained {result['trainable_params']:,} of "
          f"{result['params']:,} parameters; held-out {100 * result['heldout_accuracy']:.1f}%")  # fmt: skip

    # The merged classifier: a plain encoder with its head, no adapters.
    other = [b for b in aimv2.available_backends() if b != args.backend] or [args.backend]
    ck = aimv2.checkpoint.load(result["model"])
    model = aimv2.build(ck.spec, other[0], weights=ck.weights)
    acc, n = accuracy(model, open_source("builtin:digits", split="heldout"))
    print(f"merged model on {other[0]}: LoRA left: {aimv2.lora.has_lora(ck.spec)}; "
          f"held-out {100 * acc:.1f}% of {n}")  # fmt: skip


if __name__ == "__main__":
    main()
