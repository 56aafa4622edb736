"""Fine-tuning on 2 ranks (torchrun, mlx.launch; 2 CPU processes) equals one process with
the same global batch.

Tolerance, per logged step (loss, accuracy, gradient norm): 1e-4·max(1, |x|), the bound
of ``tests/test_distributed.py`` for the same comparison in pre-training: the ranks sum
the same float32 numbers in another order (each rank's half of the batch, then the
all-reduce). The classification loss is a plain mean over images, so equal halves need
no weighting; a rank that trained on the wrong half, or on the whole batch, or whose
gradients were summed instead of averaged, moves the first step's loss or gradient norm
far beyond it. The learning rate is a pure function of the step: exact.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from aimv2.finetune import FinetuneConfig, finetune

TOL = 1e-4
MLX_LAUNCH = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or shutil.which(
    "mlx.launch"
)


def _args(out):
    return [
        "finetune", "--preset", "aimv2-test-tiny", "--steps", "4", "--batch-size", "8",
        "--log-every", "1", "--save-every", "2", "--workers", "0", "--lr", "3e-3",
        "--layer-decay", "0.7", "--lora-rank", "2", "--out", str(out), "--dist-timeout", "60",
        "--quiet",
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MLX_RANK", "MLX_HOSTFILE"):
        env.pop(var, None)
    return env


def _rows(out):
    return {
        r["step"]: r
        for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines())
    }


@pytest.mark.parametrize("launcher", ["torchrun", "mlx.launch"])
def test_two_ranks_equal_one_process(tmp_path, launcher):
    backend = "torch" if launcher == "torchrun" else "mlx"
    pytest.importorskip(backend)
    one, two = tmp_path / "one", tmp_path / "two"
    cfg = FinetuneConfig(
        out=str(one), preset="aimv2-test-tiny", steps=4, batch_size=8, log_every=1,
        save_every=2, num_workers=0, lr=3e-3, layer_decay=0.7, lora_rank=2, progress=False,
        backend=backend,
    )  # fmt: skip
    finetune(cfg)
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "aimv2.cli", *_args(two)]  # fmt: skip
    else:
        if MLX_LAUNCH is None:
            pytest.skip("mlx.launch is not installed next to this interpreter")
        cmd = [MLX_LAUNCH, "-n", "2", "--starting-port", str(_free_port()), "--",
               sys.executable, "-m", "aimv2.cli", *_args(two), "--backend", "mlx"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = _rows(one), _rows(two)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        for key in ("loss", "accuracy", "grad_norm"):
            x, y = a[step][key], b[step][key]
            assert abs(x - y) <= TOL * max(1.0, abs(x)), (step, key, x, y)
        assert a[step]["lr"] == b[step]["lr"]
    report = json.loads((two / "finetune.json").read_text())
    assert report["lora_merged"] and (two / "model" / "state.json").is_file()
    single = json.loads((one / "finetune.json").read_text())
    assert abs(report["heldout_accuracy"] - single["heldout_accuracy"]) <= 1 / 359
