"""Checkpoint formats: official, MLX, transformers, timm and aimv2 checkpoints, both ways.

Fixtures are made here (tiny random ``transformers`` models, timm state dicts, our own
models); nothing is downloaded. Forward parity is checked at ``aimv2.testing.FORWARD_TOL``
(max abs error <= 1e-4 x max(1, max|want|)) in float32; export -> import is bit-exact.
"""

from __future__ import annotations

import argparse
import json
import runpy
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import aimv2
from aimv2 import formats, reference
from aimv2.formats import FormatError
from aimv2.tensorfiles import load_file, read_header, save_file
from aimv2.testing import FORWARD_TOL, assert_close, random_weights

try:
    import torch
except ImportError:  # the transformers and timm tests need torch; the rest runs on MLX alone
    torch = None

if not aimv2.available_backends():
    pytest.skip("no backend installed (torch or mlx)", allow_module_level=True)
ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------ helpers


def _encoder(width=64, depth=2, heads=2, patch=7, image=28, hidden=128, head=False, **kw):
    if isinstance(head, aimv2.AttentionPoolSpec):
        spec = aimv2.encoder_spec(width, depth, heads, patch, image, hidden, **kw)
        return spec.replace(head=head)
    return aimv2.encoder_spec(width, depth, heads, patch, image, hidden, head=head, **kw)


def _load(path, **kw):
    """from_pretrained on the first installed backend (torch when present)."""
    return formats.from_pretrained(path, backend=aimv2.available_backends()[0], **kw)


def _images(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _forward(model, backend: str, x: np.ndarray):
    """(last hidden state, [embeddings, block 1 … block L], pooled or None) as NumPy."""
    be = aimv2.load_backend(backend)
    xi = be.from_numpy(x)
    y, blocks = model(xi, return_blocks=True)
    hidden = [be.to_numpy(model.embed(xi))] + [be.to_numpy(b) for b in blocks]
    pooled = be.to_numpy(model.head(y)) if model.spec.head is not None else None
    return be.to_numpy(y), hidden, pooled


def _assert_outputs(got, want, what: str) -> dict[str, float]:
    """Compare (last, hidden_states, pooled) triples tensor by tensor under FORWARD_TOL."""
    errs = {"last_hidden_state": assert_close(got[0], want[0], FORWARD_TOL, f"{what} last")}
    assert len(got[1]) == len(want[1]), f"{what}: {len(got[1])} vs {len(want[1])} hidden states"
    for i, (g, w) in enumerate(zip(got[1], want[1], strict=True)):
        errs[f"hidden_states[{i}]"] = assert_close(g, w, FORWARD_TOL, f"{what} hidden_states[{i}]")
    if want[2] is not None:
        errs["pooled"] = assert_close(got[2], want[2], FORWARD_TOL, f"{what} pooled")
    return errs


def _reference(spec, weights, x):
    y, blocks = reference.forward(spec, weights, x, return_blocks=True)
    tokens = reference.patch_embed(
        spec.patchifier, reference.sub(weights, "preprocessor.patchifier."), x
    )
    grid = (x.shape[2] // spec.patch_size, x.shape[3] // spec.patch_size)
    emb = reference.pos_embed(spec.pos_embed, reference.sub(weights, "preprocessor."), tokens, grid)
    pooled = None
    if spec.head is not None:
        pooled = reference.forward(spec.head, reference.sub(weights, "head."), y)
    return y, [emb, *blocks], pooled


def _same_weights(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), f"{k}: not bit-identical"


# --------------------------------------------------------------- transformers fixtures

TF_CONFIGS = {
    "fixed": dict(image_size=28, patch_size=7, is_native=False, use_head=False),
    "native": dict(image_size=28, patch_size=7, is_native=True, use_head=False),
    "head": dict(
        image_size=28, patch_size=14, is_native=False, use_head=True, qkv_bias=True, mlp_bias=True
    ),
}


def _randomize(model, seed: int) -> None:
    """Every parameter random (norm weights, biases, positions and the query included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1 + 0.2 * r)
            elif p.ndim >= 2 and "position" not in name and "cls_token" not in name:
                p.copy_(r / p[0].numel() ** 0.5)
            else:
                p.copy_(0.2 * r)


@pytest.fixture(scope="module")
def hf():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tf_models(hf, tmp_path_factory):
    """name -> (folder, transformers model): fixed, native, head, sharded, bf16."""
    root = tmp_path_factory.mktemp("tf")
    out = {}
    for i, (name, kw) in enumerate(TF_CONFIGS.items()):
        cfg = hf.Aimv2VisionConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, **kw
        )
        model = hf.Aimv2VisionModel(cfg).eval()
        _randomize(model, i)
        model.save_pretrained(root / name)
        out[name] = (root / name, model)
    fixed = out["fixed"][1]
    fixed.save_pretrained(root / "sharded", max_shard_size="20KB")
    out["sharded"] = (root / "sharded", fixed)
    bf16 = hf.Aimv2VisionModel(fixed.config).eval()
    bf16.load_state_dict(fixed.state_dict())
    bf16.to(torch.bfloat16).save_pretrained(root / "bf16")
    out["bf16"] = (root / "bf16", bf16.float())
    return out


def _hf_outputs(model, x: np.ndarray):
    with torch.no_grad():
        o = model(torch.from_numpy(x), output_hidden_states=True)
    pooled = None if o.pooler_output is None else o.pooler_output.numpy()
    return o.last_hidden_state.numpy(), [h.numpy() for h in o.hidden_states], pooled


@pytest.mark.parametrize("name", ["fixed", "native", "head", "sharded"])
def test_transformers_checkpoint_reproduces_transformers(tf_models, name, backend):
    folder, hf_model = tf_models[name]
    det = formats.detect(folder)
    assert det.format == "transformers" and det.origin.endswith("config.json")
    assert det.spec.native == (name == "native")
    assert (det.spec.head is not None) == (name == "head")
    if name == "sharded":
        assert len(det.files) > 3 and (folder / "model.safetensors.index.json").is_file()
    model = formats.from_pretrained(folder, backend=backend)
    shape = (2, 3, 28, 42) if name == "native" else (2, 3, 28, 28)
    x = _images(shape)
    want = _hf_outputs(hf_model, x)
    assert len(want[1]) == det.spec.depth + 1
    _assert_outputs(_forward(model, backend, x), want, f"{name}/{backend}")


def test_native_checkpoint_matches_reference_on_non_square_inputs(tf_models, backend):
    folder, hf_model = tf_models["native"]
    model = formats.from_pretrained(folder, backend=backend)
    weights = aimv2.get_weights(model)
    for i, hw in enumerate([(14, 56), (42, 28), (21, 35), (56, 7)]):
        x = _images((1, 3, *hw), seed=i)
        got = _forward(model, backend, x)
        _assert_outputs(got, _reference(model.spec, weights, x), f"native {hw} vs reference")
        _assert_outputs(got, _hf_outputs(hf_model, x), f"native {hw} vs transformers")


def test_bf16_checkpoint_loads_exactly_and_casts(tf_models, backend):
    folder, _ = tf_models["bf16"]
    infos, _ = read_header(folder / "model.safetensors")
    assert {i.dtype for i in infos.values()} == {"BF16"}
    stored = load_file(folder / "model.safetensors")  # bf16 -> float32 is exact
    model = formats.from_pretrained(folder, backend=backend)
    w = aimv2.get_weights(model)
    assert w["trunk.post_trunk_norm.weight"].dtype == np.float32
    assert np.array_equal(w["trunk.post_trunk_norm.weight"], stored["rms_norm.weight"])
    q = stored["encoder.layers.1.attention.q_proj.weight"]
    assert np.array_equal(w["trunk.blocks.1.attn.qkv.weight"][:64], q)
    half = formats.from_pretrained(folder, backend=backend, dtype="bfloat16")
    if backend == "torch":
        assert half.trunk.post_trunk_norm.weight.dtype == torch.bfloat16
    else:
        import mlx.core as mx

        assert half.trunk.post_trunk_norm.weight.dtype == mx.bfloat16
    _same_weights(aimv2.get_weights(half), w)  # bf16 values survive the bf16 cast exactly


def test_full_aimv2_model_folder_loads_its_vision_tower(hf, tmp_path):
    """A transformers ``Aimv2Model`` (vision + text towers) loads as a LiT model (see
    tests/test_lit_formats.py); with an encoder ``preset`` only ``vision_model.*`` is read
    (the nested ``vision_config`` gives its spec). Either way the image tower reproduces
    transformers' vision model."""
    cfg = hf.Aimv2Config(
        vision_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            use_head=True,
        ),
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=64,
            eos_token_id=63,
        ),
        projection_dim=16,
    )
    full = hf.Aimv2Model(cfg).eval()
    _randomize(full, 9)
    full.save_pretrained(tmp_path)
    det = formats.detect(tmp_path)
    assert (det.format, det.prefix, det.spec.kind) == ("transformers", "", "lit")
    vision = det.spec.image_encoder
    assert vision.depth == 1 and vision.head.heads == 2
    with pytest.warns(UserWarning, match=r"left out: logit_scale, text_model\.\* \(12 tensors\)"):
        tower = formats.detect(tmp_path, preset=vision)
    assert (tower.format, tower.prefix, tower.spec) == ("transformers", "vision_model.", vision)
    x = _images((1, 3, 28, 28))
    want = _hf_outputs(full.vision_model, x)
    for backend in aimv2.available_backends():
        model = formats.from_pretrained(tmp_path, backend=backend)
        _assert_outputs(_forward(model.image_encoder, backend, x), want, f"Aimv2Model/{backend}")
        with pytest.warns(UserWarning, match="reading the image tower of a LiT model"):
            alone = formats.from_pretrained(tmp_path, backend=backend, preset=vision)
        _assert_outputs(_forward(alone, backend, x), want, f"vision tower/{backend}")


# ------------------------------------------------------------------- export -> import

ROUND_TRIP = {
    "plain": _encoder(),
    "head": _encoder(head=aimv2.AttentionPoolSpec(width=64, heads=2)),
    "native": _encoder(image=None),
}


@pytest.mark.parametrize("fmt", formats.FORMATS)
@pytest.mark.parametrize("case", list(ROUND_TRIP))
def test_export_import_round_trip_is_exact(tmp_path, fmt, case):
    installed = aimv2.available_backends()
    spec = ROUND_TRIP[case]
    if fmt == "timm" and case != "plain":
        with pytest.raises(FormatError, match="format='timm' cannot hold spec"):
            formats.save_pretrained(aimv2.build(spec, installed[0]), tmp_path / "x", format=fmt)
        return
    weights = random_weights(spec, seed=3)
    src_backend = installed[-1]  # save from MLX when present, load into every backend
    out = formats.save_pretrained(
        aimv2.build(spec, src_backend, weights=weights), tmp_path / fmt, format=fmt
    )
    det = formats.detect(out)
    assert det.format == fmt and det.spec == spec
    for backend in installed:
        _same_weights(aimv2.get_weights(formats.from_pretrained(out, backend=backend)), weights)


def test_round_trip_single_files_bf16_and_pretraining_checkpoint(tmp_path):
    installed = aimv2.available_backends()
    spec = _encoder(image=(28, 42))  # non-square fixed size: official, mlx and timm hold it
    weights = random_weights(spec, seed=4)
    model = aimv2.build(spec, installed[0], weights=weights)
    for fmt in ("official", "mlx", "timm"):
        path = formats.save_pretrained(model, tmp_path / f"{fmt}.safetensors", format=fmt)
        assert formats.detect(path).format == fmt
        _same_weights(aimv2.get_weights(_load(path)), weights)
    out = formats.save_pretrained(model, tmp_path / "bf16", format="official", dtype="bfloat16")
    rounded = {k: load_file(out / "model.safetensors")[k] for k in weights}
    for k, v in weights.items():
        assert np.abs(rounded[k] - v).max() <= np.abs(v).max() * 2**-8, k
    _same_weights(aimv2.get_weights(_load(out)), rounded)
    out = formats.save_pretrained(model, tmp_path / "f16", format="mlx", dtype="float16")
    assert {i.dtype for i in read_header(out / "mlx_model.safetensors")[0].values()} == {"F16"}
    halves = {k: v.astype(np.float16) for k, v in weights.items()}
    for backend in installed:
        got = formats.from_pretrained(out, backend=backend, dtype="float16")
        _same_weights(aimv2.get_weights(got), {k: v.astype(np.float32) for k, v in halves.items()})
    # a pre-training checkpoint: the encoder part loads, its names under ``encoder.``
    full = aimv2.presets.get("aimv2-test-tiny")
    ckpt_dir = aimv2.checkpoint.save(tmp_path / "run", 7, full, random_weights(full, 5))
    enc = _load(tmp_path / "run")  # the newest ckpt-* of a run folder
    want = {
        k[len("encoder.") :]: v
        for k, v in random_weights(full, 5).items()
        if k.startswith("encoder.")
    }
    _same_weights(aimv2.get_weights(enc), want)
    assert formats.detect(ckpt_dir).prefix == "encoder."
    # save_pretrained(format="aimv2") of a whole pre-training model is an aimv2 checkpoint
    pre = aimv2.build(full, installed[0], weights=random_weights(full, 5))
    saved = formats.save_pretrained(pre, tmp_path / "pre", format="aimv2")
    assert aimv2.checkpoint.load(saved).spec == full
    _same_weights(aimv2.get_weights(_load(saved)), want)


@pytest.mark.parametrize("case", ["plain", "head", "native"])
def test_exported_transformers_folder_loads_in_transformers(hf, tmp_path, case):
    spec = ROUND_TRIP[case]
    weights = random_weights(spec, seed=6)
    backend = aimv2.available_backends()[-1]
    model = aimv2.build(spec, backend, weights=weights)
    shard = "16KB" if case == "plain" else None
    out = formats.save_pretrained(
        model, tmp_path / case, format="transformers", max_shard_size=shard
    )
    if shard:
        assert (out / "model.safetensors.index.json").is_file()
    loaded, info = hf.Aimv2VisionModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    shape = (2, 3, 28, 42) if spec.native else (2, 3, 28, 28)
    x = _images(shape, seed=1)
    ours = _forward(model, backend, x)
    _assert_outputs(ours, _hf_outputs(loaded.eval(), x), f"{case}: transformers vs ours")
    _assert_outputs(ours, _reference(spec, weights, x), f"{case}: ours vs reference")
    proc = hf.AutoImageProcessor.from_pretrained(out)
    assert tuple(proc.image_mean) == spec.preprocess.mean


# ------------------------------------------------------------------------------ timm

# timm's AIMv2 state-dict names (timm vision_transformer.py, aimv2_* models and
# _convert_aimv2), written out independently of aimv2.formats' table.
_TIMM = [
    ("preprocessor.patchifier.proj.weight", "patch_embed.proj.weight"),
    ("preprocessor.patchifier.proj.bias", "patch_embed.proj.bias"),
    ("preprocessor.patchifier.norm.weight", "patch_embed.norm.weight"),
    ("preprocessor.pos_embed", "pos_embed"),
    ("trunk.post_trunk_norm.weight", "norm.weight"),
]
_TIMM_BLOCK = [
    ("norm_1", "norm1"),
    ("norm_2", "norm2"),
    ("attn.qkv", "attn.qkv"),
    ("attn.proj", "attn.proj"),
    ("mlp.fc1", "mlp.fc1_g"),
    ("mlp.fc3", "mlp.fc1_x"),
    ("mlp.fc2", "mlp.fc2"),
]


def _to_timm(weights: dict) -> dict:
    table = dict(_TIMM)
    for i in range(2):
        for a, b in _TIMM_BLOCK:
            table[f"trunk.blocks.{i}.{a}.weight"] = f"blocks.{i}.{b}.weight"
    return {table[k]: v for k, v in weights.items()}


def test_timm_key_layout_by_table(tmp_path):
    # A released-style spec (head dim 128) so the spec is inferred from shapes alone.
    spec = _encoder(width=128, heads=1, hidden=352, patch=14, image=28)
    weights = random_weights(spec, seed=7)
    save_file(_to_timm(weights), tmp_path / "timm.safetensors")
    det = formats.detect(tmp_path / "timm.safetensors")
    assert (det.format, det.origin, det.spec) == ("timm", "tensor shapes", spec)
    x = _images((2, 3, 28, 28))
    for backend in aimv2.available_backends():
        model = formats.from_pretrained(tmp_path / "timm.safetensors", backend=backend)
        _assert_outputs(_forward(model, backend, x), _reference(spec, weights, x), backend)
        out = formats.save_pretrained(model, tmp_path / f"out-{backend}", format="timm")
        _same_weights(load_file(out / "model.safetensors"), _to_timm(weights))


_TIMM_SCRIPT = r"""
import json, sys
args = json.loads(sys.argv[1])
from aimv2.backends.torch.peers import import_timm

# timm imports torchvision at import time, and PyPI's torchvision does not load beside
# this torch build; stand-in modules (in this subprocess only) let timm import.
timm, stubbed = import_timm()
import numpy as np, torch
from aimv2.tensorfiles import save_file

x = torch.from_numpy(np.load(args["x"]))
out = {"stubbed": np.array(stubbed)}
# 1. a tiny timm AIMv2 (the aimv2_* definition, smaller), random weights, saved as a state dict
torch.manual_seed(0)
m = timm.create_model("aimv2_large_patch14_224", pretrained=False, num_classes=0, img_size=28,
                      patch_size=7, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0)
with torch.no_grad():
    for name, p in m.named_parameters():
        r = torch.randn(p.shape)
        p.copy_(1 + 0.2 * r if "norm" in name else (r / p[0].numel() ** 0.5 if p.ndim >= 2
                and name != "pos_embed" else 0.2 * r))
m.eval()
save_file({k: v.numpy() for k, v in m.state_dict().items()}, args["fixture"])
with torch.no_grad():
    out["fixture_last"] = m.forward_features(x).numpy()
    for i, h in enumerate(m.forward_intermediates(x, norm=False, output_fmt="NLC",
                                                  intermediates_only=True)):
        out[f"fixture_block{i}"] = h.numpy()
# 2. our export, read by timm itself: as a hub folder and as a bare state dict
e = timm.create_model("local-dir:" + args["export"], pretrained=True).eval()
sd = {k: torch.from_numpy(v) for k, v in np.load(args["export_sd"]).items()}
e2 = timm.create_model("aimv2_large_patch14_224", pretrained=False, num_classes=0,
                       **json.load(open(args["export"] + "/config.json"))["model_args"]).eval()
e2.load_state_dict(sd, strict=True)
with torch.no_grad():
    out["export_last"] = e.forward_features(x).numpy()
    out["export_last_sd"] = e2.forward_features(x).numpy()
    for i, h in enumerate(e.forward_intermediates(x, norm=False, output_fmt="NLC",
                                                  intermediates_only=True)):
        out[f"export_block{i}"] = h.numpy()
np.savez(args["out"], **out)
"""


def test_timm_models_load_here_and_read_our_exports(tmp_path):
    pytest.importorskip("torch")
    try:
        import timm  # noqa: F401
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("torchvision"):
            pytest.skip("timm is not installed")
    x = _images((2, 3, 28, 28), seed=2)
    np.save(tmp_path / "x.npy", x)
    spec = _encoder()  # width 64, patch 7, 28x28, SwiGLU 128
    weights = random_weights(spec, seed=8)
    export = formats.save_pretrained(
        aimv2.build(spec, weights=weights), tmp_path / "export", format="timm"
    )
    np.savez(tmp_path / "export_sd.npz", **load_file(export / "model.safetensors"))
    args = {
        "x": str(tmp_path / "x.npy"),
        "fixture": str(tmp_path / "timm.safetensors"),
        "export": str(export),
        "export_sd": str(tmp_path / "export_sd.npz"),
        "out": str(tmp_path / "out.npz"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _TIMM_SCRIPT, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    # timm's model, loaded here
    det = formats.detect(tmp_path / "timm.safetensors", preset=spec)
    assert det.format == "timm"
    want = (got["fixture_last"], [None, got["fixture_block0"], got["fixture_block1"]], None)
    for backend in aimv2.available_backends():
        model = formats.from_pretrained(tmp_path / "timm.safetensors", backend, preset=spec)
        last, hidden, _ = _forward(model, backend, x)
        _assert_outputs((last, hidden[1:], None), (want[0], want[1][1:], None), backend)
    # our export, run by timm
    ref = _reference(spec, weights, x)
    _assert_outputs(
        (got["export_last"], [got["export_block0"], got["export_block1"]], None),
        (ref[0], ref[1][1:], None),
        "timm reading our export",
    )
    assert np.array_equal(got["export_last"], got["export_last_sd"])


# ------------------------------------------------------------------------- bad input


@pytest.fixture
def no_build(monkeypatch):
    """Call it to fail the test if any module gets built from then on (errors about a bad
    checkpoint must come before anything is built or loaded)."""

    def arm() -> None:
        for name in aimv2.available_backends():
            be = aimv2.load_backend(name)

            def boom(spec, _name=name):
                raise AssertionError(f"{_name} module built despite a bad checkpoint")

            monkeypatch.setattr(be, "build_module", boom)

    return arm


def test_unrelated_safetensors_file(tmp_path, no_build):
    no_build()
    save_file(
        {"foo.weight": np.ones((2, 3), np.float32), "bar": np.zeros(4, np.float32)},
        tmp_path / "model.safetensors",
    )
    with pytest.raises(FormatError, match=r"not an AIMv2 checkpoint.*'bar', 'foo.weight'"):
        _load(tmp_path)


def test_truncated_file(tmp_path, no_build):
    out = formats.save_pretrained(
        aimv2.build(_encoder(), aimv2.available_backends()[0]), tmp_path / "m", format="official"
    )
    f = out / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    no_build()
    with pytest.raises(
        FormatError, match=r"model.safetensors: not a valid safetensors file \(.*covered"
    ):
        _load(out)
    (out / "model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(FormatError, match="model.safetensors: .*header too small"):
        _load(out)


def test_config_that_disagrees_with_tensors(tf_models, tmp_path, no_build):
    src, _ = tf_models["fixed"]
    no_build()
    for key, value, pattern in [
        (
            "intermediate_size",
            96,
            r"'encoder.layers.0.ffn.gate_proj.weight': .*config.json "
            r"expects \(96, 64\), the file has \(128, 64\)",
        ),
        ("num_hidden_layers", 3, r"missing 9: encoder.layers.2.attention"),
        ("num_hidden_layers", 1, r"unexpected 9: encoder.layers.1.attention"),
        (
            "image_size",
            56,
            r"'embeddings.position_embedding.weight': .* expects \(64, 64\), "
            r"the file has \(16, 64\)",
        ),
        ("use_head", True, r"missing 5: head.cls_token"),
    ]:
        bad = tmp_path / f"{key}-{value}"
        bad.mkdir()
        (bad / "model.safetensors").symlink_to(src / "model.safetensors")
        cfg = json.loads((src / "config.json").read_text())
        cfg[key] = value
        (bad / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(FormatError, match=pattern):
            _load(bad)


def test_preset_that_does_not_match(tf_models, no_build):
    folder, _ = tf_models["fixed"]
    no_build()
    with pytest.raises(
        FormatError,
        match=r"preset 'aimv2-test-tiny' expects \(32, 3, 4, 4\), the file has \(64, 3, 7, 7\)",
    ):
        _load(folder, preset="aimv2-test-tiny")
    with pytest.raises(FormatError, match="preset: preset name='nope' is unknown"):
        _load(folder, preset="nope")
    with pytest.raises(TypeError, match="dtype='int8': expected"):
        _load(folder, dtype="int8")


def test_missing_shard_and_unreadable_inputs(tf_models, tmp_path, no_build):
    src, _ = tf_models["sharded"]
    no_build()
    bad = tmp_path / "sharded"
    bad.mkdir()
    lost = sorted(src.glob("model-*.safetensors"))[1].name
    for p in src.iterdir():
        if p.name != lost:
            (bad / p.name).symlink_to(p)
    with pytest.raises(FormatError, match=f"{lost}: shard file is missing"):
        _load(bad)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        _load(tmp_path / "nothing")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(FormatError, match="pickle checkpoints"):
        _load(tmp_path / "pytorch_model.bin")
    # width 64 is no multiple of AIMv2's head dim 128 and there is no config: ask for a preset
    w = random_weights(_encoder(), 0)
    save_file(w, tmp_path / "bare.safetensors")
    with pytest.raises(FormatError, match="cannot infer the number of attention heads.*preset="):
        _load(tmp_path / "bare.safetensors")


def test_bare_official_file_with_preset_and_unwritable_specs(tmp_path):
    installed = aimv2.available_backends()
    spec = _encoder()
    w = random_weights(spec, 0)
    save_file(w, tmp_path / "bare.safetensors")
    _same_weights(aimv2.get_weights(_load(tmp_path / "bare.safetensors", preset=spec)), w)
    layer = aimv2.build(_encoder(norm="layer"), installed[0])
    with pytest.raises(
        FormatError,
        match=r"format='transformers' cannot hold spec.patchifier.norm.type='layer'",
    ):
        formats.save_pretrained(layer, tmp_path / "t", format="transformers")
    # encoder_spec(head=True) gives the pooling head 8 heads; the trunk has 2
    eight = aimv2.build(_encoder(head=True), installed[0])
    with pytest.raises(
        FormatError, match="cannot hold spec.head.heads=8: it holds a head with heads=2"
    ):
        formats.save_pretrained(eight, tmp_path / "t", format="transformers")
    assert not (tmp_path / "t").exists()
    out = formats.save_pretrained(eight, tmp_path / "o", format="official")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        formats.save_pretrained(eight, out, format="official")
    formats.save_pretrained(eight, out, format="mlx", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["mlx_model.safetensors"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds files a model folder does not"):
        formats.save_pretrained(eight, tmp_path / "mine", format="official", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


# ------------------------------------------------------------------- memory, CLI, example


def test_load_and_save_stream_one_tensor_at_a_time(tmp_path, backend):
    spec = _encoder(width=128, depth=4, heads=2, hidden=512, patch=7, image=28)
    weights = random_weights(spec, 0)
    total = sum(v.nbytes for v in weights.values())
    largest = max(v.nbytes for v in weights.values())
    src = formats.save_pretrained(
        aimv2.build(spec, backend, weights=weights), tmp_path / "a", format="transformers"
    )
    del weights
    tracemalloc.start()
    try:
        model = formats.from_pretrained(src, backend=backend)
        _, load_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        formats.save_pretrained(model, tmp_path / "b", format="official")
        _, save_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # NumPy allocations are traced; a whole extra copy would be `total` (~4 MB).
    assert load_peak < 3 * largest < total / 4, (load_peak, largest, total)
    assert save_peak < 3 * largest, (save_peak, largest, total)


def test_convert_command(tf_models, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    formats.add_convert_parser(parser.add_subparsers(dest="command"))
    src, _ = tf_models["head"]
    a, b = tmp_path / "official", tmp_path / "back"
    for argv in (
        [str(src), str(a), "--to", "official"],
        [str(a), str(b), "--to", "transformers", "--backend", aimv2.available_backends()[0]],
    ):
        args = parser.parse_args(["convert", *argv])
        assert args.func(args) == 0
    assert "(transformers): width=64 depth=2 heads=2 patch=14 image=28x28 head=yes" in (
        capsys.readouterr().out
    )
    _same_weights(load_file(b / "model.safetensors"), load_file(src / "model.safetensors"))
    args = parser.parse_args(
        ["convert", str(tmp_path / "none"), str(tmp_path / "x"), "--to", "mlx"]
    )
    assert args.func(args) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_load_checkpoint_example_runs(tmp_path, monkeypatch, capsys):
    installed = aimv2.available_backends()
    pytest.importorskip("torch")  # the offline demo builds its random model with torch
    script = str(ROOT / "examples" / "load_checkpoint.py")
    monkeypatch.setattr(sys, "argv", [script])
    runpy.run_path(script, run_name="__main__")
    out = capsys.readouterr().out
    assert "features (1, 16, 64)" in out and "pooled (1, 64)" in out
    folder = formats.save_pretrained(
        aimv2.build(_encoder(), installed[0]), tmp_path / "m", format="official"
    )
    monkeypatch.setattr(sys, "argv", [script, str(folder), "--backend", installed[-1]])
    runpy.run_path(script, run_name="__main__")
    assert "features (1, 16, 64)" in capsys.readouterr().out
