"""Intermediate features: ``forward_intermediates`` on every encoder, ``extract_features``
and ``aimv2 extract`` with block selection, pooling and layouts.

Tolerance: ``aimv2.testing.FORWARD_TOL`` against the float64 reference (the same
float32-vs-float64 forward as the encoder's own parity test). Against the backend's own
``return_blocks`` outputs the selected blocks must be equal to float32 round-off of the
same kernels (also FORWARD_TOL; observed 0), and ``stop_early`` must give bit-identical
intermediates while running fewer blocks.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aimv2
from aimv2 import reference, testing
from aimv2.cli import main
from aimv2.probe import extract_features


def _images(spec, rng, batch=2):
    hw = spec.image_size or (2 * spec.patch_size, 3 * spec.patch_size)
    return rng.standard_normal((batch, spec.in_channels, *hw)).astype(np.float32)


@st.composite
def _indices(draw, depth):
    kind = draw(st.sampled_from(["none", "last", "list"]))
    if kind == "none":
        return None
    if kind == "last":
        return draw(st.integers(1, depth))
    blocks = draw(st.lists(st.integers(0, depth - 1), min_size=1, max_size=depth, unique=True))
    return [b - depth if draw(st.booleans()) else b for b in blocks]  # some from the end


@settings(max_examples=12)
@given(testing.encoder_specs(), st.integers(0, 2**16), st.data())
def test_forward_intermediates_match_return_blocks_and_the_reference(spec, seed, data):
    rng = np.random.default_rng(seed)
    w = testing.random_weights(spec, seed)
    x = _images(spec, rng)
    indices = data.draw(_indices(spec.depth))
    norm = data.draw(st.booleans())
    output = data.draw(st.sampled_from(["NLC", "NCHW", "nchw"]))
    stop_early = data.draw(st.booleans())
    prefix = data.draw(st.sampled_from([None, 1]))
    kw = {"indices": indices, "norm": norm, "output": output, "prefix_len": prefix}
    want_y, want = reference.forward_intermediates(spec, w, x, stop_early=stop_early, **kw)
    take = aimv2.inputs.intermediate_indices(spec.depth, indices)
    assert len(want) == len(take)
    for backend in aimv2.available_backends():
        be = aimv2.load_backend(backend)
        model = aimv2.build(spec, backend, weights=w)
        y, got = model.forward_intermediates(be.from_numpy(x), stop_early=stop_early, **kw)
        _, blocks = model(be.from_numpy(x), prefix, return_blocks=True)
        grid = (x.shape[2] // spec.patch_size, x.shape[3] // spec.patch_size)
        for i, g, r in zip(take, got, want, strict=True):
            g = be.to_numpy(g)
            testing.assert_close(g, r, what=f"{backend} block {i} vs reference")
            own = be.to_numpy(blocks[i])
            if norm:
                own = reference.forward(
                    spec.trunk.final_norm_spec,
                    {
                        "weight": w["trunk.post_trunk_norm.weight"],
                        **(
                            {"bias": w["trunk.post_trunk_norm.bias"]}
                            if "trunk.post_trunk_norm.bias" in w
                            else {}
                        ),
                    },
                    own,
                )
            if output.upper() == "NCHW":
                own = own.reshape(own.shape[0], *grid, -1).transpose(0, 3, 1, 2)
            testing.assert_close(g, own, what=f"{backend} block {i} vs return_blocks")
        testing.assert_close(be.to_numpy(y), want_y, what=f"{backend} final")
        if not stop_early or take[-1] == spec.depth - 1:
            full = reference.forward(spec, w, x, prefix_len=prefix)
            testing.assert_close(be.to_numpy(y), full, what=f"{backend} final = encoder output")


def _count_blocks(model, backend, monkeypatch):
    """A list that grows by one per trunk block run."""
    calls: list[int] = []
    if backend == "torch":
        for blk in model.trunk.blocks:
            blk.register_forward_hook(lambda *a: calls.append(1))
    else:
        cls = type(model.trunk.blocks[0])
        original = cls.__call__

        def counted(self, *args, **kwargs):
            calls.append(1)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", counted)
    return calls


def test_stop_early_runs_fewer_blocks_with_identical_results(backend, monkeypatch):
    spec = aimv2.encoder_spec(width=16, depth=6, heads=2, patch_size=4, image_size=8, mlp_hidden=32)
    w = testing.random_weights(spec, 3)
    be = aimv2.load_backend(backend)
    model = aimv2.build(spec, backend, weights=w)
    x = be.from_numpy(_images(spec, np.random.default_rng(3)))
    calls = _count_blocks(model, backend, monkeypatch)
    _, late = model.forward_intermediates(x, indices=[0, 2], stop_early=False)
    assert len(calls) == 6
    calls.clear()
    y, early = model.forward_intermediates(x, indices=[0, 2], stop_early=True)
    assert len(calls) == 3  # blocks 0, 1, 2 and no further
    for a, b in zip(early, late, strict=True):
        assert np.array_equal(be.to_numpy(a), be.to_numpy(b))
    # the final features of a trunk cut after block 2 (as timm returns them)
    want, _ = reference.forward_intermediates(spec, w, be.to_numpy(x), indices=[2])
    testing.assert_close(be.to_numpy(y), want)
    calls.clear()
    model.forward_intermediates(x, indices=[-1])
    assert len(calls) == 6


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"indices": [6]}, ValueError, r"block 6 is outside the 6 blocks"),
        ({"indices": [-7]}, ValueError, r"block -7 is outside"),
        ({"indices": [1, -5]}, ValueError, r"block 1 is named twice"),
        ({"indices": 0}, ValueError, r"the last n blocks needs 1 <= n <= 6"),
        ({"indices": []}, ValueError, r"at least one block"),
        ({"indices": [1.5]}, TypeError, r"block numbers must be integers"),
        ({"indices": "last"}, TypeError, r"block numbers must be integers"),
        ({"output": "NHWC"}, ValueError, r"output='NHWC': expected one of"),
    ],
)
def test_bad_intermediate_requests_get_clear_errors(backend, kwargs, exc, match):
    spec = aimv2.encoder_spec(width=16, depth=6, heads=2, patch_size=4, image_size=8, mlp_hidden=32)
    be = aimv2.load_backend(backend)
    model = aimv2.build(spec, backend)
    x = be.from_numpy(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(exc, match=match):
        model.forward_intermediates(x, **kwargs)
    with pytest.raises(exc, match=match):
        reference.forward_intermediates(
            spec, aimv2.init_weights(spec), np.zeros((1, 3, 8, 8)), **kwargs
        )


def test_pool_true_returns_the_heads_output_and_needs_a_head(backend):
    head = aimv2.specs.MeanPoolSpec(width=16, out_features=5)
    spec = aimv2.encoder_spec(
        width=16, depth=2, heads=2, patch_size=4, image_size=8, mlp_hidden=32, head=head
    )
    w = testing.random_weights(spec, 1)
    be = aimv2.load_backend(backend)
    x = _images(spec, np.random.default_rng(1))
    model = aimv2.build(spec, backend, weights=w)
    testing.assert_close(
        be.to_numpy(model(be.from_numpy(x), pool=True)), reference.forward(spec, w, x, pool=True)
    )
    bare = aimv2.build(spec.replace(head=None), backend)
    with pytest.raises(ValueError, match="pool=True: this encoder has no head"):
        bare(be.from_numpy(x), pool=True)


def test_extract_features_blocks_pooling_and_layouts(backend):
    spec = aimv2.encoder_spec(
        width=16, depth=4, heads=2, patch_size=4, image_size=(8, 12), mlp_hidden=32, head=True
    )
    w = testing.random_weights(spec, 2)
    x = _images(spec, np.random.default_rng(2), batch=5)
    model = aimv2.build(spec, backend, weights=w)
    _, ref = reference.forward_intermediates(spec, w, x, indices=[-1, 1])
    blocks = extract_features(model, x, 2, [-1, 1])
    assert blocks.shape == (5, 2, 6, 16)
    testing.assert_close(blocks, np.stack(ref, axis=1))
    maps = extract_features(model, x, 2, [-1, 1], layout="nchw")
    assert maps.shape == (5, 2, 16, 2, 3)
    testing.assert_close(maps, blocks.reshape(5, 2, 2, 3, 16).transpose(0, 1, 4, 2, 3))
    avg = extract_features(model, x, 3, 2, pool="mean-last-n")
    _, last2 = reference.forward_intermediates(spec, w, x, indices=2)
    testing.assert_close(avg, np.mean(last2, axis=0))
    testing.assert_close(
        extract_features(model, x, 4, pool="mean"), reference.forward(spec, w, x).mean(axis=1)
    )
    testing.assert_close(
        extract_features(model, x, 4, pool="attn"), reference.forward(spec, w, x, pool=True)
    )
    with pytest.raises(ValueError, match="pool='mean-last-n': give the blocks"):
        extract_features(model, x, pool="mean-last-n")
    with pytest.raises(ValueError, match="layout='nhwc'"):
        extract_features(model, x, layout="nhwc")


def test_extract_command_blocks_pool_and_layout(tmp_path, capsys):
    spec = aimv2.encoder_spec(width=16, depth=4, heads=2, patch_size=4, image_size=8, mlp_hidden=32)
    run = tmp_path / "run"
    aimv2.checkpoint.save(run, 1, spec, testing.random_weights(spec, 0))
    images = tmp_path / "imgs"
    images.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "f.npy"
    base = ["extract", "--checkpoint", str(run), "--images", str(images), "--quiet"]
    assert main([*base, "--out", str(out), "--blocks", "-1", "0", "--layout", "nchw"]) == 0
    assert np.load(out).shape == (3, 2, 16, 2, 2)
    assert main([*base, "--out", str(out), "--last-blocks", "3", "--pool", "mean-last-n"]) == 0
    assert np.load(out).shape == (3, 4, 16)
    assert main([*base, "--out", str(out), "--image-size", "16", "--pool", "mean"]) == 0
    assert np.load(out).shape == (3, 16)
    capsys.readouterr()
    assert main([*base, "--out", str(out), "--blocks", "9"]) == 2
    assert "block 9 is outside the 4 blocks" in capsys.readouterr().err
    assert main([*base, "--out", str(out), "--pool", "attn"]) == 2
    assert "needs an encoder with an attention-pooling head" in capsys.readouterr().err


def test_a_probe_reads_the_mean_of_the_last_blocks(backend):
    from aimv2.data import open_source
    from aimv2.probe import source_features

    spec = aimv2.encoder_spec(width=16, depth=3, heads=2, patch_size=4, image_size=8,
                              mlp_hidden=32)  # fmt: skip
    w = testing.random_weights(spec, 4)
    model = aimv2.build(spec, backend, weights=w)
    src = open_source("builtin:digits", split="heldout")
    last, labels = source_features(model, src, split="heldout", blocks=1, batch_size=128)
    mean2, _ = source_features(model, src, split="heldout", blocks=2, batch_size=128)
    images = np.concatenate(
        [
            b["images"]
            for b in aimv2.data.Loader(src, spec, None, 128, seed=0, train=False, num_workers=0)
        ]  # fmt: skip
    )
    _, blocks = reference.forward_intermediates(spec, w, images[:16], indices=2)
    testing.assert_close(mean2[:16], np.mean(blocks, axis=0), what="mean of the last 2 blocks")
    testing.assert_close(last[:16], reference.forward(spec, w, images[:16]), what="last block")
    assert len(labels) == 359
