"""The loader's worker processes: the same batches with any number of workers, ranks and
across a resume; rank × worker splits; dead workers, corrupt images and errors are
reported, never a hang; shutdown leaves no process or shared memory behind."""

from __future__ import annotations

import io
import logging
import os
import signal
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

import aimv2
from aimv2.data import DataWorkerError, IndexedSource, Loader, Sample, open_source
from aimv2.data import workers as W

pa = pytest.importorskip("pyarrow", reason="the Parquet cases need pyarrow")
pq = pytest.importorskip("pyarrow.parquet", reason="the Parquet cases need pyarrow")


def enc(image_size=16):
    return aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=image_size)


def jpeg(i: int, size=(48, 40)) -> bytes:
    arr = np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("loader")
    (root / "folder").mkdir()
    for i in range(10):
        body = jpeg(i, (64 + 8 * i, 48)) if i not in (3, 7) else jpeg(i)[:150]
        (root / "folder" / f"{i}.jpg").write_bytes(body)
        (root / "folder" / f"{i}.txt").write_text(f"picture {i}")
    for s in range(3):
        with tarfile.open(root / f"shard-{s}.tar", "w") as tf:
            for k in range(7):
                key = f"s{s}k{k}"
                bad = (s, k) in ((0, 2), (1, 0), (1, 1), (2, 6))
                add(tf, f"{key}.jpg", jpeg(10 * s + k)[: 150 if bad else None])
                add(tf, f"{key}.txt", f"sample {key}".encode())
    rows = 16
    table = pa.table(
        {"jpg": [jpeg(100 + i) for i in range(rows)], "txt": [f"r{i}" for i in range(rows)]}
    )
    pq.write_table(table, root / "t.parquet", row_group_size=4)
    return {
        "folder": str(root / "folder"),
        "tar": str(root / "shard-{0..2}.tar"),
        "parquet": str(root / "t.parquet"),
    }


def take(loader: Loader, n: int) -> list[dict]:
    it = iter(loader)
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def same(a: list[dict], b: list[dict]) -> None:
    assert [x["keys"] for x in a] == [y["keys"] for y in b]
    assert [x["captions"] for x in a] == [y["captions"] for y in b]
    assert [x["step"] for x in a] == [y["step"] for y in b]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["images"], y["images"])


@pytest.mark.parametrize("kind", ["folder", "tar", "parquet"])
def test_batches_do_not_depend_on_workers_and_resume(data, kind):
    spec = enc()
    src = open_source(data[kind])

    def run(workers, start=0, n=9, **kw):
        ld = Loader(src, spec, None, 4, seed=5, num_workers=workers, start_step=start, **kw)
        return take(ld, n - start), ld.skipped

    ref, skipped = run(0)
    assert skipped > 0 or kind == "parquet"  # corrupt images met, skipped, counted
    for workers, kw in ((1, {}), (2, {}), (3, {"prefetch": 2}), (2, {"worker_type": "thread"})):
        got, got_skipped = run(workers, **kw)
        same(got, ref)
        assert got_skipped == skipped
    same(run(2, start=4)[0], ref[4:])


def test_tar_eval_pass_with_workers_equals_inline(data):
    spec = enc()
    ref = list(Loader(data["tar"], spec, None, 4, seed=0, train=False, num_workers=0))
    got = list(Loader(data["tar"], spec, None, 4, seed=0, train=False, num_workers=2))
    same(got, ref)
    assert sum(len(b["keys"]) for b in ref) == 21 - 4 and len(ref[-1]["keys"]) == 1


def test_rank_times_worker_splits_cover_an_epoch_exactly_once(data):
    spec = enc()
    src = open_source(data["parquet"])  # 16 rows, 4 row groups
    seen: dict[tuple[int, int], list[str]] = {}
    for rank in (0, 1):
        ld = Loader(src, spec, None, 2, seed=1, num_workers=2, rank=rank, world_size=2)
        for batch in take(ld, 4):  # 4 steps × 2 ranks × 2 = 16 = one epoch
            seen.setdefault((rank, batch["worker"]), []).extend(batch["keys"])
    assert sorted(seen) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    every = [k for keys in seen.values() for k in keys]
    assert sorted(every) == sorted(f"t/{i}" for i in range(16))  # each exactly once
    one = take(Loader(src, spec, None, 4, seed=1, num_workers=0), 4)
    assert sorted(k for b in one for k in b["keys"]) == sorted(every)


def test_a_killed_worker_is_replaced_and_its_batches_redone(data, caplog):
    spec = enc()
    ref = take(Loader(data["folder"], spec, None, 4, seed=2, num_workers=0), 8)
    loader = Loader(data["folder"], spec, None, 4, seed=2, num_workers=2)
    it = iter(loader)
    got = [next(it)]
    victim = loader._runners[0].worker_pids()[0]
    with caplog.at_level(logging.WARNING, logger="aimv2.data"):
        os.kill(victim, signal.SIGKILL)
        got += [next(it) for _ in range(7)]
    it.close()
    same(got, ref)
    assert any("died with exit code -9" in r.getMessage() for r in caplog.records)


class _Deadly(IndexedSource):
    """Sample 3 kills any worker process that reads it."""

    def __init__(self, parent: int, mode: str = "exit") -> None:
        super().__init__("deadly")
        self.parent, self.mode = parent, mode

    def __len__(self) -> int:
        return 8

    def key(self, index: int) -> str:
        return f"d{index}"

    def _load(self, index: int) -> Sample:
        if index == 3 and os.getpid() != self.parent:
            if self.mode == "exit":
                os._exit(3)
            return "not a sample"  # type: ignore[return-value]
        return Sample(np.full((8, 8, 3), index, np.uint8), f"c{index}", None, self.key(index))


def test_a_batch_that_kills_its_workers_raises_instead_of_hanging():
    spec = enc(8)
    loader = Loader(_Deadly(os.getpid()), spec, None, 8, seed=0, num_workers=2)
    t0 = time.monotonic()
    with pytest.raises(DataWorkerError, match=r"died \(exit code 3\).*so did the worker"):
        take(loader, 2)
    assert time.monotonic() - t0 < 60


def test_an_exception_in_a_worker_is_raised_with_its_traceback():
    loader = Loader(_Deadly(os.getpid(), "bad"), enc(8), None, 8, seed=0, num_workers=2)
    with pytest.raises(DataWorkerError, match="(?s)AttributeError.*Traceback"):
        take(loader, 1)


def _shm_names() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def test_shutdown_on_break_error_interrupt_and_close(data):
    spec = enc()
    before = _shm_names()

    def workers_of(loader: Loader) -> list[int]:
        return [p for r in loader._runners for p in r.worker_pids()]

    def gone(pids: list[int]) -> bool:
        for _ in range(50):
            alive = []
            for pid in pids:
                try:
                    os.kill(pid, 0)
                    with open(f"/proc/{pid}/stat") as f:  # a zombie is not running
                        alive.append(f.read().split()[2] != "Z")
                except (ProcessLookupError, FileNotFoundError):
                    alive.append(False)
            if not any(alive):
                return True
            time.sleep(0.1)
        return False

    for ending in ("break", "error", "interrupt", "close", "dropped"):
        loader = Loader(data["folder"], spec, None, 2, seed=0, num_workers=2)
        it = iter(loader)
        next(it)
        pids = workers_of(loader)
        assert len(pids) == 2
        if ending == "break":
            it.close()
        elif ending == "close":
            loader.close()
            assert next(it, "ended") == "ended"
        elif ending == "dropped":
            del it  # an abandoned iteration stops its workers when collected
        else:  # as aimv2.training's loop does: close the loader in a finally
            exc = KeyboardInterrupt if ending == "interrupt" else ValueError
            with pytest.raises(exc):
                try:
                    for _ in it:
                        raise exc("in the training step")
                finally:
                    loader.close()
        assert gone(pids), ending
        assert not loader._runners
    assert _shm_names() <= before


def test_not_enough_shared_memory_is_a_clear_error(monkeypatch):
    class Tiny:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(W.os, "statvfs", lambda path: Tiny())
    loader = Loader("builtin:digits", enc(), None, 64, seed=0, num_workers=2)
    with pytest.raises(MemoryError, match="prefetch=4.*--shm-size"):
        take(loader, 1)


def test_loader_option_errors_name_the_argument():
    spec = enc()
    with pytest.raises(ValueError, match="caption_sampling='every'"):
        Loader("builtin:digits", spec, None, 2, seed=0, caption_sampling="every")
    with pytest.raises(ValueError, match="worker_type='gpu'"):
        Loader("builtin:digits", spec, None, 2, seed=0, worker_type="gpu")
    with pytest.raises(ValueError, match="prefetch=0"):
        Loader("builtin:digits", spec, None, 2, seed=0, prefetch=0)
    with pytest.raises(ValueError, match="start_method='telepathy'"):
        take(Loader("builtin:digits", spec, None, 2, seed=0, start_method="telepathy"), 1)


def test_spawned_workers_make_the_same_batches(data):
    spec = enc()
    ref = take(Loader(data["parquet"], spec, None, 4, seed=0, num_workers=0), 3)
    got = take(
        Loader(data["parquet"], spec, None, 4, seed=0, num_workers=1, start_method="spawn"), 3
    )
    same(got, ref)
