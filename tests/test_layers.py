"""Every layer kind: realized in both backends and the reference, canonical names, parity.

Tolerances: ``aimv2.testing.FORWARD_TOL`` (1e-4 of the output scale, float32 against
the float64 reference; the module docstring there gives the reasoning).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import aimv2
from aimv2 import masks, reference, specs, testing
from aimv2.weights import parameters


def test_every_spec_kind_has_a_realization(backend):
    # every kind the library defines (kinds registered by examples or tests are theirs)
    builtin = {k for k, cls in specs.KINDS.items() if cls.__module__.startswith("aimv2.specs")}
    realized = builtin - specs.CONFIG_KINDS
    be = aimv2.load_backend(backend)
    assert realized - set(be.REGISTRY) == set(), f"{backend} lacks realizations"
    assert realized - set(reference.REGISTRY) == set(), "reference lacks realizations"
    assert set(be.REGISTRY) <= set(specs.KINDS)
    assert specs.config_kinds() >= specs.CONFIG_KINDS


def _inputs(spec, rng):
    """Inputs and call keywords for one layer spec."""
    if isinstance(spec, specs.PatchEmbedSpec):
        p = spec.patch_size
        shape = (2, spec.in_channels, p * int(rng.integers(1, 4)), p * int(rng.integers(1, 4)))
        return rng.standard_normal(shape), {}
    if isinstance(spec, specs.PosEmbedSpec):
        grid = spec.grid
        if spec.type != "learned":
            grid = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        x = rng.standard_normal((2, grid[0] * grid[1], spec.width))
        return x, ({"grid": grid} if spec.type != "learned" else {})
    n = int(rng.integers(2, 7))
    x = rng.standard_normal((2, n, spec.width))
    if isinstance(spec, (specs.AttentionSpec, specs.BlockSpec, specs.TrunkSpec)):
        kind = rng.integers(0, 3)
        if kind == 1:
            return x, {"mask": "causal"}
        if kind == 2:
            return x, {"mask": masks.prefix_mask(rng.integers(1, n, 2), n)}
        return x, {}
    return x, {}


def _convert(be, kwargs):
    return {k: be.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}


@given(testing.layer_specs(), st.integers(0, 2**16))
def test_layer_parity_with_reference_and_between_backends(spec, seed):
    installed = aimv2.available_backends()
    if len(installed) < 2:
        pytest.skip(f"needs two backends to compare, installed: {installed or 'none'}")
    rng = np.random.default_rng(seed)
    weights = testing.random_weights(spec, seed)
    x, kwargs = _inputs(spec, rng)
    want = reference.forward(spec, weights, x, **kwargs)
    if isinstance(spec, specs.TrunkSpec):
        want_blocks = reference.forward(spec, weights, x, return_blocks=True, **kwargs)[1]
    outs = {}
    for backend in installed:
        be = aimv2.load_backend(backend)
        module = aimv2.build(spec, backend, weights=weights)
        got = module(be.from_numpy(x.astype(np.float32)), **_convert(be, kwargs))
        outs[backend] = be.to_numpy(got)
        testing.assert_close(outs[backend], want, testing.FORWARD_TOL, f"{backend} {spec.kind}")
        if isinstance(spec, specs.TrunkSpec):
            _, blocks = module(
                be.from_numpy(x.astype(np.float32)), return_blocks=True, **_convert(be, kwargs)
            )
            for g, w in zip(blocks, want_blocks, strict=True):
                testing.assert_close(be.to_numpy(g), w, testing.FORWARD_TOL, f"{backend} block")
    testing.assert_close(outs["mlx"], outs["torch"], testing.FORWARD_TOL, "torch vs mlx")


@given(st.one_of(testing.layer_specs(), testing.encoder_specs(), testing.model_specs()))
def test_module_trees_carry_canonical_names(spec):
    want = {k: v.shape for k, v in parameters(spec).items()}
    installed = aimv2.available_backends()
    if not installed:
        pytest.skip("no backend installed: pip install 'aimv2[torch]' or 'aimv2[mlx]'")
    for backend in installed:
        module = aimv2.build(spec, backend, seed=1)
        got = {k: v.shape for k, v in aimv2.get_weights(module).items()}
        assert got == want, backend


def test_init_is_backend_independent_and_seeded(backend):
    spec = aimv2.presets.get("aimv2-test-tiny")
    w0 = aimv2.get_weights(aimv2.build(spec, backend, seed=3))
    ref = aimv2.init_weights(spec, 3)
    assert all(np.array_equal(w0[k], ref[k]) for k in ref)
    other = aimv2.init_weights(spec, 4)
    assert not np.array_equal(other["decoder.image_proj.weight"], ref["decoder.image_proj.weight"])
    # Each parameter has its own stream: dropping the text head leaves the rest unchanged.
    pixel_only = spec.replace(text=aimv2.specs.TextObjectiveSpec(weight=0.0))
    w1 = aimv2.init_weights(pixel_only, 3)
    assert "text_head.weight" not in w1
    assert all(np.array_equal(w1[k], ref[k]) for k in w1)


def test_set_weights_is_strict_and_lists_every_problem(backend):
    spec = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=2, image_size=4, mlp_hidden=32)
    module = aimv2.build(spec, backend)
    w = aimv2.get_weights(module)
    del w["trunk.blocks.0.attn.qkv.weight"]
    w["trunk.blocks.0.attn.qkv.bias"] = np.zeros(48, np.float32)
    w["trunk.post_trunk_norm.weight"] = np.ones(15, np.float32)
    with pytest.raises(aimv2.WeightsError) as err:
        aimv2.set_weights(module, w)
    msg = str(err.value)
    assert "missing 1: trunk.blocks.0.attn.qkv.weight" in msg
    assert "unexpected 1: trunk.blocks.0.attn.qkv.bias" in msg
    assert "trunk.post_trunk_norm.weight: expected (16,), got (15,)" in msg
    # Nothing was half-loaded.
    assert np.array_equal(aimv2.get_weights(module)["trunk.post_trunk_norm.weight"], np.ones(16))


def test_weights_round_trip_exactly(backend):
    spec = aimv2.presets.get("aimv2-test-tiny")
    w = testing.random_weights(spec, 5)
    got = aimv2.get_weights(aimv2.build(spec, backend, weights=w))
    assert all(np.array_equal(got[k], w[k]) for k in w)
