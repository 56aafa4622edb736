"""Fine-tuning: the classification loss against the reference, layer-wise learning-rate
decay read from the optimizers' own groups, freezing and LoRA, whole runs (resume, NaN,
the merged model, ``finetune.json``) and the command line.

Tolerances:

- loss and accuracy against the float64 reference: ``FORWARD_TOL``.
- torch vs MLX training losses over several steps: ``TRAINING_TOL`` (the project's
  bound for the same float32 training on two backends).
- effective learning rates: the update of a parameter with scale s is s times its update
  without scales, up to float32 rounding of the two updates: relative 1e-4 (a scale
  one layer off is a factor ``layer_decay`` = 0.7 away).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aimv2
from aimv2 import reference, testing
from aimv2 import specs as S
from aimv2.cli import build_parser, main
from aimv2.cli.finetune import FINETUNE_FLAGS
from aimv2.finetune import (
    FinetuneConfig,
    FinetuneError,
    classifier_spec,
    finetune,
    layer_of,
    lr_scales,
)
from aimv2.flags import flag_name
from aimv2.lora import add_lora, lora_weights, merge_lora
from aimv2.optim import OptimConfig


def _encoder(depth=3, head="attentive", classes=4):
    enc = aimv2.encoder_spec(
        width=16, depth=depth, heads=2, patch_size=4, image_size=8, mlp_hidden=32
    )
    return classifier_spec(enc, classes, head, heads=2)


def _batch(spec, seed=0, n=6):
    rng = np.random.default_rng(seed)
    return {
        "images": rng.standard_normal((n, 3, *spec.image_size)).astype(np.float32),
        "labels": rng.integers(0, spec.head.out_dim, n),
    }


@settings(max_examples=10)
@given(
    st.sampled_from(["attentive", "linear"]),
    st.sampled_from([0.0, 0.1, 0.5]),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_classifier_loss_matches_the_reference(head, smoothing, lora, seed):
    spec = _encoder(depth=2, head=head)
    if lora:
        spec = add_lora(spec, rank=2, alpha=3.0)
    w = testing.random_weights(spec, seed)
    batch = _batch(spec, seed)
    logits = reference.forward(spec, w, batch["images"], pool=True)
    want_loss, want_acc = reference.classification_loss(logits, batch["labels"], smoothing)
    for backend in aimv2.available_backends():
        be = aimv2.load_backend(backend)
        model = aimv2.build(spec, backend, weights=w)
        out = be.classifier_loss(smoothing)(model, {k: be.from_numpy(v) for k, v in batch.items()})
        testing.assert_close(float(be.to_numpy(out["loss"])), want_loss, what=f"{backend} loss")
        assert float(be.to_numpy(out["accuracy"])) == pytest.approx(want_acc, abs=1e-6)


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_bad_label_smoothing_is_refused(backend, bad):
    with pytest.raises(ValueError, match=f"label_smoothing={bad}"):
        aimv2.load_backend(backend).classifier_loss(bad)


def test_layer_scales_follow_the_formula():
    spec = _encoder(depth=3)
    scales = lr_scales(spec, 0.7)
    for name in aimv2.weights.parameters(spec):
        want = 0.7 ** (3 + 1 - layer_of(name, 3))
        assert scales.get(name, 1.0) == pytest.approx(want, rel=1e-12), name
    assert scales["preprocessor.patchifier.proj.weight"] == pytest.approx(0.7**4)
    assert scales["trunk.blocks.2.attn.qkv.weight"] == pytest.approx(0.7)
    assert "head.linear.weight" not in scales and "trunk.post_trunk_norm.weight" not in scales


def _lr_by_name(trainer, backend):
    """Each trained parameter's learning rate, read from the framework optimizer."""
    if backend == "torch":
        return {n: g["lr"] for g in trainer.optimizer.param_groups for n in g["names"]}
    subs = trainer.optimizer.optimizers
    return {
        n: float(np.asarray(sub.learning_rate))
        for sub, group in zip(subs, trainer.groups, strict=True)
        for n in group.names
    }


def test_effective_learning_rates_are_the_layer_decay_formula(backend):
    spec = _encoder(depth=3)
    w = testing.random_weights(spec, 1)
    be = aimv2.load_backend(backend)
    scales = lr_scales(spec, 0.7, freeze_blocks=1)
    cfg = dict(
        lr=1e-2,
        min_lr=0.0,
        warmup_steps=0,
        total_steps=10,
        clip_norm=None,
        decay_mode="torch",
        weight_decay=0.05,
    )
    batch = _batch(spec)
    after = {}
    for key, extra in (("scaled", {"lr_scales": scales}), ("plain", {})):
        model = aimv2.build(spec, backend, weights=w)
        trainer = be.Trainer(model, OptimConfig(**cfg, **extra), loss_fn=be.classifier_loss(0.1))
        trainer.step([batch], lr=4e-3)
        after[key] = aimv2.get_weights(model)
        if key == "scaled":
            lrs = _lr_by_name(trainer, backend)
            state = trainer.state_arrays()
    frozen = {n for n, s in scales.items() if s == 0.0}
    assert frozen == {n for n in w if layer_of(n, 3) <= 1}  # embedding, positions, block 0
    assert set(lrs) == set(w) - frozen
    for name, lr in lrs.items():
        assert lr == pytest.approx(4e-3 * 0.7 ** (4 - layer_of(name, 3)), rel=1e-6), name
    assert not any(k.split(".", 1)[1] in frozen for k in state)
    for name in w:
        delta = after["scaled"][name] - w[name]
        plain = after["plain"][name] - w[name]
        if name in frozen:
            assert not delta.any(), name
            continue
        s = 0.7 ** (4 - layer_of(name, 3))
        big = np.abs(plain) > 1e-3 * np.abs(plain).max()
        ratio = delta[big] / plain[big]
        assert np.abs(ratio - s).max() <= 1e-4 * s + 1e-6, (name, s, ratio.min(), ratio.max())


def test_torch_and_mlx_train_the_same_with_layer_decay_and_lora():
    if set(aimv2.available_backends()) != {"torch", "mlx"}:
        pytest.skip("needs both backends")
    base = _encoder(depth=2)
    spec = add_lora(base, rank=2, alpha=4.0)
    w = lora_weights(spec, testing.random_weights(base, 2), seed=2)
    scales = lr_scales(spec, 0.6, lora=True)
    cfg = OptimConfig(lr=5e-3, warmup_steps=1, total_steps=8, lr_scales=scales)
    runs = {}
    for backend in ("torch", "mlx"):
        be = aimv2.load_backend(backend)
        model = aimv2.build(spec, backend, weights=w)
        trainer = be.Trainer(model, cfg, loss_fn=be.classifier_loss(0.1))
        runs[backend] = [trainer.step([_batch(spec, s)], 5e-3)["loss"] for s in range(6)]
        final = aimv2.get_weights(model)
        changed = {n for n in w if not np.array_equal(final[n], w[n])}
        assert changed <= {n for n in w if "lora" in n or n.startswith("head.")}
        assert any("lora_b" in n for n in changed)
    for a, b in zip(runs["torch"], runs["mlx"], strict=True):
        assert abs(a - b) <= testing.TRAINING_TOL.bound(np.array(a)), (a, b)


def _cfg(out, **kw):
    base = dict(
        out=str(out),
        preset="aimv2-test-tiny",
        steps=6,
        batch_size=8,
        log_every=1,
        save_every=3,
        num_workers=0,
        progress=False,
        lr=3e-3,
        data="builtin:digits",
    )
    return FinetuneConfig(**{**base, **kw})


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_run_writes_the_merged_model_and_finetune_json(tmp_path, backend):
    out = tmp_path / "ft"
    r = finetune(_cfg(out, backend=backend, lora_rank=2, head="linear"))
    report = json.loads((out / "finetune.json").read_text())
    assert report["lora_merged"] and report["heldout_size"] == 359
    assert r["heldout_accuracy"] == report["heldout_accuracy"]
    ck = aimv2.checkpoint.load(out / "model")
    assert not aimv2.lora.has_lora(ck.spec) and ck.spec.head.out_dim == 10
    # the unmerged training state and the merged model compute the same logits
    last = aimv2.checkpoint.load(aimv2.checkpoint.latest(out))
    merged_spec, merged = merge_lora(last.spec, last.weights)
    assert merged_spec == ck.spec
    x = _batch(ck.spec, 3)["images"]
    testing.assert_close(
        reference.forward(ck.spec, ck.weights, x, pool=True),
        reference.forward(last.spec, last.weights, x, pool=True),
    )
    # it loads as an encoder anywhere: probe/extract take it
    other = "mlx" if backend == "torch" and "mlx" in aimv2.available_backends() else backend
    model = aimv2.cli.load_encoder(str(out / "model"), other)
    acc, n = aimv2.finetune.accuracy(
        model, aimv2.data.open_source("builtin:digits", split="heldout")
    )
    assert (acc, n) == (report["heldout_accuracy"], 359) or abs(
        acc - report["heldout_accuracy"]
    ) <= 1 / 359


def test_resume_continues_the_uninterrupted_run(tmp_path, backend):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    finetune(_cfg(whole, backend=backend))
    finetune(_cfg(parts, backend=backend, stop_after=3))
    assert aimv2.checkpoint.latest(parts).name == "ckpt-00000003"
    with pytest.raises(FinetuneError, match="already holds a run"):
        finetune(_cfg(parts, backend=backend))
    finetune(_cfg(parts, backend=backend, resume=True))
    a, b = _rows(whole), _rows(parts)
    assert [r["step"] for r in b] == list(range(1, 7))
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "accuracy", "grad_norm", "lr"):
            assert abs(x[key] - y[key]) <= testing.TRAINING_TOL.bound(np.array(x[key])), key


def test_a_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path, backend):
    out = tmp_path / "ft"
    finetune(_cfg(out, backend=backend, stop_after=3, clip_norm=None))
    with pytest.raises(
        FinetuneError,
        match=r"non-finite training values at update \d+.*"
        r"the last good checkpoint is .*ckpt-00000003",
    ):
        finetune(
            _cfg(
                out,
                backend=backend,
                resume=True,
                lr=1e30,
                warmup=0,
                clip_norm=None,
                label_smoothing=0.0,
            )
        )
    ck = aimv2.checkpoint.load(aimv2.checkpoint.latest(out))
    assert all(np.isfinite(v).all() for v in ck.weights.values())


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(preset=None), r"give exactly one of checkpoint"),
        (dict(checkpoint="x"), r"give exactly one of checkpoint"),
        (dict(freeze_blocks=3), r"freeze_blocks=3 \(--freeze-blocks\): the encoder has 2 blocks"),
        (dict(lora_rank=2, freeze_blocks=1), r"LoRA already freezes the whole encoder"),
        (dict(num_classes=3), r"labels: expected class ids in 0..2 \(the head has 3 outputs\)"),
        (dict(data="builtin:nothing"), r"builtin"),
        (dict(image_size=30), r"image_size: .*divisible by the patch size 4"),
        (dict(batch_size=0), r"batch_size=0 \(--batch-size\): expected >= 1"),
        (dict(layer_decay=0.0), r"layer_decay=0.0 \(--layer-decay\)"),
    ],
)
def test_bad_runs_get_clear_errors(tmp_path, kw, match):
    with pytest.raises((FinetuneError, ValueError), match=match):
        finetune(_cfg(tmp_path / "ft", **kw))


def test_every_config_field_is_a_flag():
    sub = build_parser()._subparsers._group_actions[0].choices["finetune"]
    options = {o: a for a in sub._actions for o in a.option_strings}
    for f in dataclasses.fields(FinetuneConfig):
        flag = FINETUNE_FLAGS.get(f.name)
        name = flag.name if flag is not None and flag.name else flag_name(f.name)
        assert name in options and options[name].dest == f.name, f.name
    assert "(default: 0.75)" in " ".join(sub.format_help().split())


def test_the_command_fine_tunes_and_reports(tmp_path, capsys):
    out = tmp_path / "ft"
    args = [
        "finetune",
        "--preset",
        "aimv2-test-tiny",
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--quiet",
        "--freeze-blocks",
        "1",
    ]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 2 and (out / "model" / "state.json").is_file()
    assert main([*args[:-2], "--lora-rank", "2", "--freeze-blocks", "1"]) == 2
    assert "LoRA already freezes" in capsys.readouterr().err


def test_a_released_layout_fine_tunes_at_a_new_size(tmp_path):
    enc = aimv2.encoder_spec(width=32, depth=2, heads=2, patch_size=4, image_size=8, mlp_hidden=64)
    path = aimv2.formats.save_pretrained(
        aimv2.build(enc, weights=testing.random_weights(enc)),
        tmp_path / "official",
        format="official",
    )
    out = tmp_path / "ft"
    r = finetune(_cfg(out, preset=None, checkpoint=str(path), image_size=16, steps=2))
    assert r["step"] == 2
    spec = aimv2.checkpoint.load(out / "model").spec
    assert spec.image_size == (16, 16) and spec.pos_embed.grid == (4, 4)
    assert isinstance(spec.head, S.AttentionPoolSpec)


def test_a_tar_shard_finetune_resumes_from_its_stream_position(tmp_path, replayed):
    import json

    from aimv2 import checkpoint
    from aimv2.testing import write_tar_shards

    write_tar_shards(tmp_path, 3, 6, corrupt={(1, 0)}, classes=3, size=(16, 16))
    kw = dict(data=str(tmp_path / "s-*.tar"), heldout=str(tmp_path / "s-0.tar"), steps=6)
    kw |= dict(save_every=2, stream_shuffle=3)
    finetune(_cfg(tmp_path / "a", **kw))  # 17 readable, batches of 8: into the third pass
    finetune(_cfg(tmp_path / "b", stop_after=4, **kw))
    state = json.loads((checkpoint.directory(tmp_path / "b", 4) / "state.json").read_text())
    assert state["stream_positions"][0][0] == 1 and state["stream_shuffle"] == 3
    finetune(_cfg(tmp_path / "b", resume=True, **kw))
    assert replayed == []
    a = {r["step"]: r["loss"] for r in _rows(tmp_path / "a")}
    b = {r["step"]: r["loss"] for r in _rows(tmp_path / "b")}
    assert sorted(b) == list(range(1, 7)) and a == b
