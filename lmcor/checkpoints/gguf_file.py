"""The GGUF container (header, metadata, tensor table) read in one sequential pass.

`gguf.GGUFReader` builds a numpy view per header item: Gemma's 262k vocabulary strings cost
it 9-17 s on this CPU, paid by every command that loads the model (train, evaluate, serve,
quickstart). This reader walks the same bytes with `struct` and bulk `np.frombuffer` reads
(well under a second) and keeps the tensors as memory-mapped views in GGUFReader's layout,
so `gguf.quants.dequantize` reads them unchanged. Format: llama.cpp's docs/gguf.md,
versions 2 and 3, little-endian.
"""
from __future__ import annotations

import dataclasses
import struct
from typing import Any

import numpy as np

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF value type id -> (struct code, numpy dtype); 8 (string) and 9 (array) are read apart.
_SCALARS = {0: ("B", np.uint8), 1: ("b", np.int8), 2: ("H", np.uint16), 3: ("h", np.int16),
            4: ("I", np.uint32), 5: ("i", np.int32), 6: ("f", np.float32), 7: ("?", np.bool_),
            10: ("Q", np.uint64), 11: ("q", np.int64), 12: ("d", np.float64)}
_STRING, _ARRAY = 8, 9
# Tensor types stored as plain numpy arrays; every other type is bytes per row (quantized).
_PLAIN = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8,
          "I16": np.int16, "I32": np.int32, "I64": np.int64}


@dataclasses.dataclass(frozen=True)
class GgufTensor:
    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF order: fastest-varying dimension first
    data: np.ndarray  # memory-mapped; row-major shape, bytes per row for quantized types


class _Cursor:
    """Reads little-endian items from a buffer, naming the offset when the file ends early."""

    def __init__(self, buf, path: str):
        self.buf, self.path, self.pos = buf, path, 0

    def need(self, n: int, what: str):
        if self.pos + n > len(self.buf):
            raise ValueError(f"{self.path}: truncated GGUF file: {what} at byte {self.pos} "
                             f"needs {n} bytes, {len(self.buf) - self.pos} left")

    def scalar(self, code: str, what: str):
        n = struct.calcsize("<" + code)
        self.need(n, what)
        (value,) = struct.unpack_from("<" + code, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str) -> str:
        n = self.scalar("Q", what)
        self.need(n, what)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{self.path}: {what} is not UTF-8 ({err})") from None

    def value(self, kind: int, what: str):
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind][0], what)
        if kind == _STRING:
            return self.string(what)
        if kind == _ARRAY:
            item, count = self.scalar("I", what), self.scalar("Q", what)
            if item in _SCALARS:  # one bulk read: token scores and types are 262k long
                dtype = np.dtype(_SCALARS[item][1]).newbyteorder("<")
                self.need(count * dtype.itemsize, what)
                values = np.frombuffer(self.buf, dtype, count, self.pos)
                self.pos += count * dtype.itemsize
                return values.tolist()
            return [self.value(item, what) for _ in range(count)]
        raise ValueError(f"{self.path}: {what} has unknown GGUF value type {kind}")


@dataclasses.dataclass
class GgufFile:
    """A parsed GGUF file: `fields` (metadata key -> Python value, arrays as lists) and
    `tensors` (in file order)."""
    path: str
    fields: dict[str, Any]
    tensors: list[GgufTensor]

    @classmethod
    def read(cls, path: str) -> "GgufFile":
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: PLC0415
        from gguf.quants import quant_shape_to_byte_shape  # noqa: PLC0415

        data = np.memmap(path, mode="r")
        cur = _Cursor(memoryview(data), path)
        cur.need(4, "the magic number")
        if bytes(data[:4]) != MAGIC:
            raise ValueError(f"{path}: not a GGUF file (it starts with {bytes(data[:4])!r}, "
                             f"not {MAGIC!r})")
        cur.pos = 4
        version = cur.scalar("I", "the version")
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} is not supported (2 and 3 are; "
                             "a big-endian file also reads as a huge version)")
        num_tensors, num_fields = cur.scalar("Q", "the tensor count"), \
            cur.scalar("Q", "the field count")
        fields: dict[str, Any] = {}
        for i in range(num_fields):
            key = cur.string(f"field {i}'s key")
            if key in fields:
                raise ValueError(f"{path}: field {key!r} appears twice")
            fields[key] = cur.value(cur.scalar("I", f"field {key!r}'s type"), f"field {key!r}")
        infos = []
        for i in range(num_tensors):
            name = cur.string(f"tensor {i}'s name")
            dims = tuple(cur.scalar("Q", f"tensor {name!r}'s shape")
                         for _ in range(cur.scalar("I", f"tensor {name!r}'s rank")))
            raw_type, offset = cur.scalar("I", f"tensor {name!r}'s type"), \
                cur.scalar("Q", f"tensor {name!r}'s offset")
            try:
                kind = GGMLQuantizationType(raw_type)
            except ValueError:
                raise ValueError(f"{path}: tensor {name!r} has unknown type {raw_type}") from None
            infos.append((name, dims, kind, offset))
        align = int(fields.get("general.alignment", DEFAULT_ALIGNMENT))
        start = -(-cur.pos // align) * align
        tensors, names = [], set()
        for name, dims, kind, offset in infos:
            if name in names:
                raise ValueError(f"{path}: tensor {name!r} appears twice")
            names.add(name)
            shape = tuple(reversed(dims))
            count = int(np.prod(dims, dtype=np.int64))
            if kind.name in _PLAIN:
                dtype = np.dtype(_PLAIN[kind.name])
                nbytes = count * dtype.itemsize
            else:
                block, size = GGML_QUANT_SIZES[kind]
                dtype, nbytes = np.dtype(np.uint8), count * size // block
                shape = quant_shape_to_byte_shape(shape, kind)
            at = start + offset
            if at + nbytes > len(data):
                raise ValueError(f"{path}: truncated GGUF file: tensor {name!r} ends at byte "
                                 f"{at + nbytes}, the file has {len(data)}")
            view = np.ndarray(shape, dtype, buffer=data, offset=at)
            tensors.append(GgufTensor(name, kind, dims, view))
        return cls(path, fields, tensors)
