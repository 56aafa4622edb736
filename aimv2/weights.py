"""Canonical parameter names, shapes and layouts, derived from a spec.

This table is the single source of truth for what a realization must hold: the
backends build their module trees so that their parameter names equal these keys,
the reference reads weights by these keys, :func:`init_weights` draws them, and
:func:`check_weights` validates any weight dict (a checkpoint, a user's arrays)
before anything is loaded. Layouts are PyTorch's (Linear (out, in); conv
(out, in, kH, kW)); a backend converts only at its own boundary.

Example:
    >>> import aimv2
    >>> spec = aimv2.encoder_spec(width=64, depth=1, heads=2, patch_size=4, image_size=8)
    >>> aimv2.weights.parameters(spec)["trunk.blocks.0.attn.qkv.weight"].shape
    (192, 64)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from . import specs as S

__all__ = ["ParamInfo", "WeightsError", "parameters", "init_weights", "check_weights"]


class WeightsError(ValueError):
    """A weight dict does not match the spec it is loaded into."""


@dataclass(frozen=True)
class ParamInfo:
    """Shape and role of one canonical parameter.

    ``role`` decides initialization and weight decay: ``linear``/``conv``/``head``
    (xavier-uniform, decayed), ``embed`` (normal, decayed), ``bias``/``norm``/
    ``norm_bias``/``pos``/``text_pos``/``token`` (not decayed).
    """

    shape: tuple[int, ...]
    role: str
    fan_in: int = 0
    fan_out: int = 0

    @property
    def decay(self) -> bool:
        """Whether AIMv2's optimizer applies weight decay to this parameter."""
        return self.role in ("linear", "conv", "head", "embed")


def _linear(out: dict, name: str, n_out: int, n_in: int, bias: bool, role: str = "linear"):
    out[f"{name}.weight"] = ParamInfo((n_out, n_in), role, n_in, n_out)
    if bias:
        out[f"{name}.bias"] = ParamInfo((n_out,), "bias")


def _norm(out: dict, name: str, spec: S.NormSpec) -> None:
    out[f"{name}weight"] = ParamInfo((spec.width,), "norm")
    if spec.type == "layer":
        out[f"{name}bias"] = ParamInfo((spec.width,), "norm_bias")


def _params(spec: S.Spec, p: str, out: dict[str, ParamInfo]) -> None:
    """Fill ``out`` with the parameters of ``spec`` under the name prefix ``p``."""
    if isinstance(spec, S.NormSpec):
        _norm(out, p, spec)
    elif isinstance(spec, S.PatchEmbedSpec):
        k, c, d = spec.patch_size, spec.in_channels, spec.width
        out[f"{p}proj.weight"] = ParamInfo((d, c, k, k), "conv", c * k * k, d * k * k)
        if spec.bias:
            out[f"{p}proj.bias"] = ParamInfo((d,), "bias")
        _params(spec.norm_spec, f"{p}norm.", out)
    elif isinstance(spec, S.PosEmbedSpec):
        if spec.type == "learned":
            out[f"{p}pos_embed"] = ParamInfo((1, spec.num_positions, spec.width), "pos")
    elif isinstance(spec, S.AttentionSpec):
        _linear(out, f"{p}qkv", 3 * spec.width, spec.width, spec.qkv_bias)
        _linear(out, f"{p}proj", spec.width, spec.width, spec.proj_bias)
    elif isinstance(spec, S.FeedForwardSpec):
        _linear(out, f"{p}fc1", spec.hidden, spec.width, spec.bias)
        _linear(out, f"{p}fc2", spec.width, spec.hidden, spec.bias)
        if spec.type == "swiglu":
            _linear(out, f"{p}fc3", spec.hidden, spec.width, spec.bias)
    elif isinstance(spec, S.BlockSpec):
        _params(spec.norm, f"{p}norm_1.", out)
        _params(spec.attn, f"{p}attn.", out)
        _params(spec.norm, f"{p}norm_2.", out)
        _params(spec.mlp, f"{p}mlp.", out)
    elif isinstance(spec, S.TrunkSpec):
        for i in range(spec.depth):
            _params(spec.block, f"{p}blocks.{i}.", out)
        _params(spec.final_norm_spec, f"{p}post_trunk_norm.", out)
    elif isinstance(spec, S.AttentionPoolSpec):
        d = spec.width
        out[f"{p}cls_token"] = ParamInfo((1, spec.num_queries, d), "token")
        _linear(out, f"{p}k", d, d, spec.kv_bias)
        _linear(out, f"{p}v", d, d, spec.kv_bias)
        _linear(out, f"{p}linear", spec.out_dim, d, spec.out_bias, role="head")
    elif isinstance(spec, S.ProbeSpec):
        if spec.type == "attentive":
            _params(spec.pool, f"{p}pool.", out)
        else:
            _linear(out, f"{p}linear", spec.num_classes, spec.width, True, role="head")
    elif isinstance(spec, S.EncoderSpec):
        _params(spec.patchifier, f"{p}preprocessor.patchifier.", out)
        _params(spec.pos_embed, f"{p}preprocessor.", out)
        _params(spec.trunk, f"{p}trunk.", out)
        if spec.head is not None:
            _params(spec.head, f"{p}head.", out)
    elif isinstance(spec, S.DecoderSpec):
        d = spec.width
        _linear(out, f"{p}image_proj", d, spec.in_width, True)
        out[f"{p}text_embed.weight"] = ParamInfo((spec.vocab_size, d), "embed")
        out[f"{p}start_token"] = ParamInfo((1, 1, d), "token")
        out[f"{p}pos_embed"] = ParamInfo((1, spec.context_length + 1, d), "text_pos")
        for i in range(spec.depth):
            _params(spec.block, f"{p}blocks.{i}.", out)
        _params(spec.final_norm_spec, f"{p}norm.", out)
    elif isinstance(spec, S.ModelSpec):
        if spec.decoder is None:
            _params(spec.encoder, p, out)
            return
        _params(spec.encoder, f"{p}encoder.", out)
        _params(spec.decoder, f"{p}decoder.", out)
        enc = spec.encoder.patchifier
        if spec.has_pixel_head:
            _linear(out, f"{p}pixel_head", enc.patch_dim, spec.decoder.width, False, "head")
        if spec.has_text_head:
            _linear(
                out, f"{p}text_head", spec.decoder.vocab_size, spec.decoder.width, False, "head"
            )
    else:
        raise TypeError(f"spec: {type(spec).__name__} has no parameters table")


def parameters(spec: S.Spec) -> dict[str, ParamInfo]:
    """Canonical name → :class:`ParamInfo` for every parameter ``spec`` realizes.

    A :class:`~aimv2.specs.ModelSpec` without a decoder has the encoder's bare names;
    with a decoder, the encoder's names sit under ``encoder.``.

    Example:
        >>> from aimv2.specs import NormSpec
        >>> list(parameters(NormSpec(width=8, type="layer")))
        ['weight', 'bias']
    """
    out: dict[str, ParamInfo] = {}
    _params(spec, "", out)
    return out


def _decoder_depth(spec: S.Spec) -> int:
    if isinstance(spec, S.ModelSpec) and spec.decoder is not None:
        return spec.decoder.depth
    return 1


def init_weights(spec: S.Spec, seed: int = 0) -> dict[str, np.ndarray]:
    """Draw float32 initial weights for ``spec`` with NumPy, identical on every backend.

    Each parameter draws from its own stream (seeded by ``seed`` and its name), so
    adding a head does not change the encoder's initial weights.

    Example:
        >>> from aimv2.specs import NormSpec
        >>> init_weights(NormSpec(width=4))["weight"].tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
    init = spec.init if isinstance(spec, S.ModelSpec) else S.InitSpec()
    depth = _decoder_depth(spec)
    out: dict[str, np.ndarray] = {}
    for name, info in parameters(spec).items():
        key = [seed] + list(name.encode())
        rng = np.random.default_rng(key)
        role = info.role
        if role in ("bias", "norm_bias"):
            w = np.zeros(info.shape)
        elif role == "norm":
            w = np.ones(info.shape)
        elif role in ("pos", "token", "embed"):
            w = rng.normal(0.0, init.embed_std, info.shape)
        elif role == "text_pos":
            w = rng.normal(0.0, init.text_pos_std, info.shape)
        else:  # linear, conv, head: xavier-uniform
            bound = np.sqrt(6.0 / (info.fan_in + info.fan_out))
            w = rng.uniform(-bound, bound, info.shape)
            if role == "head" and init.scale_heads_by_depth:
                w = w / np.sqrt(2.0 * depth)
        out[name] = w.astype(np.float32)
    return out


def check_weights(spec: S.Spec, weights: Mapping[str, object], where: str = "weights") -> None:
    """Raise :class:`WeightsError` listing missing, unexpected and mis-shaped keys.

    Accepts any arrays with a ``shape``; checks only names and shapes.

    Example:
        >>> from aimv2.specs import NormSpec
        >>> check_weights(NormSpec(width=4), {"weight": np.ones(3)})
        Traceback (most recent call last):
        ...
        aimv2.weights.WeightsError: weights do not match NormSpec: mis-shaped: weight: expected (4,), got (3,)
    """
    expected = parameters(spec)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    misshaped = []
    for name in sorted(set(expected) & set(weights)):
        got = tuple(int(s) for s in getattr(weights[name], "shape", ()))
        if got != expected[name].shape:
            misshaped.append(f"{name}: expected {expected[name].shape}, got {got}")
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing[:20])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:20])}")
        if misshaped:
            parts.append(f"mis-shaped: {'; '.join(misshaped[:20])}")
        raise WeightsError(f"{where} do not match {type(spec).__name__}: " + "; ".join(parts))
