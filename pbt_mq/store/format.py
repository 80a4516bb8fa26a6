"""The checkpoint format: a safetensors file whose metadata carries the rest of the state in msgpack.

Nothing in it can run code on load: tensors (torch or numpy) are raw bytes described by the
safetensors header (dtype, shape, offsets); everything else (nesting, ints of any size, floats,
strings, bytes, tuples as ``random.setstate`` wants them, int-keyed optimizer state,
OrderedDicts) is msgpack under ``__metadata__["pbt-mq"]`` (base64), with a closed set of
extension types. Any safetensors reader opens the object; ``format_read.decode`` rebuilds the
exact state.

Speed: ``encode`` copies nothing (a CPU tensor's bytes are handed over as a memoryview; the
writer hashes and uploads them); ``format_read.decode`` builds every tensor as a view of the downloaded
buffer (``torch.frombuffer``). Tensors sharing storage (tied weights) are stored once and come
back tied. Tensors are laid out by element size, largest first, after a header padded to 64
bytes, so every view is aligned. Neither torch nor numpy is imported unless the state holds
their arrays: a numpy-only state needs no torch.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import msgpack

MAGIC = "pbt-mq/1"  # __metadata__["format"]
MAX_HEADER = 100_000_000  # the safetensors reference reader's limit
ALIGN = 64
BYTES_INLINE_MAX = 64 << 10  # bigger bytes values travel as U8 tensors, not through the header
# msgpack extension types of the skeleton: nothing else is accepted on load
EXT_TENSOR, EXT_TUPLE, EXT_BIGINT, EXT_ODICT, EXT_DTYPE = 1, 2, 3, 4, 5
# safetensors dtype -> (item size, torch dtype name, numpy dtype name or None)
DTYPES: dict[str, tuple[int, str, str | None]] = {
    "F64": (8, "float64", "float64"), "I64": (8, "int64", "int64"), "U64": (8, "uint64", "uint64"),
    "F32": (4, "float32", "float32"), "I32": (4, "int32", "int32"), "U32": (4, "uint32", "uint32"),
    "F16": (2, "float16", "float16"), "BF16": (2, "bfloat16", None), "I16": (2, "int16", "int16"),
    "U16": (2, "uint16", "uint16"), "I8": (1, "int8", "int8"), "U8": (1, "uint8", "uint8"),
    "BOOL": (1, "bool", "bool"), "F8_E4M3": (1, "float8_e4m3fn", None), "F8_E5M2": (1, "float8_e5m2", None),
}
BY_TORCH = {v[1]: k for k, v in DTYPES.items()}
BY_NUMPY = {v[2]: k for k, v in DTYPES.items() if v[2]}


class FormatError(ValueError):
    """The object is not a checkpoint this format can read; str() says why, in one line."""


@dataclass
class Encoded:
    """A state as the bytes of one object: ``buffers`` in order (the header first), ``size`` in all."""

    buffers: list[memoryview]
    size: int
    keep: list[Any] = field(default_factory=list)  # owners of the buffers (tensors, arrays)


# ---------------------------------------------------------------- encode


class _Encoder:
    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, list[int], memoryview, int]] = {}  # name -> (dtype, shape, bytes, align)
        self.keep: list[Any] = []
        self.seen: dict[tuple, str] = {}  # (data ptr, dtype, shape, strides) -> entry name: ties
        self.shared: set[tuple] = set()  # torch storages that several distinct views of the state use
        self.shared_names: dict[tuple, str] = {}

    def name(self, path: str) -> str:
        base = path or "tensor"
        name, i = base, 1
        while name in self.entries or name == "__metadata__":
            name, i = f"{base}#{i}", i + 1
        return name

    def add(self, path: str, dtype: str, shape: list[int], data: memoryview, owner: Any) -> str:
        name = self.name(path)
        self.entries[name] = (dtype, shape, data, DTYPES[dtype][0])
        self.keep.append(owner)
        return name

    def walk(self, obj: Any, path: str) -> Any:
        t = type(obj)
        if obj is None or t in (bool, str, float):
            return obj
        if t is int:
            return obj if -(2**63) <= obj < 2**64 else msgpack.ExtType(EXT_BIGINT, str(obj).encode())
        if t is bytes or t is bytearray:
            if len(obj) > BYTES_INLINE_MAX:
                ref = [self.add(path, "U8", [len(obj)], memoryview(obj), obj), "bytes"]
                return msgpack.ExtType(EXT_TENSOR, _pack(ref))
            return bytes(obj)
        if t is dict or t is OrderedDict:
            items = {self.key(k, path): self.walk(v, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
            if t is dict:
                return items
            meta = getattr(obj, "_metadata", None)  # torch's per-module versions in a state_dict
            return msgpack.ExtType(EXT_ODICT, _pack([[[k, v] for k, v in items.items()], self.walk(meta, f"{path}._metadata")]))
        if t is list:
            return [self.walk(v, f"{path}.{i}") for i, v in enumerate(obj)]
        if isinstance(obj, tuple) and (t is tuple or hasattr(obj, "_fields") or t.__name__ == "Size"):
            return msgpack.ExtType(EXT_TUPLE, _pack([self.walk(v, f"{path}.{i}") for i, v in enumerate(obj)]))
        mod = t.__module__.split(".")[0]
        if mod == "torch":
            return self.torch_value(obj, path)
        if mod == "numpy":
            return self.numpy_value(obj, path)
        for base in (bool, int, float, str):  # subclasses (an IntEnum, a str enum): their plain value
            if isinstance(obj, base):
                return self.walk(base(obj), path)
        raise FormatError(
            f"checkpoint state: {path or 'the state'} is a {t.__module__}.{t.__qualname__}; a checkpoint holds"
            " tensors, numpy arrays and plain data (dict, list, tuple, str, int, float, bool, None, bytes)"
            " only: convert it in state_dict()")

    def key(self, k: Any, path: str) -> Any:
        if type(k) in (str, bool, float) or k is None:
            return k
        if type(k) in (int, bytes, tuple):  # a big int or a tuple: an extension type, hashable
            return self.walk(k, path)
        raise FormatError(f"checkpoint state: {path or 'the state'} has a key of type {type(k).__name__};"
                          " keys must be str, int, float, bool, None, bytes or tuples of them")

    def torch_value(self, obj: Any, path: str) -> Any:
        import torch  # the state holds torch objects, so torch is there

        if isinstance(obj, torch.dtype):
            return msgpack.ExtType(EXT_DTYPE, str(obj).removeprefix("torch.").encode())
        if not isinstance(obj, torch.Tensor):
            raise FormatError(f"checkpoint state: {path}: a {type(obj).__qualname__} is not a tensor or plain data")
        t = obj.detach()
        dtype = BY_TORCH.get(str(t.dtype).removeprefix("torch."))
        if dtype is None:
            raise FormatError(f"checkpoint state: {path}: tensor dtype {t.dtype} is not supported by safetensors")
        key = (t.device.type, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in self.seen:  # the same tensor again (tied weights): stored once
            return msgpack.ExtType(EXT_TENSOR, _pack([self.seen[key], "torch"]))
        ref = self.storage_view(t, dtype) if t.numel() else None
        if ref is None:
            c = t.contiguous().cpu()
            flat = c.reshape(-1).view(torch.uint8) if c.numel() else torch.empty(0, dtype=torch.uint8)
            ref = [self.add(path, dtype, list(t.shape), memoryview(flat.numpy()).cast("B"), c), "torch"]
            if t.numel():
                self.seen[key] = ref[0]
        return msgpack.ExtType(EXT_TENSOR, _pack(ref))

    def storage_view(self, t: Any, dtype: str) -> list | None:
        """A tensor sharing its storage with another view in the state (not the same view): the
        storage is stored once (as U8) and each tensor as a strided view of it, so they stay tied."""
        st = t.untyped_storage()
        sid = (t.device.type, st.data_ptr())
        if sid not in self.shared:
            return None
        name = f"__storage__/{len(self.shared_names)}" if sid not in self.shared_names else self.shared_names[sid]
        if sid not in self.shared_names:
            import torch  # as above

            self.shared_names[sid] = name
            whole = torch.empty(0, dtype=torch.uint8, device=t.device).set_(st, 0, (st.nbytes(),)).cpu()
            size = DTYPES[dtype][0]
            self.entries[name] = ("U8", [st.nbytes()], memoryview(whole.numpy()).cast("B"),
                                  size if st.nbytes() % size == 0 else 1)
            self.keep.append(whole)
        return [name, "view", dtype, list(t.shape), list(t.stride()), t.storage_offset()]

    def numpy_value(self, obj: Any, path: str) -> Any:
        import numpy as np  # the state holds numpy objects, so numpy is there

        scalar = isinstance(obj, np.generic)
        if isinstance(obj, np.dtype):
            raise FormatError(f"checkpoint state: {path}: a numpy dtype; store its name (a str) instead")
        arr = np.asarray(obj)
        if not isinstance(obj, (np.ndarray, np.generic)) or arr.dtype.name not in BY_NUMPY:
            raise FormatError(f"checkpoint state: {path}: numpy {type(obj).__name__} of dtype {arr.dtype} is not"
                              " supported (numbers and booleans only)")
        key = ("numpy", arr.__array_interface__["data"][0], arr.dtype.str, arr.shape, arr.strides)
        if arr.size and not scalar and key in self.seen:
            return msgpack.ExtType(EXT_TENSOR, _pack([self.seen[key], "numpy"]))
        c = arr if arr.flags.c_contiguous else arr.copy(order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
        if c.dtype.byteorder == ">":
            c = c.astype(c.dtype.newbyteorder("<"))
        name = self.add(path, BY_NUMPY[c.dtype.name], list(c.shape), memoryview(c.reshape(-1).view(np.uint8)), c)
        if arr.size and not scalar:
            self.seen[key] = name
        return msgpack.ExtType(EXT_TENSOR, _pack([name, "scalar" if scalar else "numpy"]))


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, strict_types=True)


def _shared_storages(obj: Any) -> set[tuple]:
    """Torch storages that two or more *different* views in ``obj`` use (the same view twice is a tie
    the encoder handles by name)."""
    torch = sys.modules.get("torch")
    views: dict[tuple, set[tuple]] = {}
    stack = [obj]
    while stack and torch is not None:
        o = stack.pop()
        if isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
        elif isinstance(o, torch.Tensor) and o.numel():
            sid = (o.device.type, o.untyped_storage().data_ptr())
            views.setdefault(sid, set()).add((o.dtype, o.storage_offset(), tuple(o.shape), tuple(o.stride())))
    return {sid for sid, v in views.items() if len(v) > 1}


def encode(obj: Any) -> Encoded:
    """The object's bytes, as buffers that point into the state's own tensors (no copy)."""
    enc = _Encoder()
    enc.shared = _shared_storages(obj)
    skeleton = _pack(enc.walk(obj, ""))
    order = sorted(enc.entries, key=lambda n: -enc.entries[n][3])  # sizes are multiples: every view aligned
    header: dict[str, Any] = {"__metadata__": {"format": MAGIC, "pbt-mq": base64.b64encode(skeleton).decode()}}
    offset = 0
    for name in order:
        dtype, shape, data, _ = enc.entries[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.nbytes]}
        offset += data.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % ALIGN)
    buffers = [memoryview(struct.pack("<Q", len(text)) + text)]
    buffers += [enc.entries[n][2] for n in order if enc.entries[n][2].nbytes]
    return Encoded(buffers, 8 + len(text) + offset, enc.keep)
