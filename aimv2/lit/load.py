"""Finding LiT models and their parts: :func:`load_lit` for a trained model (a LiT run of
this library or a released folder, with its tokenizer), :func:`image_tower` for the image
encoder a LiT run starts from, :func:`run_tokenizer` for a run's tokenizer.

Example:
    >>> load_lit("/no/such/run", "torch")
    Traceback (most recent call last):
    ...
    aimv2.lit.config.LitError: checkpoint '/no/such/run': no such file or folder
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint, presets
from .. import specs as S
from ..backend import build, get_weights
from ..formats import FormatError, detect, from_pretrained
from ..weights import init_weights
from .config import LitError
from .tokenizer import load_tokenizer

__all__ = ["load_lit", "image_tower", "run_tokenizer", "check_tokenizer"]


def _checkpoint_dir(p: Path) -> Path | None:
    """The checkpoint a path names (itself, or a run's newest), or None for other files."""
    if p.name == "state.json":
        return p.parent
    if p.is_dir() and (p / "state.json").is_file():
        return p
    if p.is_dir():
        return checkpoint.latest(p)
    return None


def check_tokenizer(tok: Any, spec: S.LiTSpec, where: str) -> Any:
    """``tok`` after checking it suits the text tower (same eos, ids within its vocab).

    Example:
        >>> import aimv2
        >>> from aimv2.text import builtin_tokenizer
        >>> check_tokenizer(builtin_tokenizer("builtin:digits", 64),
        ...                 aimv2.presets.get("aimv2-large-patch14-224-lit"), "--tokenizer")
        Traceback (most recent call last):
        ...
        aimv2.lit.config.LitError: --tokenizer: its end-of-text id is 2 but the text tower pools eos_id=49407; use the model's own tokenizer
    """
    txt = spec.text_encoder
    if tok.eos_id != txt.eos_id:
        raise LitError(
            f"{where}: its end-of-text id is {tok.eos_id} but the text tower pools "
            f"eos_id={txt.eos_id}; use the model's own tokenizer"
        )
    if tok.vocab_size > txt.vocab_size:
        raise LitError(
            f"{where}: {tok.vocab_size} ids but the text tower's vocab_size is {txt.vocab_size}"
        )
    return tok


def run_tokenizer(ref: str | None, spec: S.LiTSpec) -> Any:
    """The tokenizer a LiT run recorded (a built-in set's name or a file), checked.

    Example:
        >>> import aimv2
        >>> run_tokenizer("builtin:digits", aimv2.presets.get("aimv2-lit-test-tiny")).eos_id
        2
    """
    if ref is None:
        return None
    try:
        tok = load_tokenizer(ref, vocab_size=spec.text_encoder.vocab_size)
    except (FileNotFoundError, ValueError) as err:
        raise LitError(f"tokenizer: {err}") from None
    return check_tokenizer(tok, spec, f"tokenizer {ref!r}")


def load_lit(
    path: str | os.PathLike,
    backend: str = "torch",
    *,
    tokenizer: str | None = None,
    dtype: Any = None,
    device: Any = None,
) -> Any:
    """A LiT model from a LiT run or checkpoint of this library, or a released LiT file or
    folder in any layout (official, MLX, transformers ``Aimv2Model``). Its tokenizer —
    ``tokenizer`` if given, else the run's, else the folder's ``tokenizer.json`` — is
    attached as ``model.tokenizer`` (None when there is none). Anything else (an encoder, a
    pre-training run) is a :class:`LitError` that says what it holds.

    Example:
        >>> import tempfile, aimv2
        >>> enc_dir = aimv2.save_pretrained(
        ...     aimv2.build(aimv2.presets.get("aimv2-test-tiny").encoder), tempfile.mkdtemp() + "/e")
        >>> load_lit(enc_dir, "torch")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        aimv2.lit.config.LitError: checkpoint '...': holds an AIMv2 image encoder, not a LiT model (image and text towers); LiT-tune it with 'aimv2 lit --image-encoder ...'
    """
    p = Path(os.fspath(path))
    where = f"checkpoint {str(p)!r}"
    if not p.exists():
        raise LitError(f"{where}: no such file or folder")
    ck_dir = _checkpoint_dir(p)
    ref = None
    if ck_dir is not None:
        try:
            ck = checkpoint.load(ck_dir, optimizer=False)
        except checkpoint.CheckpointError as err:
            raise LitError(str(err)) from None
        spec = ck.spec
        _require_lit(spec, where)
        model = build(spec, backend, weights=ck.weights, dtype=dtype, device=device)
        ref = ck.state.get("tokenizer")
    else:
        try:
            spec = detect(p).spec
        except (FormatError, ValueError) as err:
            raise LitError(f"{where}: {err}") from None
        _require_lit(spec, where)
        model = from_pretrained(p, backend=backend, dtype=dtype, device=device)
        folder = p if p.is_dir() else p.parent
        if (folder / "tokenizer.json").is_file():
            ref = str(folder / "tokenizer.json")
    model.tokenizer = run_tokenizer(tokenizer or ref, spec)
    return model


def _require_lit(spec: S.Spec, where: str) -> None:
    if isinstance(spec, S.LiTSpec):
        return
    if isinstance(spec, S.ModelSpec) and spec.decoder is not None:
        what = "an AIMv2 pre-training model (encoder and decoder)"
    elif isinstance(spec, (S.EncoderSpec, S.ModelSpec)):
        what = "an AIMv2 image encoder"
    else:
        what = f"a {spec.kind!r}"
    raise LitError(
        f"{where}: holds {what}, not a LiT model (image and text towers); LiT-tune it with "
        f"'aimv2 lit --image-encoder ...'"
    )


def image_tower(
    ref: str | None, base: S.LiTSpec, seed: int, backend: str
) -> tuple[S.EncoderSpec, dict[str, np.ndarray], bool]:
    """(encoder spec with a pooling head, its weights, whether the head came with them)
    for ``ref``: a checkpoint in any format (a LiT model's image tower, an AIMv2 run, a
    released encoder), a preset name (random init from ``seed``, as ``aimv2.build``), or
    None (``base``'s tower at random init). A tower without a head gets ``base``'s when the
    widths agree, else an 8-head one.

    Example:
        >>> spec, w, own = image_tower("aimv2-test-tiny", presets.get("aimv2-lit-test-tiny"), 0,
        ...                            "torch")
        >>> spec.head.heads, own, "head.cls_token" in w
        (8, False, False)
    """
    if ref is None:
        enc = base.image_encoder
        return enc, init_weights(enc, seed), False
    p = Path(ref)
    if not p.exists() and ref in presets.names():
        enc = presets.get(ref).encoder.replace(head=None)  # random init: no head of its own
        weights = init_weights(enc, seed)
    else:
        if not p.exists():
            raise LitError(f"--image-encoder {ref!r}: no such checkpoint or preset")
        ck_dir = _checkpoint_dir(p)
        try:
            if ck_dir is not None:
                enc, weights = checkpoint.encoder_of(checkpoint.load(ck_dir, optimizer=False))
            else:
                found = detect(p).spec
                enc = found.encoder if isinstance(found, S.LiTSpec) else found
                weights = get_weights(from_pretrained(p, backend=backend, preset=enc))
        except (checkpoint.CheckpointError, FormatError, ValueError) as err:
            raise LitError(f"--image-encoder {ref!r}: {err}") from None
    own = enc.head is not None
    if not own:
        head = base.image_encoder.head
        if head.width != enc.width:
            head = S.lit_spec(enc, base.text_encoder, base.embed_dim).image_encoder.head
        enc = enc.replace(head=head)
        weights = {k: v for k, v in weights.items() if not k.startswith("head.")}
    return enc, weights, own
