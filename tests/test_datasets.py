"""Tests for pyjlfa.datasets (IDX reader and Fashion-MNIST loader)."""

import gzip
import importlib.util
import os
import struct
from pathlib import Path

import numpy as np
import pytest

try:
    from pyjlfa import datasets
except Exception:  # pyjlfa/__init__.py missing, broken, or needs Julia
    _path = Path(__file__).resolve().parents[1] / "pyjlfa" / "datasets.py"
    _spec = importlib.util.spec_from_file_location("pyjlfa_datasets_standalone", _path)
    datasets = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(datasets)

load_idx = datasets.load_idx
fashion_mnist = datasets.fashion_mnist

ENV = "PYJLFA_FASHION_MNIST"
REAL_DIR = "/usr/share/datasets/fashion-mnist"

# IDX type code and big-endian struct format letter for each dtype tested.
CODES = {
    np.uint8: (0x08, "B"),
    np.int8: (0x09, "b"),
    np.int16: (0x0B, "h"),
    np.int32: (0x0C, "i"),
    np.float32: (0x0D, "f"),
    np.float64: (0x0E, "d"),
}


def idx_bytes(arr):
    """Encode ``arr`` as IDX by hand with struct (independent of the reader)."""
    arr = np.asarray(arr)
    code, fmt = CODES[arr.dtype.type]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim)
    header += struct.pack(">" + "I" * arr.ndim, *arr.shape)
    flat = arr.ravel().tolist()
    return header + struct.pack(">" + fmt * len(flat), *flat)


def write(path, data, compress=False):
    path = Path(path)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


# ---------------------------------------------------------------- load_idx


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "uint8-3d-images": rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8),
        "uint8-1d-labels": rng.integers(0, 10, size=7, dtype=np.uint8),
        "int8": np.array([[-128, -1, 0], [1, 2, 127]], dtype=np.int8),
        "int16": np.array([-32768, -2, 0, 258, 32767], dtype=np.int16),
        "int32": np.array(
            [[-(2**31), -70000, 0], [1, 70000, 2**31 - 1]], dtype=np.int32
        ),
        "float32": np.array(
            [[0.0, -1.5, 3.25e-7], [1e30, -0.1, np.pi]], dtype=np.float32
        ),
        "float64": np.array([1 / 3, -2.5e-300, 1e300], dtype=np.float64),
    }


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("name", list(_arrays()))
def test_round_trip(tmp_path, name, compress):
    expected = _arrays()[name]
    p = write(tmp_path / f"{name}.idx", idx_bytes(expected), compress)
    got = load_idx(p)
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, expected)
    # str paths work as well as Path objects
    np.testing.assert_array_equal(load_idx(str(p)), expected)


def test_big_endian_bytes_are_decoded(tmp_path):
    # Hand-written bytes, no numpy encoding involved: 1.0f is 3f800000,
    # -2.0f is c0000000; int32 0x01020304 = 16909060, -1 = ffffffff.
    f32 = b"\x00\x00\x0d\x01" + b"\x00\x00\x00\x02" + b"\x3f\x80\x00\x00\xc0\x00\x00\x00"
    i32 = b"\x00\x00\x0c\x01" + b"\x00\x00\x00\x02" + b"\x01\x02\x03\x04\xff\xff\xff\xff"
    a = load_idx(write(tmp_path / "f.idx", f32))
    b = load_idx(write(tmp_path / "i.idx", i32, compress=True))
    assert a.dtype == np.float32 and a.dtype.isnative
    assert b.dtype == np.int32 and b.dtype.isnative
    assert a.tolist() == [1.0, -2.0]
    assert b.tolist() == [16909060, -1]


def test_gzip_detected_by_magic_not_name(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_named_plain = write(tmp_path / "plain.gz", idx_bytes(arr))
    plain_named_gz = write(tmp_path / "data.idx", idx_bytes(arr), compress=True)
    np.testing.assert_array_equal(load_idx(gz_named_plain), arr)
    np.testing.assert_array_equal(load_idx(plain_named_gz), arr)


def test_empty_dimension(tmp_path):
    arr = np.zeros((0, 28, 28), dtype=np.uint8)
    got = load_idx(write(tmp_path / "empty.idx", idx_bytes(arr)))
    assert got.shape == (0, 28, 28)


def test_result_is_writable(tmp_path):
    arr = np.arange(6, dtype=np.uint8)
    got = load_idx(write(tmp_path / "w.idx", idx_bytes(arr)))
    got[0] = 99  # must not raise "assignment destination is read-only"
    assert got[0] == 99


def _raises(path, pattern):
    with pytest.raises(ValueError, match=pattern) as excinfo:
        load_idx(path)
    assert str(path) in str(excinfo.value), "error message must name the file"
    return excinfo


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_bad_magic(tmp_path, compress):
    data = bytearray(idx_bytes(np.arange(4, dtype=np.uint8)))
    data[0] = 0x01
    p = write(tmp_path / "bad_magic", bytes(data), compress)
    _raises(p, "magic")


def test_bad_magic_text_file(tmp_path):
    p = write(tmp_path / "notes.txt", b"hello world, not an IDX file\n")
    _raises(p, "magic")


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_unknown_type_code(tmp_path, compress):
    data = bytearray(idx_bytes(np.arange(4, dtype=np.uint8)))
    data[2] = 0x07
    p = write(tmp_path / "bad_type", bytes(data), compress)
    _raises(p, "type code 0x07")


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_truncated_data(tmp_path, compress):
    data = idx_bytes(np.arange(20, dtype=np.int32).reshape(4, 5))
    p = write(tmp_path / "short", data[:-3], compress)
    _raises(p, "truncated")


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x00", b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00"],
    ids=["empty", "half-magic", "half-dims"],
)
def test_truncated_header(tmp_path, data):
    p = write(tmp_path / "short_header", data)
    _raises(p, "truncated")


def test_huge_announced_size_is_truncation_not_memory_error(tmp_path):
    # Header claims 2**32-1 x 2**32-1 x 255 float64 values; only 8 bytes follow.
    data = b"\x00\x00\x0e\x03" + b"\xff\xff\xff\xff" * 2 + b"\x00\x00\x00\xff" + b"\x00" * 8
    p = write(tmp_path / "huge", data, compress=True)
    _raises(p, "truncated")


def test_truncated_gzip_stream(tmp_path):
    arr = np.arange(1000, dtype=np.uint8)
    compressed = gzip.compress(idx_bytes(arr))
    p = write(tmp_path / "cut.gz", compressed[: len(compressed) // 2])
    _raises(p, "truncated")


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_trailing_bytes(tmp_path, compress):
    data = idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3)) + b"\x00\x01"
    p = write(tmp_path / "long", data, compress)
    exc = _raises(p, "trailing")
    assert "2 trailing" in str(exc.value)


def test_missing_file(tmp_path):
    p = tmp_path / "does-not-exist-idx1-ubyte"
    with pytest.raises(FileNotFoundError):
        load_idx(p)


# ----------------------------------------------------------- fashion_mnist

N_TRAIN, N_TEST = 5, 3
BASES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def make_fake(folder, compress=True, n_train=N_TRAIN, n_test=N_TEST, labels=None):
    """Write a tiny Fashion-MNIST look-alike; return the arrays written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    tr = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    te = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    tr[0, 0, 0] = 255  # -> 1.0
    tr[0, 0, 1] = 51  # -> 0.2
    tr[0, 0, 2] = 0  # -> 0.0
    te[-1, 27, 27] = 51
    ytr = np.arange(n_train, dtype=np.uint8) % 10 if labels is None else labels[0]
    yte = (np.arange(n_test, dtype=np.uint8) + 7) % 10 if labels is None else labels[1]
    suffix = ".gz" if compress else ""
    for key, arr in (
        ("train_images", tr), ("train_labels", ytr),
        ("test_images", te), ("test_labels", yte),
    ):
        write(folder / (BASES[key] + suffix), idx_bytes(arr), compress)
    return tr, ytr, te, yte


def check_fake(result, written, dtype=np.float32):
    X_train, y_train, X_test, y_test = result
    tr, ytr, te, yte = written
    assert X_train.shape == (N_TRAIN, 784) and X_test.shape == (N_TEST, 784)
    assert y_train.shape == (N_TRAIN,) and y_test.shape == (N_TEST,)
    for X in (X_train, X_test):
        assert X.dtype == dtype
        assert X.flags.c_contiguous
        assert X.min() >= 0.0 and X.max() <= 1.0
    for y in (y_train, y_test):
        assert y.dtype == np.int64
    assert X_train[0, 0] == 1.0
    assert X_train[0, 1] == dtype(0.2)
    assert X_train[0, 2] == 0.0
    assert X_test[-1, 783] == dtype(0.2)
    np.testing.assert_array_equal(y_train, ytr.astype(np.int64))
    np.testing.assert_array_equal(y_test, yte.astype(np.int64))
    # row-major flattening, pixel / 255
    np.testing.assert_allclose(X_train, tr.reshape(N_TRAIN, 784) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(X_test, te.reshape(N_TEST, 784) / 255.0, rtol=1e-6)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_fashion_mnist_path_argument(tmp_path, monkeypatch, compress):
    monkeypatch.delenv(ENV, raising=False)
    written = make_fake(tmp_path / "fm", compress)
    check_fake(fashion_mnist(path=tmp_path / "fm"), written)
    check_fake(fashion_mnist(str(tmp_path / "fm")), written)


def test_fashion_mnist_float64(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    written = make_fake(tmp_path / "fm")
    check_fake(fashion_mnist(path=tmp_path / "fm", dtype="float64"), written, np.float64)
    check_fake(fashion_mnist(path=tmp_path / "fm", dtype=np.float64), written, np.float64)


@pytest.mark.parametrize("bad", ["int32", "float16", "nonsense", None])
def test_fashion_mnist_bad_dtype(tmp_path, bad):
    make_fake(tmp_path / "fm")
    with pytest.raises(ValueError, match="dtype"):
        fashion_mnist(path=tmp_path / "fm", dtype=bad)


def test_fashion_mnist_env_var(tmp_path, monkeypatch):
    written = make_fake(tmp_path / "fm")
    monkeypatch.setenv(ENV, str(tmp_path / "fm"))
    check_fake(fashion_mnist(), written)


def test_path_argument_beats_env_var(tmp_path, monkeypatch):
    written = make_fake(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(ENV, str(tmp_path / "empty"))
    check_fake(fashion_mnist(path=tmp_path / "good"), written)


def test_mixed_plain_and_gzip_files(tmp_path):
    written = make_fake(tmp_path / "fm", compress=True)
    # decompress one of the four; loader must accept both spellings together
    gz = tmp_path / "fm" / (BASES["train_labels"] + ".gz")
    (tmp_path / "fm" / BASES["train_labels"]).write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    check_fake(fashion_mnist(path=tmp_path / "fm"), written)


def test_env_var_folder_without_files_does_not_fall_back(tmp_path, monkeypatch):
    # The real data exists at the default location on this machine; a bad
    # PYJLFA_FASHION_MNIST must still be an error, not a silent fallback.
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(ENV, str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as excinfo:
        fashion_mnist()
    msg = str(excinfo.value)
    assert str(tmp_path / "empty") in msg
    assert ENV in msg


@pytest.mark.parametrize("exists", [True, False], ids=["empty-folder", "no-folder"])
def test_path_argument_without_files_does_not_fall_back(tmp_path, monkeypatch, exists):
    monkeypatch.delenv(ENV, raising=False)
    folder = tmp_path / "nothing"
    if exists:
        folder.mkdir()
    with pytest.raises(FileNotFoundError) as excinfo:
        fashion_mnist(path=folder)
    assert str(folder) in str(excinfo.value)


def test_partial_files_listed_as_missing(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    make_fake(tmp_path / "fm")
    (tmp_path / "fm" / (BASES["test_labels"] + ".gz")).unlink()
    with pytest.raises(FileNotFoundError) as excinfo:
        fashion_mnist(path=tmp_path / "fm")
    msg = str(excinfo.value)
    assert BASES["test_labels"] in msg
    assert BASES["train_images"] + "[" not in msg  # present files not reported missing


def test_missing_data_message(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    nowhere = str(tmp_path / "no-default-here")
    monkeypatch.setattr(datasets, "_DEFAULT_DIR", nowhere)
    with pytest.raises(FileNotFoundError) as excinfo:
        fashion_mnist()
    msg = str(excinfo.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert ENV in msg
    assert "path=" in msg
    assert nowhere in msg  # lists the place searched


def test_missing_data_message_for_explicit_path(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(FileNotFoundError) as excinfo:
        fashion_mnist(path=tmp_path)
    msg = str(excinfo.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert ENV in msg
    assert str(tmp_path) in msg


def test_label_image_count_mismatch(tmp_path):
    make_fake(
        tmp_path / "fm",
        labels=(np.zeros(N_TRAIN - 1, np.uint8), np.zeros(N_TEST, np.uint8)),
    )
    with pytest.raises(ValueError, match="mismatch"):
        fashion_mnist(path=tmp_path / "fm")


def test_wrong_image_shape(tmp_path):
    make_fake(tmp_path / "fm")
    bad = np.zeros((N_TRAIN, 3, 3), np.uint8)
    write(tmp_path / "fm" / (BASES["train_images"] + ".gz"), idx_bytes(bad), True)
    with pytest.raises(ValueError, match="28, 28"):
        fashion_mnist(path=tmp_path / "fm")


def test_corrupt_file_in_dataset_is_reported(tmp_path):
    make_fake(tmp_path / "fm")
    p = tmp_path / "fm" / (BASES["test_images"] + ".gz")
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-10]))
    with pytest.raises(ValueError, match="truncated") as excinfo:
        fashion_mnist(path=tmp_path / "fm")
    assert str(p) in str(excinfo.value)


def test_module_api():
    assert datasets.__all__ == ["load_idx", "fashion_mnist"]
    assert datasets.__doc__ and load_idx.__doc__ and fashion_mnist.__doc__


# ------------------------------------------------------- the real data set


def test_real_fashion_mnist(monkeypatch):
    # Not skipped when missing: Debian's dataset-fashion-mnist package is a
    # core dependency here (installed by scripts/setup.sh).
    monkeypatch.delenv(ENV, raising=False)
    X_train, y_train, X_test, y_test = fashion_mnist()
    assert X_train.shape == (60000, 784)
    assert X_test.shape == (10000, 784)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    for X in (X_train, X_test):
        assert X.dtype == np.float32
        assert X.flags.c_contiguous
        assert X.min() == 0.0 and X.max() == 1.0
    for y, per_class in ((y_train, 6000), (y_test, 1000)):
        assert y.dtype == np.int64
        assert y.min() == 0 and y.max() == 9
        # Fashion-MNIST is balanced: every class present, equally often
        np.testing.assert_array_equal(np.bincount(y, minlength=10), [per_class] * 10)
    # the images are real pictures, not constant
    assert 0.2 < float(X_train.mean()) < 0.4
    assert os.path.isdir(REAL_DIR)
