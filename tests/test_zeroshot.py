"""Zero-shot classification and retrieval: embeddings against the float64 reference, the
template averaging, recall@k, the released-folder tokenizer (a tiny CLIP-style BPE built
here with ``tokenizers``), the ``aimv2 zeroshot`` / ``aimv2 retrieval`` commands, and
bad input.

Tolerance: ``aimv2.testing.FORWARD_TOL`` for embeddings and logits (float32 against the
float64 reference; see :mod:`aimv2.testing.tolerances`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tokenizers
from tokenizers import models, normalizers, pre_tokenizers, trainers

import aimv2
from aimv2 import formats, reference
from aimv2 import specs as S
from aimv2.data import builtin_captions
from aimv2.lit import (
    BPETokenizer,
    LitError,
    classifier,
    encode_images,
    encode_texts,
    load_lit,
    load_tokenizer,
    recall_at_k,
    retrieval_metrics,
    tokenize,
    zero_shot,
)
from aimv2.testing import FORWARD_TOL, assert_close, random_captions, random_weights
from aimv2.text import builtin_tokenizer

INSTALLED = aimv2.available_backends()
if not INSTALLED:
    pytest.skip("no backend installed", allow_module_level=True)

SPEC = aimv2.presets.get("aimv2-lit-test-tiny")
TOK = builtin_tokenizer("builtin:digits", 64)
WORDS = ["zero", "one", "two", "three"]


def _images(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def test_embeddings_match_the_reference_in_any_batching(backend):
    w = random_weights(SPEC, 1)
    be = aimv2.load_backend(backend)
    model = aimv2.build(SPEC, backend, weights=w)
    x = _images(5)
    tokens = random_captions(SPEC.text_encoder, np.random.default_rng(2), 7)
    img, txt = reference.image_embeds(SPEC, w, x), reference.text_embeds(SPEC, w, tokens)
    for bs in (1, 3, 64):
        got_i = be.to_numpy(encode_images(model, x, batch_size=bs))
        got_t = be.to_numpy(encode_texts(model, tokens, batch_size=bs))
        assert_close(got_i, img, FORWARD_TOL, f"images bs={bs}")
        assert_close(got_t, txt, FORWARD_TOL, f"texts bs={bs}")
    native = encode_images(model, be.from_numpy(x))  # backend arrays in, backend arrays out
    assert type(native) is type(be.from_numpy(x))
    assert np.allclose(np.linalg.norm(be.to_numpy(native), axis=1), 1.0, atol=1e-5)


def test_class_embeddings_average_normalized_templates(backend):
    w = random_weights(SPEC, 3)
    be = aimv2.load_backend(backend)
    model = aimv2.build(SPEC, backend, weights=w)
    templates = ["the digit {}", "{} by hand", "a pixelated {}"]
    want = []
    for name in WORDS:
        toks = tokenize(TOK, [t.format(name) for t in templates], 16)
        e = reference.text_embeds(SPEC, w, toks).mean(axis=0)  # each already normalized
        want.append(e / np.linalg.norm(e))
    got = be.to_numpy(classifier(model, WORDS, templates, tokenizer=TOK))
    assert_close(got, np.stack(want), FORWARD_TOL, "class embeddings")
    x = _images(4, seed=5)
    logits = be.to_numpy(zero_shot(model, x, WORDS, templates, tokenizer=TOK))
    scale = np.exp(np.clip(float(w["log_logit_scale"]), 0.0, np.log(100.0)))
    assert_close(logits, scale * reference.image_embeds(SPEC, w, x) @ np.stack(want).T)


@pytest.mark.parametrize(
    "names, templates, exc, match",
    [
        ([], ["{}"], ValueError, r"class_names: expected at least one class, got an empty list"),
        (["one", "two", "One"], ["{}"], ValueError, r"class_names\[2\]: 'One' repeats"),
        (["one", ""], ["{}"], ValueError, r"class_names\[1\]: expected a non-empty string"),
        ("one,two", ["{}"], TypeError, r"class_names: expected a list of class names"),
        (["one"], ["the digit"], ValueError, r"templates\[0\]: 'the digit' must hold exactly"),
        (["one"], [], ValueError, r"templates: expected a non-empty list"),
        (
            ["one"],
            ["an 8 by 8 pixel image of the digit {} drawn by hand"],
            ValueError,
            r"prompts\[0\]: .* does not fit the text encoder's context of 16 tokens",
        ),
    ],
)
def test_bad_zero_shot_input_is_named(names, templates, exc, match):
    model = aimv2.build(SPEC, INSTALLED[0])
    with pytest.raises(exc, match=match):
        zero_shot(model, _images(1), names, templates, tokenizer=TOK)


def test_only_lit_models_and_known_tokenizers():
    enc = aimv2.build(SPEC.image_encoder, INSTALLED[0])
    with pytest.raises(TypeError, match=r"model: expected a LiT model .* got a 'encoder' model"):
        encode_images(enc, _images(1))
    model = aimv2.build(SPEC, INSTALLED[0])
    with pytest.raises(ValueError, match="tokenizer: required"):
        zero_shot(model, _images(1), WORDS)
    with pytest.raises(ValueError, match=r"images: expected a batch \(B, C, H, W\)"):
        encode_images(model, np.zeros((3, 16, 16), np.float32))


def test_recall_at_k_by_hand():
    sim = np.array([[0.9, 0.5, 0.1], [0.2, 0.3, 0.8], [0.7, 0.6, 0.65]])
    # query 0: item 0 first; query 1: item 1 second; query 2: item 2 second
    assert recall_at_k(sim, np.eye(3, dtype=bool), ks=(1, 2)) == {"R@1": 1 / 3, "R@2": 1.0}
    img = np.eye(3)
    txt = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0], [0.6, 0.8, 0]])
    owner = np.array([0, 2, 1, 1])  # image 1 has two captions; caption 3 is closer to image 1
    r = retrieval_metrics(img, txt, owner, ks=(1, 2))
    assert r["image_to_text"] == {"R@1": 1.0, "R@2": 1.0}
    assert r["text_to_image"] == {"R@1": 1.0, "R@2": 1.0}
    swapped = retrieval_metrics(img, txt, np.array([1, 2, 0, 1]), ks=(1,))
    assert swapped["text_to_image"]["R@1"] == 0.5  # captions 1 and 3 still find theirs
    with pytest.raises(ValueError, match="text_image: expected one image index"):
        retrieval_metrics(img, txt, np.array([0, 1, 2]))


def _clip_style_tokenizer(folder):
    """A tiny BPE trained on the digit captions with CLIP's special tokens at the end of
    the vocabulary (bos = vocab − 2, eos = pad = vocab − 1), saved as a released folder
    holds it."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=100, show_progress=False)
    tok.train_from_iterator(builtin_captions("builtin:digits"), trainer)
    tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"})
    )
    return tok.get_vocab_size()


def test_clip_bpe_tokenizer_of_a_released_folder(tmp_path):
    vocab = _clip_style_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, BPETokenizer)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (
        vocab,
        vocab - 2,
        vocab - 1,
        vocab - 1,
    )
    ids = tok.encode(["The digit SEVEN", "a handwritten digit seven written by hand " * 4], 10)
    assert ids[0, 0] == tok.bos_id and ids[1, 0] == tok.bos_id
    pieces = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(
        "The digit SEVEN", add_special_tokens=False
    )
    end = 1 + len(pieces.ids)
    assert ids[0, 1:end].tolist() == pieces.ids and (ids[0, end:] == tok.eos_id).all()
    assert ids[1, -1] == tok.eos_id  # cut, eos kept
    assert tok.decode(ids[:1])[0].replace(" ", "") == "thedigitseven"  # no decoder in this file
    with pytest.raises(ValueError, match=r"texts\[1\]: .* does not fit .* context of 10 tokens"):
        tokenize(tok, ["the digit seven", "a handwritten digit seven written by hand " * 4], 10)


def _released_folder(tmp_path, backend):
    """A LiT model with the CLIP-style tokenizer, exported as a transformers folder that
    also holds tokenizer.json."""
    folder = tmp_path / "released"
    folder.mkdir()
    vocab = _clip_style_tokenizer(tmp_path)
    enc = SPEC.image_encoder.replace(head=SPEC.image_encoder.head.replace(heads=2))
    txt = S.text_encoder_spec(32, 2, 2, vocab_size=vocab, context_length=12, mlp_hidden=64)
    spec = S.lit_spec(enc, txt, 24)
    model = aimv2.build(spec, backend, weights=random_weights(spec, 4))
    formats.save_pretrained(model, folder, format="transformers", overwrite=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tmp_path / name).read_bytes())
    return folder, spec


def test_released_folder_brings_its_tokenizer_and_the_commands_write_json(
    tmp_path, backend, capsys
):
    from aimv2.cli import main

    folder, spec = _released_folder(tmp_path, backend)
    model = load_lit(folder, backend)
    assert model.spec == spec and isinstance(model.tokenizer, BPETokenizer)
    logits = aimv2.load_backend(backend).to_numpy(
        zero_shot(model, _images(2), WORDS, ["the digit {}"])
    )
    assert logits.shape == (2, 4)
    classes = ",".join(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    )
    base = ["--checkpoint", str(folder), "--backend", backend, "--quiet"]
    out = tmp_path / "zs.json"
    assert (
        main(
            [
                "zeroshot",
                *base,
                "--classes",
                classes,
                "--template",
                "the digit {}",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["images"] == 359 and r["split"] == "heldout" and len(r["per_class_top1"]) == 10
    assert f"top-1 {r['top1']:.4f}" in printed and "top5" in r
    assert main(["retrieval", *base, "--out", str(tmp_path / "ret")]) == 0
    r = json.loads((tmp_path / "ret" / "retrieval.json").read_text())
    assert set(r["image_to_text"]) == {"R@1", "R@5", "R@10"} and r["pairs"] == 359
    assert "image->text R@1" in capsys.readouterr().out


def test_commands_refuse_what_is_not_a_lit_model(tmp_path, capsys):
    from aimv2.cli import main

    enc_dir = formats.save_pretrained(aimv2.build(SPEC.image_encoder, INSTALLED[0]), tmp_path / "e")
    args = ["--checkpoint", str(enc_dir), "--backend", INSTALLED[0], "--quiet"]
    assert main(["zeroshot", *args, "--classes", "a,b"]) == 2
    assert "holds an AIMv2 image encoder, not a LiT model" in capsys.readouterr().err
    ck = aimv2.checkpoint.save(
        tmp_path / "run",
        1,
        aimv2.presets.get("aimv2-test-tiny"),
        aimv2.init_weights(aimv2.presets.get("aimv2-test-tiny")),
    )
    assert main(["retrieval", "--checkpoint", str(ck), "--quiet"]) == 2
    assert "holds an AIMv2 pre-training model" in capsys.readouterr().err
    with pytest.raises(LitError, match="no such file or folder"):
        load_lit(tmp_path / "nothing", INSTALLED[0])
    lit_dir = formats.save_pretrained(aimv2.build(SPEC, INSTALLED[0]), tmp_path / "lit")
    assert main(["zeroshot", "--checkpoint", str(lit_dir), "--classes", "a,b", "--quiet"]) == 2
    assert "tokenizer: required" in capsys.readouterr().err  # no tokenizer in a bare aimv2 dir
    zs = ["zeroshot", "--checkpoint", str(lit_dir), "--tokenizer", "builtin:digits", "--quiet"]
    assert main([*zs, "--classes", "a,b,A"]) == 2
    assert "class_names[2]: 'A' repeats class_names[0]" in capsys.readouterr().err
    assert main([*zs, "--classes", "a,b"]) == 2
    assert "2 classes, but the labels of 'builtin:digits' go up to 9" in capsys.readouterr().err
    big = aimv2.presets.get("aimv2-large-patch14-224-lit")
    with pytest.raises(
        LitError, match="its end-of-text id is 2 but the text tower pools eos_id=49407"
    ):
        aimv2.lit.run_tokenizer("builtin:digits", big)
