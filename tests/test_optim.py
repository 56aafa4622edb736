"""AIMv2's optimizer: schedule, decay groups, and the AdamW update in torch and MLX against
the float64 reference; torch and MLX training trajectories agree step by step.

Tolerances: one update moves a parameter by about lr·m̂/√v̂ (≤ lr); the backends'
float32 arithmetic on the same gradients differs from float64 by ~1e-7 relative, so
parameters after 3 updates must match the reference within 1e-6 + 1e-5·|p|.
Trajectory: 20 steps at lr 1e-2 from the same weights and batches; forward losses
agree to ~1e-6 per step and Adam's normalized updates do not amplify that except
where |g| ≈ eps, so the losses must agree within 1e-4·max(1, loss) at every step
(observed ≤ 2e-6).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import aimv2
from aimv2 import reference, specs, testing
from aimv2.optim import OptimConfig, decay_mask, lr_at


def _trainer(backend):
    from importlib import import_module

    return import_module(f"aimv2.backends.{backend}.train").Trainer


@given(
    lr=st.floats(1e-5, 1.0),
    warmup=st.integers(0, 50),
    total=st.integers(1, 400),
    ratio=st.floats(0.0, 1.0),
)
def test_schedule_warms_up_linearly_then_decays_by_cosine(lr, warmup, total, ratio):
    cfg = OptimConfig(lr=lr, min_lr=lr * ratio, warmup_steps=warmup, total_steps=total)
    values = [lr_at(cfg, s) for s in range(total)]
    for s in range(min(warmup, total)):
        assert values[s] == pytest.approx(lr * (s + 1) / warmup)
    after = values[warmup:]
    assert all(a >= b - 1e-12 for a, b in zip(after, after[1:], strict=False))
    if len(after) >= 2:
        assert after[0] == pytest.approx(lr) and after[-1] == pytest.approx(lr * ratio)
    assert all(0 < v <= lr * (1 + 1e-12) for v in values) or ratio == 0.0


def test_decay_groups_follow_the_paper():
    spec = aimv2.presets.get("aimv2-test-tiny")
    mask = decay_mask(spec)
    no_decay = {k for k, v in mask.items() if not v}
    assert "encoder.preprocessor.pos_embed" in no_decay
    assert "encoder.preprocessor.patchifier.proj.bias" in no_decay
    assert "decoder.start_token" in no_decay and "decoder.pos_embed" in no_decay
    assert "decoder.image_proj.bias" in no_decay
    assert all(mask[k] is False for k in mask if k.endswith("norm.weight") or "norm_" in k)
    assert mask["encoder.preprocessor.patchifier.proj.weight"]
    assert mask["decoder.text_embed.weight"] and mask["pixel_head.weight"]
    assert mask["encoder.trunk.blocks.1.mlp.fc3.weight"]


def test_decay_modes():
    dec = OptimConfig(lr=1e-3, weight_decay=0.1, decay_mode="decoupled")
    tor = OptimConfig(lr=1e-3, weight_decay=0.1, decay_mode="torch")
    assert dec.decay_factor(1e-3) == pytest.approx(0.9)  # 1 - wd·lr/peak
    assert tor.decay_factor(1e-3) == pytest.approx(1 - 1e-4)  # 1 - lr·wd
    with pytest.raises(ValueError, match="OptimConfig.decay_mode='l2'"):
        OptimConfig(decay_mode="l2")


@pytest.mark.parametrize("mode", ["decoupled", "torch"])
@pytest.mark.parametrize("clip", [1.0, None])
def test_update_matches_the_float64_reference(backend, mode, clip):
    spec = aimv2.presets.get("aimv2-test-tiny")
    w = testing.random_weights(spec, 0)
    cfg = OptimConfig(
        lr=1e-2, warmup_steps=1, total_steps=20, weight_decay=0.5, decay_mode=mode, clip_norm=clip
    )
    be = aimv2.load_backend(backend)
    model = aimv2.build(spec, backend, weights=w)
    trainer = _trainer(backend)(model, cfg)
    ref_p = {k: v.astype(np.float64) for k, v in w.items()}
    ref_s: dict = {}
    mask = decay_mask(spec)
    for step in range(20):  # the framework optimizers against the float64 oracle
        batch = testing.random_batch(spec, step, batch=3)
        probe = aimv2.build(spec, backend, weights=aimv2.get_weights(model))
        _, grads = be.loss_and_grads(probe, batch["images"], batch["tokens"], batch["prefix_len"])
        lr = lr_at(cfg, step)
        out = trainer.step([batch], lr)
        ref_p, ref_s, norm = reference.adamw_step(ref_p, grads, ref_s, cfg, lr, mask)
        assert out["grad_norm"] == pytest.approx(norm, rel=1e-4)
        got = aimv2.get_weights(model)
        for k in ref_p:
            np.testing.assert_allclose(got[k], ref_p[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert trainer.step_count == 20
    state = trainer.state_arrays()
    for k in ref_p:
        np.testing.assert_allclose(
            state[f"exp_avg.{k}"], ref_s[f"exp_avg.{k}"], rtol=1e-4, atol=1e-7
        )


def test_torch_and_mlx_trajectories_agree_for_20_steps():
    installed = aimv2.available_backends()
    if len(installed) < 2:
        pytest.skip(f"needs two backends to compare, installed: {installed or 'none'}")
    spec = aimv2.presets.get("aimv2-test-tiny")
    w = testing.random_weights(spec, 0)
    cfg = OptimConfig(lr=1e-2, warmup_steps=2, total_steps=20, weight_decay=0.1)
    trainers = {b: _trainer(b)(aimv2.build(spec, b, weights=w), cfg) for b in installed}
    for step in range(20):
        batch = testing.random_batch(spec, step, batch=4)
        losses = {b: t.step([batch], lr_at(cfg, step)) for b, t in trainers.items()}
        a, b = losses["torch"], losses["mlx"]
        for key in ("loss", "pixel_loss", "text_loss"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), (step, key, a, b)
    first = testing.max_error
    wt, wm = (aimv2.get_weights(t.model) for t in trainers.values())
    assert max(first(wt[k], wm[k]) for k in wt) < 1e-3


def test_accumulation_equals_one_big_batch(backend):
    # Caption-only, captions without pads: every micro-batch averages the same number
    # of tokens, so the mean of micro-batch gradients is the full-batch gradient.
    spec = aimv2.presets.get("aimv2-test-tiny").replace(
        pixel=specs.PixelObjectiveSpec(weight=0.0), prefix=specs.PrefixSpec(mode="bidirectional")
    )
    w = testing.random_weights(spec, 1)
    cfg = OptimConfig(lr=1e-2, warmup_steps=0, total_steps=5)
    batch = testing.random_batch(spec, 1, batch=4)
    batch["tokens"][batch["tokens"] == 0] = 3
    whole = _trainer(backend)(aimv2.build(spec, backend, weights=w), cfg)
    split = _trainer(backend)(aimv2.build(spec, backend, weights=w), cfg)
    a = whole.step([batch], 1e-2)
    halves = [
        {k: (v[:2] if v is not None else None) for k, v in batch.items()},
        {k: (v[2:] if v is not None else None) for k, v in batch.items()},
    ]
    b = split.step(halves, 1e-2)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    # After one update exp_avg = (1 − β1)·clipped gradient: compare gradients there
    # (parameters themselves move by ≈ lr·sign(g), which amplifies rounding where g ≈ 0).
    sa, sb = whole.state_arrays(), split.state_arrays()
    for k in sa:
        if k.startswith("exp_avg."):
            testing.assert_close(sb[k], sa[k], testing.Tolerance(1e-5), k)


def test_non_finite_loss_stops_without_updating(backend):
    spec = aimv2.presets.get("aimv2-test-tiny")
    w = aimv2.init_weights(spec, 0)
    w["pixel_head.weight"][0, 0] = np.nan  # a diverged weight: the loss becomes NaN
    model = aimv2.build(spec, backend)
    aimv2.set_weights(model, w, allow_nonfinite=True)  # refused by default: loaded on purpose
    trainer = _trainer(backend)(model, OptimConfig(lr=1e-3, warmup_steps=0, total_steps=2))
    before = aimv2.get_weights(model)
    batch = testing.random_batch(spec, 0)
    with pytest.raises(FloatingPointError, match="non-finite training values at update 1"):
        trainer.step([batch], 1e-3)
    after = aimv2.get_weights(model)
    assert all(np.array_equal(before[k], after[k], equal_nan=True) for k in before)
    assert trainer.step_count == 0


@pytest.mark.parametrize(
    "src, dst", [(a, b) for a in aimv2.BACKENDS for b in aimv2.BACKENDS if a != b]
)
def test_optimizer_state_moves_between_backends(src, dst):
    installed = aimv2.available_backends()
    if src not in installed or dst not in installed:
        pytest.skip(f"needs {src} and {dst}, installed: {installed or 'none'}")
    spec = aimv2.presets.get("aimv2-test-tiny")
    w = testing.random_weights(spec, 2)
    cfg = OptimConfig(lr=1e-2, warmup_steps=0, total_steps=6)
    a = _trainer(src)(aimv2.build(spec, src, weights=w), cfg)
    ref = _trainer(src)(aimv2.build(spec, src, weights=w), cfg)
    for step in range(2):
        batch = testing.random_batch(spec, step)
        a.step([batch], 1e-2)
        ref.step([batch], 1e-2)
    b = _trainer(dst)(aimv2.build(spec, dst, weights=aimv2.get_weights(a.model)), cfg)
    b.load_state_arrays(a.state_arrays(), a.step_count)
    batch = testing.random_batch(spec, 9)
    x, y = ref.step([batch], 1e-2), b.step([batch], 1e-2)
    assert abs(x["loss"] - y["loss"]) < 1e-5
    wx, wy = aimv2.get_weights(ref.model), aimv2.get_weights(b.model)
    assert max(testing.max_error(wx[k], wy[k]) for k in wx) < 1e-4
