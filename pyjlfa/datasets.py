"""Dataset loaders for pyjlfa.

This module reads data sets stored in the IDX format used by MNIST and
Fashion-MNIST, plain or gzip-compressed, with nothing but the standard
library and NumPy.

* :func:`load_idx` reads one IDX file into a NumPy array.
* :func:`fashion_mnist` returns the Fashion-MNIST train and test sets as
  ``(X_train, y_train, X_test, y_test)``, ready for training: images
  flattened to 784 columns and scaled to [0, 1], labels as int64.

Fashion-MNIST is looked for in the ``path`` argument, then in the folder
named by the environment variable ``PYJLFA_FASHION_MNIST``, then in
``/usr/share/datasets/fashion-mnist``, where Debian's package
``dataset-fashion-mnist`` installs it (``apt-get install dataset-fashion-mnist``).
"""

import gzip
import os
import zlib

import numpy as np

__all__ = ["load_idx", "fashion_mnist"]

# IDX type code -> big-endian NumPy dtype of the stored data.
_IDX_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"

# Reading is done into one growing buffer: it starts at up to _INITIAL_BUFFER
# bytes, so a corrupt header announcing absurd dimensions cannot make us
# allocate more than twice what the file really holds, and each read call
# asks for at most _READ_CHUNK bytes.
_INITIAL_BUFFER = 64 * 1024 * 1024
_READ_CHUNK = 16 * 1024 * 1024

_ENV_VAR = "PYJLFA_FASHION_MNIST"
_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"

_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_HOW_TO_GET = (
    "To get Fashion-MNIST: on Debian/Ubuntu run "
    "'apt-get install dataset-fashion-mnist' (installs the files into "
    f"{_DEFAULT_DIR}); otherwise download the four IDX files "
    "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from "
    "https://github.com/zalandoresearch/fashion-mnist into one folder and "
    f"pass path=<folder> or set the environment variable {_ENV_VAR}=<folder>."
)


def _read_exact(f, n):
    """Read up to ``n`` bytes from ``f`` into a writable bytearray.

    Returns the buffer (trimmed to what was read); it is shorter than ``n``
    only when the stream ended early.
    """
    buf = bytearray(min(n, _INITIAL_BUFFER))
    got = 0
    while got < n:
        if got == len(buf):
            # Buffer full but more expected: grow it (at most doubling).
            buf.extend(bytes(min(len(buf), n - len(buf))))
        with memoryview(buf) as view:
            k = f.readinto(view[got:got + _READ_CHUNK])
        if not k:
            break
        got += k
    if got < len(buf):
        del buf[got:]
    return buf


def _parse_idx(f, name):
    """Parse an IDX stream ``f``; ``name`` is used in error messages."""
    header = f.read(4)
    if len(header) < 4:
        raise ValueError(
            f"{name}: truncated IDX header: file has only {len(header)} "
            "byte(s), expected at least 4"
        )
    if header[0] != 0 or header[1] != 0:
        raise ValueError(
            f"{name}: bad IDX magic number: first two bytes are "
            f"0x{header[0]:02x} 0x{header[1]:02x}, expected 0x00 0x00 "
            "(not an IDX file?)"
        )
    type_code, ndim = header[2], header[3]
    if type_code not in _IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in sorted(_IDX_TYPES))
        raise ValueError(
            f"{name}: unknown IDX type code 0x{type_code:02X} "
            f"(known codes: {known})"
        )
    dtype = _IDX_TYPES[type_code]

    dims_raw = f.read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise ValueError(
            f"{name}: truncated IDX header: {ndim} dimension(s) announced "
            f"but only {len(dims_raw)} of {4 * ndim} dimension bytes present"
        )
    shape = tuple(
        int.from_bytes(dims_raw[4 * i:4 * i + 4], "big") for i in range(ndim)
    )
    count = 1
    for d in shape:
        count *= d
    nbytes = count * dtype.itemsize

    data = _read_exact(f, nbytes)
    if len(data) < nbytes:
        raise ValueError(
            f"{name}: truncated IDX data: shape {shape} of {dtype.name} "
            f"needs {nbytes} bytes but only {len(data)} are present"
        )
    extra = f.read(1)
    if extra:
        rest = 1 + len(f.read())
        raise ValueError(
            f"{name}: {rest} trailing byte(s) after the IDX data "
            f"(shape {shape} of {dtype.name} needs {nbytes} bytes)"
        )

    arr = np.frombuffer(data, dtype=dtype, count=count).reshape(shape)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def load_idx(path):
    """Read an IDX file (MNIST format), plain or gzip-compressed.

    Compression is detected from the gzip magic bytes (0x1f 0x8b), not from
    the file name. Returns a NumPy array with the shape given in the file
    and the element type given by its type code, in native byte order.

    Raises FileNotFoundError if ``path`` does not exist, and ValueError
    naming the file and the problem for a bad magic number, an unknown type
    code, truncated data (or a truncated/corrupt gzip stream) and trailing
    bytes after the data.

    Parameters
    ----------
    path : str or os.PathLike
        The IDX file.

    Returns
    -------
    ndarray
    """
    name = os.fspath(path)
    with open(name, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if not compressed:
            return _parse_idx(raw, name)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                return _parse_idx(f, name)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ValueError(
                f"{name}: corrupt or truncated gzip data: {exc}"
            ) from exc


def _find_file(folder, base):
    """Return the path of ``base`` or ``base.gz`` in ``folder``, or None."""
    for candidate in (base, base + ".gz"):
        p = os.path.join(folder, candidate)
        if os.path.isfile(p):
            return p
    return None


def _locate_fashion_mnist(path):
    """Pick the Fashion-MNIST folder and return {key: file path}."""
    if path is not None:
        folder, origin = os.fspath(path), "the path= argument"
    elif os.environ.get(_ENV_VAR):
        folder, origin = os.environ[_ENV_VAR], f"the environment variable {_ENV_VAR}"
    else:
        folder, origin = _DEFAULT_DIR, "the default location"

    searched = f"{folder} (from {origin})"
    if path is None and origin == "the default location":
        searched += f"; path= was not given and {_ENV_VAR} is not set"

    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"Fashion-MNIST not found: folder does not exist. "
            f"Searched: {searched}. {_HOW_TO_GET}"
        )
    found, missing = {}, []
    for key, base in _FASHION_FILES.items():
        p = _find_file(folder, base)
        if p is None:
            missing.append(f"{base}[.gz]")
        else:
            found[key] = p
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found: missing {', '.join(missing)}. "
            f"Searched: {searched}. {_HOW_TO_GET}"
        )
    return found


def _images_labels(img_path, lbl_path, dtype):
    images = load_idx(img_path)
    labels = load_idx(lbl_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{img_path}: expected images of shape (n, 28, 28), got {images.shape}"
        )
    if images.dtype != np.uint8:
        raise ValueError(
            f"{img_path}: expected uint8 pixels, got {images.dtype}"
        )
    if labels.ndim != 1:
        raise ValueError(
            f"{lbl_path}: expected a 1-D label array, got shape {labels.shape}"
        )
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"label/image count mismatch: {lbl_path} has {labels.shape[0]} "
            f"labels but {img_path} has {images.shape[0]} images"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(
            f"{lbl_path}: labels must be in 0..9, found "
            f"{labels.min()}..{labels.max()}"
        )
    X = images.reshape(images.shape[0], 28 * 28).astype(dtype)  # C-contiguous copy
    X /= 255  # division (not * 1/255) so that e.g. 51 maps to exactly 0.2
    y = labels.astype(np.int64)
    return X, y


def fashion_mnist(path=None, dtype="float32", images=False, pad=0):
    """Load Fashion-MNIST as ``(X_train, y_train, X_test, y_test)``.

    X arrays have shape (n, 784), values pixel / 255 in [0, 1], C-contiguous,
    in ``dtype`` ("float32" or "float64"); y arrays are int64 class labels
    0..9. The full data set has 60,000 training and 10,000 test images.
    With ``images=True`` X has shape (n, 1, 28, 28) (samples, channels, height,
    width), zero-padded by ``pad`` pixels on every side: ``pad=2`` gives the
    32 x 32 input of LeNet-5.

    The four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally
    with ``.gz``) are looked for in ``path`` if given, else in the folder
    named by the environment variable ``PYJLFA_FASHION_MNIST`` if set, else
    in ``/usr/share/datasets/fashion-mnist`` (Debian package
    ``dataset-fashion-mnist``). A folder given by argument or variable that
    lacks the files is an error; there is no fallback. Raises
    FileNotFoundError, saying where it looked and how to get the data, when
    the files are missing.

    Parameters
    ----------
    path : str, optional
        The folder of the four IDX files.
    dtype : {"float32", "float64"}
        The images' type.
    images : bool
        Return (n, 1, 28 + 2 pad, 28 + 2 pad) images instead of (n, 784) vectors.
    pad : int
        Zero pixels added on every side (with ``images=True``).

    Returns
    -------
    tuple of ndarray
        ``(X_train, y_train, X_test, y_test)``.
    """
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = np.dtype(object)  # rejected just below
    if dtype is None or dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    files = _locate_fashion_mnist(path)
    X_train, y_train = _images_labels(
        files["train_images"], files["train_labels"], dt
    )
    X_test, y_test = _images_labels(files["test_images"], files["test_labels"], dt)
    if pad and not images:
        raise ValueError("pad applies to images: pass images=True as well")
    if images:
        X_train, X_test = as_images(X_train, pad), as_images(X_test, pad)
    return X_train, y_train, X_test, y_test


def as_images(X, pad=0, side=28):
    """(n, side*side) rows as (n, 1, side, side) images, zero-padded by ``pad`` on every side
    (one C-contiguous copy when padding, a view otherwise)."""
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be a non-negative integer, got {pad!r}")
    images = X.reshape(len(X), 1, side, side)
    if pad == 0:
        return images
    out = np.zeros((len(X), 1, side + 2 * pad, side + 2 * pad), dtype=X.dtype)
    out[:, :, pad:pad + side, pad:pad + side] = images
    return out
