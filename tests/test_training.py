"""The pre-training driver: cross-backend trajectories, learning, kill-and-resume,
cross-backend resume, atomic checkpoints, and clear errors for bad runs.

Tolerance for torch vs MLX losses: 1e-4·max(1, loss) per logged step (see test_optim:
per-step float32 disagreement is ~1e-6 and 20 Adam steps do not amplify it past 1e-5).
Same-backend resume must reproduce the uninterrupted run exactly: every batch, prefix
and learning rate is a function of (seed, step) and the checkpoint is lossless float32.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import aimv2
from aimv2 import checkpoint
from aimv2.training import PretrainConfig, TrainingError, pretrain


def _cfg(out, **kw):
    base = dict(
        out=str(out),
        preset="aimv2-test-tiny",
        steps=20,
        batch_size=8,
        log_every=1,
        save_every=10,
        num_workers=0,
        progress=False,
        lr=3e-3,
    )
    base.update(kw)
    return PretrainConfig(**base)


def _losses(out):
    rows = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["pixel_loss"], r["text_loss"], r["lr"]) for r in rows}


def test_torch_and_mlx_runs_agree_step_by_step(tmp_path):
    pretrain(_cfg(tmp_path / "t", backend="torch"))
    pretrain(_cfg(tmp_path / "m", backend="mlx"))
    a, b = _losses(tmp_path / "t"), _losses(tmp_path / "m")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    for step in a:
        for x, y in zip(a[step], b[step], strict=True):
            assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (step, a[step], b[step])


@pytest.mark.parametrize("data", ["builtin:digits", "builtin:shapes"])
def test_loss_falls_and_captions_depend_on_the_image(tmp_path, backend, data):
    result = pretrain(
        _cfg(
            tmp_path,
            backend=backend,
            data=data,
            steps=120,
            batch_size=32,
            log_every=10,
            save_every=1000,
        )
    )
    losses = [v[0] for _, v in sorted(_losses(tmp_path).items())]
    assert np.mean(losses[-2:]) < 0.6 * losses[0], losses
    assert result["heldout_text_loss"] < result["heldout_text_loss_blank_image"], result
    if data == "builtin:digits" and backend == "torch":
        # Clearly below: the decoder reads the digit off the image.
        assert result["heldout_text_loss"] < 0.7 * result["heldout_text_loss_blank_image"]


def _spawn(cfg_args):
    code = "import sys; from aimv2.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *cfg_args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@pytest.mark.parametrize("delay", [0.0, 0.2])
def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tmp_path, delay):
    args = ["pretrain", "--preset", "aimv2-test-tiny", "--steps", "60", "--batch-size", "8"]
    args += ["--log-every", "1", "--save-every", "3", "--workers", "0", "--quiet", "--lr", "3e-3"]
    pretrain(_cfg(tmp_path / "ref", steps=60, save_every=3))
    run = tmp_path / "killed"
    proc = _spawn([*args, "--out", str(run)])
    deadline = time.time() + 60
    while checkpoint.latest(run) is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found = checkpoint.latest(run)
    assert found is not None
    for ck in checkpoint.complete(run):
        checkpoint.load(ck)  # every directory that looks complete is complete
    killed_at = checkpoint.load(found).step
    assert killed_at < 60, "the run finished before it was killed"
    pretrain(_cfg(run, steps=60, save_every=3, resume=True))
    ref, got = _losses(tmp_path / "ref"), _losses(run)
    assert sorted(got) == list(range(1, 61)), f"killed at step {killed_at}"
    assert got == ref


@pytest.mark.parametrize(
    "first, second", [(a, b) for a in aimv2.BACKENDS for b in aimv2.BACKENDS if a != b]
)
def test_a_checkpoint_resumes_on_the_other_backend(tmp_path, first, second):
    installed = aimv2.available_backends()
    if first not in installed or second not in installed:
        pytest.skip(f"needs {first} and {second}, installed: {installed or 'none'}")
    pretrain(_cfg(tmp_path / "ref", backend=first))
    split = tmp_path / "split"
    pretrain(_cfg(split, backend=first, stop_after=10))
    assert checkpoint.latest(split).name == "ckpt-00000010"
    pretrain(_cfg(split, backend=second, steps=20, resume=True))
    ref, got = _losses(tmp_path / "ref"), _losses(split)
    assert sorted(got) == list(range(1, 21))
    for step in range(11, 21):
        for x, y in zip(ref[step], got[step], strict=True):
            assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (step, ref[step], got[step])


def test_an_interrupted_save_leaves_no_checkpoint(tmp_path, monkeypatch):
    spec = aimv2.presets.get("aimv2-test-tiny")
    w = aimv2.init_weights(spec)
    checkpoint.save(tmp_path, 1, spec, w)
    calls = {"n": 0}
    real = checkpoint.save_file

    def failing(tensors, path, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed mid-save")
        return real(tensors, path, **kw)

    monkeypatch.setattr(checkpoint, "save_file", failing)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, 2, spec, w, optimizer={"x": np.zeros(1)})
    assert [p.name for p in checkpoint.complete(tmp_path)] == ["ckpt-00000001"]
    assert not list(tmp_path.glob(".ckpt-*"))
    # A leftover temp directory from a SIGKILL is never picked up.
    (tmp_path / ".ckpt-00000009.tmp123").mkdir()
    (tmp_path / ".ckpt-00000009.tmp123" / "state.json").write_text("{}")
    assert checkpoint.latest(tmp_path).name == "ckpt-00000001"


def test_keep_prunes_old_checkpoints(tmp_path):
    pretrain(_cfg(tmp_path, steps=12, save_every=2, keep=2))
    assert [p.name for p in checkpoint.complete(tmp_path)] == ["ckpt-00000010", "ckpt-00000012"]


def _cli(*args):
    code = "import sys; from aimv2.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)


def test_bad_runs_get_clear_messages(tmp_path):
    base = ["pretrain", "--steps", "2", "--batch-size", "2", "--workers", "0", "--quiet"]
    r = _cli(*base, "--preset", "aimv2-nope", "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "preset name='aimv2-nope' is unknown" in r.stderr
    r = _cli(*base, "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "missing" in r.stderr and "--data" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _cli(*base, "--data", str(empty), "--out", str(tmp_path / "c"), "--tokenizer", "x")
    assert r.returncode == 2 and "--data" in r.stderr, r.stderr
    only_text = tmp_path / "captions"
    only_text.mkdir()
    (only_text / "a.txt").write_text("a cat")
    r = _cli(*base, "--data", str(only_text), "--out", str(tmp_path / "d"), "--tokenizer", "x")
    assert r.returncode == 2 and "--data" in r.stderr, r.stderr


def test_a_checkpoint_of_another_spec_is_refused(tmp_path):
    pretrain(_cfg(tmp_path / "tiny", steps=2))
    with pytest.raises(TrainingError, match="different spec"):
        pretrain(_cfg(tmp_path / "tiny", preset="aimv2-small-patch4-16", steps=4, resume=True))
    with pytest.raises(TrainingError, match="--init .* spec differs"):
        pretrain(
            _cfg(
                tmp_path / "other",
                preset="aimv2-small-patch4-16",
                steps=2,
                init=str(checkpoint.latest(tmp_path / "tiny")),
            )
        )
    with pytest.raises(TrainingError, match="already holds a run"):
        pretrain(_cfg(tmp_path / "tiny", steps=2))


def test_init_from_a_checkpoint_starts_from_its_weights(tmp_path):
    pretrain(_cfg(tmp_path / "a", steps=3))
    ck = checkpoint.load(checkpoint.latest(tmp_path / "a"))
    pretrain(
        _cfg(tmp_path / "b", steps=1, init=str(ck.path), lr=1e-12, min_lr=0.0, weight_decay=0.0)
    )
    after = checkpoint.load(checkpoint.latest(tmp_path / "b")).weights
    assert max(float(np.abs(after[k] - ck.weights[k]).max()) for k in after) < 1e-6


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    from aimv2.backends.torch import Trainer
    from aimv2.optim import NonFiniteLoss

    real_step = Trainer.step

    def step(self, micro, lr):
        if self.step_count == 6:
            raise NonFiniteLoss("non-finite training values at update 7: nan")
        return real_step(self, micro, lr)

    monkeypatch.setattr(Trainer, "step", step)
    with pytest.raises(TrainingError, match=r"update 7.*last good checkpoint is .*ckpt-00000005"):
        pretrain(_cfg(tmp_path, steps=10, save_every=5))
    assert checkpoint.load(checkpoint.latest(tmp_path)).step == 5


def test_nan_weights_from_init_are_refused_by_name_before_training(tmp_path):
    spec = aimv2.presets.get("aimv2-test-tiny")
    w = aimv2.init_weights(spec)
    w["pixel_head.weight"][:] = np.nan
    from aimv2.tensorfiles import save_file

    save_file(w, tmp_path / "bad.safetensors")
    with pytest.raises(TrainingError, match=r"--init .*pixel_head.weight holds NaN or infinite"):
        pretrain(_cfg(tmp_path / "run", init=str(tmp_path / "bad.safetensors")))
    assert checkpoint.latest(tmp_path / "run") is None


def test_plot_command_draws_the_run(tmp_path):
    pretrain(_cfg(tmp_path, steps=5))
    r = _cli("plot", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tokenizer_train_command(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    from PIL import Image

    for i in range(6):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"A red square number {i}")
    out = tmp_path / "tok.model"
    r = _cli("tokenizer", "train", "--data", str(folder), "--vocab-size", "300", "--out", str(out))
    assert r.returncode == 2 and "vocab_size=300" in r.stderr and "Traceback" not in r.stderr
    r = _cli("tokenizer", "train", "--data", str(folder), "--vocab-size", "20", "--out", str(out))
    assert r.returncode == 0, r.stderr
    from aimv2.text import Tokenizer

    tok = Tokenizer.load(out)
    assert tok.decode(tok.encode(["A red square"], 32))[0] == "a red square"
    assert os.path.getsize(out) > 0


def test_a_tar_shard_run_resumes_from_its_stream_position(tmp_path, replayed):
    """The checkpoint records where the tar stream was; --resume starts there without
    decoding the samples before it, and the run continues exactly as if uninterrupted."""
    from aimv2.testing import write_tar_shards
    from aimv2.text import Tokenizer

    captions = write_tar_shards(tmp_path, 3, 8, corrupt={(1, 3)})
    tok = tmp_path / "tok.model"
    Tokenizer.train(captions * 2, 40, tok, hard_vocab_limit=False)
    kw = dict(data=str(tmp_path / "s-*.tar"), tokenizer=str(tok), steps=10, save_every=3)
    kw |= dict(batch_size=4, stream_shuffle=5)
    pretrain(_cfg(tmp_path / "a", **kw))  # 23 readable samples: the run wraps a pass
    pretrain(_cfg(tmp_path / "b", stop_after=7, **kw))
    state = json.loads((checkpoint.directory(tmp_path / "b", 7) / "state.json").read_text())
    assert state["stream_positions"][0][0] == 1  # (pass, items): in the second pass
    pretrain(_cfg(tmp_path / "b", resume=True, **kw))
    assert replayed == []
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert sorted(b) == list(range(1, 11)) and a == b


def test_a_tar_run_from_before_stream_positions_resumes_in_file_order(tmp_path):
    """A checkpoint without stream positions comes from a version that read tar shards in
    file order (no stream_shuffle in its config either): the resumed run keeps that order,
    and so do the checkpoints it writes, so it equals the uninterrupted run."""
    from aimv2.testing import write_tar_shards
    from aimv2.text import Tokenizer

    captions = write_tar_shards(tmp_path, 2, 6)
    tok = tmp_path / "tok.model"
    Tokenizer.train(captions * 2, 30, tok, hard_vocab_limit=False)
    kw = dict(data=str(tmp_path / "s-*.tar"), tokenizer=str(tok), steps=9, save_every=3)
    pretrain(_cfg(tmp_path / "straight", stream_shuffle=0, **kw))
    pretrain(_cfg(tmp_path / "old", stream_shuffle=0, stop_after=3, **kw))
    state_file = checkpoint.directory(tmp_path / "old", 3) / "state.json"
    state = json.loads(state_file.read_text())
    for key in ("stream_positions", "stream_shuffle"):  # what an older version wrote
        del state[key]
    del state["config"]["stream_shuffle"]
    state_file.write_text(json.dumps(state))
    pretrain(_cfg(tmp_path / "old", resume=True, stop_after=6, **kw))  # default flags
    assert (
        json.loads((checkpoint.directory(tmp_path / "old", 6) / "state.json").read_text())[
            "stream_shuffle"
        ]
        == 0
    )
    pretrain(_cfg(tmp_path / "old", resume=True, **kw))
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "old")
