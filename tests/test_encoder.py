"""The vision encoder: parity with the reference in both backends, prefix attention, bad input.

Tolerance: ``aimv2.testing.FORWARD_TOL`` on the output and on every block's output.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import aimv2
from aimv2 import masks, reference, testing


@given(testing.encoder_specs(), st.integers(0, 2**16), st.data())
def test_encoder_parity(spec, seed, data):
    rng = np.random.default_rng(seed)
    p = spec.patch_size
    if spec.native:
        rows, cols = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
        if rows * cols < 2:
            cols = 2
        hw = (rows * p, cols * p)
    else:
        hw = spec.image_size
    n = (hw[0] // p) * (hw[1] // p)
    mode = data.draw(st.sampled_from(["none", "low", "high", "random"]))
    prefix = {
        "none": None,
        "low": np.ones(2, np.int64),
        "high": np.full(2, n - 1, np.int64),
        "random": masks.sample_prefix(rng, 2, n),
    }[mode]
    batch = {
        "images": rng.standard_normal((2, spec.in_channels, *hw)).astype(np.float32),
        "prefix_len": prefix,
    }
    installed = aimv2.available_backends()
    if not installed:
        pytest.skip("no backend installed: pip install 'aimv2[torch]' or 'aimv2[mlx]'")
    report = testing.assert_backends_agree(spec, batch=batch, seed=seed, backends=installed)
    assert set(report) == set(installed)


def test_native_encoder_takes_non_square_inputs_of_several_sizes(backend):
    spec = aimv2.encoder_spec(
        width=32, depth=2, heads=2, patch_size=4, image_size=None, mlp_hidden=64
    )
    w = testing.random_weights(spec, 0)
    model = aimv2.build(spec, backend, weights=w)
    be = aimv2.load_backend(backend)
    rng = np.random.default_rng(0)
    for hw in [(8, 20), (20, 8), (12, 12), (4, 28)]:
        x = rng.standard_normal((1, 3, *hw)).astype(np.float32)
        got = be.to_numpy(model(be.from_numpy(x)))
        assert got.shape == (1, (hw[0] // 4) * (hw[1] // 4), 32)
        testing.assert_close(got, reference.forward(spec, w, x), what=f"{backend} {hw}")


def test_prefix_attention_hides_later_patches_from_earlier_tokens(backend):
    spec = aimv2.encoder_spec(
        width=32, depth=2, heads=2, patch_size=4, image_size=16, mlp_hidden=64
    )
    model = aimv2.build(spec, backend, weights=testing.random_weights(spec, 1))
    be = aimv2.load_backend(backend)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    m = 5  # tokens 0..4 are the prefix; token i >= 5 sees keys <= i.
    y = x.copy()
    y[:, :, 8:, :] += 1.0  # patches 8..15 change (rows 2 and 3 of the 4x4 grid)
    a = be.to_numpy(model(be.from_numpy(x), prefix_len=m))
    b = be.to_numpy(model(be.from_numpy(y), prefix_len=m))
    np.testing.assert_allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert np.abs(a[:, 8:] - b[:, 8:]).max() > 1e-2
    # Bidirectional: every token changes.
    a = be.to_numpy(model(be.from_numpy(x)))
    b = be.to_numpy(model(be.from_numpy(y)))
    assert np.abs(a[:, :8] - b[:, :8]).max() > 1e-3


def test_return_blocks_gives_every_block_before_the_final_norm(backend):
    spec = aimv2.encoder_spec(width=16, depth=3, heads=2, patch_size=2, image_size=4, mlp_hidden=32)
    model = aimv2.build(spec, backend, seed=0)
    be = aimv2.load_backend(backend)
    out, blocks = model(be.from_numpy(np.zeros((1, 3, 4, 4), np.float32)), return_blocks=True)
    assert len(blocks) == 3 and tuple(blocks[-1].shape) == tuple(out.shape)


def _fixed():
    return aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=4, image_size=8, mlp_hidden=32)


BAD_IMAGES = [
    (np.zeros((1, 3, 8, 10), np.float32), ValueError, "multiples of patch_size=4, got 8x10"),
    (np.zeros((1, 1, 8, 8), np.float32), ValueError, "expected 3 channels"),
    (np.zeros((3, 8, 8), np.float32), ValueError, r"expected a 4-D batch \(B, C, H, W\)"),
    (np.zeros((1, 3, 12, 12), np.float32), ValueError, "takes 8x8 images"),
    (np.full((1, 3, 8, 8), np.nan, np.float32), ValueError, "NaN or infinite"),
    (np.zeros((1, 3, 8, 8), np.uint8), TypeError, "expected a floating-point array"),
]


# every backend and the reference; this parametrization takes the place of the fixture
@pytest.mark.parametrize("backend", [*aimv2.BACKENDS, "reference"])
@pytest.mark.parametrize("images, exc, match", BAD_IMAGES)
def test_bad_images_get_clear_errors(backend, images, exc, match):
    spec = _fixed()
    if backend == "reference":
        with pytest.raises(exc, match=match):
            reference.forward(spec, aimv2.init_weights(spec), images)
        return
    try:
        be = aimv2.load_backend(backend)
    except aimv2.BackendUnavailable as err:
        pytest.skip(str(err))
    model = aimv2.build(spec, backend)
    with pytest.raises(exc, match=match):
        model(be.from_numpy(images))


@pytest.mark.parametrize(
    "prefix, match",
    [
        (0, r"must lie in 1..3"),
        (4, r"must lie in 1..3 \(N-1 for N=4 patches\), got \[4, 4\]"),
        ([1, 2, 3], r"expected an int or 2 integers"),
        (1.5, r"prefix_len: expected an int or integers"),
    ],
)
def test_bad_prefix_len_gets_clear_errors(backend, prefix, match):
    be = aimv2.load_backend(backend)
    model = aimv2.build(_fixed(), backend)
    with pytest.raises((ValueError, TypeError), match=match):
        model(be.from_numpy(np.zeros((2, 3, 8, 8), np.float32)), prefix_len=prefix)


def test_import_without_frameworks_and_missing_backend_message(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'mlx'):\n"
        "            raise ImportError(f'blocked {name}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import aimv2\n"
        "spec = aimv2.presets.get('aimv2-test-tiny')\n"
        "assert aimv2.available_backends() == []\n"
        "for b in ('torch', 'mlx'):\n"
        "    try:\n"
        "        aimv2.build(spec, backend=b)\n"
        "    except aimv2.BackendUnavailable as e:\n"
        "        print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'aimv2[torch]'" in out.stdout
    assert "pip install 'aimv2[mlx]'" in out.stdout


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="backend='jax'"):
        aimv2.build(_fixed(), backend="jax")
