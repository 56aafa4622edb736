"""LiT training: locked (cached trunk features), unlocked and from-scratch image towers,
checkpoints and resume (same and other backend), bad runs, and 2 ranks (torchrun/gloo,
mlx.launch ring) equal to one process with the same global batch.

Tolerances, per logged step (loss, gradient norm, in-batch accuracy, logit scale):

- 2 ranks vs 1 process, same backend: 1e-4·max(1, |x|), the pre-training runs' bound
  (tests/test_distributed.py): each rank gathers the other's embeddings, so both compute
  the same (B, B) logits; only float32 summation order differs (observed ≤ 2e-6
  relative). Averaging the ranks' gradients without the gradient all-reduce of
  ``gather_with_grad`` halves the text tower's gradient (the gradient norm moves by ≥ 10%).
- resume on the other backend: ``TRAINING_TOL`` (1e-4·max(1, |x|)), the torch-vs-MLX bound.
- the learning rate is a pure function of the step: exact.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import aimv2
from aimv2 import checkpoint
from aimv2.lit import LitConfig, LitError, lit_train
from aimv2.testing import TRAINING_TOL

INSTALLED = aimv2.available_backends()
if not INSTALLED:
    pytest.skip("no backend installed", allow_module_level=True)
PRESET = "aimv2-lit-test-tiny"
KEYS = ("loss", "grad_norm", "accuracy", "logit_scale")
MLX_LAUNCH = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or shutil.which(
    "mlx.launch"
)


def _cfg(out, **kw):
    base = dict(
        out=str(out),
        preset=PRESET,
        image_encoder="aimv2-test-tiny",
        steps=6,
        batch_size=8,
        lr=3e-3,
        log_every=1,
        save_every=3,
        num_workers=0,
        progress=False,
    )
    return LitConfig(**{**base, **kw})


def _rows(out) -> dict[int, dict]:
    rows = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows}


def _assert_same(ref, got, steps, tol=1e-4):
    worst = 0.0
    for step in steps:
        for key in KEYS:
            x, y = ref[step][key], got[step][key]
            worst = max(worst, abs(x - y) / max(1.0, abs(x)))
            assert abs(x - y) <= tol * max(1.0, abs(x)), (step, key, x, y)
        assert ref[step]["lr"] == got[step]["lr"], step
    return worst


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory):
    """A (tiny) AIMv2 pre-training checkpoint to LiT-tune."""
    spec = aimv2.presets.get("aimv2-test-tiny")
    w = aimv2.testing.random_weights(spec, 11)
    root = tmp_path_factory.mktemp("enc")
    checkpoint.save(root, 5, spec, w)
    return root, w


def test_locked_tower_trains_only_the_head_and_text_side(backend, encoder_run, tmp_path):
    run, enc_w = encoder_run
    r = lit_train(_cfg(tmp_path, image_encoder=str(run), backend=backend))
    assert r["step"] == 6 and r["finite"]
    assert r["frozen"] == ["image_encoder.preprocessor.", "image_encoder.trunk."]
    ck = checkpoint.load(checkpoint.latest(tmp_path))
    assert isinstance(ck.spec, aimv2.LiTSpec) and ck.state["tokenizer"] == "builtin:digits"
    w = ck.weights
    for name, value in enc_w.items():
        if name.startswith("encoder.") and "head" not in name:
            assert np.array_equal(w["image_encoder." + name[len("encoder.") :]], value), name
    start = aimv2.init_weights(ck.spec, 0)
    for name in ("image_encoder.head.cls_token", "text_projector.weight", "log_logit_scale"):
        assert not np.array_equal(w[name], start[name]), name
    # the optimizer holds only what trains
    assert not any(k.startswith("exp_avg.image_encoder.trunk.") for k in ck.optimizer)
    rows = _rows(tmp_path)
    assert sorted(rows) == list(range(1, 7)) and set(KEYS) <= set(rows[6])


def test_torch_and_mlx_follow_the_same_trajectory(tmp_path):
    if len(INSTALLED) < 2:
        pytest.skip("needs both backends")
    for backend in INSTALLED:
        lit_train(_cfg(tmp_path / backend, backend=backend))
    a, b = _rows(tmp_path / "torch"), _rows(tmp_path / "mlx")
    _assert_same(a, b, range(1, 7), TRAINING_TOL.tol)


@pytest.mark.parametrize("second", INSTALLED)
def test_resume_continues_the_run_on_either_backend(tmp_path, second):
    first = INSTALLED[0]
    straight = tmp_path / "straight"
    lit_train(_cfg(straight, backend=first))
    split = tmp_path / "split"
    assert lit_train(_cfg(split, backend=first, stop_after=3))["step"] == 3
    with pytest.raises(LitError, match="already holds a run"):
        lit_train(_cfg(split, backend=second))
    assert lit_train(_cfg(split, backend=second, resume=True))["step"] == 6
    _assert_same(_rows(straight), _rows(split), range(1, 7), TRAINING_TOL.tol)


def test_unlocked_and_scratch_towers_train_the_image_side(tmp_path):
    backend = INSTALLED[0]
    r = lit_train(_cfg(tmp_path / "u", image_tower="unlocked", steps=2, backend=backend))
    assert r["frozen"] == []
    w = checkpoint.load(checkpoint.latest(tmp_path / "u")).weights
    start = aimv2.init_weights(aimv2.presets.get("aimv2-test-tiny").encoder, 0)
    name = "trunk.blocks.0.attn.qkv.weight"
    assert not np.array_equal(w["image_encoder." + name], start[name])
    with pytest.raises(LitError, match="--image-tower scratch trains both towers"):
        lit_train(_cfg(tmp_path / "s", image_tower="scratch"))
    r = lit_train(_cfg(tmp_path / "s", image_tower="scratch", image_encoder=None, steps=2))
    assert r["frozen"] == [] and r["finite"]
    r = lit_train(
        _cfg(tmp_path / "nc", cache_features=False, image_encoder=None, steps=2, hflip=False)
    )
    assert r["frozen"] == ["image_encoder.preprocessor.", "image_encoder.trunk."]


def test_bad_runs_are_refused_with_the_reason(tmp_path):
    cases = [
        (dict(preset="aimv2-test-tiny"), "a 'model' spec, not a LiT model"),
        (dict(image_tower="frozen"), "--image-tower 'frozen': expected one of"),
        (dict(image_encoder=str(tmp_path / "none")), "no such checkpoint or preset"),
        (dict(batch_size=1), "a contrastive batch needs >= 2 pairs"),
        (dict(steps=0), "--steps 0: expected >= 1"),
        (
            dict(preset="aimv2-large-patch14-224-lit", image_encoder=None),
            "its end-of-text id is 2 but the text tower pools eos_id=49407",
        ),
        (dict(data=str(tmp_path)), "needs --tokenizer"),
        (dict(tokenizer=str(tmp_path / "nope.model")), "--tokenizer"),
    ]
    for kw, match in cases:
        with pytest.raises(LitError, match=match):
            lit_train(_cfg(tmp_path / "bad", **kw))


# ------------------------------------------------------------------ 2 ranks = 1 process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MLX_RANK", "MLX_HOSTFILE"):
        env.pop(var, None)
    return env


def _cli_args(out, *extra):
    return [
        "lit", "--preset", PRESET, "--image-encoder", "aimv2-test-tiny", "--steps", "6",
        "--batch-size", "8", "--log-every", "1", "--save-every", "6", "--workers", "0",
        "--lr", "3e-3", "--dist-timeout", "60", "--quiet", "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "launcher, extra",
    [
        ("torchrun", ()),
        ("torchrun", ("--image-tower", "unlocked", "--no-hflip")),
        ("mlx.launch", ()),
    ],
)
def test_two_ranks_equal_one_process(tmp_path, launcher, extra):
    backend = "torch" if launcher == "torchrun" else "mlx"
    if backend not in INSTALLED:
        pytest.skip(f"{backend} is not installed")
    one = tmp_path / "one"
    r = subprocess.run(
        [sys.executable, "-m", "aimv2.cli", *_cli_args(one, *extra), "--backend", backend],
        capture_output=True, text=True, timeout=300, env=_env(),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    two = tmp_path / "two"
    if launcher == "torchrun":
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd = [*launch, "--nproc-per-node", "2", "-m", "aimv2.cli", *_cli_args(two, *extra)]
    else:
        if MLX_LAUNCH is None:
            pytest.skip("mlx.launch is not installed next to this interpreter")
        launch = [MLX_LAUNCH, "-n", "2", "--starting-port", str(_free_port()), "--"]
        cmd = [
            *launch,
            sys.executable,
            "-m",
            "aimv2.cli",
            *_cli_args(two, *extra),
            "--backend",
            "mlx",
        ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    worst = _assert_same(_rows(one), _rows(two), range(1, 7))
    assert worst <= 1e-4
    state = json.loads((two / "ckpt-00000006" / "state.json").read_text())
    assert state["world_size"] == 2


def test_a_tar_shard_lit_run_resumes_from_its_stream_position(tmp_path, replayed):
    from aimv2.testing import write_tar_shards
    from aimv2.text import Tokenizer

    captions = write_tar_shards(tmp_path, 3, 6, corrupt={(0, 2)})
    tok = tmp_path / "tok.model"
    Tokenizer.train(captions * 2, 30, tok, hard_vocab_limit=False)
    kw = dict(data=str(tmp_path / "s-*.tar"), tokenizer=str(tok), image_tower="unlocked")
    kw |= dict(steps=6, save_every=2, backend=INSTALLED[0], stream_shuffle=3)
    lit_train(_cfg(tmp_path / "a", **kw))  # 17 readable, batches of 8: into the third pass
    lit_train(_cfg(tmp_path / "b", stop_after=4, **kw))
    state = json.loads((checkpoint.directory(tmp_path / "b", 4) / "state.json").read_text())
    assert state["stream_positions"][0][0] == 1 and state["stream_shuffle"] == 3
    lit_train(_cfg(tmp_path / "b", resume=True, **kw))
    assert replayed == []
    a, b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    for step in range(1, 7):
        assert {k: a[step][k] for k in KEYS} == {k: b[step][k] for k in KEYS}, step
