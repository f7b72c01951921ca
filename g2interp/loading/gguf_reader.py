"""A small, fast GGUF reader: metadata (large arrays skipped unless asked for) and memory-mapped tensors.

``gguf.GGUFReader`` parses every metadata array into NumPy views (10 s and 700 MB for a 262k-token
vocabulary); loading weights needs only the scalars and the tensor table, so this reads those and
leaves the vocabulary to the tokenizer path. Layout: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

GGUF_MAGIC = b"GGUF"
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    """The file is not a well-formed GGUF file."""


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]
    """NumPy order (outermost first): the reverse of ggml's ``ne``."""
    qtype: int
    offset: int
    """Absolute byte offset in the file."""
    n_bytes: int


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array that was skipped: its element type and length."""

    item_type: int
    length: int


class GGUFFile:
    """Metadata and tensor table of a GGUF file; tensor data is memory-mapped on demand."""

    def __init__(self, path: str | Path, load_arrays: tuple[str, ...] = ()):
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        self.path = Path(path)
        size = self.path.stat().st_size
        self.metadata: dict[str, Any] = {}
        self.tensors: dict[str, GGUFTensorInfo] = {}
        try:
            with open(self.path, "rb") as f:
                if f.read(4) != GGUF_MAGIC:
                    raise GGUFFormatError(f"{self.path}: no GGUF magic bytes; not a GGUF file")
                version, n_tensors, n_kv = struct.unpack("<IQQ", _read(f, 20))
                if version not in (2, 3):
                    raise GGUFFormatError(f"{self.path}: GGUF version {version} unsupported (2 or 3)")
                for _ in range(n_kv):
                    key = _string(f)
                    vtype = _unpack(f, "<I")
                    self.metadata[key] = _value(f, vtype, load=key in load_arrays)
                infos = []
                for _ in range(n_tensors):
                    name = _string(f)
                    n_dims = _unpack(f, "<I")
                    ne = struct.unpack(f"<{n_dims}Q", _read(f, 8 * n_dims))
                    qtype, offset = struct.unpack("<IQ", _read(f, 12))
                    infos.append((name, ne, qtype, offset))
                alignment = int(self.metadata.get("general.alignment", 32))
                data_start = -(-f.tell() // alignment) * alignment
        except (struct.error, UnicodeDecodeError, EOFError) as exc:
            raise GGUFFormatError(f"{self.path}: corrupt or truncated GGUF header ({exc})") from exc
        for name, ne, qtype, offset in infos:
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
            except (ValueError, KeyError) as exc:
                raise GGUFFormatError(f"{self.path}: tensor {name!r} has unknown ggml type {qtype}") from exc
            n_elements = int(np.prod(ne))
            n_bytes = n_elements // block * type_size
            start = data_start + offset
            if start + n_bytes > size:
                raise GGUFFormatError(
                    f"{self.path}: tensor {name!r} ends at byte {start + n_bytes} but the file has {size}; truncated?"
                )
            self.tensors[name] = GGUFTensorInfo(name, tuple(reversed(ne)), qtype, start, n_bytes)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only memory map shaped ``[*outer, row_bytes]``."""
        info = self.tensors[name]
        rows = int(np.prod(info.shape[:-1])) if len(info.shape) > 1 else 1
        data = np.memmap(self.path, dtype=np.uint8, mode="r", offset=info.offset, shape=(info.n_bytes,))
        return data.reshape(rows, info.n_bytes // rows)

    def dequantize(self, name: str, rows_per_chunk: int = 16384) -> np.ndarray:
        """The tensor as a new float32 array, dequantised in row chunks to bound temporary memory."""
        from gguf import GGMLQuantizationType, dequantize

        info = self.tensors[name]
        qtype = GGMLQuantizationType(info.qtype)
        raw = self.raw(name)
        out = np.empty((raw.shape[0], int(np.prod(info.shape)) // raw.shape[0]), dtype=np.float32)
        for start in range(0, raw.shape[0], rows_per_chunk):
            stop = min(start + rows_per_chunk, raw.shape[0])
            out[start:stop] = dequantize(np.asarray(raw[start:stop]), qtype)
        return out.reshape(info.shape)


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EOFError(f"wanted {n} bytes at offset {f.tell()}, got {len(data)}")
    return data


def _unpack(f: BinaryIO, fmt: str) -> Any:
    return struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]


def _string(f: BinaryIO) -> str:
    return _read(f, _unpack(f, "<Q")).decode("utf-8")


def _value(f: BinaryIO, vtype: int, load: bool = True) -> Any:
    if vtype in _SCALARS:
        return _unpack(f, _SCALARS[vtype])
    if vtype == _STRING:
        return _string(f)
    if vtype == _ARRAY:
        item_type, length = struct.unpack("<IQ", _read(f, 12))
        if item_type in _SCALARS:
            width = struct.calcsize(_SCALARS[item_type])
            if not load:
                f.seek(width * length, 1)
                return ArrayInfo(item_type, length)
            return list(struct.unpack(f"<{length}{_SCALARS[item_type][1]}", _read(f, width * length)))
        if not load:
            for _ in range(length):
                _skip(f, item_type)
            return ArrayInfo(item_type, length)
        return [_value(f, item_type) for _ in range(length)]
    raise GGUFFormatError(f"unknown GGUF metadata value type {vtype}")


def _skip(f: BinaryIO, vtype: int) -> None:
    if vtype == _STRING:
        f.seek(_unpack(f, "<Q"), 1)
    else:
        _value(f, vtype, load=False)
