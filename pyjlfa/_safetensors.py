"""The safetensors container (https://github.com/huggingface/safetensors) that model files use::

    8 bytes   n, the header length (unsigned, little-endian)
    n bytes   a JSON object, padded with spaces so that the data starts at a multiple of 8:
              {"__metadata__": {string: string, ...},
               "layers.0.W": {"dtype": "F32", "shape": [784, 256], "data_offsets": [0, 802816]}, ...}
    the rest  the tensors' raw little-endian bytes, back to back (offsets count from here)

This module is the container only (header, dtypes, offsets, atomic writes); pyjlfa.io says what a
pyjlfa file means. julia/FeedbackAlignment/src/safetensors.jl implements the same independently.
"""

import os
import secrets

import numpy as np

from ._json import _json, _parse_json

MAX_HEADER_BYTES = 100_000_000  # the safetensors package's own limit
_ITEMSIZE = {"F32": 4, "F64": 8}


class ModelFileError(ValueError):
    """A model file that cannot be read; the message names the file and says what is wrong."""

    def __init__(self, path, message):
        super().__init__(f"cannot load model file {os.fspath(path)}: {message}")


def _is_count(x):
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _read_header(f, path):
    """The checked header of the open file ``f``: (header dict, offset of the data section)."""
    total = os.fstat(f.fileno()).st_size
    if total < 8:
        raise ModelFileError(path, f"truncated file: {total} bytes, but a model file starts with an 8-byte header length")
    f.seek(0)
    n = int.from_bytes(f.read(8), "little")
    if n > MAX_HEADER_BYTES:
        raise ModelFileError(path, f"the header length field says {n} bytes, more than the {MAX_HEADER_BYTES} a header "
                                   "may have (corrupt file, or not a safetensors file)")
    if n > total - 8:
        raise ModelFileError(path, f"truncated file: the header length field says {n} bytes, but only {total - 8} "
                                   "bytes follow it")
    try:
        header = _parse_json(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ModelFileError(path, f"corrupt header: {e} (not valid JSON)") from None
    if not isinstance(header, dict):
        raise ModelFileError(path, "corrupt header: it is not a JSON object")
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise ModelFileError(path, f"corrupt header: tensor \"{name}\" needs dtype, shape and data_offsets")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not isinstance(shape, list) or not all(map(_is_count, shape)):
            raise ModelFileError(path, f"corrupt header: tensor \"{name}\" has shape {_json(shape)}, "
                                       "not a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_count, offsets))
                or offsets[0] > offsets[1]):
            raise ModelFileError(path, f"corrupt header: tensor \"{name}\" has data_offsets {_json(offsets)}, "
                                       "not [begin, end] with begin <= end")
        if not isinstance(entry["dtype"], str) or entry["dtype"] not in _ITEMSIZE:
            raise ModelFileError(path, f"tensor \"{name}\" has dtype {_json(entry['dtype'])}; model files hold F32 or F64")
        nbytes = _ITEMSIZE[entry["dtype"]] * int(np.prod(shape, dtype=object))
        if offsets[1] - offsets[0] != nbytes:
            raise ModelFileError(path, f"tensor \"{name}\" of shape {_json(shape)} needs {nbytes} bytes, but its "
                                       f"data_offsets {_json(offsets)} span {offsets[1] - offsets[0]}")
        spans.append((offsets[0], offsets[1], name))
    at, data_length = 0, total - 8 - n
    for first, last, name in sorted(spans):
        if first != at:
            raise ModelFileError(path, f"tensor \"{name}\" starts at data byte {first}, but the previous tensor ends "
                                       f"at {at} (overlap or gap)")
        at = last
    if at > data_length:
        raise ModelFileError(path, f"truncated file: the tensors need {at} bytes of data, but only {data_length} "
                                   "follow the header")
    if at < data_length:
        raise ModelFileError(path, f"{data_length - at} bytes follow the last tensor (corrupt file)")
    return header, 8 + n


def _write_safetensors(path, meta, tensors, dtype):
    """Write ``tensors`` ({name: array}, all of safetensors dtype ``dtype``, in the shape Python sees)
    and the ``meta`` strings as a safetensors file, atomically (see ``_atomic_write``)."""
    header, offset = {"__metadata__": meta}, 0
    for name, array in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = _json(header).encode()
    text += b" " * (-len(text) % 8)  # the data starts at a multiple of 8

    def write(f):
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for array in tensors.values():
            f.write(memoryview(array).cast("B"))  # straight from Julia's memory

    _atomic_write(path, write)


def _atomic_write(path, write):
    """Write a new temporary file next to ``path`` and rename it over ``path``; on failure remove it."""
    folder, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    while True:
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
