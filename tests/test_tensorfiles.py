"""aimv2.tensorfiles: safetensors through the safetensors package — round trips, bf16
rounding, MLX and torch interop, malformed files as FormatError naming the file, atomic
writes."""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest

from aimv2 import tensorfiles
from aimv2.tensorfiles import FormatError, iter_tensors, load_file, read_header, save_file

NP_OF_CODE = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _sample(dt, shape, seed=0):
    rng = np.random.default_rng(seed)
    if dt == np.bool_:
        return rng.random(shape) > 0.5
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    return (rng.standard_normal(shape) * 100).astype(dt)


def _raw_file(header: dict | bytes, data: bytes = b"") -> bytes:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


@pytest.mark.parametrize("code", list(NP_OF_CODE))
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (5,), (2, 3, 4)])
def test_round_trip_every_dtype(tmp_path, code, shape):
    x = _sample(NP_OF_CODE[code], shape)
    path = save_file({"x": x}, tmp_path / "a.safetensors", metadata={"k": "v"})
    infos, meta = read_header(path)
    assert infos["x"] == tensorfiles.TensorInfo(code, shape) and meta == {"k": "v"}
    got = load_file(path)["x"]
    assert got.dtype == x.dtype and got.shape == shape
    np.testing.assert_array_equal(got, x)


def test_bf16_rounds_to_nearest_even_like_torch(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(10_000) * 1e3, [1.00390625, 1.01171875, 3.4e38]])
    x = x.astype(np.float32)
    path = save_file({"x": x}, tmp_path / "b.safetensors", dtype="bfloat16")
    ours = load_file(path)["x"].view(np.uint16)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)
    assert load_file(path, dtype="float32")["x"][-3] == 1.0  # a tie rounds to even


def test_files_written_by_mlx_and_torch_load_here_and_back(tmp_path):
    mx = pytest.importorskip("mlx.core")
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as torch_save

    x = (np.random.default_rng(3).standard_normal((3, 5)) * 50).astype(np.float32)
    mx.save_safetensors(
        str(tmp_path / "m.safetensors"),
        {"f32": mx.array(x), "bf16": mx.array(x).astype(mx.bfloat16), "i": mx.array(7)},
        metadata={"from": "mlx"},
    )
    torch_save({"bf16": torch.from_numpy(x).bfloat16()}, str(tmp_path / "t.safetensors"))
    infos, meta = read_header(tmp_path / "m.safetensors")
    assert meta == {"from": "mlx"} and infos["bf16"].dtype == "BF16" and infos["i"].shape == ()
    from_mlx, from_torch = (
        load_file(tmp_path / "m.safetensors"),
        load_file(tmp_path / "t.safetensors"),
    )
    np.testing.assert_array_equal(from_mlx["f32"], x)
    np.testing.assert_array_equal(from_mlx["bf16"], from_torch["bf16"])
    ours = save_file({"bf16": x}, tmp_path / "o.safetensors", dtype="bfloat16")
    back = mx.load(str(ours))["bf16"]
    assert back.dtype == mx.bfloat16
    np.testing.assert_array_equal(
        np.array(back.astype(mx.float32)), from_torch["bf16"].astype(np.float32)
    )


def test_reading_a_subset_one_tensor_at_a_time(tmp_path):
    path = save_file(
        {f"t{i}": np.full(4, i, np.float32) for i in range(5)}, tmp_path / "s.safetensors"
    )
    assert [n for n, _ in iter_tensors(path, names=["t3", "t1"])] == ["t3", "t1"]
    assert load_file(path, names=["t4"])["t4"].tolist() == [4.0] * 4
    with pytest.raises(KeyError, match=r"no tensor named \['nope'\]"):
        load_file(path, names=["nope"])


def test_save_rejects_bad_input_clearly(tmp_path):
    with pytest.raises(TypeError, match="tensor 'a': expected a numeric array"):
        save_file({"a": np.array(["x"])}, tmp_path / "a.safetensors")
    with pytest.raises(TypeError, match="tensor name 3"):
        save_file({3: np.ones(1)}, tmp_path / "a.safetensors")
    with pytest.raises(TypeError, match="metadata: expected str -> str"):
        save_file({"a": np.ones(1)}, tmp_path / "a.safetensors", metadata={"k": 1})
    with pytest.raises(ValueError, match="dtype='int4'"):
        save_file({"a": np.ones(1)}, tmp_path / "a.safetensors", dtype="int4")
    assert os.listdir(tmp_path) == []


F32_2 = {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"", "header too small"),
        (b"\x01\x02\x03", "header too small"),
        (struct.pack("<Q", 10**6) + b"{}", "invalid header length"),
        (_raw_file(b"{not json"), "invalid JSON in header"),
        (_raw_file(b"\xff\xfe{}"), "invalid UTF-8 in header"),
        (_raw_file(b"[1, 2]"), "invalid JSON in header"),
        (_raw_file(F32_2, b"\0" * 4), "file not fully covered"),
        (
            _raw_file({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
            "invalid shape, data type, or offset",
        ),
        (
            _raw_file({"x": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
            "unknown variant `Q7`",
        ),
        (
            _raw_file({"x": {"dtype": "F32", "shape": [2]}}, b"\0" * 8),
            "missing field `data_offsets`",
        ),
        (
            _raw_file({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8),
            "invalid value: integer `-2`",
        ),
        (
            _raw_file(
                {
                    "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
                },
                b"\0" * 12,
            ),
            "invalid offset for tensor `y`",
        ),
        (
            _raw_file({"x": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
            "invalid offset for tensor `x`",
        ),
        (_raw_file(F32_2, b"\0" * 12), "file not fully covered"),
        (_raw_file({"__metadata__": {"a": 1}}), "expected a string"),
    ],
)
def test_malformed_files_raise_format_error_naming_the_file(tmp_path, content, pattern):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(content)
    for call in (read_header, load_file, lambda p: list(iter_tensors(p))):
        with pytest.raises(FormatError, match=pattern) as err:
            call(path)
        assert str(path) in str(err.value) and isinstance(err.value, ValueError)


def test_truncated_real_file_and_missing_file(tmp_path):
    good = save_file({"a": np.arange(100, dtype=np.float32)}, tmp_path / "good.safetensors")
    raw = good.read_bytes()
    for cut in (4, 20, len(raw) - 1):
        path = tmp_path / "cut.safetensors"
        path.write_bytes(raw[:cut])
        with pytest.raises(FormatError, match="cut.safetensors: not a valid safetensors file"):
            load_file(path)
    with pytest.raises(FormatError, match="nope.safetensors: cannot read"):
        read_header(tmp_path / "nope.safetensors")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = save_file({"old": np.arange(3.0)}, tmp_path / "ckpt.safetensors")
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(tensorfiles, "_save_numpy", disk_full)
    with pytest.raises(OSError, match="simulated"):
        save_file({"a": np.ones(1000)}, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ckpt.safetensors"]
    with pytest.raises(OSError):
        save_file({"a": np.ones(10)}, tmp_path / "new.safetensors")
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]
    monkeypatch.undo()
    save_file({"b": np.ones(3, np.float16)}, path)
    assert list(load_file(path)) == ["b"] and os.listdir(tmp_path) == ["ckpt.safetensors"]
