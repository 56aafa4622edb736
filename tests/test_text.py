"""The SentencePiece caption tokenizer of ``aimv2.text``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aimv2.data import builtin_captions
from aimv2.text import EOS_ID, PAD_ID, UNK_ID, Tokenizer, builtin_tokenizer, cache_dir

CAPTIONS = [
    "A red circle at the top left",
    "a small blue square in the center",
    "two green triangles on the right",
    "a large yellow star near the bottom edge",
    "the digit 7 written by hand",
] * 4


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("AIMV2_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return Tokenizer.train(CAPTIONS, 40, tmp_path_factory.mktemp("tok") / "t.model")


@pytest.fixture(scope="module")
def shapes_tok(tmp_path_factory) -> Tokenizer:
    out = tmp_path_factory.mktemp("shapes") / "shapes.model"
    return Tokenizer.train(builtin_captions("builtin:shapes"), 64, out)


def test_special_ids(tok: Tokenizer):
    assert (tok.pad_id, tok.unk_id, tok.eos_id) == (PAD_ID, UNK_ID, EOS_ID) == (0, 1, 2)
    assert tok.vocab_size == 40
    assert tok._sp.bos_id() == -1  # the decoder brings its own start token


def test_round_trip_on_builtin_captions(shapes_tok: Tokenizer):
    caps = builtin_captions("builtin:shapes")[::97]
    ids = shapes_tok.encode(caps, 77)
    assert shapes_tok.decode(ids) == caps
    assert shapes_tok.decode(ids[0]) == caps[:1]  # one row


def test_lower_cases(tok: Tokenizer):
    a = tok.encode(["A RED Circle\nAT THE top"], 32)
    b = tok.encode(["a red circle at the top"], 32)
    np.testing.assert_array_equal(a, b)
    assert tok.decode(a) == ["a red circle at the top"]


def test_padding_and_truncation(tok: Tokenizer):
    short = tok.encode(["a red circle"], 30)[0]
    n = int(np.argmax(short == EOS_ID))
    assert n > 0 and (short[:n] > EOS_ID).all() and (short[n + 1 :] == PAD_ID).all()
    long_caption = " ".join(["a red circle at the top left"] * 20)
    full = tok.encode([long_caption], 500)[0]
    length = int(np.argmax(full == EOS_ID))
    assert length > 16
    cut = tok.encode([long_caption], 16)[0]
    # eos is kept: the first 15 pieces, then eos; no padding
    np.testing.assert_array_equal(cut[:15], full[:15])
    assert cut[15] == EOS_ID and PAD_ID not in cut
    assert tok.encode(["anything"], 1).tolist() == [[EOS_ID]]
    assert tok.encode([""], 3).tolist() == [[EOS_ID, PAD_ID, PAD_ID]]
    assert tok.encode([], 5).shape == (0, 5)


@settings(max_examples=25, deadline=None)
@given(
    captions=st.lists(st.text(max_size=40), min_size=1, max_size=4),
    context=st.integers(1, 24),
)
def test_encode_properties(tok: Tokenizer, captions, context):
    ids = tok.encode(captions, context)
    assert ids.shape == (len(captions), context) and ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < tok.vocab_size
    assert ((ids == EOS_ID).sum(axis=1) == 1).all()
    for row in ids:
        e = int(np.argmax(row == EOS_ID))
        assert (row[e + 1 :] == PAD_ID).all() and PAD_ID not in row[:e]
    np.testing.assert_array_equal(ids, tok.encode([c.upper().lower() for c in captions], context))
    decoded = tok.decode(ids)
    assert len(decoded) == len(captions) and all(isinstance(t, str) for t in decoded)


def test_unknown_characters_map_to_unk(tok: Tokenizer):
    ids = tok.encode(["ζ"], 8)[0]
    assert UNK_ID in ids.tolist()


def test_train_is_deterministic_and_atomic(tmp_path: Path):
    a = Tokenizer.train(CAPTIONS, 40, tmp_path / "a" / "x.model")
    b = Tokenizer.train(iter(CAPTIONS), 40, tmp_path / "b" / "x.model")
    assert (tmp_path / "a" / "x.model").read_bytes() == (tmp_path / "b" / "x.model").read_bytes()
    assert a.to_bytes() == b.to_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.model"]  # no temp files
    loaded = Tokenizer.load(tmp_path / "a" / "x.model")
    np.testing.assert_array_equal(loaded.encode(CAPTIONS, 20), a.encode(CAPTIONS, 20))
    again = Tokenizer.from_bytes(a.to_bytes())
    np.testing.assert_array_equal(again.encode(CAPTIONS, 20), a.encode(CAPTIONS, 20))
    bpe = Tokenizer.train(CAPTIONS, 60, tmp_path / "bpe.model", model_type="bpe")
    assert bpe.vocab_size == 60 and bpe.decode(bpe.encode(CAPTIONS[:2], 40)) == [
        c.lower() for c in CAPTIONS[:2]
    ]


def test_builtin_tokenizer_is_deterministic_and_cached(tmp_path: Path, monkeypatch):
    first = builtin_tokenizer("builtin:digits", 48)
    files = list(cache_dir().iterdir())
    assert cache_dir() == tmp_path / "cache" and len(files) == 1
    assert files[0].name.startswith("tokenizer-digits-bpe-48-")
    mtime = files[0].stat().st_mtime_ns
    cached = builtin_tokenizer("builtin:digits", 48)
    assert files[0].stat().st_mtime_ns == mtime  # loaded, not retrained
    monkeypatch.setenv("AIMV2_CACHE", str(tmp_path / "other"))
    fresh = builtin_tokenizer("builtin:digits", 48)
    assert (tmp_path / "other").is_dir()
    assert first.to_bytes() == cached.to_bytes() == fresh.to_bytes()
    caps = builtin_captions("builtin:digits")
    np.testing.assert_array_equal(first.encode(caps, 32), fresh.encode(caps, 32))
    assert first.decode(first.encode(caps, 64)) == caps
    shapes = builtin_tokenizer("builtin:shapes", 64)
    assert shapes.vocab_size == 64 and shapes.to_bytes() != first.to_bytes()
    assert builtin_tokenizer("builtin:digits", 48, model_type="unigram").vocab_size == 48


def test_builtin_tokenizer_vocab_is_an_upper_bound():
    big = builtin_tokenizer("builtin:shapes", 32000)
    assert 200 < big.vocab_size < 32000
    caps = builtin_captions("builtin:shapes")
    ids = big.encode(caps, 24)
    assert ids.max() < big.vocab_size and (ids[:, -1] == PAD_ID).all()  # all fit in 24
    assert big.decode(ids) == caps


def test_builtin_tokenizer_repairs_damaged_cache():
    good = builtin_tokenizer("builtin:digits", 44)
    path = next(cache_dir().iterdir())
    path.write_bytes(b"garbage")
    assert builtin_tokenizer("builtin:digits", 44).to_bytes() == good.to_bytes()
    assert path.read_bytes() == good.to_bytes()


def test_errors(tok: Tokenizer, tmp_path: Path):
    with pytest.raises(ValueError, match="captions: expected at least one"):
        Tokenizer.train([], 40, tmp_path / "x.model")
    with pytest.raises(ValueError, match="captions: expected at least one"):
        Tokenizer.train(["  ", "\n"], 40, tmp_path / "x.model")
    with pytest.raises(TypeError, match="captions"):
        Tokenizer.train("a single string", 40, tmp_path / "x.model")
    with pytest.raises(ValueError, match=r"vocab_size=5000: .*too high"):
        Tokenizer.train(CAPTIONS, 5000, tmp_path / "x.model")
    with pytest.raises(ValueError, match="vocab_size=2"):
        Tokenizer.train(CAPTIONS, 2, tmp_path / "x.model")
    with pytest.raises(ValueError, match="model_type"):
        Tokenizer.train(CAPTIONS, 40, tmp_path / "x.model", model_type="word2vec")
    assert not (tmp_path / "x.model").exists()
    with pytest.raises(FileNotFoundError, match="missing.model"):
        Tokenizer.load(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Tokenizer.load(tmp_path / "junk.model")
    with pytest.raises(TypeError, match="wrap one caption in a list"):
        tok.encode("a red circle", 8)
    with pytest.raises(ValueError, match="context_length"):
        tok.encode(["a"], 0)
    with pytest.raises(TypeError, match=r"captions\[1\]"):
        tok.encode(["a", 3], 8)
    with pytest.raises(ValueError, match="vocab_size"):
        tok.decode([[3, tok.vocab_size]])
    with pytest.raises(ValueError, match="name="):
        builtin_tokenizer("builtin:cifar", 40)
