"""User-defined components through the public API only (``examples/custom_components.py``):
parity of a mixture-of-experts SwiGLU and of 2D-RoPE attention on every backend against the
float64 reference, matching torch/MLX training trajectories, a cross-backend resume, and
the errors a user meets when a component is missing, doubled or misplaced.

Tolerances are the library's stated ones, never loosened: ``FORWARD_TOL`` / ``GRAD_TOL``
(enforced by ``assert_backends_agree``) and 1e-4·max(1, loss) per logged training step.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("mlx.core")
pytest.importorskip("hypothesis")

import mlx.nn as mlx_nn  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn as torch_nn  # noqa: E402

import aimv2  # noqa: E402
import aimv2.backends.torch  # noqa: E402
from aimv2 import checkpoint, testing  # noqa: E402
from aimv2.specs import RealizationError, SpecError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_components.py"
MODULE_NAME = "custom_components_example"


def load_example() -> ModuleType:
    """The example imported once per process by path (a second import under another name
    would define its spec kinds again, which the registry refuses)."""
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    spec = importlib.util.spec_from_file_location(MODULE_NAME, EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


cc = load_example()


def run_python(code: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh interpreter (nothing of this process registered)."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


# --------------------------------------------------------------------------- the example


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``main()`` of the example once: parity, both trainings, the resume (the runs are
    kept under ``workdir``)."""
    workdir = tmp_path_factory.mktemp("custom-components")
    return {**cc.main(str(workdir)), "workdir": workdir}


def test_example_reports_ok(example_run: dict[str, Any]) -> None:
    assert example_run["ok"], example_run


def test_example_parity_covers_every_gradient_within_kit_tolerances(
    example_run: dict[str, Any],
) -> None:
    parity = example_run["parity"]
    model = cc.custom_model_spec()
    targets = {
        "moe ffn": model.encoder.trunk.block.mlp,
        "encoder": model.encoder,
        "pre-training model": model,
    }
    for name, spec in targets.items():
        names = set(aimv2.weights.parameters(spec))
        graded = {k[len("grad:") :] for k in parity[name]["mlx"] if k.startswith("grad:")}
        assert graded == names, name  # every parameter's gradient, torch vs MLX
        assert any(k.startswith("fd:") for k in parity[name]["torch"]), name
    for name, per_backend in parity.items():
        assert sorted(per_backend) == ["mlx", "torch"], name
        for backend, errors in per_backend.items():
            for tensor, err in errors.items():
                # the kit's bound is tol·max(1, scale) >= tol: this is at least as strict
                tol = (
                    testing.GRAD_TOL if tensor.startswith(("grad:", "fd:")) else testing.FORWARD_TOL
                )
                assert err <= tol.tol, (name, backend, tensor, err)
    for mask in ("none", "causal", "prefix"):
        assert f"rope attention, mask {mask}" in parity


def test_example_torch_and_mlx_trajectories_agree(example_run: dict[str, Any]) -> None:
    tr = example_run["training"]
    assert sorted(tr.torch_losses) == sorted(tr.mlx_losses) == list(range(1, 21))
    assert tr.max_rel_gap <= cc.TRAINING_TOL, tr.max_rel_gap
    for step, losses in tr.torch_losses.items():
        for x, y in zip(losses, tr.mlx_losses[step], strict=True):
            assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (step, losses, tr.mlx_losses[step])
    assert tr.torch_losses[20][0] < 0.9 * tr.torch_losses[1][0]  # it learns


def test_example_torch_checkpoint_resumes_on_mlx(example_run: dict[str, Any]) -> None:
    tr = example_run["training"]
    assert tr.checkpoint_step == 20 and tr.checkpoint_spec_ok
    assert tr.resume_first_step == 21
    assert sorted(tr.resumed_losses) == list(range(1, 31))
    for step in range(1, 21):  # the torch part of the run is kept as it was
        assert tr.resumed_losses[step] == tr.torch_losses[step]
    assert tr.resume_rel_gap <= cc.TRAINING_TOL, tr.resume_rel_gap
    # it continues from the trained weights, not from scratch
    assert tr.resumed_losses[21][0] < 0.9 * tr.torch_losses[1][0]


def test_example_docstring_examples() -> None:
    import doctest

    result = doctest.testmod(cc, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 20, result


# --------------------------------------------------------------------------- properties


@st.composite
def moe_specs(draw: Any) -> Any:
    """Small MoE specs: 1–4 experts, any top-k."""
    experts = draw(st.integers(1, 4))
    return cc.MoEFeedForwardSpec(
        width=draw(st.sampled_from([8, 16])),
        hidden=draw(st.sampled_from([8, 24])),
        num_experts=experts,
        top_k=draw(st.integers(1, experts)),
    )


@st.composite
def rope_specs(draw: Any) -> Any:
    """Small 2D-RoPE attention specs over grids up to 3×3, head_dim 4–16, with biases."""
    width, heads = draw(st.sampled_from([(8, 1), (8, 2), (16, 1), (16, 2), (16, 4), (32, 2)]))
    return cc.RoPEAttentionSpec(
        width=width,
        heads=heads,
        grid=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        base=draw(st.sampled_from([10.0, 100.0, 10000.0])),
        qkv_bias=draw(st.booleans()),
        proj_bias=draw(st.booleans()),
    )


@st.composite
def encoder_specs(draw: Any) -> Any:
    """Small encoders with both components (and learned or no absolute positions)."""
    width, heads = draw(st.sampled_from([(16, 1), (16, 2), (32, 2)]))
    patch = draw(st.integers(2, 4))
    rows, cols = draw(st.integers(1, 3)), draw(st.integers(2, 3))
    experts = draw(st.integers(2, 4))
    return aimv2.encoder_spec(
        width,
        depth=draw(st.integers(1, 2)),
        heads=heads,
        patch_size=patch,
        image_size=(rows * patch, cols * patch),
        pos_embed=draw(st.sampled_from(["none", "learned"])),
        ffn=cc.MoEFeedForwardSpec(width, 16, experts, draw(st.integers(1, experts))),
        attention=cc.RoPEAttentionSpec(width, heads, grid=(rows, cols)),
    )


test_moe_parity_property = testing.property_test(moe_specs(), max_examples=10)
test_rope_attention_parity_property = testing.property_test(rope_specs(), max_examples=15)
test_encoder_with_both_parity_property = testing.property_test(encoder_specs(), max_examples=8)


def test_rope_rotation_is_relative() -> None:
    """q·k after the rotation depends on the grid offset between the tokens only."""
    spec = cc.RoPEAttentionSpec(width=16, heads=1, grid=(3, 4), base=100.0)
    cos, sin = cc.rope_attention.rope_tables(spec.grid, spec.head_dim, spec.base)
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal(16), rng.standard_normal(16)
    qs = cc.rope_attention.rope_rotate_reference(np.broadcast_to(q, (12, 16)), cos, sin)
    ks = cc.rope_attention.rope_rotate_reference(np.broadcast_to(k, (12, 16)), cos, sin)
    # token (row, col) = (t // 4, t % 4): pairs (0,0)-(1,2) and (1,1)-(2,3) share the offset
    assert qs[0] @ ks[6] == pytest.approx(qs[5] @ ks[11], abs=1e-12)
    assert qs[0] @ ks[6] != pytest.approx(qs[0] @ ks[7], abs=1e-3)
    assert np.allclose(np.linalg.norm(qs, axis=-1), np.linalg.norm(q))  # a rotation


def test_moe_gates_keep_top_k_unnormalized() -> None:
    spec = cc.MoEFeedForwardSpec(width=8, hidden=8, num_experts=4, top_k=2)
    w = testing.random_weights(spec)
    x = np.random.default_rng(1).standard_normal((2, 5, 8))
    probs = aimv2.reference.ops.softmax(x @ w["router.weight"].astype(np.float64).T)
    gates = cc.top_k_gates_reference(probs, 2)
    assert ((gates > 0).sum(-1) == 2).all()
    assert (gates.sum(-1) < 1).all()  # not renormalized
    # the output is the gated sum of the experts' own SwiGLU outputs
    want = sum(
        gates[..., i, None]
        * aimv2.reference.apply(spec.expert, aimv2.reference.sub(w, f"experts.{i}."), x)
        for i in range(4)
    )
    assert np.allclose(aimv2.reference.forward(spec, w, x), want)


# --------------------------------------------------------------------------- no library edit

USER_MODULE = '''
"""A user's component: Dynamic Tanh in the norm slot, weight * tanh(alpha * x) + bias."""
from dataclasses import dataclass
from typing import ClassVar

import mlx.core as mx
import mlx.nn as mnn
import numpy as np
import torch
from torch import nn

import aimv2
import aimv2.backends.mlx
import aimv2.backends.torch
from aimv2.specs import ParamInfo, Spec


@dataclass(frozen=True)
class DyTSpec(Spec):
    kind: ClassVar[str] = "user_dyt_norm"
    role: ClassVar[str] = "norm"
    width: int

    def parameters(self):
        return {"alpha": ParamInfo((1,), "scale", fill=0.5),
                "weight": ParamInfo((self.width,), "norm"),
                "bias": ParamInfo((self.width,), "norm_bias")}


@aimv2.reference.realizes(DyTSpec)
def dyt(spec, w, x):
    f = aimv2.reference.ops.f64
    return f(w["weight"]) * np.tanh(f(w["alpha"]) * f(x)) + f(w["bias"])


@aimv2.backends.torch.realizes(DyTSpec)
class TorchDyT(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.alpha = nn.Parameter(torch.empty(1))
        self.weight = nn.Parameter(torch.empty(spec.width))
        self.bias = nn.Parameter(torch.empty(spec.width))

    def forward(self, x):
        return self.weight * torch.tanh(self.alpha * x) + self.bias


@aimv2.backends.mlx.realizes(DyTSpec)
class MLXDyT(mnn.Module):
    def __init__(self, spec):
        super().__init__()
        self.alpha = mx.zeros((1,))
        self.weight = mx.zeros((spec.width,))
        self.bias = mx.zeros((spec.width,))

    def __call__(self, x):
        return self.weight * mx.tanh(self.alpha * x) + self.bias
'''

USER_CHECK = """
import json, aimv2, user_dyt
spec = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=2, image_size=4,
                          mlp_hidden=32, norm=user_dyt.DyTSpec(16))
component = aimv2.testing.assert_backends_agree(user_dyt.DyTSpec(16))
encoder = aimv2.testing.assert_backends_agree(spec)
torch_norm = aimv2.build(spec, "torch").trunk.blocks[0].norm_1
print(json.dumps({
    "component": max(max(e.values()) for e in component.values()),
    "encoder": max(max(e.values()) for e in encoder.values()),
    "slots": sorted(k for k, v in spec.parameters().items() if k.endswith("alpha")),
    "torch_module": type(torch_norm).__module__,
    "roundtrip": aimv2.specs.from_json(spec.to_json()) == spec,
}))
"""


def library_status() -> str:
    """``git status`` of the library's own trees (``aimv2/``, ``backends/``, ``reference/``)."""
    return subprocess.run(
        ["git", "status", "--porcelain", "--", "aimv2", "backends", "reference"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_a_user_module_registers_a_component_without_editing_the_library(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout")
    (tmp_path / "user_dyt.py").write_text(USER_MODULE)
    before = library_status()
    proc = run_python(USER_CHECK, cwd=tmp_path)
    after = library_status()
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["component"] <= testing.FORWARD_TOL.tol and out["encoder"] <= testing.GRAD_TOL.tol
    # the patchifier norm, both block norms and the final norm all hold the user's component
    assert out["slots"] == [
        "preprocessor.patchifier.norm.alpha",
        "trunk.blocks.0.norm_1.alpha",
        "trunk.blocks.0.norm_2.alpha",
        "trunk.post_trunk_norm.alpha",
    ]
    assert out["torch_module"] == "user_dyt" and out["roundtrip"] is True
    assert before == after, "the library's trees changed while a user component was used"


def readme_section_code() -> str:
    """The code of the README's "Write your own component" section."""
    text = (ROOT / "README.md").read_text()
    start = text.find("## Write your own component")
    assert start >= 0, "README.md has no 'Write your own component' section"
    found = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert found, "the 'Write your own component' section has no python block"
    return found.group(1)


def test_readme_component_section_runs(tmp_path: Path) -> None:
    (tmp_path / "readme_component.py").write_text(readme_section_code())
    proc = run_python("import runpy; runpy.run_path('readme_component.py')", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert sorted(errors) == ["mlx", "torch"]
    assert all(float(e) <= testing.GRAD_TOL.tol for e in errors.values())


# --------------------------------------------------------------------------- public API only


def private(name: str) -> bool:
    """A name starting with ``_`` that is not a dunder."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def is_module(path: str) -> bool:
    """Whether ``path`` names an importable module (not a class or function in one)."""
    try:
        importlib.import_module(path)
    except ImportError:
        return False
    return True


def api_violations(source: str) -> list[str]:
    """Non-public uses of aimv2 in ``source``: private names anywhere, imports of a
    backend's internal modules (``aimv2.backends.<name>.<module>``), and any name reached
    from an aimv2 module — by import or as an attribute — that is not in that module's
    ``__all__`` (a package without ``__all__``: any name not starting with ``_``)."""
    bad: list[str] = []
    aliases: dict[str, str] = {}  # local name -> the aimv2 dotted path it is bound to

    def check(path: str, where: str) -> None:
        """Each link of an aimv2 dotted path is public in the module before it."""
        parts = path.split(".")
        if parts[:2] == ["aimv2", "backends"] and len(parts) > 3 and is_module(path):
            bad.append(f"{where}: backend-internal module {path}")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if not is_module(parent):
                return  # an attribute of a class or function: its own business
            public = getattr(importlib.import_module(parent), "__all__", None)
            if private(parts[i]) or (public is not None and parts[i] not in public):
                bad.append(f"{where}: {parent}.{parts[i]} is not public")

    tree = ast.parse(source)
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "aimv2":
                    check(a.name, where)
                    aliases[a.asname or "aimv2"] = a.name if a.asname else "aimv2"
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                if private(a.name):
                    bad.append(f"{where}: private name {a.name}")
                if node.module.split(".")[0] == "aimv2":
                    check(f"{node.module}.{a.name}", where)
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Attribute):
            if private(node.attr):
                bad.append(f"{where}: private attribute .{node.attr}")
            chain, base = [node.attr], node.value
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                check(".".join([aliases[base.id], *reversed(chain)]), where)
    return sorted(set(bad))


def test_api_check_catches_internal_uses() -> None:
    source = textwrap.dedent(
        """
        import aimv2
        import aimv2.backends.torch.layers
        from aimv2.backends.mlx import fused
        from aimv2.specs.base import require
        from aimv2.specs import _to_plain
        x = aimv2.specs.base.require
        y = aimv2.reference.REGISTRY._by_kind
        """
    )
    found = "\n".join(api_violations(source))
    for needle in (
        "module aimv2.backends.torch.layers",
        "module aimv2.backends.mlx.fused",
        "aimv2.specs.base is not public",
        "_to_plain",
        "._by_kind",
    ):
        assert needle in found, (needle, found)


def test_example_uses_only_the_public_api() -> None:
    assert api_violations(EXAMPLE.read_text()) == []


# --------------------------------------------------------------------------- clear errors


@pytest.mark.parametrize("where", ["reference", "torch backend", "MLX backend"])
def test_a_second_realization_is_refused(where: str) -> None:
    spec = cc.MoEFeedForwardSpec(8, 8)
    if where == "reference":
        registry, first = aimv2.reference.REGISTRY, cc.moe_reference
        decorator, other = aimv2.reference.realizes, (lambda spec, w, x: x)
    else:
        backend = aimv2.load_backend("torch" if where == "torch backend" else "mlx")
        registry, decorator = backend.REGISTRY, backend.realizes
        first = cc.TorchMoEFeedForward if where == "torch backend" else cc.MLXMoEFeedForward
        base = torch_nn.Module if where == "torch backend" else mlx_nn.Module
        other = type("OtherMoE", (base,), {})
    with pytest.raises(RealizationError) as err:
        decorator(cc.MoEFeedForwardSpec)(other)
    msg = str(err.value)
    assert "'moe_swiglu_ffn' (MoEFeedForwardSpec) already has a realization" in msg, msg
    assert f"in the {where}" in msg, msg
    assert registry.lookup(spec) is first  # the first registration stands


@dataclass(frozen=True)
class ReferenceOnlySpec(aimv2.specs.Spec):
    """A feed-forward realized in the reference alone (test-only): the identity."""

    kind: ClassVar[str] = "test_reference_only_ffn"
    role: ClassVar[str] = "ffn"
    width: int


@aimv2.reference.realizes(ReferenceOnlySpec)
def reference_only(spec: ReferenceOnlySpec, w: Any, x: np.ndarray) -> np.ndarray:
    """The identity, in float64."""
    return np.asarray(x, dtype=np.float64)


@dataclass(frozen=True)
class TorchOnlySpec(aimv2.specs.Spec):
    """A feed-forward realized in torch alone (test-only): the identity."""

    kind: ClassVar[str] = "test_torch_only_ffn"
    role: ClassVar[str] = "ffn"
    width: int


@aimv2.backends.torch.realizes(TorchOnlySpec)
class TorchOnly(torch_nn.Module):
    """The identity."""

    def __init__(self, spec: TorchOnlySpec) -> None:
        super().__init__()

    def forward(self, x: Any) -> Any:
        """``x`` unchanged."""
        return x


@pytest.mark.parametrize("backend, where", [("torch", "torch backend"), ("mlx", "MLX backend")])
def test_a_missing_realization_names_kind_and_backend(backend: str, where: str) -> None:
    for spec in (
        ReferenceOnlySpec(16),
        aimv2.encoder_spec(16, 1, 2, patch_size=2, image_size=4, ffn=ReferenceOnlySpec(16)),
    ):
        with pytest.raises(RealizationError) as err:
            aimv2.build(spec, backend)
        msg = str(err.value)
        assert "spec kind 'test_reference_only_ffn' (ReferenceOnlySpec) has no realization" in msg
        assert f"in the {where}" in msg, msg
        assert f"@aimv2.backends.{backend}.realizes(ReferenceOnlySpec)" in msg, msg


def test_a_missing_reference_realization_names_kind() -> None:
    with pytest.raises(RealizationError) as err:
        testing.assert_backends_agree(TorchOnlySpec(8), backends=["torch"])
    msg = str(err.value)
    assert "'test_torch_only_ffn' (TorchOnlySpec) has no realization in the reference" in msg
    assert "@aimv2.reference.realizes(TorchOnlySpec)" in msg, msg


@pytest.mark.parametrize(
    "slots, role, got",
    [
        ({"attention": cc.MoEFeedForwardSpec(32, 64)}, "attention", "ffn"),
        ({"ffn": cc.RoPEAttentionSpec(32, 2, grid=(4, 4))}, "ffn", "attention"),
    ],
)
def test_a_component_in_the_wrong_slot_is_a_spec_error(
    slots: dict[str, Any], role: str, got: str
) -> None:
    with pytest.raises(SpecError, match=f"expected a spec of role '{role}'.*got role '{got}'"):
        aimv2.encoder_spec(32, 1, 2, patch_size=4, image_size=16, **slots)


def test_a_wrong_grid_is_refused_at_call_time() -> None:
    spec = cc.RoPEAttentionSpec(16, 2, grid=(3, 3))
    with pytest.raises(ValueError, match=r"expected 9 tokens \(rows·cols, row-major\), got 4"):
        aimv2.build(spec, "torch")(aimv2.load_backend("torch").from_numpy(np.zeros((1, 4, 16))))


def test_from_dict_of_an_unregistered_kind_says_to_import_its_module() -> None:
    data = cc.custom_model_spec().to_dict()
    data["encoder"]["trunk"]["block"]["mlp"]["kind"] = "moe_ffn_from_a_module_not_imported"
    with pytest.raises(SpecError) as err:
        aimv2.specs.from_dict(data)
    msg = str(err.value)
    assert "'moe_ffn_from_a_module_not_imported' is not registered" in msg
    assert "import the module that defines its spec class" in msg


LOAD_UNREGISTERED = """
import json, aimv2.checkpoint
try:
    aimv2.checkpoint.load({path!r})
    print(json.dumps({{"type": None, "message": ""}}))
except Exception as err:
    print(json.dumps({{"type": type(err).__name__, "message": str(err)}}))
"""


@pytest.fixture(scope="module")
def unregistered_checkpoint_error(example_run: dict[str, Any]) -> dict[str, str]:
    """What ``aimv2.checkpoint.load`` says, in a process that never imported the example,
    about the example's torch checkpoint (its spec names the example's kinds)."""
    path = checkpoint.latest(Path(example_run["workdir"]) / "torch")
    assert path is not None
    proc = run_python(LOAD_UNREGISTERED.format(path=str(path)), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"path": str(path), **json.loads(proc.stdout.strip().splitlines()[-1])}


def test_loading_a_checkpoint_of_an_unregistered_kind_names_kind_and_fix(
    unregistered_checkpoint_error: dict[str, str],
) -> None:
    msg = unregistered_checkpoint_error["message"]
    assert re.search(r"kind='(moe_swiglu_ffn|rope_2d_attention)' is not registered", msg), msg
    assert "import the module that defines its spec class before loading" in msg


def test_loading_a_checkpoint_of_an_unregistered_kind_names_the_checkpoint(
    unregistered_checkpoint_error: dict[str, str],
) -> None:
    err = unregistered_checkpoint_error
    assert err["type"] == "CheckpointError" and err["path"] in err["message"]


def test_trajectory_gap_counts_missing_steps_as_infinite() -> None:
    gap, rel = cc.trajectory_gap({1: (1.0, 1.0, 1.0)}, {}, range(1, 2))
    assert math.isinf(gap) and math.isinf(rel)


def test_the_example_docstring_examples_hold() -> None:
    import doctest

    attempted = 0
    for module in (cc, cc.rope_attention):  # the example and its rotary-attention module
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, (module.__name__, result)
        attempted += result.attempted
    assert attempted > 20  # the bound the single-file example had
