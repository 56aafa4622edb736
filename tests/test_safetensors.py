"""aimv2.safetensors: format round trips, bf16 rounding, MLX interop, corrupt files, atomicity."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from aimv2 import safetensors as st
from aimv2.safetensors import (
    BFloat16,
    SafetensorsError,
    TensorInfo,
    from_bf16_bits,
    iter_tensors,
    load_file,
    read_header,
    save_file,
    to_bf16_bits,
)

NP_OF_CODE = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
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


# --------------------------------------------------------------------- round trips


@pytest.mark.parametrize("code", list(NP_OF_CODE))
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (5,), (2, 3, 4)])
def test_round_trip_every_dtype(tmp_path, code, shape):
    dt = NP_OF_CODE[code]
    x = _sample(dt, shape)
    path = tmp_path / "x.safetensors"
    save_file({"x": x}, path)
    infos, meta = read_header(path)
    assert meta == {}
    assert infos["x"].dtype == code and infos["x"].shape == shape
    # dtype=None keeps every stored dtype (F16 stays float16).
    y = load_file(path, dtype=None)["x"]
    assert y.dtype == dt and y.shape == shape
    np.testing.assert_array_equal(y, x)
    # The default converts half precision to float32 and nothing else.
    z = load_file(path)["x"]
    assert z.dtype == (np.float32 if code == "F16" else dt)
    np.testing.assert_array_equal(z, x.astype(z.dtype))


def test_layout_is_spec_conformant(tmp_path):
    path = tmp_path / "m.safetensors"
    tensors = {"b": np.arange(3, dtype=np.int16), "a": np.float32(1.5), "c": np.zeros((0, 4))}
    save_file(tensors, path, metadata={"format": "pt", "note": "ü"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and 8 + n <= len(raw)
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    assert header.pop("__metadata__") == {"format": "pt", "note": "ü"}
    assert list(header) == ["a", "b", "c"]  # sorted by name
    assert header["a"] == {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}
    assert header["b"] == {"dtype": "I16", "shape": [3], "data_offsets": [4, 10]}
    assert header["c"] == {"dtype": "F64", "shape": [0, 4], "data_offsets": [10, 10]}
    data = raw[8 + n :]
    assert data == struct.pack("<f", 1.5) + struct.pack("<3h", 0, 1, 2)


def test_big_endian_and_strided_inputs_are_written_little_endian_c_order(tmp_path):
    x = np.arange(12, dtype=">f4").reshape(3, 4)
    path = tmp_path / "be.safetensors"
    save_file({"t": x.T, "s": x[:, ::2]}, path)
    out = load_file(path)
    np.testing.assert_array_equal(out["t"], x.T)
    np.testing.assert_array_equal(out["s"], x[:, ::2])
    assert out["t"].dtype == np.dtype("float32")
    assert path.read_bytes()[-4:] == struct.pack("<f", 11.0)  # last element of "t"


def test_pairs_input_and_pathlike_and_str_path(tmp_path):
    save_file([("a", np.ones(2)), ("b", np.zeros(1))], str(tmp_path / "p.safetensors"))
    assert list(load_file(tmp_path / "p.safetensors")) == ["a", "b"]


def test_read_header_returns_tensor_info(tmp_path):
    path = tmp_path / "h.safetensors"
    save_file({"w": np.zeros((2, 3), np.float32)}, path, metadata={"k": "v"}, dtype="bf16")
    infos, meta = read_header(path)
    assert infos == {"w": TensorInfo("BF16", (2, 3), (0, 12))}
    assert infos["w"].nbytes == 12 and infos["w"].size == 6
    assert meta == {"k": "v"}


# --------------------------------------------------------------------- bfloat16


def _bf16_reference(x: np.ndarray) -> np.ndarray:
    """Correctly rounded (nearest, ties-to-even) bf16 bits for finite x, built independently
    from torch's bf16 -> float table and a search over every positive bf16 value."""
    torch = pytest.importorskip("torch")
    bits = torch.arange(0x7F81, dtype=torch.int16)  # +0 .. +inf
    vals = bits.view(torch.bfloat16).double().numpy().copy()
    vals[-1] = 2.0**128  # rounding treats overflow as the next binade, which is inf
    x = np.asarray(x, np.float64)
    mag = np.abs(x)
    hi = np.clip(np.searchsorted(vals, mag, side="left"), 1, len(vals) - 1)
    lo = hi - 1
    d_lo, d_hi = mag - vals[lo], vals[hi] - mag
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    pick = np.where(mag == vals[hi], hi, np.where(pick_hi, hi, lo))
    pick = np.where(mag >= 2.0**128, 0x7F80, pick)
    return (pick | np.where(np.signbit(x), 0x8000, 0)).astype(np.uint16)


def test_bf16_exact_on_representable_values():
    bits = np.arange(0, 0x10000, dtype=np.uint32).astype(np.uint16)
    vals = from_bf16_bits(bits)
    finite, nan = np.isfinite(vals), np.isnan(vals)
    with np.errstate(invalid="ignore"):  # signalling NaNs warn when widened
        wide = vals.astype(np.float64)
    for src in (vals, wide):
        back = to_bf16_bits(src)
        np.testing.assert_array_equal(back[finite], bits[finite])
        np.testing.assert_array_equal(back[np.isinf(vals)], bits[np.isinf(vals)])
        assert np.isnan(from_bf16_bits(back[nan])).all()


def test_bf16_round_to_nearest_even_ties_and_overflow():
    one = 1.0
    ulp = 2.0**-7  # bf16 spacing in [1, 2)
    x = np.array(
        [
            one + ulp / 2,  # tie -> even (1.0)
            one + 3 * ulp / 2,  # tie -> even (1 + 2 ulp)
            one + ulp / 2 + 2.0**-20,  # just above the tie -> up
            one + ulp / 2 - 2.0**-20,  # just below -> down
            -(one + 3 * ulp / 2),
            3.395e38,  # just below the midpoint past bf16 max (3.3895e38) -> max
            3.397e38,  # past that midpoint (3.3962e38), still a finite float32 -> inf
            1e-45,  # float32 subnormal -> rounds to 0
        ],
        dtype=np.float32,
    )
    expected = [0x3F80, 0x3F82, 0x3F81, 0x3F80, 0xBF82, 0x7F7F, 0x7F80, 0x0000]
    assert np.isfinite(x).all()
    assert to_bf16_bits(x).tolist() == expected
    # NaNs stay NaN, including those whose payload lives only in the dropped low bits.
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FBFFFFF], np.uint32)
    nan_bits = to_bf16_bits(nans.view(np.float32))
    assert np.isnan(from_bf16_bits(nan_bits)).all()
    with np.errstate(invalid="ignore"):
        assert np.isnan(
            from_bf16_bits(to_bf16_bits(nans.view(np.float32).astype(np.float64)))
        ).all()


def test_bf16_float64_is_rounded_once_not_via_float32():
    # 1 + 2^-8 + 2^-40 rounds to 1 + 2^-8 in float32 (a bf16 tie that goes to 1.0),
    # but the correctly rounded bf16 value is 1 + 2^-7.
    x = np.array([1 + 2.0**-8 + 2.0**-40, -(1 + 2.0**-8 + 2.0**-40)])
    assert to_bf16_bits(x).tolist() == [0x3F81, 0xBF81]
    assert to_bf16_bits(x.astype(np.float32)).tolist() == [0x3F80, 0xBF80]


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_bf16_matches_independent_reference_on_random_values(dt):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(20000) * np.exp2(rng.integers(-140, 130, 20000))
    # Exact ties between neighbours, which are where round-to-nearest-even matters.
    b = rng.integers(0, 0x7F7F, 2000).astype(np.uint16)
    lo = from_bf16_bits(b).astype(np.float64)
    hi = from_bf16_bits(b + 1).astype(np.float64)
    with np.errstate(over="ignore"):
        x = np.concatenate([x, (lo + hi) / 2, -(lo + hi) / 2]).astype(dt)
    x = x[np.isfinite(x)]
    np.testing.assert_array_equal(to_bf16_bits(x), _bf16_reference(x))


def test_bf16_float32_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(5000) * 10).astype(np.float32)
    ours = to_bf16_bits(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)


def test_save_with_bf16_dtype_and_wrapper(tmp_path):
    path = tmp_path / "b.safetensors"
    x32 = np.array([1.0, 1 + 2.0**-8, 3.14159, -0.0], np.float32)
    tensors = {
        "f32": x32,
        "f64": x32.astype(np.float64),
        "f16": np.array([0.5, 65504.0], np.float16),
        "ints": np.arange(4, dtype=np.int32),  # never cast
        "wrapped": BFloat16.from_float(x32),
    }
    save_file(tensors, path, dtype="bf16")
    infos, _ = read_header(path)
    assert {k: v.dtype for k, v in infos.items()} == {
        "f16": "BF16",
        "f32": "BF16",
        "f64": "BF16",
        "ints": "I32",
        "wrapped": "BF16",
    }
    out = load_file(path)
    assert out["f32"].dtype == np.float32
    np.testing.assert_array_equal(out["f32"], [1.0, 1.0, 3.140625, -0.0])
    assert np.signbit(out["f32"][3])
    np.testing.assert_array_equal(out["f64"], out["f32"])
    np.testing.assert_array_equal(out["f16"], [0.5, 65536.0])
    np.testing.assert_array_equal(out["wrapped"], out["f32"])
    np.testing.assert_array_equal(out["ints"], np.arange(4))
    # dtype= converts half precision to any float dtype; None returns BF16 as float32.
    assert load_file(path, dtype=np.float64)["f32"].dtype == np.float64
    assert load_file(path, dtype=None)["f32"].dtype == np.float32
    assert load_file(path, dtype=np.float16)["f32"].dtype == np.float16
    # Re-saving the float32 values as bf16 reproduces the identical file.
    path2 = tmp_path / "b2.safetensors"
    save_file(out, path2, dtype="bf16")
    assert path2.read_bytes() == path.read_bytes()


def test_save_dtype_f16_and_numpy_dtype(tmp_path):
    path = tmp_path / "h.safetensors"
    save_file({"a": np.array([1.0, 2.5])}, path, dtype=np.float16)
    assert read_header(path)[0]["a"].dtype == "F16"
    save_file({"a": np.array([1.0, 2.5], np.float16)}, path, dtype="f64")
    assert load_file(path)["a"].dtype == np.float64


def test_bfloat16_wrapper_validation():
    with pytest.raises(TypeError, match="uint16"):
        BFloat16(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="floating"):
        to_bf16_bits(np.arange(3))
    assert BFloat16(np.array([0x4000], np.int16)).to_float32().tolist() == [2.0]


# --------------------------------------------------------------------- MLX interop


MLX_DTYPES = ["F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"]


def _mx_dtype(mx, code):
    return {
        "F32": mx.float32,
        "F16": mx.float16,
        "BF16": mx.bfloat16,
        "I64": mx.int64,
        "I32": mx.int32,
        "I16": mx.int16,
        "I8": mx.int8,
        "U64": mx.uint64,
        "U32": mx.uint32,
        "U16": mx.uint16,
        "U8": mx.uint8,
        "BOOL": mx.bool_,
    }[code]


def _mx_to_numpy(mx, a):
    if a.dtype == mx.bfloat16:
        return from_bf16_bits(np.array(a.view(mx.uint16)))
    return np.array(a)


def test_files_written_by_mlx_load_here(tmp_path):
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(3)
    arrays = {}
    for code in MLX_DTYPES:
        x = (rng.standard_normal((3, 5)) * 50).astype(np.float32)
        arrays[code.lower()] = mx.array(x).astype(_mx_dtype(mx, code))
    arrays["scalar"] = mx.array(7, dtype=mx.int32)
    arrays["empty"] = mx.zeros((0, 3), dtype=mx.bfloat16)
    path = tmp_path / "mlx.safetensors"
    mx.save_safetensors(str(path), arrays, metadata={"from": "mlx"})

    infos, meta = read_header(path)
    assert meta == {"from": "mlx"}
    ours = load_file(path, dtype=None)
    for code in MLX_DTYPES:
        assert infos[code.lower()].dtype == code
        np.testing.assert_array_equal(ours[code.lower()], _mx_to_numpy(mx, arrays[code.lower()]))
    assert ours["scalar"].shape == () and ours["scalar"] == 7
    assert ours["empty"].shape == (0, 3) and ours["empty"].dtype == np.float32


def test_files_written_here_load_in_mlx(tmp_path):
    mx = pytest.importorskip("mlx.core")
    tensors = {
        code.lower(): _sample(NP_OF_CODE[code], (4, 3)) for code in MLX_DTYPES if code != "BF16"
    }
    tensors["scalar"] = np.float16(2.5)
    tensors["empty"] = np.zeros((2, 0), np.int8)
    src = (np.random.default_rng(4).standard_normal((4, 3)) * 3).astype(np.float32)
    tensors["bf16"] = BFloat16.from_float(src)
    path = tmp_path / "ours.safetensors"
    save_file(tensors, path, metadata={"from": "aimv2"})

    loaded, meta = mx.load(str(path), return_metadata=True)
    assert meta == {"from": "aimv2"}
    assert set(loaded) == set(tensors)
    assert loaded["bf16"].dtype == mx.bfloat16
    np.testing.assert_array_equal(np.array(loaded["bf16"].view(mx.uint16)), tensors["bf16"].bits)
    for name, x in tensors.items():
        if name == "bf16":
            continue
        got = np.array(loaded[name])
        assert got.dtype == np.asarray(x).dtype, name
        np.testing.assert_array_equal(got, x)

    # And MLX's own float32 -> bf16 cast agrees with ours bit for bit.
    mx_bits = np.array(mx.array(src).astype(mx.bfloat16).view(mx.uint16))
    np.testing.assert_array_equal(mx_bits, to_bf16_bits(src))


# --------------------------------------------------------------------- partial reads


def test_iter_tensors_and_subsets(tmp_path):
    path = tmp_path / "s.safetensors"
    tensors = {f"t{i}": np.full((64, 64), i, np.float32) for i in range(8)}
    save_file(tensors, path)
    seen = []
    for name, arr in iter_tensors(path):
        seen.append(name)
        np.testing.assert_array_equal(arr, tensors[name])
    assert seen == sorted(tensors)
    assert [n for n, _ in iter_tensors(path, names=["t5", "t1"])] == ["t5", "t1"]
    sub = load_file(path, names=["t6", "t2"])
    assert list(sub) == ["t6", "t2"]
    np.testing.assert_array_equal(sub["t2"], tensors["t2"])


def test_loading_a_subset_reads_only_that_subset(tmp_path, monkeypatch):
    path = tmp_path / "big.safetensors"
    save_file({f"t{i}": np.full(100_000, i, np.float32) for i in range(10)}, path)
    size = path.stat().st_size
    counted = {"bytes": 0}
    real_open = open

    class Counting:
        def __init__(self, f):
            self._f = f

        def read(self, n=-1):
            b = self._f.read(n)
            counted["bytes"] += len(b)
            return b

        def readinto(self, buf):
            k = self._f.readinto(buf)
            counted["bytes"] += k or 0
            return k

        def __getattr__(self, attr):
            return getattr(self._f, attr)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(st, "open", lambda p, mode="r": Counting(real_open(p, mode)), raising=False)
    out = load_file(path, names=["t3"])
    np.testing.assert_array_equal(out["t3"], np.full(100_000, 3, np.float32))
    assert 400_000 <= counted["bytes"] < 400_000 + 1000 < size
    counted["bytes"] = 0
    it = iter_tensors(path)
    next(it)
    it.close()
    assert counted["bytes"] < 2 * 400_000 + 2000


def test_load_missing_name_and_bad_arguments(tmp_path):
    path = tmp_path / "n.safetensors"
    save_file({"a": np.zeros(1)}, path)
    with pytest.raises(KeyError, match="'nope'"):
        load_file(path, names=["a", "nope"])
    with pytest.raises(KeyError, match="nope"):
        iter_tensors(path, names=["nope"])  # validated eagerly, before iteration
    with pytest.raises(TypeError, match="names"):
        load_file(path, names="a")
    with pytest.raises(TypeError, match="dtype"):
        load_file(path, dtype=np.int32)
    with pytest.raises(TypeError, match="path"):
        load_file(3)


# --------------------------------------------------------------------- bad input on save


def test_save_rejects_bad_input_clearly(tmp_path):
    path = tmp_path / "bad.safetensors"
    with pytest.raises(TypeError, match=r"names must be str.*int 3"):
        save_file({3: np.zeros(1)}, path)
    with pytest.raises(TypeError, match=r"'obj'.*dtype object"):
        save_file({"obj": np.array([1, "a"], dtype=object)}, path)
    with pytest.raises(TypeError, match=r"'c'.*complex"):
        save_file({"c": np.zeros(2, np.complex64)}, path)
    with pytest.raises(TypeError, match=r"'l'.*NumPy array.*list"):
        save_file({"l": [1.0, 2.0]}, path)
    with pytest.raises(ValueError, match="duplicate tensor name 'a'"):
        save_file([("a", np.zeros(1)), ("a", np.ones(1))], path)
    with pytest.raises(ValueError, match="reserved"):
        save_file({"__metadata__": np.zeros(1)}, path)
    with pytest.raises(TypeError, match="metadata must map str -> str"):
        save_file({"a": np.zeros(1)}, path, metadata={"epoch": 3})
    with pytest.raises(ValueError, match="dtype must be"):
        save_file({"a": np.zeros(1)}, path, dtype="int8")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_file({"a": np.zeros(1)}, tmp_path / "missing" / "x.safetensors")
    with pytest.raises(IsADirectoryError):
        save_file({"a": np.zeros(1)}, tmp_path)
    assert not path.exists()
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------- corrupt files


def _write(tmp_path, content: bytes):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(content)
    return path


F32_2 = {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"", "shorter than the 8-byte"),
        (b"\x01\x02\x03", "shorter than the 8-byte"),
        (struct.pack("<Q", 10**6) + b"{}", "header length 1000000 exceeds"),
        (_raw_file(b"{not json"), "not valid JSON"),
        (_raw_file(b"\xff\xfe{}"), "not valid UTF-8"),
        (_raw_file(b"[1, 2]"), "must be a JSON object"),
        (_raw_file(b'{"a": 1, "a": 2}'), "duplicate key 'a'"),
        (_raw_file(F32_2, b"\0" * 4), r"tensor 'x'.*\[0, 8\] out of range"),
        (
            _raw_file({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
            r"tensor 'x'.*needs 12 bytes",
        ),
        (
            _raw_file({"x": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
            r"tensor 'x'.*unknown dtype 'Q7'",
        ),
        (_raw_file({"x": {"dtype": "F32", "shape": [2]}}, b"\0" * 8), "lacks data_offsets"),
        (
            _raw_file({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8),
            "non-negative",
        ),
        (
            _raw_file(
                {
                    "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
                },
                b"\0" * 12,
            ),
            r"tensor 'y'.*overlap tensor 'x'",
        ),
        (
            _raw_file({"x": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
            r"'x' starts at 4.*uncovered",
        ),
        (_raw_file(F32_2, b"\0" * 12), r"trailing bytes \[8, 12\)"),
        (_raw_file({"__metadata__": {"a": 1}}), "__metadata__ must be an object of strings"),
    ],
)
def test_corrupt_files_raise_safetensors_error_naming_path(tmp_path, content, pattern):
    path = _write(tmp_path, content)
    for call in (read_header, load_file, iter_tensors):
        with pytest.raises(SafetensorsError, match=pattern) as e:
            call(path)
        assert str(path) in str(e.value)
        assert isinstance(e.value, ValueError)


def test_truncated_real_file(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"a": np.arange(100, dtype=np.float32), "b": np.ones(10)}, good)
    raw = good.read_bytes()
    for cut in (4, 20, len(raw) - 1):
        path = _write(tmp_path, raw[:cut])
        with pytest.raises(SafetensorsError, match="corrupt.safetensors"):
            load_file(path)


def test_zero_length_tensors_may_sit_anywhere_in_range(tmp_path):
    # MLX writes an empty tensor's offsets at the current cursor, even in the middle.
    header = {
        "__metadata__": None,
        "e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [4, 4]},
        "a": {"dtype": "I32", "shape": [], "data_offsets": [0, 4]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
    }
    path = _write(tmp_path, _raw_file(header, struct.pack("<if", 5, 2.5)))
    out = load_file(path)
    assert out["a"] == 5 and out["b"].tolist() == [2.5] and out["e"].shape == (0, 3)
    assert read_header(path)[1] == {}


# --------------------------------------------------------------------- atomicity


def test_failed_write_leaves_old_file_and_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    save_file({"old": np.arange(3.0)}, path)
    before = path.read_bytes()

    calls = {"n": 0}
    real = st._write_array

    def flaky(f, arr):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        real(f, arr)

    monkeypatch.setattr(st, "_write_array", flaky)
    with pytest.raises(OSError, match="simulated"):
        save_file({"a": np.ones(1000), "b": np.ones(1000), "c": np.ones(1000)}, path)
    assert calls["n"] == 2
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]

    # A brand-new path that fails mid-way is never created at all.
    calls["n"] = 0
    with pytest.raises(OSError):
        save_file({"a": np.ones(10), "b": np.ones(10)}, tmp_path / "new.safetensors")
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]


def test_failure_in_array_conversion_leaves_nothing(tmp_path):
    class Exploding:
        def __array__(self, dtype=None, copy=None):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_file({"a": np.ones(3), "z": Exploding()}, tmp_path / "x.safetensors")
    assert os.listdir(tmp_path) == []


def test_successful_write_replaces_and_cleans_up(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_file({"a": np.zeros(2)}, path)
    save_file({"b": np.ones(3, np.float16)}, path)
    assert list(load_file(path)) == ["b"]
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]
