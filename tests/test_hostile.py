"""The hostile-input catalogue (issue 15): each case went wrong once; each test failed
before its fix. Grouped by area: weights, inputs, specs, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest

import aimv2
from aimv2 import checkpoint, specs, testing
from aimv2.specs import SpecError
from aimv2.weights import WeightsError

TINY = "aimv2-test-tiny"


def _tiny_encoder():
    return aimv2.presets.get(TINY).encoder


# --------------------------------------------------------------------------- weights


def test_get_weights_returns_copies_not_views_of_the_live_parameters(backend):
    model = aimv2.build(_tiny_encoder(), backend, seed=0)
    snap = aimv2.get_weights(model)
    before = snap["trunk.post_trunk_norm.weight"].copy()
    aimv2.set_weights(model, {k: v + 1.0 for k, v in snap.items()})
    assert np.array_equal(snap["trunk.post_trunk_norm.weight"], before)  # the snapshot held
    snap["trunk.post_trunk_norm.weight"][:] = 42.0  # writing to it leaves the model alone
    assert not np.any(aimv2.get_weights(model)["trunk.post_trunk_norm.weight"] == 42.0)


def test_set_weights_is_all_or_nothing(backend):
    model = aimv2.build(_tiny_encoder(), backend, seed=0)
    before = aimv2.get_weights(model)
    bad = {k: v + 1.0 for k, v in before.items()}
    bad["trunk.blocks.1.mlp.fc2.weight"] = np.full(bad["trunk.blocks.1.mlp.fc2.weight"].shape, "x")
    with pytest.raises(WeightsError, match=r"trunk.blocks.1.mlp.fc2.weight.*numeric"):
        aimv2.set_weights(model, bad)
    after = aimv2.get_weights(model)
    assert all(np.array_equal(after[k], before[k]) for k in before)  # nothing half-loaded


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_refused_by_name(backend, value):
    spec = _tiny_encoder()
    weights = aimv2.init_weights(spec, 0)
    weights["trunk.blocks.0.attn.proj.weight"][1, 2] = value
    with pytest.raises(WeightsError, match=r"trunk.blocks.0.attn.proj.weight.*(NaN|infinite)"):
        aimv2.build(spec, backend, weights=weights)
    model = aimv2.build(spec, backend, seed=0)
    with pytest.raises(WeightsError, match="trunk.blocks.0.attn.proj.weight"):
        aimv2.set_weights(model, weights)
    aimv2.set_weights(model, weights, allow_nonfinite=True)  # forensics: on request


def test_object_and_string_arrays_are_a_weights_error(backend):
    model = aimv2.build(specs.NormSpec(width=2), backend)
    for value in (np.array(["a", "b"]), np.array([object(), object()], dtype=object)):
        with pytest.raises(WeightsError, match="weight: expected a numeric array"):
            aimv2.set_weights(model, {"weight": value})


def test_init_spec_refuses_nan_and_negative_std_and_seeds_must_be_non_negative():
    with pytest.raises(SpecError, match="InitSpec.embed_std=nan"):
        specs.InitSpec(embed_std=float("nan"))
    with pytest.raises(SpecError, match="InitSpec.text_pos_std=-1"):
        specs.InitSpec(text_pos_std=-1)
    with pytest.raises(SpecError, match="seed=-1: expected a non-negative integer"):
        aimv2.init_weights(_tiny_encoder(), -1)


# --------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("kind", ["constant", "noise"])
def test_huge_images_are_refused_before_they_overflow(backend, kind):
    model = aimv2.build(_tiny_encoder(), backend)
    be = aimv2.load_backend(backend)
    noise = np.random.default_rng(0).standard_normal((1, 3, 16, 16))
    images = np.full((1, 3, 16, 16), 3e38) if kind == "constant" else 1e30 * noise
    images = images.astype(np.float32)
    assert np.isfinite(images).all()
    with pytest.raises(ValueError, match=r"images: values reach .*normalized pixels"):
        model(be.from_numpy(images))


def test_unnormalized_pixels_warn(backend):
    model = aimv2.build(_tiny_encoder(), backend)
    be = aimv2.load_backend(backend)
    images = np.full((1, 3, 16, 16), 200.0, np.float32)
    with pytest.warns(UserWarning, match="images: values reach 200"):
        model(be.from_numpy(images))


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.uint8, np.uint16, np.uint32])
def test_every_integer_token_dtype_is_taken_the_same_way(backend, dtype):
    spec = aimv2.presets.get(TINY)
    batch = testing.random_batch(spec, 0)
    be = aimv2.load_backend(backend)
    model = aimv2.build(spec, backend)
    want = model(
        be.from_numpy(batch["images"]), be.from_numpy(batch["tokens"]), batch["prefix_len"]
    )
    got = model(
        be.from_numpy(batch["images"]),
        be.from_numpy(batch["tokens"].astype(dtype)),
        batch["prefix_len"],
    )
    assert float(be.to_numpy(got["loss"])) == float(be.to_numpy(want["loss"]))


def test_bool_and_float_tokens_are_refused_up_front(backend):
    spec = aimv2.presets.get(TINY)
    batch = testing.random_batch(spec, 0)
    be = aimv2.load_backend(backend)
    model = aimv2.build(spec, backend)
    for bad in (batch["tokens"] > 3, batch["tokens"].astype(np.float32)):
        with pytest.raises(TypeError, match="tokens: expected integer token ids"):
            model(be.from_numpy(batch["images"]), be.from_numpy(bad), batch["prefix_len"])


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"patch_size": 0}, "patch_size=0: expected a positive integer"),
        ({"image_size": (16,)}, r"image_size=\(16,\): expected \(height, width\)"),
        ({"image_size": 0}, r"image_size=0"),
        ({"depth": -1}, "depth=-1"),
    ],
)
def test_bad_encoder_keywords_are_spec_errors(kwargs, match):
    args = {"width": 32, "depth": 1, "heads": 2, "patch_size": 4, "image_size": 16, **kwargs}
    with pytest.raises(SpecError, match=match):
        aimv2.encoder_spec(**args)


@pytest.mark.parametrize("text", ["{", '{"kind": "norm", "width": "wide"}', "[1, 2]", '{"x": 1}'])
def test_garbage_spec_json_is_a_spec_error(text):
    with pytest.raises(SpecError):
        aimv2.presets.load_spec(text)


# --------------------------------------------------------------------------- checkpoints


def _ckpt(tmp_path, step=3, **kw):
    spec = aimv2.presets.get(TINY)
    w = aimv2.init_weights(spec)
    moments = {
        f"{m}.{k}": np.zeros_like(v) for k, v in w.items() for m in ("exp_avg", "exp_avg_sq")
    }
    return checkpoint.save(tmp_path, step, spec, w, moments, {"seed": 0}, **kw)


def test_state_without_a_step_is_refused_not_taken_as_step_zero(tmp_path):
    path = _ckpt(tmp_path)
    state = json.loads((path / "state.json").read_text())
    del state["step"]
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(checkpoint.CheckpointError, match="state.json has no valid 'step'"):
        checkpoint.load(path)
    state["step"] = 7  # and a step that disagrees with the directory's name
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(
        checkpoint.CheckpointError, match="says step 7, but the directory is ckpt-00000003"
    ):
        checkpoint.load(path)


def test_a_deleted_optimizer_file_makes_the_checkpoint_incomplete(tmp_path):
    path = _ckpt(tmp_path)
    (path / "optimizer.safetensors").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="optimizer.safetensors is missing"):
        checkpoint.load(path)
    assert checkpoint.latest(tmp_path) is None  # not a complete checkpoint any more


def test_a_truncated_file_names_the_damaged_file_and_the_newest_intact(tmp_path):
    older = _ckpt(tmp_path, step=3)
    newer = _ckpt(tmp_path, step=5)
    f = newer / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-64])
    with pytest.raises(checkpoint.CheckpointError, match=r"model.safetensors is damaged"):
        checkpoint.load(newer)
    found = checkpoint.newest_intact(tmp_path)
    assert found.path == older and [d.name for d, _ in found.damaged] == ["ckpt-00000005"]


def test_a_checkpoint_is_never_overwritten(tmp_path):
    path = _ckpt(tmp_path, step=4)
    with pytest.raises(checkpoint.CheckpointError, match="ckpt-00000004 exists"):
        _ckpt(tmp_path, step=4)
    assert checkpoint.load(path).step == 4


# --------------------------------------------------------------------------- training runs


def _run(tmp_path, **kw):
    from aimv2.training import PretrainConfig

    base = dict(out=str(tmp_path / "run"), preset=TINY, steps=4, batch_size=4, save_every=2)
    base.update(progress=False, num_workers=0, log_every=1)
    return PretrainConfig(**{**base, **kw})


def test_resume_refuses_changed_flags_with_a_list_of_differences(tmp_path):
    from aimv2.training import TrainingError, pretrain

    pretrain(_run(tmp_path, stop_after=2))
    with pytest.raises(TrainingError, match=r"--resume: flags differ") as info:
        pretrain(_run(tmp_path, resume=True, lr=2e-3, batch_size=8))
    assert "--lr: 0.001 -> 0.002" in str(info.value) and "--batch-size: 4 -> 8" in str(info.value)
    # the default made explicit is no change
    with pytest.raises(TrainingError, match=r"--resume: flags differ.*--steps: 4 -> 5"):
        pretrain(_run(tmp_path, resume=True, lr=1e-3, steps=5))
    with pytest.raises(TrainingError, match=r"--data: 'builtin:digits' -> 'builtin:shapes'"):
        pretrain(_run(tmp_path, resume=True, data="builtin:shapes"))
    # flags that do not shape the run may change
    assert pretrain(_run(tmp_path, resume=True, log_every=2, num_workers=1))["step"] == 4


def test_resume_needs_the_optimizer_state_and_init_starts_from_weights_only(tmp_path):
    from aimv2.training import TrainingError, pretrain

    pretrain(_run(tmp_path, stop_after=2))
    ck = checkpoint.latest(tmp_path / "run")
    (ck / "optimizer.safetensors").unlink()
    with pytest.raises(TrainingError, match="optimizer.safetensors is missing"):
        pretrain(_run(tmp_path, resume=True))
    out = pretrain(_run(tmp_path, out=str(tmp_path / "fresh"), init=str(ck)))
    assert out["step"] == 4


def test_resume_skips_a_damaged_newest_checkpoint_and_never_overwrites_it(tmp_path, capsys):
    from aimv2.training import pretrain

    pretrain(_run(tmp_path, steps=6, stop_after=4))
    newest = checkpoint.directory(tmp_path / "run", 4)
    f = newest / "optimizer.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    assert pretrain(_run(tmp_path, steps=6, resume=True))["step"] == 6
    err = capsys.readouterr().err
    assert "ckpt-00000004 is damaged" in err and "resuming from ckpt-00000002" in err
    aside = tmp_path / "run" / "damaged-ckpt-00000004"
    assert aside.is_dir() and (aside / "optimizer.safetensors").stat().st_size == 100


def test_a_kill_during_the_final_evaluation_still_writes_eval_json(tmp_path, monkeypatch):
    from aimv2.training import loop, pretrain

    real = loop.heldout_eval

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed during the held-out evaluation")

    monkeypatch.setattr(loop, "heldout_eval", killed)
    with pytest.raises(KeyboardInterrupt):
        pretrain(_run(tmp_path))
    monkeypatch.setattr(loop, "heldout_eval", real)
    assert not (tmp_path / "run" / "eval.json").exists()
    result = pretrain(_run(tmp_path, resume=True))
    assert (tmp_path / "run" / "eval.json").is_file() and "heldout_text_loss" in result


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"save_every": 0}, "save_every=0"),
        ({"log_every": 0}, "log_every=0"),
        ({"accumulate": 0}, "accumulate=0"),
        ({"lr": -1.0}, "lr=-1.0"),
        ({"lr": float("nan")}, "lr=nan"),
        ({"warmup": -3}, "warmup=-3"),
        ({"lr": 1e-3, "min_lr": 1e-2}, "min_lr=0.01: expected 0 <= min_lr <= lr"),
        ({"stop_after": 0}, "stop_after=0"),
        ({"steps": 0}, "steps=0"),
    ],
)
def test_bad_run_settings_are_refused_by_name(tmp_path, changes, match):
    from aimv2.training import TrainingError

    with pytest.raises(TrainingError, match=match):
        _run(tmp_path, **changes)


def _cli(*argv, env=None):
    import os
    import subprocess
    import sys

    code = "import sys; from aimv2.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "argv, match",
    [
        (["pretrain", "--out", "{o}", "--save-every", "0"], "save_every=0"),
        (["pretrain", "--out", "{o}", "--accumulate", "0"], "accumulate=0"),
        (["pretrain", "--out", "{o}", "--lr", "nan"], "lr=nan"),
        (["pretrain", "--out", "{o}", "--spec", "{{broken"], "spec JSON"),
        (["pretrain", "--out", "{o}", "--device", "quantum"], "device='quantum'"),
        (["probe", "--out", "{o}", "--preset", TINY, "--epochs", "0"], "epochs=0"),
        (["probe", "--out", "{o}", "--preset", TINY, "--blocks", "0"], "blocks=0"),
    ],
)
def test_bad_command_line_values_are_one_line_errors(tmp_path, argv, match):
    argv = [a.format(o=tmp_path / "o") for a in argv]
    proc = _cli(*argv)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and match in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    debug = _cli(*argv, env={"AIMV2_DEBUG": "1"})
    assert "Traceback" in debug.stderr


def test_a_full_disk_stops_with_one_line_and_the_last_good_checkpoint(tmp_path):
    import os
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2000k", "tmpfs", str(mnt)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        proc = _cli(
            *["pretrain", "--out", str(mnt / "run"), "--preset", TINY, "--steps", "40"],
            *["--batch-size", "2", "--save-every", "1", "--keep", "100", "--quiet"],
            *["--workers", "0"],
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and "No space left on device" in proc.stderr
        assert "the last good checkpoint is" in proc.stderr
        good = checkpoint.latest(mnt / "run")
        assert good is not None and str(good) in proc.stderr
        checkpoint.load(good)  # it loads
        assert not [p for p in os.listdir(mnt / "run") if p.startswith(".ckpt")]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_write_error_mid_checkpoint_names_the_last_good_one(tmp_path, monkeypatch):
    """The same as the tmpfs test where mounting is not allowed: the third checkpoint's
    optimizer file fails the way safetensors reports ENOSPC."""
    from safetensors import SafetensorError

    from aimv2 import tensorfiles
    from aimv2.training import TrainingError, pretrain

    real, calls = tensorfiles._save_numpy, []

    def full(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 6:  # model + optimizer per checkpoint: the third's optimizer
            raise SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            )
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(tensorfiles, "_save_numpy", full)
    with pytest.raises(TrainingError) as info:
        pretrain(_run(tmp_path, steps=8, save_every=1, keep=100))
    good = checkpoint.directory(tmp_path / "run", 2)
    assert "training stopped at step 3: [Errno 28] No space left on device" in str(info.value)
    assert f"the last good checkpoint is {good}" in str(info.value)
    assert checkpoint.latest(tmp_path / "run") == good
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".ckpt")]


def test_a_closed_stdout_pipe_is_not_a_traceback():
    """``aimv2 presets | head -1``: the reader goes away before the command has printed."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first write
    code = "import sys; from aimv2.cli import main; sys.exit(main(['presets']))"
    proc = subprocess.run([sys.executable, "-c", code], stdout=write, stderr=subprocess.PIPE)
    os.close(write)
    assert b"Traceback" not in proc.stderr and b"BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 141  # as a shell reports a command ended by SIGPIPE


def test_repeated_sigkills_with_a_checkpoint_every_step_end_at_the_same_final_loss(tmp_path):
    """Ten SIGKILLs of ``aimv2 pretrain --save-every 1`` at random moments (in a step,
    mid-save, while starting), each followed by ``--resume``: the run ends at the
    uninterrupted run's final loss, bit for bit, and no checkpoint is ever rewritten.

    Runs are forked from a fresh interpreter that has imported the library (forkserver),
    so each restart costs a run's setup, not an interpreter's."""
    import hashlib
    import json
    import multiprocessing
    import time

    from aimv2.cli import main

    # enough steps that ten lives (each a checkpoint and at most 30 ms more) never finish
    # the run, however fast the machine
    STEPS = 64  # noqa: N806
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["aimv2.cli", "torch"])

    def run(out, resume):
        argv = ["pretrain", "--out", str(out), "--preset", TINY, "--steps", str(STEPS)]
        argv += ["--batch-size", "4", "--save-every", "1", "--keep", "2", "--quiet"]
        argv += ["--workers", "0", "--log-every", "1"] + (["--resume"] if resume else [])
        proc = ctx.Process(target=main, args=(argv,))
        proc.start()
        return proc

    def newest(out):
        return max((int(p.name[5:]) for p in out.glob("ckpt-0*")), default=-1)

    written: dict[str, str] = {}

    def same_as_first_seen(out):
        for ck in checkpoint.complete(out):
            digest = hashlib.sha256((ck / "model.safetensors").read_bytes()).hexdigest()
            assert written.setdefault(ck.name, digest) == digest, f"{ck.name} was rewritten"

    def final_loss(out):
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if r["step"] == STEPS][-1]

    ref = run(tmp_path / "ref", False)
    ref.join()
    assert ref.exitcode == 0
    out, rng, kills = tmp_path / "killed", np.random.default_rng(15), 0
    while kills < 10:
        seen = newest(out)
        proc = run(out, out.is_dir())
        # wait for one more checkpoint, then kill after a random delay: in a step or a save
        deadline = time.monotonic() + 120
        while proc.is_alive() and newest(out) <= seen and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(float(rng.uniform(0.0, 0.03)))
        if not proc.is_alive():
            break  # the run finished first; it is checked below all the same
        proc.kill()  # SIGKILL
        proc.join()
        kills += 1
        same_as_first_seen(out)
    proc = run(out, True)
    proc.join()
    assert proc.exitcode == 0 and kills == 10, (proc.exitcode, kills)
    same_as_first_seen(out)
    assert final_loss(out) == final_loss(tmp_path / "ref")
    assert not [p for p in out.iterdir() if p.name.startswith(".ckpt")]
    assert [checkpoint.verify(ck)["step"] for ck in checkpoint.complete(out)] == [STEPS - 1, STEPS]
