"""New input sizes: resampling the learned position grid (reference, torch, MLX, timm),
``resize_encoder``, ``from_pretrained(image_size=)`` and the dynamic-size positions.

Tolerances:

- ``patches.resample_matrix`` against torch's own ``F.interpolate(mode="bicubic",
  antialias=True)`` in float64: 1e-12 (the same formula; observed ≤ 6e-15).
- backends against the float64 reference (forward and gradients): ``FORWARD_TOL`` /
  ``GRAD_TOL``, as for every component (torch's float32 antialiased kernel is within
  4e-6 of the float64 weights here).
- timm's ``set_input_size`` against ``resize_encoder``: ``FORWARD_TOL`` (timm resamples
  in float32).
- a resized encoder on a 2× upsampled image against the original on the original: see
  :func:`test_a_resized_encoder_sees_an_upsampled_image_like_the_original`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aimv2
from aimv2 import formats, patches, reference, testing
from aimv2 import specs as S
from aimv2.resize import resize_encoder, resized_spec


@settings(max_examples=25)
@given(st.integers(1, 24), st.integers(1, 24))
def test_resample_matrix_is_torchs_antialiased_bicubic(n_in, n_out):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(n_in * 31 + n_out).standard_normal((1, 2, 3, n_in))
    got = np.einsum("sj,bcij->bcis", patches.resample_matrix(n_in, n_out), x)
    want = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=(3, n_out), mode="bicubic", antialias=True, align_corners=False
    ).numpy()
    assert np.abs(got - want).max() <= 1e-12


def test_resampling_to_the_same_size_is_the_identity():
    for n in (1, 2, 7, 16):
        assert np.array_equal(patches.resample_matrix(n, n), np.eye(n))
    t = np.random.default_rng(0).standard_normal((1, 12, 5))
    assert np.array_equal(patches.resample_grid(t, (3, 4), (3, 4)), t)
    spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=(12, 16))
    w = testing.random_weights(spec, 0)
    same, w2 = resize_encoder(spec, w, (12, 16))
    assert same == spec and all(np.array_equal(w[k], w2[k]) for k in w)
    # the dynamic positions at their own grid add the table itself
    dyn, wd = resize_encoder(spec, w, (12, 16), dynamic=True)
    x = np.random.default_rng(1).standard_normal((1, 3, 12, 16))
    assert np.array_equal(reference.forward(dyn, wd, x), reference.forward(spec, w, x))


@st.composite
def _dynamic_encoders(draw):
    spec = draw(testing.encoder_specs(native=False, max_depth=2))
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if rows * cols < 2:
        cols = 2
    table = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    pos = S.ResampledPosEmbedSpec(width=spec.width, grid=table)
    return spec.replace(pos_embed=pos, image_size=None), (rows, cols)


@settings(max_examples=12)
@given(_dynamic_encoders(), st.integers(0, 2**16))
def test_resampled_positions_agree_across_backends_and_the_reference(drawn, seed):
    spec, (rows, cols) = drawn
    p = spec.patch_size
    rng = np.random.default_rng(seed)
    batch = {
        "images": rng.standard_normal((2, spec.in_channels, rows * p, cols * p)).astype(np.float32),
        "prefix_len": None,
    }
    testing.assert_backends_agree(spec, batch=batch, seed=seed)


def test_resized_weights_equal_the_dynamic_positions_at_that_size(backend):
    spec = aimv2.encoder_spec(
        width=16, depth=2, heads=2, patch_size=4, image_size=16, mlp_hidden=32
    )
    w = testing.random_weights(spec, 4)
    be = aimv2.load_backend(backend)
    x = np.random.default_rng(4).standard_normal((2, 3, 24, 20)).astype(np.float32)
    fixed_spec, fixed_w = resize_encoder(spec, w, (24, 20))
    dyn_spec, dyn_w = resize_encoder(spec, w, (24, 20), dynamic=True)
    assert fixed_spec.pos_embed.grid == (6, 5) and dyn_spec.native
    fixed = be.to_numpy(aimv2.build(fixed_spec, backend, weights=fixed_w)(be.from_numpy(x)))
    dyn = be.to_numpy(aimv2.build(dyn_spec, backend, weights=dyn_w)(be.from_numpy(x)))
    testing.assert_close(fixed, reference.forward(fixed_spec, fixed_w, x))
    testing.assert_close(dyn, fixed)


def test_a_resized_encoder_sees_an_upsampled_image_like_the_original(backend):
    """A 16×16 encoder (4×4 grid) resized to 32×32 (8×8 grid), shown the original image
    upsampled 2× (nearest), should compute what the original computed: with an image
    that is constant on each patch, each original token becomes four identical patch
    embeddings whose attention weights over duplicated keys are unchanged, so the only
    difference is the position each child token gets, the bicubic value at ±¼ cell from
    its parent's centre. With a smooth table (real learned tables are smooth; here a
    low-frequency sin-cos table of amplitude 0.5) the mean of the four children matches
    the parent within 2e-2 of the output scale (observed 1.1e-2), while not resampling
    correctly — the table transposed, or the old table's tokens repeated row-major —
    moves it by more than 0.1.
    """
    spec = aimv2.encoder_spec(
        width=32, depth=2, heads=2, patch_size=4, image_size=16, mlp_hidden=64
    )
    w = testing.random_weights(spec, 5)
    w["preprocessor.pos_embed"] = (
        0.5 * patches.sincos_2d(32, 4, 4, temperature=12.0)[None]
    ).astype(np.float32)
    rng = np.random.default_rng(5)
    coarse = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    image = coarse.repeat(4, axis=2).repeat(4, axis=3)  # constant on each 4x4 patch
    big_image = image.repeat(2, axis=2).repeat(2, axis=3)
    be = aimv2.load_backend(backend)
    want = be.to_numpy(aimv2.build(spec, backend, weights=w)(be.from_numpy(image)))

    def children_mean(out):
        return out.reshape(2, 4, 2, 4, 2, 32).mean(axis=(2, 4)).reshape(2, 16, 32)

    big_spec, big_w = resize_encoder(spec, w, 32)
    got = be.to_numpy(aimv2.build(big_spec, backend, weights=big_w)(be.from_numpy(big_image)))
    scale = np.abs(want).max()
    err = np.abs(children_mean(got) - want).max() / scale
    assert err <= 2e-2, err
    table = w["preprocessor.pos_embed"].reshape(4, 4, 32)
    wrong = {
        "transposed": patches.resample_grid(
            table.transpose(1, 0, 2).reshape(1, 16, 32), (4, 4), (8, 8)
        ),
        "repeated": np.tile(w["preprocessor.pos_embed"], (1, 4, 1)),
    }
    for name, bad in wrong.items():
        bad_w = {**big_w, "preprocessor.pos_embed": bad.astype(np.float32)}
        out = be.to_numpy(aimv2.build(big_spec, backend, weights=bad_w)(be.from_numpy(big_image)))
        assert np.abs(children_mean(out) - want).max() / scale > 0.1, name


def test_native_and_sincos_encoders_need_no_resampling():
    native = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=4, image_size=None)
    w = aimv2.init_weights(native)
    spec, w2 = resize_encoder(native, w, (8, 20))
    assert spec.image_size == (8, 20) and spec.pos_embed == native.pos_embed
    assert all(np.array_equal(w[k], w2[k]) for k in w)
    model = aimv2.presets.get("aimv2-test-tiny")  # a ModelSpec: its encoder is resized
    big = resized_spec(model, 32)
    assert big.encoder.image_size == (32, 32) and big.decoder == model.decoder


@pytest.mark.parametrize(
    "size, exc, match",
    [
        (30, ValueError, r"image_size=\(30, 30\): must be divisible by the patch size 4"),
        ((16, 0), ValueError, r"expected \(height, width\) of positive ints"),
        ((16, 16, 16), ValueError, r"expected \(height, width\)"),
        ("big", ValueError, r"expected \(height, width\)"),
        (16.0, TypeError, r"image_size: expected an int or \(height, width\)"),
    ],
)
def test_bad_sizes_get_clear_errors(size, exc, match):
    spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=16)
    with pytest.raises(exc, match=match):
        resize_encoder(spec, aimv2.init_weights(spec), size)


def test_from_pretrained_at_another_size(tmp_path, backend):
    spec = aimv2.encoder_spec(
        width=32, depth=1, heads=2, patch_size=4, image_size=16, mlp_hidden=64
    )
    w = testing.random_weights(spec, 6)
    x = np.random.default_rng(6).standard_normal((1, 3, 24, 32)).astype(np.float32)
    want_spec, want_w = resize_encoder(spec, w, (24, 32))
    want = reference.forward(want_spec, want_w, x)
    be = aimv2.load_backend(backend)
    for fmt in ("official", "transformers", "mlx"):
        path = formats.save_pretrained(aimv2.build(spec, weights=w), tmp_path / fmt, format=fmt)
        model = formats.from_pretrained(path, backend, image_size=(24, 32))
        assert model.spec == want_spec
        testing.assert_close(
            aimv2.get_weights(model)["preprocessor.pos_embed"],
            want_w["preprocessor.pos_embed"],
            what=fmt,
        )
        testing.assert_close(be.to_numpy(model(be.from_numpy(x))), want, what=fmt)


_TIMM_SCRIPT = r"""
import json, sys
args = json.loads(sys.argv[1])
from aimv2.backends.torch.peers import import_timm

timm, _ = import_timm()  # stand-in torchvision modules, in this subprocess only
import numpy as np, torch
from aimv2.tensorfiles import save_file

torch.manual_seed(0)
m = timm.create_model("aimv2_large_patch14_224", pretrained=False, num_classes=0, img_size=28,
                      patch_size=7, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0)
with torch.no_grad():
    for name, p in m.named_parameters():
        p.copy_(torch.randn(p.shape) * (0.2 if p.ndim < 2 or name == "pos_embed"
                                        else p[0].numel() ** -0.5) + (1.0 if "norm" in name else 0.0))
m.eval()
save_file({k: v.numpy() for k, v in m.state_dict().items()}, args["fixture"])
state = {k: v.clone() for k, v in m.state_dict().items()}
out = {}
for h, w in args["sizes"]:
    m.set_input_size(img_size=(28, 28))
    m.load_state_dict(state)  # each size from the original 4x4 table
    m.set_input_size(img_size=(h, w))
    x = torch.from_numpy(np.load(args["x"] + f"-{h}x{w}.npy"))
    with torch.no_grad():
        out[f"pos-{h}x{w}"] = m.pos_embed.numpy()
        out[f"out-{h}x{w}"] = m.forward_features(x).numpy()
np.savez(args["out"], **out)
"""


def test_timm_set_input_size_gives_the_same_position_grid(tmp_path):
    pytest.importorskip("torch")
    try:
        import timm  # noqa: F401
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("torchvision"):
            pytest.skip("timm is not installed")
    sizes = [(42, 56), (14, 35), (28, 28)]  # up, down and across, and the same size
    rng = np.random.default_rng(7)
    for h, w in sizes:
        np.save(tmp_path / f"x-{h}x{w}.npy", rng.standard_normal((2, 3, h, w)).astype(np.float32))
    args = {
        "fixture": str(tmp_path / "timm.safetensors"),
        "x": str(tmp_path / "x"),
        "out": str(tmp_path / "out.npz"),
        "sizes": sizes,
    }
    proc = subprocess.run(
        [sys.executable, "-c", _TIMM_SCRIPT, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    spec = aimv2.encoder_spec(
        width=64, depth=2, heads=2, patch_size=7, image_size=28, mlp_hidden=128
    )
    weights = aimv2.get_weights(formats.from_pretrained(tmp_path / "timm.safetensors", preset=spec))
    for h, w in sizes:
        new_spec, new_w = resize_encoder(spec, weights, (h, w))
        testing.assert_close(new_w["preprocessor.pos_embed"], got[f"pos-{h}x{w}"], what=f"{h}x{w}")
        x = np.load(tmp_path / f"x-{h}x{w}.npy")
        for backend in aimv2.available_backends():
            be = aimv2.load_backend(backend)
            model = formats.from_pretrained(
                tmp_path / "timm.safetensors", backend, preset=spec, image_size=(h, w)
            )
            testing.assert_close(
                be.to_numpy(model(be.from_numpy(x))), got[f"out-{h}x{w}"], what=f"{backend} {h}x{w}"
            )
