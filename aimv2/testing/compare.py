"""Backend agreement for any spec: every installed backend against the float64 reference
and against each other — forward, losses, and every parameter's gradient.

What is compared, by spec:

- a pre-training model (``ModelSpec`` with a decoder): ``loss``, ``pixel_loss``,
  ``text_loss``, ``pixel_pred``, ``text_logits``;
- an encoder (``EncoderSpec``, or a ``ModelSpec`` without a decoder): the output, every
  block's output and the pooling head;
- a LiT model (``LiTSpec``): ``logits_per_image``, ``logits_per_text``, both embeddings,
  the logit scale and the contrastive loss (the backend's ``contrastive_loss``, whose
  gradients are compared);
- any other component (a user's too): its output on :func:`example_inputs`.

With ``check_grads``, every parameter's gradient (of the loss, or of ``sum(output ·
cotangent)`` for a fixed random cotangent) is compared between the backends
(``grad:<name>``), and ``fd_samples`` entries drawn at random are compared with central
differences of the reference (``fd:<name>[index]``).

Example:
    >>> import aimv2
    >>> from aimv2 import specs as S
    >>> report = compare_backends(S.FeedForwardSpec(8, 16), backends=["torch"])
    >>> report["torch"]["output"].ok
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import reference
from .. import specs as S
from ..backend import available_backends, build, load_backend
from .fixtures import example_inputs, random_batch, random_weights
from .tolerances import FORWARD_TOL, GRAD_TOL, Check, Tolerance, max_error

__all__ = [
    "compare_backends",
    "assert_backends_agree",
    "assert_matches_reference",
    "DEFAULT_FD_SAMPLES",
]

# Central-difference checks per compared spec: each costs two float64 reference forwards.
DEFAULT_FD_SAMPLES = 4
_FD_STEP = 1e-6  # float64: truncation ~h², round-off ~1e-16/h, both far below GRAD_TOL


def _check(got: Any, want: Any, tol: Tolerance) -> Check:
    return Check(max_error(got, want), tol.bound(want))


def _to_numpy(be: Any, x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, (list, tuple)):
        return [_to_numpy(be, v) for v in x]
    return be.to_numpy(x)


def _float32(x: Any) -> Any:
    """Float arrays as float32 (what a backend module takes); others unchanged."""
    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        return x.astype(np.float32)
    return x


def _native(be: Any, x: Any) -> Any:
    return be.from_numpy(x) if isinstance(x, np.ndarray) else x


def _fd_checks(
    weights: Mapping[str, np.ndarray],
    loss: Callable[[Mapping[str, np.ndarray]], float],
    grads: Mapping[str, np.ndarray],
    samples: int,
    rng: np.random.Generator,
    tol: Tolerance,
) -> dict[str, Check]:
    """Backend gradients of ``samples`` random entries against central differences of
    the reference ``loss``; the bound is ``tol`` of the whole gradient tensor's scale."""
    out: dict[str, Check] = {}
    names = [n for n in sorted(weights) if np.size(weights[n])]
    w64 = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    for name in rng.choice(names, min(samples, len(names)), replace=False):
        idx = tuple(int(rng.integers(0, s)) for s in w64[name].shape)
        plus, minus = dict(w64), dict(w64)
        plus[name], minus[name] = w64[name].copy(), w64[name].copy()
        plus[name][idx] += _FD_STEP
        minus[name][idx] -= _FD_STEP
        fd = (loss(plus) - loss(minus)) / (2 * _FD_STEP)
        got = float(grads[name][idx])
        out[f"fd:{name}{list(idx)}"] = Check(abs(got - fd), tol.bound(grads[name]))
    return out


def compare_backends(
    spec: S.Spec,
    weights: Mapping[str, np.ndarray] | None = None,
    batch: Mapping[str, Any] | None = None,
    *,
    inputs: tuple[Sequence[Any], Mapping[str, Any]] | None = None,
    backends: Sequence[str] | None = None,
    seed: int = 0,
    forward_tol: Tolerance = FORWARD_TOL,
    grad_tol: Tolerance = GRAD_TOL,
    check_grads: bool = True,
    fd_samples: int = DEFAULT_FD_SAMPLES,
) -> dict[str, dict[str, Check]]:
    """Compare every installed backend with the float64 reference and with each other.

    ``weights`` default to :func:`random_weights`; ``batch`` (images, tokens,
    prefix_len) to :func:`random_batch` for encoders and models; ``inputs`` (args,
    kwargs) to :func:`example_inputs` for other components. Returns ``{backend: {tensor:
    Check}}`` without raising (see the module docstring for what is compared).

    Example:
        >>> import aimv2
        >>> spec = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=2, image_size=4,
        ...                           mlp_hidden=32)
        >>> compare_backends(spec, backends=["torch"])["torch"]["output"].ok
        True
    """
    backends = list(backends) if backends is not None else available_backends()
    if not backends:
        raise RuntimeError("compare_backends: no backend is installed (torch or mlx)")
    weights = dict(weights) if weights is not None else random_weights(spec, seed)
    rng = np.random.default_rng([seed, 0x5EED])
    model_spec = spec
    if isinstance(spec, S.ModelSpec) and spec.decoder is None:
        spec = spec.encoder
    if isinstance(spec, S.ModelSpec):
        compare = _compare_model
    elif isinstance(spec, S.LiTSpec):
        compare = _compare_lit
    elif isinstance(spec, S.EncoderSpec):
        compare = _compare_encoder
    else:
        compare = _compare_component
    if isinstance(spec, (S.ModelSpec, S.EncoderSpec, S.LiTSpec)):
        data: Any = dict(batch) if batch is not None else random_batch(spec, seed)
    else:
        data = inputs if inputs is not None else example_inputs(spec, rng)
    report, grads, fd_loss = compare(
        spec, model_spec, weights, data, backends, forward_tol, rng, check_grads
    )
    if check_grads and grads:
        first, *others = list(grads)
        for other in others:
            for pname, g in grads[first].items():
                report[other][f"grad:{pname}"] = _check(grads[other][pname], g, grad_tol)
        if fd_samples > 0 and fd_loss is not None:
            report[first].update(
                _fd_checks(weights, fd_loss, grads[first], fd_samples, rng, grad_tol)
            )
    return report


def _compare_model(spec, model_spec, weights, batch, backends, tol, rng, with_grads):
    images, tokens, prefix = batch["images"], batch["tokens"], batch.get("prefix_len")

    def run_reference(w: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return reference.forward(spec, w, images, tokens=tokens, prefix_len=prefix)

    want = run_reference(weights)
    report, grads = {}, {}
    for name in backends:
        be = load_backend(name)
        model = build(model_spec, name, weights=weights)
        out = model(
            be.from_numpy(images), None if tokens is None else be.from_numpy(tokens), prefix
        )
        checks: dict[str, Check] = {}
        for key in ("loss", "pixel_loss", "text_loss", "pixel_pred", "text_logits"):
            if want[key] is None:
                checks[key] = Check(0.0 if out[key] is None else float("inf"), 0.0)
                continue
            checks[key] = _check(be.to_numpy(out[key]), want[key], tol)
        if with_grads:
            _, grads[name] = be.loss_and_grads(model, images, tokens, prefix)
        report[name] = checks
    return report, grads, lambda w: float(run_reference(w)["loss"])


_LIT_OUTPUTS = ("logits_per_image", "logits_per_text", "image_embeds", "text_embeds")


def _compare_lit(spec, model_spec, weights, batch, backends, tol, rng, with_grads):
    images, tokens = batch["images"], batch["tokens"]

    def run_reference(w: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return reference.forward(spec, w, images, tokens=tokens, return_loss=True)

    want = run_reference(weights)
    report, grads = {}, {}
    for name in backends:
        be = load_backend(name)
        model = build(model_spec, name, weights=weights)
        out = model(be.from_numpy(images), be.from_numpy(tokens), return_loss=True)
        checks = {k: _check(be.to_numpy(out[k]), want[k], tol) for k in _LIT_OUTPUTS}
        checks["logit_scale"] = _check(be.to_numpy(out["logit_scale"]), want["logit_scale"], tol)
        data = {"images": _float32(images), "tokens": tokens}
        values, grads[name] = be.value_and_grads(model, be.contrastive_loss, data)
        checks["loss"] = _check(np.float64(values["loss"]), want["loss"], tol)
        report[name] = checks
    return report, grads, lambda w: float(run_reference(w)["loss"])


def _compare_encoder(spec, model_spec, weights, batch, backends, tol, rng, with_grads):
    images, prefix = batch["images"], batch.get("prefix_len")
    want, want_blocks = reference.forward(
        spec, weights, images, prefix_len=prefix, return_blocks=True
    )
    cot = rng.standard_normal(want.shape)
    report, grads = {}, {}
    for name in backends:
        be = load_backend(name)
        model = build(model_spec, name, weights=weights)
        got, blocks = model(be.from_numpy(images), prefix, return_blocks=True)
        checks = {"output": _check(be.to_numpy(got), want, tol)}
        for i, (g, w) in enumerate(zip(_to_numpy(be, blocks), want_blocks, strict=True)):
            checks[f"block.{i}"] = _check(g, w, tol)
        if spec.head is not None:
            pooled = reference.forward(spec.head, reference.sub(weights, "head."), want)
            checks["head"] = _check(be.to_numpy(model.head(got)), pooled, tol)
        _, grads[name] = be.output_and_grads(model, [_float32(images)], cot, prefix_len=prefix)
        report[name] = checks

    def loss(w: Mapping[str, np.ndarray]) -> float:
        return float((reference.forward(spec, w, images, prefix_len=prefix) * cot).sum())

    return report, grads, loss


def _compare_component(spec, model_spec, weights, inputs, backends, tol, rng, with_grads):
    args, kwargs = list(inputs[0]), dict(inputs[1])

    def run_reference(w: Mapping[str, np.ndarray]) -> Any:
        return reference.forward(spec, w, *args, **kwargs)

    want = run_reference(weights)
    single = isinstance(want, np.ndarray)
    cot = rng.standard_normal(want.shape) if single else None
    report, grads = {}, {}
    for name in backends:
        be = load_backend(name)
        module = build(spec, name, weights=weights)
        native_args = [_native(be, _float32(a)) for a in args]
        native_kwargs = {k: _native(be, _float32(v)) for k, v in kwargs.items()}
        got = module(*native_args, **native_kwargs)
        if single:
            checks = {"output": _check(be.to_numpy(got), want, tol)}
            if with_grads:
                _, grads[name] = be.output_and_grads(
                    module,
                    [_float32(a) for a in args],
                    cot,
                    **{k: _float32(v) for k, v in kwargs.items()},
                )
        else:  # several outputs (e.g. a decoder's image and text states): forward only
            checks = {
                f"output.{i}": _check(_to_numpy(be, g), w, tol)
                for i, (g, w) in enumerate(zip(got, want, strict=True))
                if w is not None
            }
        report[name] = checks

    def loss(w: Mapping[str, np.ndarray]) -> float:
        return float((run_reference(w) * cot).sum())

    return report, grads, loss if single else None


def assert_backends_agree(
    spec: S.Spec,
    weights: Mapping[str, np.ndarray] | None = None,
    batch: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, float]]:
    """:func:`compare_backends`, raising AssertionError that lists every tensor past
    tolerance; returns ``{backend: {tensor: max abs error}}``. Call it from your own tests.

    Example:
        >>> import aimv2
        >>> spec = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=2, image_size=4,
        ...                           mlp_hidden=32)
        >>> assert_backends_agree(spec, backends=["torch"])["torch"]["output"] < 1e-4
        True
    """
    report = compare_backends(spec, weights, batch, **kwargs)
    bad = [
        f"{be} {name}: error {c.error:.3e} > bound {c.bound:.3e}"
        for be, checks in report.items()
        for name, c in checks.items()
        if not c.ok
    ]
    if bad:
        raise AssertionError(f"backends disagree on {spec.kind!r}:\n  " + "\n  ".join(bad))
    return {be: {name: c.error for name, c in checks.items()} for be, checks in report.items()}


def assert_matches_reference(spec: S.Spec, backend: str, **kwargs: Any) -> dict[str, float]:
    """One backend against the float64 reference (forward and sampled gradients): the
    check for a component realized in one backend so far.

    Example:
        >>> from aimv2 import specs as S
        >>> errs = assert_matches_reference(S.NormSpec(8), "torch")
        >>> errs["output"] < 1e-4
        True
    """
    return assert_backends_agree(spec, backends=[backend], **kwargs)[backend]
