"""Data-parallel and sharded pre-training under torchrun and mlx.launch (2 CPU processes).

What must hold: K ranks with global ``--batch-size B`` follow the same loss trajectory as
one process with ``--batch-size B`` (torch DDP, torch FSDP2, MLX); a checkpoint written
by 2 ranks resumes on 1 process, on either backend, and a 1-process checkpoint resumes
on 2 ranks; killing a rank ends the run quickly with a message naming it and leaves
the last complete checkpoint loadable.

Tolerances (per logged step, losses and the gradient norm):

- same backend, 2 ranks vs 1 process: 1e-4·max(1, |x|). The ranks compute the same
  float32 sums in a different order (each rank reduces its half of the batch, then the
  all-reduce adds the halves); observed differences are ≤ 5e-7 relative over 8 Adam
  steps. A real mistake — e.g. averaging the ranks' mean losses instead of normalizing
  by the global counts of target patches and tokens — moves the first step's loss by
  2e-3 (relative 5e-4) on these digits batches, and by more than 10× the tolerance on
  the batch of ``test_weighted_micro_batches_equal_one_big_batch``, which checks it.
- across backends (resume on the other one): the project's torch-vs-MLX bound,
  1e-4·max(1, |x|) (observed ≤ 2e-6).
- the learning rate is a pure function of the step: exact.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import aimv2
from aimv2 import checkpoint
from aimv2 import distributed as D
from aimv2.training import PretrainConfig, pretrain

STEPS, HALF, BATCH = 8, 4, 8
TOL = 1e-4
MLX_LAUNCH = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or shutil.which(
    "mlx.launch"
)
LAUNCH_TIMEOUT = 180


def _args(out, *extra):
    return (
        ["pretrain", "--preset", "aimv2-test-tiny", "--steps", str(STEPS)]
        + ["--batch-size", str(BATCH), "--log-every", "1", "--save-every", str(HALF)]
        + ["--workers", "0", "--lr", "3e-3", "--out", str(out), "--dist-timeout", "60", *extra]
    )


def _cfg(out, **kw):
    base = dict(
        out=str(out),
        preset="aimv2-test-tiny",
        steps=STEPS,
        batch_size=BATCH,
        log_every=1,
        save_every=HALF,
        num_workers=0,
        progress=False,
        lr=3e-3,
    )
    return PretrainConfig(**{**base, **kw})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MLX_RANK", "MLX_HOSTFILE"):
        env.pop(var, None)
    return env


def _launch_cmd(launcher: str, args: list[str]) -> list[str]:
    if launcher == "torchrun":
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        return [*torchrun, "--nproc-per-node", "2", "-m", "aimv2.cli", *args]
    if MLX_LAUNCH is None:
        pytest.skip("mlx.launch is not installed next to this interpreter")
    # Two localhost ranks on the ring backend; ports base and base+1.
    base = _free_port()
    launch = [MLX_LAUNCH, "-n", "2", "--starting-port", str(base), "--"]
    return [*launch, sys.executable, "-m", "aimv2.cli", *args, "--backend", "mlx"]


def _launch(launcher: str, args: list[str]) -> subprocess.CompletedProcess:
    r = subprocess.run(
        _launch_cmd(launcher, args),
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
        env=_env(),
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _rows(out) -> dict[int, dict]:
    rows = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"duplicate metric rows (more than one writer): {steps}"
    return {r["step"]: r for r in rows}


def _assert_same(ref, got, steps, tol=TOL):
    worst = 0.0
    for step in steps:
        for key in ("loss", "pixel_loss", "text_loss", "grad_norm"):
            x, y = ref[step][key], got[step][key]
            worst = max(worst, abs(x - y) / max(1.0, abs(x)))
            assert abs(x - y) <= tol * max(1.0, abs(x)), (step, key, x, y)
        assert ref[step]["lr"] == got[step]["lr"], step
    return worst


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    """One-process runs: torch and MLX at batch 8, torch with two accumulated halves."""
    root = tmp_path_factory.mktemp("ref")
    pretrain(_cfg(root / "torch"))
    pretrain(_cfg(root / "torch-acc2", accumulate=2))
    pretrain(_cfg(root / "mlx", backend="mlx"))
    return {name: root / name for name in ("torch", "torch-acc2", "mlx")}


# ----------------------------------------------------------------------------- units


def test_plan_splits_the_global_batch_like_one_process():
    # K ranks x their chunks cover each single-process micro-batch exactly once.
    for b, a, k in [(8, 1, 2), (8, 2, 2), (8, 4, 2), (12, 3, 2), (16, 2, 4), (8, 8, 4)]:
        seen = {}
        for r in range(k):
            for c in D.plan_update(b, a, k, r):
                assert c.stop - c.start <= b // a
                for row in range(r * (b // k) + c.start, r * (b // k) + c.stop):
                    seen[row] = c.group
        assert seen == {row: row // (b // a) for row in range(b)}, (b, a, k)
    with pytest.raises(ValueError, match="split evenly over 3 ranks"):
        D.plan_update(8, 1, 3, 0)
    with pytest.raises(ValueError, match="different numbers of micro-batches"):
        D.plan_update(30, 3, 5, 0)


def test_launch_detection_and_mismatched_launchers():
    assert D.detect_launch({}) is None
    t = D.detect_launch({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (t.launcher, t.rank, t.world_size, t.local_rank) == ("torchrun", 1, 2, 1)
    m = D.detect_launch({"MLX_RANK": "1", "MLX_HOSTFILE": "/tmp/h"})
    assert (m.launcher, m.rank, m.framework) == ("mlx.launch", 1, "mlx")
    with pytest.raises(D.DistributedError, match="launched by torchrun but --backend mlx"):
        D.init_world("mlx", environ={"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(D.DistributedError, match="launched by mlx.launch but --backend torch"):
        D.init_world("torch", environ={"MLX_RANK": "0", "MLX_WORLD_SIZE": "2"})
    with pytest.raises(D.DistributedError, match="--dist-timeout"):
        D.init_world("torch", timeout_s=0, environ={})
    w = D.init_world("torch", environ={"RANK": "0", "WORLD_SIZE": "1"})
    assert not w.distributed and w.sum_ints([2, 3]).tolist() == [2, 3] and w.agree([1])


def test_loss_counts_are_the_models_denominators(backend):
    """Σ over halves of (half's mean × half's count) / Σ counts = the whole batch's mean."""
    from aimv2.testing import random_batch

    spec = aimv2.presets.get("aimv2-test-tiny")
    model = aimv2.build(spec, backend, seed=0)
    be = aimv2.backend.load_backend(backend)
    batch = random_batch(spec, seed=3, batch=6)
    batch["tokens"][:, 9:] = spec.text.pad_id  # uneven caption lengths
    batch["tokens"][0, 3:] = spec.text.pad_id

    def losses(sl):
        out = model(batch["images"][sl], batch["tokens"][sl], batch["prefix_len"][sl])
        return {k: float(be.to_numpy(out[k])) for k in ("pixel_loss", "text_loss")}

    whole = losses(slice(0, 6))
    px, tx = D.loss_counts(spec, batch["tokens"], batch["prefix_len"])
    for key, counts in (("pixel_loss", px), ("text_loss", tx)):
        parts = [(losses(s)[key], counts[s].sum()) for s in (slice(0, 2), slice(2, 6))]
        combined = sum(v * c for v, c in parts) / counts.sum()
        assert abs(combined - whole[key]) <= 1e-5 * max(1.0, whole[key]), (key, combined, whole)


def test_weighted_micro_batches_equal_one_big_batch(backend):
    """The weighting the ranks use, run in one process over two chunks, equals one update
    on the whole batch — and the naive mean of chunk means would not."""
    from importlib import import_module

    from aimv2.optim import OptimConfig
    from aimv2.testing import random_batch

    tm = import_module(f"aimv2.backends.{backend}.train")
    spec = aimv2.presets.get("aimv2-test-tiny")
    batch = random_batch(spec, seed=5, batch=8)
    batch["tokens"][:4, 6:] = spec.text.pad_id  # first half: short captions
    cfg = OptimConfig(lr=3e-3, warmup_steps=1, total_steps=3)
    whole = tm.Trainer(aimv2.build(spec, backend, seed=0), cfg, compile=False)
    split = tm.Trainer(aimv2.build(spec, backend, seed=0), cfg, compile=False)
    naive = tm.Trainer(aimv2.build(spec, backend, seed=0), cfg, compile=False)
    chunks = [D.Chunk(0, 4, 0), D.Chunk(4, 8, 0)]
    parts = [{k: v[c.start : c.stop] for k, v in batch.items()} for c in chunks]
    px, tx = D.loss_counts(spec, batch["tokens"], batch["prefix_len"])
    weights = D.term_weights(chunks, px, tx, np.array([px.sum()]), np.array([tx.sum()]))
    for _ in range(2):
        a = whole.step([batch], 3e-3)
        b = split.step(parts, 3e-3, weights)
        c = naive.step(parts, 3e-3)
        for key in ("loss", "pixel_loss", "text_loss", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (key, a, b)
        assert abs(a["loss"] - c["loss"]) > 10 * TOL * max(1.0, a["loss"]), (a, c)
    wa, wb = whole.weight_arrays(), split.weight_arrays()
    assert max(float(np.abs(wa[k] - wb[k]).max()) for k in wa) < 1e-5


# ----------------------------------------------------------------------------- 2 ranks


def test_torch_ddp_two_ranks_equal_one_process(tmp_path, refs):
    """DDP, two accumulated micro-batches (one per rank); progress and metrics from rank 0."""
    out = tmp_path / "ddp"
    r = _launch("torchrun", _args(out, "--accumulate", "2", "--shard", "none"))
    got, ref = _rows(out), _rows(refs["torch-acc2"])
    assert sorted(got) == list(range(1, STEPS + 1))
    worst = _assert_same(ref, got, range(1, STEPS + 1))
    print(f"torch DDP: worst relative difference {worst:.2e}")
    # One progress bar (rank 0), one result line (rank 0).
    assert sum(f" {STEPS}/{STEPS} loss" in line for line in r.stderr.splitlines()) == 1, r.stderr
    results = [line for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1 and json.loads(results[0])["step"] == STEPS
    ck = checkpoint.load(checkpoint.latest(out))
    assert ck.step == STEPS and ck.state["world_size"] == 2 and ck.optimizer is not None


def test_torch_fsdp_two_ranks_equal_one_process_and_resume_on_one(tmp_path, refs):
    """FSDP2 for the first half; its checkpoint finishes on one torch process and on MLX."""
    out = tmp_path / "fsdp"
    _launch("torchrun", _args(out, "--shard", "full", "--stop-after", str(HALF), "--quiet"))
    ref = _rows(refs["torch"])
    got = _rows(out)
    assert sorted(got) == list(range(1, HALF + 1))
    worst = _assert_same(ref, got, range(1, HALF + 1))
    print(f"torch FSDP2: worst relative difference {worst:.2e}")
    ck = checkpoint.load(checkpoint.latest(out))
    assert ck.step == HALF and ck.optimizer is not None
    one = _cfg(out, resume=True)
    shutil.copytree(out, tmp_path / "on-mlx")
    pretrain(one)
    worst = _assert_same(ref, _rows(out), range(HALF + 1, STEPS + 1))
    print(f"FSDP2 checkpoint -> 1 torch process: worst relative difference {worst:.2e}")
    pretrain(_cfg(tmp_path / "on-mlx", backend="mlx", resume=True))
    worst = _assert_same(ref, _rows(tmp_path / "on-mlx"), range(HALF + 1, STEPS + 1))
    print(f"FSDP2 checkpoint -> 1 MLX process: worst relative difference {worst:.2e}")


def test_a_one_process_checkpoint_resumes_on_two_sharded_ranks(tmp_path, refs):
    out = tmp_path / "grow"
    out.mkdir()
    shutil.copytree(checkpoint.directory(refs["torch"], HALF), checkpoint.directory(out, HALF))
    _launch("torchrun", _args(out, "--shard", "full", "--resume", "--quiet"))
    worst = _assert_same(_rows(refs["torch"]), _rows(out), range(HALF + 1, STEPS + 1))
    print(f"1-process checkpoint -> FSDP2 on 2 ranks: worst relative difference {worst:.2e}")


def test_mlx_two_ranks_equal_one_process_and_resume_on_torch(tmp_path, refs):
    out = tmp_path / "mlx"
    _launch("mlx.launch", _args(out, "--stop-after", str(HALF), "--quiet"))
    ref = _rows(refs["mlx"])
    got = _rows(out)
    assert sorted(got) == list(range(1, HALF + 1))
    worst = _assert_same(ref, got, range(1, HALF + 1))
    print(f"MLX 2 ranks: worst relative difference {worst:.2e}")
    pretrain(_cfg(out, backend="torch", resume=True))
    worst = _assert_same(ref, _rows(out), range(HALF + 1, STEPS + 1))
    print(f"MLX 2-rank checkpoint -> 1 torch process: worst relative difference {worst:.2e}")


# ----------------------------------------------------------------------------- failures


def _rank_pids(out: Path, var: str) -> dict[int, int]:
    """PIDs of the rank processes of the run writing to ``out`` (by their launcher env)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes()
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"aimv2.cli" not in cmdline or str(out).encode() not in cmdline:
            continue
        for item in env:
            if item.startswith(var.encode() + b"="):
                found[int(item.split(b"=", 1)[1])] = int(d.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
@pytest.mark.parametrize("launcher", ["torchrun", "mlx.launch"])
def test_killing_a_rank_ends_the_run_and_keeps_the_last_checkpoint(tmp_path, launcher):
    out = tmp_path / "run"
    args = _args(out, "--quiet")
    args[args.index("--steps") + 1] = "100000"
    args[args.index("--save-every") + 1] = "2"
    cmd = _launch_cmd(launcher, args)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    try:
        deadline = time.time() + 90
        while checkpoint.latest(out) is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert checkpoint.latest(out) is not None, "no checkpoint appeared"
        var = "RANK" if launcher == "torchrun" else "MLX_RANK"
        pids = _rank_pids(out, var)
        assert set(pids) == {0, 1}, pids
        os.kill(pids[1], signal.SIGKILL)
        killed = time.time()
        _, err = proc.communicate(timeout=60)
        took = time.time() - killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"{launcher}: the run ended {took:.2f} s after rank 1 was killed")
    assert took < 30, took
    if launcher == "torchrun":
        assert proc.returncode != 0
        assert "rank      : 1 (local_rank: 1)" in err and "SIGKILL" in err, err[-3000:]
    else:
        # mlx.launch names the rank; (as of MLX 0.32) it exits 0 even when a rank failed.
        assert "Node with rank 1 exited with code -9" in err, err[-3000:]
    assert not _rank_pids(out, "RANK" if launcher == "torchrun" else "MLX_RANK")
    for ck in checkpoint.complete(out):
        checkpoint.load(ck)  # every directory that looks complete is complete
    last = checkpoint.load(checkpoint.latest(out))
    assert last.step >= 2 and last.optimizer is not None


def _shards(folder: Path) -> str:
    """Two tar shards: 0.tar readable, 1.tar (rank 1's under 2 ranks) all corrupt images."""
    import io
    import tarfile

    from PIL import Image

    folder.mkdir()
    for shard, good in ((0, True), (1, False)):
        with tarfile.open(folder / f"{shard}.tar", "w") as tf:
            for i in range(8):
                buf = io.BytesIO()
                Image.fromarray(np.full((16, 16, 3), 30 * i, np.uint8)).save(buf, "PNG")
                data = buf.getvalue() if good else b"not an image"
                for name, blob in ((f"s{shard}_{i}.png", data), (f"s{shard}_{i}.txt", b"x")):
                    info = tarfile.TarInfo(name)
                    info.size = len(blob)
                    tf.addfile(info, io.BytesIO(blob))
    return str(folder / "*.tar")


@pytest.mark.parametrize("launcher", ["torchrun", "mlx.launch"])
def test_an_error_on_one_rank_stops_the_run_with_that_ranks_error(tmp_path, launcher):
    pixel_only = aimv2.presets.get("aimv2-test-tiny").replace(
        text=aimv2.specs.TextObjectiveSpec(weight=0.0)
    )
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(pixel_only.to_dict()))
    data = _shards(tmp_path / "shards")
    args = _args(tmp_path / "run", "--quiet", "--spec", str(spec_file), "--data", data)
    started = time.time()
    r = subprocess.run(
        _launch_cmd(launcher, args),
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
        env=_env(),
    )
    took = time.time() - started
    print(f"{launcher}: the run stopped {took:.1f} s after launch")
    assert "no sample could be read in a full pass" in r.stderr, r.stderr[-4000:]
    if launcher == "torchrun":
        assert r.returncode != 0
        root = r.stderr[r.stderr.index("Root Cause") :]
        assert "rank      : 1 (local_rank: 1)" in root, root
    else:
        assert "Node with rank 1 exited with code 1" in r.stderr, r.stderr[-4000:]
    assert checkpoint.latest(tmp_path / "run") is None


def test_a_rank_that_lost_its_peer_is_never_torchruns_root_cause(tmp_path, monkeypatch):
    """torchrun names the error file with the smallest whole-second timestamp (ties: the
    lowest rank): rank 0's "lost the other ranks" must land in a later second than the
    error of rank 1 that caused it, or the summary names the wrong rank."""
    if "torch" not in aimv2.available_backends():
        pytest.skip("needs torch")
    from backends.torch.comm import TorchComm

    comm = object.__new__(TorchComm)  # record_failure needs no process group
    stamps = []
    for i, secondary in enumerate([False, True]):
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / f"error{i}.json"))
        comm.record_failure(RuntimeError(f"rank {1 - i}"), secondary=secondary)
        saved = json.loads((tmp_path / f"error{i}.json").read_text())
        stamps.append(int(saved["message"]["extraInfo"]["timestamp"]))
    assert stamps[1] > stamps[0], stamps


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
@pytest.mark.parametrize("launcher", ["torchrun", "mlx.launch"])
def test_a_rank_that_stops_answering_times_out_the_others(tmp_path, launcher):
    """SIGSTOP keeps rank 1's sockets open, so only the collective deadline can end rank 0
    (torch: the process group's timeout; MLX: the watchdog, exit status 75)."""
    out = tmp_path / "run"
    args = _args(out, "--quiet")
    args[args.index("--steps") + 1] = "100000"
    args[args.index("--save-every") + 1] = "2"
    args[args.index("--dist-timeout") + 1] = "3"
    var = "RANK" if launcher == "torchrun" else "MLX_RANK"
    proc = subprocess.Popen(
        _launch_cmd(launcher, args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    pids = {}
    try:
        deadline = time.time() + 90
        while checkpoint.latest(out) is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        pids = _rank_pids(out, var)
        assert set(pids) == {0, 1}, pids
        os.kill(pids[1], signal.SIGSTOP)
        stopped = time.time()
        while Path(f"/proc/{pids[0]}").exists() and time.time() - stopped < 60:
            time.sleep(0.05)
        took = time.time() - stopped
        os.kill(pids[1], signal.SIGCONT)  # let the launcher's SIGTERM take effect
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"{launcher}: rank 0 gave up {took:.1f} s after rank 1 stopped answering")
    assert 2.5 < took < 20, took
    if launcher == "torchrun":
        assert "[rank 0/2] lost the other ranks in a collective" in err, err[-3000:]
    else:
        assert "did not complete within 3 s" in err, err[-3000:]
        assert f"Node with rank 0 exited with code {D.EXIT_TIMEOUT}" in err, err[-3000:]
    checkpoint.load(checkpoint.latest(out))


def test_two_ranks_over_tar_shards_resume_from_their_stream_positions(tmp_path):
    """Each rank streams its own shards; the checkpoint records both ranks' positions and
    a resumed 2-rank run continues exactly as the uninterrupted one."""
    if "torch" not in aimv2.available_backends():
        pytest.skip("needs torch")
    from aimv2.testing import write_tar_shards
    from aimv2.text import Tokenizer

    captions = write_tar_shards(tmp_path, 4, 5, corrupt={(2, 1)})
    tok = tmp_path / "tok.model"
    Tokenizer.train(captions * 2, 30, tok, hard_vocab_limit=False)
    data = ["--data", str(tmp_path / "s-*.tar"), "--tokenizer", str(tok), "--stream-shuffle", "4"]
    _launch("torchrun", _args(tmp_path / "straight", *data, "--quiet"))
    _launch("torchrun", _args(tmp_path / "split", *data, "--quiet", "--stop-after", str(HALF)))
    state = checkpoint.load(checkpoint.latest(tmp_path / "split")).state
    positions = state["stream_positions"]
    assert len(positions) == 2 and positions[0] != positions[1]  # rank 1 met a corrupt one
    _launch("torchrun", _args(tmp_path / "split", *data, "--quiet", "--resume"))
    ref, got = _rows(tmp_path / "straight"), _rows(tmp_path / "split")
    assert sorted(got) == list(range(1, STEPS + 1))
    _assert_same(ref, got, range(1, STEPS + 1), tol=0.0)
