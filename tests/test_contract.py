"""The backend contract (aimv2.contract) as a test: both backends export exactly the
contract's names, with the contract's signatures and defaults, and so do their Trainer
and communicator classes. Shared drivers import no framework (import-linter in CI; here
a subprocess check that importing them loads neither torch nor MLX)."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing

import pytest

import aimv2
from aimv2 import contract
from aimv2.optim import OptimConfig

INSTALLED = aimv2.available_backends()
needs_both = pytest.mark.skipif(
    len(INSTALLED) < 2, reason="needs both backends installed (pip install 'aimv2[torch,mlx]')"
)


def _shape(fn) -> list[tuple[str, object, object]]:
    """(name, kind, default) of each parameter, without ``self``: what callers rely on."""
    params = inspect.signature(fn).parameters.values()
    return [(p.name, p.kind, p.default) for p in params if p.name != "self"]


def _public(cls) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


def test_every_backend_exports_exactly_the_contract(backend):
    be = aimv2.load_backend(backend)
    assert sorted(be.__all__) == sorted(contract.BACKEND_NAMES)
    assert isinstance(be, contract.Backend)
    assert be.NAME == backend
    for name in contract.BACKEND_NAMES:
        want = getattr(contract.Backend, name, None)
        if callable(want) and name != "Trainer":
            assert _shape(getattr(be, name)) == _shape(want), f"{backend}.{name}"


def test_trainer_and_communicator_follow_the_contract(backend):
    be = aimv2.load_backend(backend)
    probe = aimv2.build(aimv2.specs.ProbeSpec(width=8, num_classes=2, heads=2), backend)
    trainer = be.Trainer(probe, OptimConfig(), loss_fn=be.probe_loss)
    assert isinstance(trainer, contract.Trainer)  # every attribute and method is there
    for name in contract.TRAINER_NAMES:
        want = getattr(contract.Trainer, name, None)
        if callable(want):
            assert _shape(getattr(be.Trainer, name)) == _shape(want), f"Trainer.{name}"
    module = sys.modules[be.init_distributed.__module__]
    comm = typing.get_type_hints(be.init_distributed, vars(module))["return"]
    for name in contract.COMMUNICATOR_NAMES:
        want = getattr(contract.Communicator, name, None)
        if callable(want):
            assert _shape(getattr(comm, name)) == _shape(want), f"{comm.__name__}.{name}"
    assert isinstance(comm.enforces_timeout, bool)


@needs_both
def test_both_backends_mirror_each_other():
    torch_be, mlx_be = (aimv2.load_backend(name) for name in ("torch", "mlx"))
    assert torch_be.__all__ == mlx_be.__all__
    for name in torch_be.__all__:
        a, b = getattr(torch_be, name), getattr(mlx_be, name)
        if inspect.isfunction(a):
            assert _shape(a) == _shape(b), name
    # same constructor (same defaults: compile="auto" on both) and the same public surface
    assert _shape(torch_be.Trainer.__init__) == _shape(mlx_be.Trainer.__init__)
    assert _public(torch_be.Trainer) == _public(mlx_be.Trainer)
    comms = []
    for be in (torch_be, mlx_be):
        module = sys.modules[be.init_distributed.__module__]
        comms.append(typing.get_type_hints(be.init_distributed, vars(module))["return"])
    assert _public(comms[0]) == _public(comms[1])


def test_drivers_import_no_framework():
    drivers = [
        "training",
        "probe",
        "formats",
        "bench",
        "quickstart",
        "testing",
        "data",
        "distributed",
        "checkpoint",
        "cli",
    ]
    code = (
        "import sys, importlib\n"
        f"for name in {drivers!r}:\n"
        "    importlib.import_module('aimv2.' + name)\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'mlx'})\n"
        "print(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_subpackages_are_attributes_loaded_lazily():
    code = (
        "import sys, aimv2\n"
        "assert 'aimv2.reference' not in sys.modules\n"
        "f = aimv2.reference.forward\n"
        "assert aimv2.testing.assert_backends_agree and aimv2.training.pretrain\n"
        "assert not {'torch', 'mlx'} & {m.split('.')[0] for m in sys.modules}\n"
        "print(f.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "forward"
