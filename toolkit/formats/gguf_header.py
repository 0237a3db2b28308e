"""A GGUF file's header (metadata and tensor table) read in one pass, without touching tensor data.

gguf-py's `GGUFReader` builds a numpy view per array element: on Gemma 3's 262k-token vocabulary that takes
10 s per file, and the toolkit reads headers of every variant. This reader walks the same layout (GGUF v2/v3,
either byte order) with `struct`, keeps string arrays as lists of bytes and numeric arrays as numpy arrays,
and computes each tensor's byte range from gguf-py's own block sizes.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# GGUFValueType -> struct code (STRING = 8, ARRAY = 9 are read apart)
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    type: int  # GGMLQuantizationType value
    offset: int  # from the start of the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class Header:
    version: int
    fields: dict[str, object]  # scalars as Python values, strings as str, arrays as list[bytes] or numpy arrays
    tensors: list[Tensor]

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def end(self) -> int:
        """Bytes the tensor data needs: a complete file is at least this long."""
        return max((t.offset + t.n_bytes for t in self.tensors), default=0)


class _Cursor:
    def __init__(self, buf, order: str) -> None:
        self.buf, self.pos, self.order = buf, 0, order

    def take(self, code: str):
        (value,) = struct.unpack_from(self.order + code, self.buf, self.pos)
        self.pos += struct.calcsize(code)
        return value

    def raw(self) -> bytes:
        n = self.take("Q")
        if self.pos + n > len(self.buf):
            raise ValueError("string runs past the end of the file")
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def value(self, kind: int):
        if kind in SCALARS:
            return self.take(SCALARS[kind])
        if kind == STRING:
            return self.raw().decode("utf-8", errors="replace")
        if kind == ARRAY:
            return self.array(self.take("I"), self.take("Q"))
        raise ValueError(f"unknown GGUF value type {kind}")

    def array(self, kind: int, count: int):
        if kind in SCALARS:
            dtype = np.dtype(self.order + SCALARS[kind])
            out = np.frombuffer(self.buf, dtype, count, self.pos).copy()
            self.pos += dtype.itemsize * count
            return out
        return [self.raw() if kind == STRING else self.value(kind) for _ in range(count)]


def read_header(path: Path | str) -> Header:
    """Metadata and tensor table of a GGUF file. Raises ValueError on anything that is not a well-formed header."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != MAGIC:
            raise ValueError("bad magic bytes")
        if len(buf) < 24:  # magic, version, tensor and field counts
            raise ValueError(f"{len(buf)} bytes: too short for a GGUF header")
        order = "<" if struct.unpack_from("<I", buf, 4)[0] < 0x10000 else ">"
        cur = _Cursor(buf, order)
        cur.pos = 4
        version = cur.take("I")
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        n_tensors, n_fields = cur.take("Q"), cur.take("Q")
        fields = {}
        for _ in range(n_fields):
            key = cur.raw().decode("utf-8", errors="replace")
            fields[key] = cur.value(cur.take("I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.raw().decode("utf-8", errors="replace")
            shape = tuple(cur.take("Q") for _ in range(cur.take("I")))
            infos.append((name, shape, cur.take("I"), cur.take("Q")))
        alignment = int(fields.get("general.alignment", DEFAULT_ALIGNMENT))
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"invalid alignment {alignment}")
        start = -(-cur.pos // alignment) * alignment
    tensors = []
    for name, shape, kind, offset in infos:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        n = int(np.prod(shape, dtype=np.int64))
        tensors.append(Tensor(name, shape, kind, start + offset, n * size // block))
    return Header(version, fields, tensors)
