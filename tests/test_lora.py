"""LoRA adapters: parity with the reference in both backends (forward and every gradient),
merging, initialization and refusals.

Tolerances: ``FORWARD_TOL`` / ``GRAD_TOL`` against the float64 reference (the adapter is
two extra float32 matmuls per target; observed ≤ 3e-6 of scale forward, ≤ 5e-5 for
gradients). Merged against unmerged on a backend: ``FORWARD_TOL`` — the two compute the
same product in another float32 order (``W x + s·B(A x)`` vs ``(W + s·B A) x``, the merged
weight rounded once); observed ≤ 1.1e-5 of scale. A merge with the wrong scale (alpha
instead of alpha/rank) moves the output by more than 1e-2 of scale
(:func:`test_a_wrong_merge_would_be_caught`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aimv2
from aimv2 import reference, testing
from aimv2 import specs as S
from aimv2.lora import add_lora, lora_names, lora_weights, merge_lora, strip_lora


@st.composite
def _lora_encoders(draw):
    enc = draw(testing.encoder_specs(native=False, max_depth=2))
    blk = enc.trunk.block
    changes = {}
    where = draw(st.sampled_from(["attn", "mlp", "both"]))
    if where in ("attn", "both"):
        names = ["qkv", "proj"]
        targets = draw(st.sampled_from([None, ("qkv",), ("proj",)]))
        assert targets is None or set(targets) <= set(names)
        changes["attn"] = S.LoRAAttentionSpec(
            blk.attn, draw(st.integers(1, 4)), draw(st.sampled_from([1.0, 4.0])), targets
        )
    if where in ("mlp", "both"):
        targets = draw(st.sampled_from([None, ("fc1",), ("fc2",)]))
        changes["mlp"] = S.LoRAFeedForwardSpec(
            blk.mlp, draw(st.integers(1, 4)), draw(st.sampled_from([0.5, 8.0])), targets
        )
    return enc.replace(trunk=enc.trunk.replace(block=blk.replace(**changes)))


@settings(max_examples=12)
@given(_lora_encoders(), st.integers(0, 2**16))
def test_lora_encoders_agree_across_backends_and_the_reference(spec, seed):
    testing.assert_backends_agree(spec, seed=seed)  # random weights: lora_b is not zero


@settings(max_examples=8)
@given(_lora_encoders(), st.integers(0, 2**16))
def test_merged_weights_reproduce_the_unmerged_forward(spec, seed):
    w = testing.random_weights(spec, seed)
    merged_spec, merged = merge_lora(spec, w)
    assert not aimv2.lora.has_lora(merged_spec)
    x = np.random.default_rng(seed).standard_normal((2, spec.in_channels, *spec.image_size))
    want = reference.forward(spec, w, x)
    testing.assert_close(reference.forward(merged_spec, merged, x), want, what="reference")
    for backend in aimv2.available_backends():
        be = aimv2.load_backend(backend)
        xb = be.from_numpy(x.astype(np.float32))
        with be.inference():  # the no-grad paths too (torch's split q/k/v GEMMs)
            unmerged = be.to_numpy(aimv2.build(spec, backend, weights=w)(xb))
            plain = be.to_numpy(aimv2.build(merged_spec, backend, weights=merged)(xb))
        testing.assert_close(unmerged, want, what=f"{backend} unmerged")
        testing.assert_close(plain, unmerged, what=f"{backend} merged vs unmerged")


def test_a_wrong_merge_would_be_caught():
    enc = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=4, image_size=8)
    spec = add_lora(enc, rank=2, alpha=8.0)
    w = testing.random_weights(spec, 0)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8))
    want = reference.forward(spec, w, x)
    bad = dict(w)
    for name, (a, b, _) in lora_names(spec).items():
        bad[name] = w[name] + 8.0 * w[b] @ w[a]  # alpha, not alpha / rank
    bad_out = reference.forward(enc, {k: v for k, v in bad.items() if "lora" not in k}, x)
    assert np.abs(bad_out - want).max() > 1e-2 * max(1.0, np.abs(want).max())


def test_fresh_adapters_start_as_the_base_model(backend):
    enc = aimv2.encoder_spec(width=16, depth=2, heads=2, patch_size=4, image_size=8, mlp_hidden=32)
    base = testing.random_weights(enc, 1)
    spec = add_lora(enc, rank=4, alpha=4.0)
    w = lora_weights(spec, base, seed=3)
    assert sorted(set(w) - set(base)) == sorted(
        n for ab in lora_names(spec).values() for n in ab[:2]
    )
    assert all(not w[b].any() and w[a].any() for a, b, _ in lora_names(spec).values())
    be = aimv2.load_backend(backend)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    got = be.to_numpy(aimv2.build(spec, backend, weights=w)(be.from_numpy(x)))
    testing.assert_close(got, reference.forward(enc, base, x))
    assert strip_lora(spec) == enc


def test_lora_names_tell_adapters_with_different_scales_apart():
    enc = aimv2.encoder_spec(width=16, depth=2, heads=2, patch_size=4, image_size=8)
    blk = enc.trunk.block
    spec = enc.replace(
        trunk=enc.trunk.replace(
            block=blk.replace(
                attn=S.LoRAAttentionSpec(blk.attn, 2, 1.0, ("proj",)),
                mlp=S.LoRAFeedForwardSpec(blk.mlp, 4, 1.0, ("fc2",)),
            )
        )
    )
    names = lora_names(spec)
    assert names["trunk.blocks.1.attn.proj.weight"][2] == 0.5
    assert names["trunk.blocks.1.mlp.fc2.weight"][2] == 0.25
    assert len(names) == 4
    assert S.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda a, f: S.LoRAAttentionSpec(a, rank=0), r"LoRAAttentionSpec.rank=0"),
        (lambda a, f: S.LoRAAttentionSpec(a, alpha=0), r"LoRAAttentionSpec.alpha=0"),
        (lambda a, f: S.LoRAAttentionSpec(a, targets=("fc1",)), r"'fc1' is not a linear"),
        (lambda a, f: S.LoRAAttentionSpec(a, targets=("qkv", "qkv")), r"names a target twice"),
        (lambda a, f: S.LoRAAttentionSpec(a, targets=()), r"expected some of"),
        (lambda a, f: S.LoRAAttentionSpec(f), r"expected a spec of role 'attention'"),
        (lambda a, f: S.LoRAFeedForwardSpec(S.LoRAFeedForwardSpec(f)), r"already a LoRA"),
    ],
)
def test_bad_adapters_get_clear_errors(make, match):
    attn, ffn = S.AttentionSpec(8, 2), S.FeedForwardSpec(8, 16)
    with pytest.raises(S.SpecError, match=match):
        make(attn, ffn)


def test_add_lora_refusals():
    enc = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=4, image_size=8)
    with pytest.raises(ValueError, match="already holds LoRA adapters"):
        add_lora(add_lora(enc, 2), 2)
    with pytest.raises(ValueError, match="leave nothing to adapt"):
        add_lora(enc, 2, attention=False, ffn=False)
    with pytest.raises(TypeError, match="expected an EncoderSpec"):
        add_lora(enc.trunk, 2)
    spec = add_lora(enc, 2)
    with pytest.raises(aimv2.WeightsError):
        lora_weights(spec, {})


def test_a_target_that_is_not_a_linear_is_refused_at_build(backend):
    @dataclass(frozen=True)
    class OddFFNSpec(S.Spec):  # declares a 'linear' parameter that is not an nn.Linear
        kind: ClassVar[str] = "test_odd_ffn"
        role: ClassVar[str] = "ffn"
        width: int

        def parameters(self):
            return {"gate.weight": S.ParamInfo((self.width, self.width), "linear")}

    be = aimv2.load_backend(backend)
    nn = importlib.import_module("torch.nn" if backend == "torch" else "mlx.nn")

    @be.realizes(OddFFNSpec)
    class Odd(nn.Module):
        def __init__(self, spec):
            super().__init__()
            self.spec = spec

    spec = S.LoRAFeedForwardSpec(OddFFNSpec(8), rank=2)
    with pytest.raises(S.RealizationError, match="LoRA target 'gate': expected an nn.Linear"):
        aimv2.build(spec, backend)
