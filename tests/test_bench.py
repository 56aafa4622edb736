"""``aimv2 bench`` (FLOP count, report, CLI), the optimized-BLAS module, and the speed
options of the backends (activation checkpointing, the MLX CPU batch split). No timing
is asserted here: speed claims live in the bench's output and docs/PERFORMANCE.md."""

from __future__ import annotations

import dataclasses
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import aimv2
from aimv2 import bench, blas
from aimv2.bench.report import _ms

TINY = "aimv2-test-tiny"

# --------------------------------------------------------------------------- FLOPs


def test_flops_match_a_hand_count_for_the_tiny_preset():
    # aimv2-test-tiny: encoder D=32, 2 blocks, SwiGLU hidden 64, patch 4 on 16×16 → N=16;
    # decoder D=32, 2 blocks, hidden 64, vocab 64, context 16. Batch 2.
    b, n, d, hid, p2c = 2, 16, 32, 64, 4 * 4 * 3
    patch = 2 * b * n * p2c * d  # 98,304
    block = (
        2 * b * n * d * 3 * d  # qkv 196,608
        + 2 * 2 * b * n * n * d  # q·kᵀ and attn·v 65,536
        + 2 * b * n * d * d  # out projection 65,536
        + 3 * 2 * b * n * d * hid  # SwiGLU fc1, fc3, fc2 393,216
    )
    assert patch == 98_304 and block == 720_896
    forward = patch + 2 * block
    assert bench.count_flops(aimv2.presets.get(TINY), "forward", batch=2) == forward == 1_540_096
    # backward: every matmul twice more (input and weight grads) but the images get none
    assert bench.count_flops(aimv2.presets.get(TINY), "backward", 2) == 3 * forward - patch

    seq, t, vocab = 16 + 17, 16, 64  # image tokens, start token + 16 caption tokens
    dec_block = (
        2 * b * seq * d * 3 * d
        + 2 * 2 * b * seq * seq * d
        + 2 * b * seq * d * d
        + 3 * 2 * b * seq * d * hid
    )
    full = (
        forward
        + 2 * b * n * d * d  # image_proj 32 → 32
        + 2 * dec_block
        + 2 * b * (n - 1) * d * p2c  # pixel head predicts patches 1..15
        + 2 * b * t * d * vocab  # text head
    )
    assert full == 5_089_792
    assert bench.count_flops(aimv2.presets.get(TINY), "train", 2) == 3 * full - patch


def test_flops_of_the_base_preset_and_bad_inputs():
    spec = aimv2.presets.get("aimv2-base-patch14-224")
    assert bench.count_flops(spec.encoder, "forward") == 46_133_673_984
    assert bench.count_flops(spec, "forward", 4) == 4 * 46_133_673_984
    with pytest.raises(ValueError, match="needs a ModelSpec with a decoder"):
        bench.count_flops(spec.encoder, "train")
    with pytest.raises(ValueError, match="mode="):
        bench.count_flops(spec, "inference")
    with pytest.raises(ValueError, match="batch="):
        bench.count_flops(spec, "forward", 0)
    native = aimv2.presets.get("aimv2-large-patch14-native").encoder
    with pytest.raises(ValueError, match="native-resolution"):
        bench.count_flops(native)
    assert bench.count_flops(native, image_hw=(224, 224)) > 0
    with pytest.raises(ValueError, match="multiples of the patch"):
        bench.count_flops(native, image_hw=(225, 224))


# --------------------------------------------------------------------------- the bench


def test_bench_torch_tiny_all_modes_with_peers(capsys):
    report = bench.run(
        TINY,
        "torch",
        modes=["forward", "backward", "train"],
        repeats=1,
        compare=True,
        settle=0.0,
        workers=1,
        matmul_size=256,
    )
    by = {(r.mode, r.impl): r for r in report.rows}
    for mode in bench.MODES:
        row = by[(mode, "aimv2 torch")]
        assert row.images_per_s > 0 and row.gflops > 0 and row.relative == pytest.approx(1.0)
        assert row.of_matmul is not None and row.of_matmul > 0
    assert by[("train", "aimv2 torch")].data_wait is not None
    assert "torch" in report.matmul and report.matmul["torch"] > 0
    assert report.flops["forward"] == bench.count_flops(aimv2.presets.get(TINY), "forward", 4)
    # each peer either ran on the same weights or was skipped with its reason
    names = {impl for _, impl in by} | {name.split(",")[0] for name, _ in report.skipped}
    assert {"transformers", "timm"} <= names
    for name, why in report.skipped:
        assert why, name
    if ("forward", "transformers") in by:
        assert "max |Δ output|" in by[("forward", "transformers")].note
    text = report.text()
    for field in (
        "img/s",
        "GFLOP/s",
        "of matmul",
        "peak mem",
        "relative",
        "data wait",
        "matmul 256×256",
        "model FLOPs, train",
    ):
        assert field in text
    assert "fastest peer" in text or "transformers" not in {i for _, i in by}


def test_bench_mlx_tiny_forward_and_train():
    pytest.importorskip("mlx.core")
    report = bench.run(
        TINY,
        "mlx",
        modes=["forward", "train"],
        repeats=1,
        settle=0.0,
        data="synthetic",
        matmul_size=256,
    )
    by = {(r.mode, r.impl): r for r in report.rows}
    assert by[("forward", "aimv2 mlx")].images_per_s > 0
    assert by[("train", "aimv2 mlx")].gflops > 0
    assert report.matmul["mlx"] > 0
    assert "mlx" in report.machine


def test_bench_skips_train_for_an_encoder_spec_and_rejects_bad_options():
    enc = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8)
    report = bench.run(enc, "torch", modes=["forward", "train"], repeats=1, settle=0.0)
    assert [r.mode for r in report.rows] == ["forward"]
    assert any("train" in name and "decoder" in why for name, why in report.skipped)
    with pytest.raises(ValueError, match="backend="):
        bench.run(TINY, "jax")
    with pytest.raises(ValueError, match="modes="):
        bench.run(TINY, modes=["inference"])
    with pytest.raises(ValueError, match="repeats="):
        bench.run(TINY, repeats=0)
    with pytest.raises(ValueError, match="image_size="):
        bench.run(TINY, image_size=32)
    with pytest.raises(ValueError, match="unknown"):
        bench.run("no-such-preset")


def test_bench_command_line(capsys, tmp_path):
    out = tmp_path / "r.json"
    code = bench.main([TINY, "--repeats", "1", "--quiet", "--mode", "backward", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "aimv2 bench backward" not in text and "| backward | aimv2 torch |" in text
    assert "    aimv2 bench aimv2-test-tiny --repeats 1" in text
    assert '"rows"' in out.read_text()
    assert bench.main(["no-such-preset", "--quiet"]) == 2


def test_bench_decoder_depth_replaces_the_decoder_and_is_checked():
    spec = aimv2.presets.get(TINY)
    report = bench.run(
        TINY,
        "torch",
        modes=["train"],
        decoder_depth=1,
        repeats=1,
        settle=0.0,
        data="synthetic",
        matmul_size=256,
    )
    one = dataclasses.replace(spec, decoder=dataclasses.replace(spec.decoder, depth=1))
    assert report.flops["train"] == bench.count_flops(one, "train", 4)
    assert report.flops["train"] < bench.count_flops(spec, "train", 4)
    with pytest.raises(ValueError, match="decoder_depth=0"):
        bench.run(TINY, decoder_depth=0)
    with pytest.raises(ValueError, match="decoder_depth: the spec has no decoder"):
        bench.run(spec.encoder, decoder_depth=2)


def test_bench_report_prints_milliseconds_without_exponents():
    assert (_ms(18.78), _ms(1.3793), _ms(0.01234)) == ("18780", "1379", "12.34")


def test_the_aimv2_command_wires_bench_and_reexecs_only_mlx_only_runs(monkeypatch, capsys):
    from aimv2 import cli

    args = cli.build_parser().parse_args(["bench", TINY, "--decoder-depth", "1"])
    assert args.decoder_depth == 1 and args.func is not None
    calls = []
    monkeypatch.setattr(blas, "ensure_fast_blas", lambda backends: calls.append(backends))
    monkeypatch.setattr(sys, "argv", ["aimv2", "presets"])
    assert cli.main() == 0 and calls == []  # no backend: never re-executed
    monkeypatch.setattr(cli.evaluate, "_cmd_probe", lambda args: 0)
    monkeypatch.setattr(sys, "argv", ["aimv2", "probe", "--backend", "mlx", "--out", "o"])
    assert cli.main() == 0 and calls == ["mlx"]
    monkeypatch.setattr(sys, "argv", ["aimv2", "probe", "--backend", "torch", "--out", "o"])
    assert cli.main() == 0 and calls == ["mlx"]  # a torch process never gets the preload
    assert cli.main(["probe", "--backend", "mlx", "--out", "o"]) == 0 and calls == ["mlx"]
    capsys.readouterr()


def test_add_bench_parser_wires_into_an_argparse_tree():
    import argparse

    parser = argparse.ArgumentParser(prog="aimv2")
    bench.add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["bench", "aimv2-large-patch14-224", "--backend", "mlx"]
        + ["--mode", "all", "--compare", "--batch-size", "8"]
    )
    got = (args.spec, args.backend, args.modes, args.compare, args.batch_size)
    assert got == ("aimv2-large-patch14-224", "mlx", ["all"], True, 8)
    assert args.func is not None


def _bench_modules() -> dict:
    import importlib

    out = {}
    for name in aimv2.BACKENDS:
        try:
            out[name] = importlib.import_module(aimv2.load_backend(name).__name__ + ".bench")
        except aimv2.BackendUnavailable:
            continue
    return out


def test_backend_bench_modules_satisfy_the_contract_with_identical_signatures():
    import inspect

    from aimv2.contract import BenchBackend, members

    modules = _bench_modules()
    assert "torch" in modules
    names = members(BenchBackend)
    for name, module in modules.items():
        assert sorted(module.__all__) == names, name
        assert isinstance(module, BenchBackend), name
        assert isinstance(module.PRELOAD_BLAS, bool), name
    for name in names:
        wanted = getattr(BenchBackend, name, None)
        if not callable(wanted):
            continue
        params = list(inspect.signature(wanted).parameters.values())[1:]  # without self
        wanted = inspect.signature(wanted).replace(parameters=params)
        for backend, module in modules.items():
            got = inspect.signature(getattr(module, name))
            assert str(got) == str(wanted), (backend, name)
    # every peer names the backend that builds it, its impl and its row
    for module in modules.values():
        for mode in bench.MODES:
            for peer in module.peers(mode):
                assert (
                    {"backend", "impl", "label"}
                    <= set(peer)
                    <= {"backend", "impl", "label", "isolated", "reference_blas"}
                )
                assert peer["backend"] in aimv2.BACKENDS


def test_the_bench_driver_imports_no_framework_and_names_no_backend():
    import ast

    root = Path(bench.__file__).parent
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                names = []
            for name in names:
                assert name.split(".")[0] not in ("torch", "mlx", "transformers", "timm"), path
                assert "backends" not in name.split("."), path
            if isinstance(node, ast.Compare):  # no `backend == "torch"`-style branches
                for const in [node.left, *node.comparators]:
                    if isinstance(const, ast.Constant):
                        assert const.value not in aimv2.BACKENDS, (path.name, node.lineno)
    code = "import sys, aimv2.bench; print(sorted({'torch', 'mlx'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == "[]"


def test_import_timm_imports_timm_with_a_stand_in_torchvision_when_needed():
    pytest.importorskip("torch")
    code = (
        "import importlib.util, sys; "
        "from aimv2.backends.torch.peers import import_timm; "
        "real = importlib.util.find_spec('torchvision') is not None; "
        "timm, stubbed = import_timm(); "
        "print(callable(timm.create_model), stubbed, real, "
        "sys.modules.get('torchvision') is not None)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if proc.returncode and "No module named 'timm'" in proc.stderr:
        pytest.skip("timm is not installed")
    assert proc.returncode == 0, proc.stderr[-2000:]
    has_create, stubbed, real, loaded = proc.stdout.split()
    assert has_create == "True" and loaded == "True"
    if real == "True":
        pytest.skip("torchvision is installed: nothing to stand in for")
    assert stubbed == "True"  # no torchvision at all: timm runs on the stand-in
    # without the stand-in, the missing torchvision is the original ImportError
    strict = (
        "from aimv2.backends.torch.peers import import_timm\n"
        "try:\n    import_timm(stand_in=False)\nexcept ModuleNotFoundError as e:\n"
        "    print(e.name)\nelse:\n    print('imported')"
    )
    out = subprocess.run(
        [sys.executable, "-c", strict], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    assert out == ["torchvision"]


# --------------------------------------------------------------------------- BLAS


def _write_elf(path: Path, symbols: list[tuple[str, bool]]) -> Path:
    """A minimal ELF64 file whose .dynsym holds ``symbols`` (name, defined?)."""
    strtab = b"\0" + b"".join(name.encode() + b"\0" for name, _ in symbols)
    syms = [b"\0" * 24]
    offset = 1
    for name, defined in symbols:
        syms.append(struct.pack("<IBBHQQ", offset, 0x12, 0, 7 if defined else 0, 0, 0))
        offset += len(name) + 1
    dynsym = b"".join(syms)
    sym_off = 64
    str_off = sym_off + len(dynsym)
    sh_off = str_off + len(strtab)
    header = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, sh_off, 0, 64, 0, 0, 64, 3, 0)
    sections = [
        b"\0" * 64,
        struct.pack("<IIQQQQIIQQ", 0, 11, 0, 0, sym_off, len(dynsym), 2, 1, 8, 24),
        struct.pack("<IIQQQQIIQQ", 0, 3, 0, 0, str_off, len(strtab), 0, 0, 1, 0),
    ]
    path.write_bytes(header + dynsym + strtab + b"".join(sections))
    return path


def test_exports_symbol_reads_the_dynamic_symbol_table(tmp_path):
    lib = _write_elf(tmp_path / "libopenblas.so.0", [("cblas_dgemm", False), ("cblas_sgemm", True)])
    assert blas.exports_symbol(lib, "cblas_sgemm")
    assert not blas.exports_symbol(lib, "cblas_dgemm")  # only imported
    assert not blas.exports_symbol(lib, "sgemm_")
    (tmp_path / "text.so").write_text("not an ELF file")
    assert not blas.exports_symbol(tmp_path / "text.so")
    assert not blas.exports_symbol(tmp_path / "missing.so")


def test_exports_symbol_on_the_real_mlx_libraries():
    ref = blas.bundled_reference_blas()
    if ref is None:
        pytest.skip("no mlx[cpu] reference BLAS here")
    assert blas.exports_symbol(ref, "cblas_sgemm")
    libmlx = Path(ref).parent.parent / "mlx" / "lib" / "libmlx.so"
    if libmlx.exists():
        assert not blas.exports_symbol(libmlx, "cblas_sgemm")  # MLX imports it


def test_find_optimized_blas_honours_the_override(tmp_path):
    good = _write_elf(tmp_path / "libmine.so", [("cblas_sgemm", True)])
    bad = _write_elf(tmp_path / "libnot.so", [("cblas_sgemm", False)])
    assert blas.find_optimized_blas({"AIMV2_BLAS": "none"}) is None
    assert blas.find_optimized_blas({"AIMV2_BLAS": str(good)}) == str(good)
    with pytest.raises(ValueError, match="not a shared library exporting cblas_sgemm"):
        blas.find_optimized_blas({"AIMV2_BLAS": str(bad)})
    conda = blas.candidate_paths({"CONDA_PREFIX": str(tmp_path)})
    assert conda[0].parent == tmp_path / "lib"
    found = blas.find_optimized_blas({})
    assert found is None or blas.exports_symbol(found)


def test_plan_reexec_only_for_mlx_only_processes_on_linux_and_only_once():
    lib = "/opt/x/libopenblas.so.0"
    plan = blas.plan_reexec(
        "mlx", env={"LD_PRELOAD": "/a.so"}, pid=42, lib=lib, platform_name="linux"
    )
    assert plan["LD_PRELOAD"] == f"{lib} /a.so"
    assert plan["_AIMV2_BLAS_EXEC"] == f"42:{lib}"
    assert plan["_AIMV2_BLAS_PREV_PRELOAD"] == "/a.so"
    assert blas.plan_reexec(["mlx"], env={}, pid=1, lib=lib, platform_name="linux")
    for backends in ("torch", ["torch", "mlx"], None, []):
        assert blas.plan_reexec(backends, env={}, pid=1, lib=lib, platform_name="linux") is None
    assert blas.plan_reexec("mlx", env={}, pid=1, lib=lib, platform_name="darwin") is None
    guard = {"_AIMV2_BLAS_EXEC": f"7:{lib}"}
    assert blas.plan_reexec("mlx", env=guard, pid=7, lib=lib, platform_name="linux") is None
    assert blas.plan_reexec("mlx", env=guard, pid=8, lib=lib, platform_name="linux")  # a child
    already = {"LD_PRELOAD": lib}
    assert blas.plan_reexec("mlx", env=already, pid=1, lib=lib, platform_name="linux") is None
    off = {"AIMV2_BLAS": "none"}
    assert blas.plan_reexec("mlx", env=off, pid=1, platform_name="linux") is None


def test_without_preload_and_preloaded_blas(tmp_path):
    env = {"LD_PRELOAD": "/x/libopenblas.so.0:/y/libfoo.so", "_AIMV2_BLAS_EXEC": "1:/x"}
    clean = blas.without_preload(env)
    assert clean["LD_PRELOAD"] == "/y/libfoo.so" and "_AIMV2_BLAS_EXEC" not in clean
    assert "LD_PRELOAD" not in blas.without_preload({"LD_PRELOAD": "/x/libmkl_rt.so.2"})
    maps = tmp_path / "maps"
    numpy_own = "7f00-7f01 r-xp 0 08:01 1 /site/numpy.libs/libscipy_openblas64_-ab.so\n"
    maps.write_text(numpy_own)
    assert blas.preloaded_blas(maps) is None  # numpy's prefixed OpenBLAS is not one
    maps.write_text(numpy_own + "7f02-7f03 r-xp 0 08:01 2 /usr/lib/libopenblasp-r0.3.so\n")
    assert blas.preloaded_blas(maps) == "/usr/lib/libopenblasp-r0.3.so"
    assert "apt-get install libopenblas0-pthread" in blas.advice()
    assert blas.preload_prefix("/l/libopenblas.so.0") == "LD_PRELOAD=/l/libopenblas.so.0"
    assert blas.ensure_fast_blas("torch") is None  # never for torch, never execs


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
def test_ensure_fast_blas_reexecutes_an_mlx_process_once():
    lib = blas.find_optimized_blas()
    if lib is None:
        pytest.skip("no optimized BLAS installed (apt-get install libopenblas0-pthread)")
    code = (
        "import os, sys; from aimv2 import blas; print(os.getpid(), flush=True); "
        "lib = blas.ensure_fast_blas('mlx'); "
        "print(lib, os.environ.get('LD_PRELOAD'), blas.preloaded_blas() is not None)"
    )
    env = blas.without_preload()
    env.pop("AIMV2_BLAS", None)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    # printed twice from the same pid: before the exec, then in the re-executed process
    assert out[0] == out[1] and out[2] == lib
    assert out[3] == "None" and out[4] == "True"  # LD_PRELOAD put back; the library mapped


# --------------------------------------------------------------------------- backend options


def _tiny_grads(backend: str, checkpoint: bool) -> dict[str, np.ndarray]:
    spec = aimv2.presets.get(TINY)
    model = aimv2.build(spec, backend, seed=3)
    be = aimv2.backend.load_backend(backend)
    if checkpoint:
        assert be.set_checkpointing(model) == 2
    from aimv2.testing import random_batch

    batch = random_batch(spec, seed=1, batch=3)
    return be.loss_and_grads(model, batch["images"], batch["tokens"], batch["prefix_len"])


def test_activation_checkpointing_keeps_losses_and_grads(backend):
    plain_losses, plain = _tiny_grads(backend, False)
    ckpt_losses, ckpt = _tiny_grads(backend, True)
    assert ckpt_losses == pytest.approx(plain_losses, rel=1e-6)
    for name, g in plain.items():
        np.testing.assert_allclose(ckpt[name], g, rtol=1e-5, atol=1e-7, err_msg=name)


def test_mlx_cpu_batch_split_gives_the_same_results():
    pytest.importorskip("mlx.core")
    from aimv2.backends import mlx
    from aimv2.backends.mlx import cpu

    spec = aimv2.presets.get(TINY)
    from aimv2.testing import random_batch

    batch = random_batch(spec, seed=2, batch=5)
    results = []
    for streams in (1, 2, 3):
        cpu.set_cpu_streams(streams)
        try:
            losses, grads = mlx.loss_and_grads(
                aimv2.build(spec, "mlx", seed=0),
                batch["images"],
                batch["tokens"],
                batch["prefix_len"],
            )
            enc = aimv2.build(spec.encoder, "mlx", seed=0)
            feats, blocks = enc(batch["images"], prefix_len=batch["prefix_len"], return_blocks=True)
            results.append((losses, grads, np.array(feats), [np.array(b) for b in blocks]))
        finally:
            cpu.set_cpu_streams(None)
    base = results[0]
    for losses, grads, feats, blocks in results[1:]:
        assert losses == pytest.approx(base[0], rel=1e-5)
        np.testing.assert_allclose(feats, base[2], rtol=1e-5, atol=1e-6)
        assert len(blocks) == len(base[3]) == 2
        for name, g in base[1].items():
            np.testing.assert_allclose(grads[name], g, rtol=1e-4, atol=1e-6, err_msg=name)
    assert cpu.plan_cpu_batch(1) == 1
    with pytest.raises(ValueError, match="count="):
        cpu.set_cpu_streams(0)


def test_mlx_cpu_exp_is_float32_accurate():
    mx = pytest.importorskip("mlx.core")
    from aimv2.backends.mlx.fused import cpu_exp

    x = np.linspace(-87.0, 88.0, 200_001, dtype=np.float32)
    got = np.array(cpu_exp(mx.array(x)), dtype=np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 2.5e-7  # ~2 float32 ulp
    special = np.array(cpu_exp(mx.array([np.nan, -np.inf, 0.0])))
    assert np.isnan(special[0]) and 0 <= special[1] < 1e-37 and special[2] == 1.0


def test_tune_cpu_allocator_is_harmless():
    from aimv2.backends.torch.cpu import tune_cpu_allocator

    assert tune_cpu_allocator() is sys.platform.startswith("linux")
    model = aimv2.build(aimv2.presets.get(TINY).encoder, "torch")
    assert model(np.zeros((1, 3, 16, 16), np.float32)).shape == (1, 16, 32)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_torch_inference_path_equals_the_autograd_path(qkv_bias):
    # Without autograd the torch attention runs one GEMM per q/k/v slice of the fused
    # weight and SwiGLU in place; it must give what the autograd path gives.
    torch = pytest.importorskip("torch")
    from aimv2.testing import FORWARD_TOL

    spec = aimv2.encoder_spec(width=64, depth=2, heads=4, patch_size=4, image_size=16)
    if qkv_bias:
        attn = dataclasses.replace(spec.trunk.block.attn, qkv_bias=True, proj_bias=True)
        block = dataclasses.replace(spec.trunk.block, attn=attn)
        spec = dataclasses.replace(spec, trunk=dataclasses.replace(spec.trunk, block=block))
    model = aimv2.build(spec, "torch", seed=4)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 3, 16, 16), np.float32))
    grad_path = model(x).detach().numpy()
    with torch.inference_mode():
        fast = model(x).numpy()
    weights = {k: v.detach().numpy() for k, v in model.named_parameters()}
    reference = aimv2.reference.forward(spec, weights, x.numpy().astype(np.float64))
    assert np.abs(fast - grad_path).max() <= FORWARD_TOL.bound(reference)
    assert np.abs(fast - reference).max() <= FORWARD_TOL.bound(reference)


def test_the_data_mode_runs_on_a_source_of_decoded_images():
    """``--mode data --data builtin:digits`` once failed in the per-image profile (it read
    every image as a file)."""
    from aimv2.bench.runner import run

    report = run(
        "aimv2-test-tiny", "torch", modes=["data"], data="builtin:digits", workers=[0], repeats=1
    )
    assert any("no per-image decode profile" in line for line in report.summary)
    assert report.rows
