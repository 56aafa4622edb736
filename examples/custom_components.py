"""Write your own components: a mixture-of-experts SwiGLU feed-forward and 2D rotary
attention, defined outside the library through its public API only.

Each component is a spec class (a frozen dataclass subclassing :class:`aimv2.specs.Spec`)
realized three times — a float64 NumPy reference (``@aimv2.reference.realizes``), a
PyTorch ``nn.Module`` (``@aimv2.backends.torch.realizes``) and an MLX ``nn.Module``
(``@aimv2.backends.mlx.realizes``) — whose parameter names equal the spec's
``parameters()``. Nothing inside ``aimv2/`` is edited: importing this module registers
both kinds (the rotary attention lives in its own module, ``rope_attention.py``, as a
user would keep one component per file), and from then on they fit the ``ffn`` and ``attention`` slots of
:func:`aimv2.encoder_spec`, round-trip through JSON and checkpoints, and train.

:func:`main` checks every realization against the reference and the backends against
each other (forward and every gradient, with the kit's ``FORWARD_TOL`` / ``GRAD_TOL``),
pre-trains an encoder built from both components for 20 steps on each backend, compares
the two loss trajectories, and resumes the torch run's checkpoint on MLX.

Run: python examples/custom_components.py
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import mlx.core as mx
import mlx.nn as mnn
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import aimv2
import aimv2.backends.mlx
import aimv2.backends.torch
from aimv2 import checkpoint, masks, reference, testing
from aimv2.reference import ops
from aimv2.specs import (
    FeedForwardSpec,
    ModelSpec,
    ParamInfo,
    Spec,
    SpecError,
    decoder_spec,
    linear_params,
    nested,
    positive_int,
)
from aimv2.training import PretrainConfig, pretrain

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling component module
import rope_attention  # noqa: E402, F401  (registers rope_2d_attention on import)
from rope_attention import RoPEAttentionSpec  # noqa: E402

# The library's stated tolerance for torch vs MLX training losses:
# |loss_torch - loss_mlx| <= 1e-4 * max(1, |loss|) at every logged step.
TRAINING_TOL = testing.TRAINING_TOL.tol


# =========================================================================== MoE SwiGLU


@dataclass(frozen=True)
class MoEFeedForwardSpec(Spec):
    """Mixture-of-experts SwiGLU feed-forward (slot role ``"ffn"``), after the AIMv2-MoE
    variant of Apple's training code (ml-l3m ``configs/aimv2/002_aimv2_moe_hfdata.yaml``:
    4 GLU experts with SiLU, a softmax router, ``normalize_expert_weights: 0``).

    For each token x (width D):

    - ``p = softmax(router(x))`` over ``num_experts`` (router: Linear(D → E), no bias);
    - the ``top_k`` largest probabilities are kept as the experts' weights, the others
      set to 0 — *not* renormalized to sum to 1;
    - ``y = Σ_e g_e · fc2_e(silu(fc1_e x) ⊙ fc3_e x)``: every expert a bias-free SwiGLU
      of hidden size ``hidden`` (the parameters of a bias-free
      :class:`~aimv2.specs.FeedForwardSpec`).

    Dense dispatch: every expert runs on every token and the outputs are combined with
    the gate weights (zero for unselected experts). Correct and simple, not fast — the
    FLOPs of all E experts are paid. The gradient reaches the selected experts' router
    probabilities; the selection itself is piecewise constant. An expert whose
    probability ties the k-th largest is selected too (ties have probability zero for
    real-valued inputs). The load-balancing auxiliary loss of ml-l3m
    (``MoEBalancingLoss``) is out of scope: the forward returns the features only.
    ml-l3m's released config sets ``top_k: 1`` (its comment lists 2 as an alternative);
    the default here is top-2.

    Example:
        >>> spec = MoEFeedForwardSpec(width=8, hidden=16)
        >>> sorted(spec.parameters())[:4]
        ['experts.0.fc1.weight', 'experts.0.fc2.weight', 'experts.0.fc3.weight', 'experts.1.fc1.weight']
        >>> spec.parameters()["router.weight"].shape, spec.parameters()["router.weight"].decay
        ((4, 8), True)
        >>> MoEFeedForwardSpec(width=8, hidden=16, num_experts=2, top_k=3)
        Traceback (most recent call last):
        ...
        aimv2.specs.base.SpecError: MoEFeedForwardSpec.top_k=3: expected at most num_experts=2
    """

    kind: ClassVar[str] = "moe_swiglu_ffn"
    role: ClassVar[str] = "ffn"
    width: int
    hidden: int
    num_experts: int = 4
    top_k: int = 2

    def __post_init__(self) -> None:
        for name in ("width", "hidden", "num_experts", "top_k"):
            positive_int("MoEFeedForwardSpec", name, getattr(self, name))
        if self.top_k > self.num_experts:
            raise SpecError(
                f"MoEFeedForwardSpec.top_k={self.top_k!r}: expected at most "
                f"num_experts={self.num_experts}"
            )

    @property
    def expert(self) -> FeedForwardSpec:
        """One expert: a bias-free SwiGLU feed-forward (fc1 gate, fc3 up, fc2 down)."""
        return FeedForwardSpec(width=self.width, hidden=self.hidden, type="swiglu", bias=False)

    def parameters(self) -> dict[str, ParamInfo]:
        """``router.weight`` (E, D) and ``experts.{i}.fc1/fc2/fc3.weight``, all ``linear``
        (xavier-uniform, weight decay).

        Example:
            >>> len(MoEFeedForwardSpec(width=4, hidden=8, num_experts=3, top_k=1).parameters())
            10
        """
        router = linear_params("router", self.num_experts, self.width, bias=False)
        experts = [(f"experts.{i}.", self.expert) for i in range(self.num_experts)]
        return nested(("", router), *experts)


def top_k_gates_reference(probs: np.ndarray, k: int) -> np.ndarray:
    """The router probabilities at the ``k`` largest entries of the last axis, 0 elsewhere.

    Example:
        >>> top_k_gates_reference(np.array([0.1, 0.5, 0.15, 0.25]), 2).tolist()
        [0.0, 0.5, 0.0, 0.25]
    """
    kth = np.sort(probs, axis=-1)[..., -k, None]
    return np.where(probs >= kth, probs, 0.0)


@reference.realizes(MoEFeedForwardSpec)
def moe_reference(spec: MoEFeedForwardSpec, w: ops.Weights, x: np.ndarray) -> np.ndarray:
    """Float64 MoE SwiGLU: every expert through the built-in SwiGLU reference.

    Example:
        >>> spec = MoEFeedForwardSpec(width=4, hidden=8)
        >>> moe_reference(spec, aimv2.init_weights(spec), np.ones((2, 3, 4))).shape
        (2, 3, 4)
    """
    x = ops.f64(x)
    gates = top_k_gates_reference(ops.softmax(ops.linear(w, "router", x)), spec.top_k)
    out = np.zeros_like(x)
    for i in range(spec.num_experts):
        y = reference.apply(spec.expert, ops.sub(w, f"experts.{i}."), x)
        out = out + gates[..., i, None] * y
    return out


class TorchSwiGLUExpert(nn.Module):
    """One bias-free SwiGLU expert: ``fc2(silu(fc1 x) * fc3 x)``."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, width, bias=False)
        self.fc3 = nn.Linear(width, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., width) -> (..., width)."""
        return self.fc2(F.silu(self.fc1(x)) * self.fc3(x))


@aimv2.backends.torch.realizes(MoEFeedForwardSpec)
class TorchMoEFeedForward(nn.Module):
    """PyTorch MoE SwiGLU, dense dispatch (see :class:`MoEFeedForwardSpec`).

    Example:
        >>> spec = MoEFeedForwardSpec(width=8, hidden=16)
        >>> m = aimv2.build(spec, backend="torch")
        >>> sorted(n for n, _ in m.named_parameters()) == sorted(spec.parameters())
        True
    """

    def __init__(self, spec: MoEFeedForwardSpec) -> None:
        super().__init__()
        self.spec = spec
        self.router = nn.Linear(spec.width, spec.num_experts, bias=False)
        self.experts = nn.ModuleList(
            TorchSwiGLUExpert(spec.width, spec.hidden) for _ in range(spec.num_experts)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, width) -> (B, N, width)."""
        probs = torch.softmax(self.router(x), dim=-1)
        kth = torch.topk(probs, self.spec.top_k, dim=-1).values.amin(dim=-1, keepdim=True)
        gates = torch.where(probs >= kth, probs, torch.zeros_like(probs))
        out = torch.zeros_like(x)
        for i, expert in enumerate(self.experts):
            out = out + gates[..., i, None] * expert(x)
        return out


class MLXSwiGLUExpert(mnn.Module):
    """One bias-free SwiGLU expert: ``fc2(silu(fc1 x) * fc3 x)``."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = mnn.Linear(width, hidden, bias=False)
        self.fc2 = mnn.Linear(hidden, width, bias=False)
        self.fc3 = mnn.Linear(width, hidden, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        """(..., width) -> (..., width)."""
        return self.fc2(mnn.silu(self.fc1(x)) * self.fc3(x))


@aimv2.backends.mlx.realizes(MoEFeedForwardSpec)
class MLXMoEFeedForward(mnn.Module):
    """MLX MoE SwiGLU, the mirror image of :class:`TorchMoEFeedForward`.

    Example:
        >>> from mlx.utils import tree_flatten
        >>> spec = MoEFeedForwardSpec(width=8, hidden=16)
        >>> m = aimv2.build(spec, backend="mlx")
        >>> sorted(n for n, _ in tree_flatten(m.parameters())) == sorted(spec.parameters())
        True
    """

    def __init__(self, spec: MoEFeedForwardSpec) -> None:
        super().__init__()
        self.spec = spec  # a spec, not an mx.array: not a parameter
        self.router = mnn.Linear(spec.width, spec.num_experts, bias=False)
        self.experts = [MLXSwiGLUExpert(spec.width, spec.hidden) for _ in range(spec.num_experts)]

    def __call__(self, x: mx.array) -> mx.array:
        """(B, N, width) -> (B, N, width)."""
        probs = mx.softmax(self.router(x), axis=-1)
        kth = mx.stop_gradient(mx.topk(probs, self.spec.top_k, axis=-1).min(-1, keepdims=True))
        gates = mx.where(probs >= kth, probs, mx.zeros_like(probs))
        out = mx.zeros_like(x)
        for i, expert in enumerate(self.experts):
            out = out + gates[..., i, None] * expert(x)
        return out


# =========================================================================== the model


def custom_model_spec() -> ModelSpec:
    """A pre-training model whose encoder uses both components: the sizes of the preset
    ``aimv2-test-tiny`` (width 32, 2 blocks, 2 heads, 16 px images of 4 px patches),
    no absolute positions (RoPE carries them), 4 SwiGLU experts of hidden 64, top-2;
    a small causal decoder (built-in parts).

    Example:
        >>> spec = custom_model_spec()
        >>> spec.encoder.trunk.block.mlp.kind, spec.encoder.trunk.block.attn.kind
        ('moe_swiglu_ffn', 'rope_2d_attention')
        >>> aimv2.specs.from_json(spec.to_json()) == spec
        True
    """
    width, heads, patch, image = 32, 2, 4, 16
    grid = (image // patch, image // patch)
    encoder = aimv2.encoder_spec(
        width,
        depth=2,
        heads=heads,
        patch_size=patch,
        image_size=image,
        pos_embed="none",
        ffn=MoEFeedForwardSpec(width, hidden=64, num_experts=4, top_k=2),
        attention=RoPEAttentionSpec(width, heads, grid=grid),
    )
    decoder = decoder_spec(width, 32, 2, 2, vocab_size=64, context_length=16, mlp_hidden=64)
    return ModelSpec(encoder=encoder, decoder=decoder, name="aimv2-moe-rope-tiny")


# =========================================================================== checks


def check_parity(seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """Both components, an encoder and the whole pre-training model, each on every
    installed backend against the float64 reference and against each other: forward,
    losses and every parameter's gradient (``aimv2.testing.assert_backends_agree``,
    which raises past ``FORWARD_TOL`` / ``GRAD_TOL``). The RoPE attention is checked
    under each mask kind. Returns ``{target: {backend: {tensor: max abs error}}}``.
    """
    rng = np.random.default_rng(seed)
    model = custom_model_spec()
    rope = model.encoder.trunk.block.attn
    n = rope.num_tokens
    x = rng.standard_normal((2, n, rope.width))
    mask_kinds = {
        "none": None,
        "causal": "causal",
        "prefix": masks.prefix_mask(np.array([1, n - 3]), n),
    }
    report = {
        "moe ffn": testing.assert_backends_agree(model.encoder.trunk.block.mlp, seed=seed),
        "moe ffn top-1 of 3": testing.assert_backends_agree(
            MoEFeedForwardSpec(16, 24, num_experts=3, top_k=1), seed=seed
        ),
    }
    for name, mask in mask_kinds.items():
        report[f"rope attention, mask {name}"] = testing.assert_backends_agree(
            rope, inputs=([x], {"mask": mask}), seed=seed
        )
    report["encoder"] = testing.assert_backends_agree(model.encoder, seed=seed)
    report["pre-training model"] = testing.assert_backends_agree(model, seed=seed)
    return report


def worst(errors: dict[str, float], prefix: str) -> float:
    """Largest error among the entries whose name starts with ``prefix`` (0 if none).

    Example:
        >>> worst({"grad:a": 1e-7, "grad:b": 3e-7, "output": 1.0}, "grad:")
        3e-07
    """
    return max((e for k, e in errors.items() if k.startswith(prefix)), default=0.0)


def read_losses(run: Path) -> dict[int, tuple[float, float, float]]:
    """step -> (loss, pixel_loss, text_loss) from a run's ``metrics.jsonl``."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["pixel_loss"], r["text_loss"]) for r in rows}


def trajectory_gap(a: dict[int, tuple], b: dict[int, tuple], steps: range) -> tuple[float, float]:
    """Over ``steps``: the largest |a − b| of any logged loss and the largest
    |a − b| / max(1, |a|) (what :data:`TRAINING_TOL` bounds). Missing steps count as inf.

    Example:
        >>> trajectory_gap({1: (2.0, 1.0, 1.0)}, {1: (2.0001, 1.0, 1.0)}, range(1, 2))[0] < 2e-4
        True
    """
    gap = rel = 0.0
    for step in steps:
        if step not in a or step not in b:
            return math.inf, math.inf
        for x, y in zip(a[step], b[step], strict=True):
            gap = max(gap, abs(x - y))
            rel = max(rel, abs(x - y) / max(1.0, abs(x)))
    return gap, rel


def train_config(out: Path, backend: str, steps: int, **kw: Any) -> PretrainConfig:
    """The runs' settings: :func:`custom_model_spec` on ``builtin:digits``, seed 0,
    batch 8, a constant lr of 3e-3 after 2 warmup steps (so that a longer run shares its
    first steps' schedule), every step logged, a checkpoint every 10 steps.
    """
    return PretrainConfig(
        out=str(out), spec=custom_model_spec(), data="builtin:digits", backend=backend,
        steps=steps, batch_size=8, seed=0, lr=3e-3, min_lr=3e-3, warmup=2, log_every=1,
        save_every=10, num_workers=0, progress=False, **kw,
    )  # fmt: skip


@dataclass
class TrainingReport:
    """Numbers of :func:`check_training`."""

    torch_losses: dict[int, tuple[float, float, float]]
    mlx_losses: dict[int, tuple[float, float, float]]
    max_gap: float  # largest |torch − MLX| of any loss over steps 1..20
    max_rel_gap: float  # the same over max(1, |loss|): must be <= TRAINING_TOL
    checkpoint_step: int  # step of the torch checkpoint reloaded
    checkpoint_spec_ok: bool  # its spec round-tripped equal to ours
    resumed_losses: dict[int, tuple[float, float, float]]
    resume_first_step: int  # first step the MLX resume ran
    resume_gap: float  # |resumed − MLX-only run| over the resumed steps
    resume_rel_gap: float
    seconds: float


def check_training(workdir: Path, steps: int = 20, more: int = 10) -> TrainingReport:
    """Pre-train :func:`custom_model_spec` for ``steps`` of a ``steps + more`` schedule on
    torch and on MLX (same seed, ``builtin:digits``) and compare the loss trajectories; reload the torch run's last
    checkpoint and resume it on MLX for ``more`` steps; compare those steps with the MLX
    run continued the same way (a same-backend resume reproduces an uninterrupted run).
    """
    t0 = time.perf_counter()
    torch_run, mlx_run, resumed = workdir / "torch", workdir / "mlx", workdir / "torch-then-mlx"
    total = steps + more  # planned for the whole run, stopped early, resumed with the same flags
    pretrain(train_config(torch_run, "torch", total, stop_after=steps))
    pretrain(train_config(mlx_run, "mlx", total, stop_after=steps))
    a, b = read_losses(torch_run), read_losses(mlx_run)
    gap, rel = trajectory_gap(a, b, range(1, steps + 1))

    ck = checkpoint.load(checkpoint.latest(torch_run))
    shutil.copytree(torch_run, resumed)
    pretrain(train_config(resumed, "mlx", total, resume=True))
    pretrain(train_config(mlx_run, "mlx", total, resume=True))
    c, d = read_losses(resumed), read_losses(mlx_run)
    first = min((s for s in c if s > ck.step), default=-1)
    rgap, rrel = trajectory_gap(d, c, range(steps + 1, steps + more + 1))
    return TrainingReport(
        torch_losses=a, mlx_losses=b, max_gap=gap, max_rel_gap=rel,
        checkpoint_step=ck.step, checkpoint_spec_ok=ck.spec == custom_model_spec(),
        resumed_losses=c, resume_first_step=first, resume_gap=rgap, resume_rel_gap=rrel,
        seconds=time.perf_counter() - t0,
    )  # fmt: skip


def main(workdir: str | None = None) -> dict[str, Any]:
    """Run every check and print a short report; returns the numbers.

    ``workdir`` holds the training runs (a temporary directory, removed after, when None).
    """
    t0 = time.perf_counter()
    backends = aimv2.available_backends()
    print(f"backends: {backends}")
    parity = check_parity()
    print("parity (max abs error; forward vs float64 reference, gradients torch vs MLX):")
    for target, per_backend in parity.items():
        cells = []
        for be, errs in per_backend.items():
            fwd = max(e for k, e in errs.items() if not k.startswith(("grad:", "fd:")))
            cells.append(f"{be} fwd {fwd:.1e}")
            if worst(errs, "grad:"):
                cells.append(f"{be} grad {worst(errs, 'grad:'):.1e}")
            if worst(errs, "fd:"):
                cells.append(f"{be} vs central diff {worst(errs, 'fd:'):.1e}")
        print(f"  {target:28s} " + " | ".join(cells))
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory()
        workdir = tmp.name
    try:
        tr = check_training(Path(workdir))
    finally:
        if tmp is not None:
            tmp.cleanup()
    last = max(tr.torch_losses)
    print(
        f"training 20 steps: loss {tr.torch_losses[1][0]:.4f} -> torch {tr.torch_losses[last][0]:.4f}"
        f", mlx {tr.mlx_losses[last][0]:.4f}; largest torch-MLX difference {tr.max_gap:.2e} "
        f"(relative {tr.max_rel_gap:.2e}, tolerance {TRAINING_TOL:g})"
    )
    print(
        f"resume: torch checkpoint at step {tr.checkpoint_step} (spec round-trip "
        f"{'ok' if tr.checkpoint_spec_ok else 'DIFFERS'}) continued on MLX from step "
        f"{tr.resume_first_step} to {max(tr.resumed_losses)}, loss "
        f"{tr.resumed_losses[max(tr.resumed_losses)][0]:.4f}; vs the MLX run continued: "
        f"{tr.resume_gap:.2e} (relative {tr.resume_rel_gap:.2e})"
    )
    ok = (
        tr.max_rel_gap <= TRAINING_TOL
        and tr.resume_rel_gap <= TRAINING_TOL
        and tr.checkpoint_spec_ok
        and tr.resume_first_step == tr.checkpoint_step + 1
    )
    elapsed = time.perf_counter() - t0
    print(f"{'OK' if ok else 'FAILED'} in {elapsed:.1f} s (training {tr.seconds:.1f} s)")
    return {"parity": parity, "training": tr, "ok": ok, "seconds": elapsed}


if __name__ == "__main__":
    main()
