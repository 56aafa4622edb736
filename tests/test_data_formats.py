"""Parquet and Arrow / Hugging Face ``save_to_disk`` sources read the same samples as an
equivalent JSONL manifest; caption columns, sampling and opening errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import aimv2
from aimv2.data import ArrowSource, Loader, ParquetSource, open_source

pa = pytest.importorskip("pyarrow", reason="Parquet/Arrow sources need pyarrow")
pq = pytest.importorskip("pyarrow.parquet", reason="Parquet/Arrow sources need pyarrow")

N = 12


def enc(image_size=16):
    return aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=image_size)


def jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    arr = rng.integers(0, 256, (30 + 3 * i, 40 + 2 * i, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=85)
    return buf.getvalue()


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    """The same 12 images with two captions each (alt-text, synthetic) and a label, as a
    JSONL manifest, two Parquet files (row groups of 4), a save_to_disk folder and an
    Arrow file; image 5 is corrupt everywhere."""
    root = tmp_path_factory.mktemp("formats")
    images = [jpeg(i) for i in range(N)]
    images[5] = images[5][:200]  # truncated: unreadable
    alt = [f"alt text {i}" for i in range(N)]
    syn = [[f"synthetic {i}"] for i in range(N)]
    (root / "img").mkdir()
    lines = []
    for i in range(N):
        (root / "img" / f"{i}.jpg").write_bytes(images[i])
        record = {"image": f"img/{i}.jpg", "caption": [alt[i], *syn[i]], "label": i % 3}
        lines.append(json.dumps(record))
    (root / "m.jsonl").write_text("\n".join(lines) + "\n")
    table = pa.table(
        {"jpg": images, "txt": alt, "syn": syn, "cls": [i % 3 for i in range(N)]},
    )
    (root / "pq").mkdir()
    pq.write_table(table.slice(0, 8), root / "pq" / "part-0.parquet", row_group_size=4)
    pq.write_table(table.slice(8), root / "pq" / "part-1.parquet", row_group_size=4)
    hf = pa.table(
        {
            "image": [{"bytes": b, "path": None} for b in images],
            "caption": [[a, *s] for a, s in zip(alt, syn, strict=True)],
            "label": [i % 3 for i in range(N)],
        }
    )
    import datasets  # the real writer of the save_to_disk layout (a dev dependency)

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Sequence(datasets.Value("string")),
            "label": datasets.Value("int64"),
        }
    )
    datasets.Dataset(hf).cast(features).save_to_disk(str(root / "hf"))
    with pa.ipc.new_file(root / "plain.arrow", hf.schema) as w:
        w.write_table(hf)
    return {
        "jsonl": root / "m.jsonl",
        "parquet": root / "pq",
        "hf": root / "hf",
        "arrow": root / "plain.arrow",
    }


def columns(kind: str) -> dict:
    if kind == "parquet":
        return {"caption_columns": ["txt", "syn"], "label_column": "cls"}
    return {}


@pytest.mark.parametrize("kind", ["parquet", "hf", "arrow"])
def test_table_sources_read_what_the_jsonl_reads(sets, kind):
    ref = open_source(sets["jsonl"])
    src = open_source(sets[kind], **columns(kind))
    assert isinstance(src, ParquetSource if kind == "parquet" else ArrowSource)
    assert len(src) == len(ref) == N
    for i in range(N):
        a, b = ref.get(i), src.get(i)
        if i == 5:
            assert a is None and b is None
            continue
        assert a.captions == b.captions == (f"alt text {i}", f"synthetic {i}")
        assert a.caption == b.caption and a.label == b.label == i % 3
        np.testing.assert_array_equal(a.image, b.image)
    assert src.skipped == ref.skipped == 1


@pytest.mark.parametrize("kind", ["hf", "arrow"])
def test_arrow_loader_batches_equal_the_jsonl_loader(sets, kind):
    spec = enc()
    kw = dict(seed=3, num_workers=0, caption_sampling="random")
    ref = Loader(open_source(sets["jsonl"]), spec, None, 4, **kw)
    got = Loader(open_source(sets[kind]), spec, None, 4, **kw)
    for step in range(7):  # more than two epochs, through the corrupt sample
        a, b = ref.batch(step), got.batch(step)
        np.testing.assert_array_equal(a["images"], b["images"])
        assert a["captions"] == b["captions"] and a["labels"].tolist() == b["labels"].tolist()


def test_parquet_epochs_permute_row_groups_then_rows(sets):
    src = open_source(sets["parquet"], **columns("parquet"))
    assert src.blocks().tolist() == [4, 4, 4]
    loader = Loader(src, enc(), None, 4, seed=0, num_workers=0)
    for epoch in range(3):
        keys = [loader.batch(3 * epoch + s)["keys"] for s in range(3)]
        # every batch is one row group (rows shuffled inside it); corrupt row 5 replaced
        groups = [{int(k.split("/")[1]) // 4 + 2 * k.startswith("part-1") for k in b} for b in keys]
        assert all(len(g) == 1 for g in groups) and sorted(min(g) for g in groups) == [0, 1, 2]
        flat = sum(keys, [])
        expected = {f"part-0/{r}" for r in range(8) if r != 5} | {f"part-1/{r}" for r in range(4)}
        assert set(flat) == expected and len(flat) == N
    first = [loader.batch(s)["keys"] for s in range(3)]
    assert first != [loader.batch(s)["keys"] for s in range(3, 6)]  # a new order per epoch


def test_caption_sampling_all_makes_one_sample_per_caption(sets):
    spec = enc()
    src = open_source(sets["hf"])
    loader = Loader(src, spec, None, 4, seed=1, num_workers=0, caption_sampling="all")
    pairs = [
        (k, c)
        for s in range(6)  # 24 = one epoch of 12 images × 2 captions
        for k, c in zip(loader.batch(s)["keys"], loader.batch(s)["captions"], strict=True)
    ]
    readable = [i for i in range(N) if i != 5]
    want = {
        (f"data-00000-of-00001/{i}", f"{w} {i}")
        for i in readable
        for w in ("alt text", "synthetic")
    }
    assert want <= set(pairs)  # the corrupt image's two slots go to replacements


def test_caption_sampling_random_is_seeded_and_resumable(sets):
    spec = enc()
    src = open_source(sets["jsonl"])

    def captions(seed, start=0, workers=0):
        ld = Loader(
            src,
            spec,
            None,
            4,
            seed=seed,
            num_workers=workers,
            start_step=start,
            caption_sampling="random",
        )
        it = iter(ld)
        out = [next(it)["captions"] for _ in range(6 - start)]
        it.close()
        return out

    a = captions(0)
    assert a == captions(0, workers=2) and a[3:] == captions(0, start=3)
    assert a != captions(1)
    chosen = [c.split()[0] for b in a for c in b]
    assert {"alt", "synthetic"} <= set(chosen)


def test_open_source_column_errors_name_the_argument(sets, tmp_path):
    with pytest.raises(ValueError, match="image_column='photo'"):
        open_source(sets["parquet"], image_column="photo")
    with pytest.raises(ValueError, match="caption_columns: column 'cls' .* is int64"):
        open_source(sets["parquet"], caption_columns="cls")
    with pytest.raises(ValueError, match="image_column: only Parquet and Arrow"):
        open_source(sets["jsonl"], image_column="image")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="image_column: none of"):
        open_source(tmp_path / "bad.parquet")
    with pytest.raises(FileNotFoundError, match="matches no files"):
        open_source(tmp_path / "missing-*.parquet")


def test_dataset_dict_folders_pick_the_train_split(sets, tmp_path):
    import datasets  # the real writer of the save_to_disk layout (a dev dependency)

    ds = datasets.load_from_disk(str(sets["hf"]))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(3))}).save_to_disk(
        str(tmp_path / "dd")
    )
    assert len(open_source(tmp_path / "dd")) == N
    with pytest.raises(ValueError, match="DatasetDict with the splits"):
        open_source(tmp_path / "dd", split="all")
    assert len(open_source(tmp_path / "dd" / "test")) == 3


def test_parquet_by_glob_brace_and_list(sets):
    folder = sets["parquet"]
    for spec in (
        str(folder / "part-*.parquet"),
        str(folder / "part-{0..1}.parquet"),
        [str(folder / "part-0.parquet"), str(folder / "part-1.parquet")],
    ):
        assert len(open_source(spec, **columns("parquet"))) == N
    assert len(open_source(str(folder / "part-1.parquet"), **columns("parquet"))) == 4


def test_pretrain_flags_reach_the_loader(sets, tmp_path, capsys):
    from aimv2.cli import main
    from aimv2.text import Tokenizer

    captions = [f"{w} {i}" for i in range(N) for w in ("alt text", "synthetic")]
    tok = tmp_path / "tok.model"
    Tokenizer.train(captions * 4, 40, tok, hard_vocab_limit=False)
    args = ["pretrain", "--preset", "aimv2-test-tiny", "--data", str(sets["parquet"])]
    args += ["--caption-column", "txt", "--caption-column", "syn", "--caption-sampling", "all"]
    args += ["--tokenizer", str(tok), "--steps", "2", "--batch-size", "4", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "run"), "--workers", "2"]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["caption_columns"] == ["txt", "syn"] and config["caption_sampling"] == "all"
    assert config["reduced_decode"] is True
    assert main([*args, "--out", str(tmp_path / "bad"), "--image-column", "photo"]) == 2
    assert "image_column='photo'" in capsys.readouterr().err


def test_label_and_key_columns_of_the_wrong_type_are_refused_at_open(sets, tmp_path):
    # before: a string label column passed the open and every row was then skipped as
    # "label 'x' is not a non-negative integer" — a whole epoch of warnings, no error
    with pytest.raises(ValueError, match="label_column: column 'txt' .* is string; expected"):
        open_source(sets["parquet"], caption_columns="txt", label_column="txt")
    with pytest.raises(ValueError, match="key_column: column 'syn' .* is list<"):
        open_source(sets["parquet"], caption_columns="txt", key_column="syn")
    table = pa.table({"jpg": [jpeg(0)], "txt": ["a"], "uid": [7], "score": [0.5]})
    pq.write_table(table, tmp_path / "ok.parquet")
    src = open_source(tmp_path / "ok.parquet")  # an integer key column is a key
    assert src.get(0).key == "7"
    with pytest.raises(ValueError, match="label_column: column 'score' .* is double"):
        open_source(tmp_path / "ok.parquet", label_column="score")


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "hf"])
def test_captions_are_read_without_decoding_an_image(sets, kind, monkeypatch):
    import PIL.ImageFile

    src = open_source(sets[kind], **columns(kind))

    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded to read captions")

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", refuse)
    got = list(src.captions())
    # every row's captions, the corrupt image's too (its text is fine)
    assert got == [(f"alt text {i}", f"synthetic {i}") for i in range(N)]
    assert src.skipped == 0


def test_tar_shard_captions_are_read_without_decoding(tmp_path, monkeypatch):
    import tarfile

    import PIL.ImageFile

    shard = tmp_path / "s-0.tar"
    with tarfile.open(shard, "w") as tf:
        for i in range(3):
            for name, data in ((f"{i}.jpg", jpeg(i)), (f"{i}.txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", lambda *a, **k: 1 / 0)
    assert list(open_source(shard).captions()) == [(f"caption {i}",) for i in range(3)]


def test_tokenizer_train_reads_every_caption_and_no_image(sets, tmp_path, monkeypatch):
    import PIL.ImageFile

    from aimv2.cli import main
    from aimv2.text import Tokenizer

    seen: list[list[str]] = []
    real = Tokenizer.train.__func__

    def spy(cls, captions, *args, **kwargs):
        captions = list(captions)
        seen.append(captions)
        return real(cls, captions, *args, **kwargs)

    monkeypatch.setattr(Tokenizer, "train", classmethod(spy))
    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", lambda *a, **k: 1 / 0)
    out = tmp_path / "tok.model"
    args = ["tokenizer", "train", "--data", str(sets["jsonl"]), "--vocab-size", "30"]
    assert main([*args, "--model-type", "bpe", "--out", str(out)]) == 0
    assert seen[-1] == [f"{w} {i}" for i in range(N) for w in ("alt text", "synthetic")]
    assert main([*args, "--model-type", "bpe", "--out", str(out), "--max-captions", "3"]) == 0
    assert seen[-1] == ["alt text 0", "synthetic 0", "alt text 1"]
