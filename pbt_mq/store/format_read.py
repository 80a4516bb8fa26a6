"""Reading ``store.format`` objects: the safetensors header checked strictly, then the state rebuilt.

Every way an object can be wrong is one ``FormatError`` line: a pickle or a torch.save file
(refused unread), truncated, or malformed (header, offsets with holes or overlaps, trailing
bytes, a state naming a tensor the header lacks, an unknown msgpack extension). Tensors are
views of the buffer read from the store (no copy); numpy arrays likewise.
"""

from __future__ import annotations

import base64
import json
import struct
from collections import OrderedDict
from typing import Any

import msgpack

from pbt_mq.store.format import (
    BY_TORCH,
    DTYPES,
    EXT_BIGINT,
    EXT_DTYPE,
    EXT_ODICT,
    EXT_TENSOR,
    EXT_TUPLE,
    MAGIC,
    MAX_HEADER,
    FormatError,
)


def sniff(head: bytes) -> str:
    """What an object's first bytes say it is: "safetensors", "pickle", "zip" (torch.save) or "unknown"."""
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


def refuse_foreign(head: bytes, where: str) -> None:
    """One clear error for an object that is not in this format at all."""
    kind = sniff(head)
    if kind == "zip":
        raise FormatError(f"{where}: holds a pickle (a torch.save file); checkpoints of this experiment are"
                          " safetensors+msgpack, and a pickle is never loaded: refusing it")
    if kind == "pickle":
        raise FormatError(f"{where}: holds a pickle; checkpoints of this experiment are safetensors+msgpack,"
                          " and a pickle is never loaded: refusing it")
    if len(head) < 8:
        raise FormatError(f"{where}: truncated: {len(head)} bytes, not even a safetensors header")
    if kind == "unknown":
        raise FormatError(f"{where}: malformed: not a safetensors file (no JSON header)")


def header(buf: Any, where: str) -> tuple[dict[str, Any], int]:
    """The parsed, checked safetensors header and where the data starts."""
    mv = memoryview(buf).cast("B")
    refuse_foreign(bytes(mv[:16]), where)
    (n,) = struct.unpack("<Q", mv[:8])
    if n > MAX_HEADER:
        raise FormatError(f"{where}: malformed: header of {n} bytes (at most {MAX_HEADER})")
    if 8 + n > len(mv):
        raise FormatError(f"{where}: truncated: the header says {n} bytes, the object holds {len(mv) - 8}")
    try:
        head = json.loads(bytes(mv[8:8 + n]))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{where}: malformed: the header is not JSON ({exc})") from None
    if not isinstance(head, dict):
        raise FormatError(f"{where}: malformed: the header is not a JSON object")
    spans = []
    for name, e in head.items():
        if name == "__metadata__":
            if not isinstance(e, dict) or not all(isinstance(v, str) for v in e.values()):
                raise FormatError(f"{where}: malformed: __metadata__ must map strings to strings")
            continue
        if not isinstance(e, dict) or e.get("dtype") not in DTYPES or not _ints(e.get("shape")) \
                or not _ints(e.get("data_offsets")) or len(e["data_offsets"]) != 2:
            raise FormatError(f"{where}: malformed: tensor {name!r} has no valid dtype, shape and data_offsets")
        a, b = e["data_offsets"]
        count = 1
        for d in e["shape"]:
            count *= d
        if b - a != count * DTYPES[e["dtype"]][0]:
            raise FormatError(f"{where}: malformed: tensor {name!r}: {b - a} bytes for shape {e['shape']}")
        spans.append((a, b, name))
    end = 0
    for a, b, name in sorted(spans):
        if a != end:
            raise FormatError(f"{where}: malformed: tensor {name!r} starts at {a}, not {end} (holes or overlaps)")
        end = b
    have = len(mv) - 8 - n
    if end > have:
        raise FormatError(f"{where}: truncated: its tensors need {end} bytes of data, the object holds {have}")
    if end < have:
        raise FormatError(f"{where}: malformed: {have - end} bytes after the last tensor")
    return head, 8 + n


def _ints(v: Any) -> bool:
    return isinstance(v, list) and all(type(x) is int and x >= 0 for x in v)


class _Decoder:
    def __init__(self, buf: Any, head: dict[str, Any], start: int, device: str, where: str) -> None:
        self.buf, self.head, self.start, self.device, self.where = buf, head, start, device, where
        self.cache: dict[tuple[str, str], Any] = {}

    def ext(self, code: int, data: bytes) -> Any:
        if code == EXT_TUPLE:
            return tuple(self.unpack(data))
        if code == EXT_BIGINT:
            text = data.decode("ascii", "replace")
            if not text.lstrip("-").isdigit() or len(text) > 10_000:
                raise FormatError(f"{self.where}: malformed: a big int that is not one")
            return int(text)
        if code == EXT_ODICT:
            items, meta = self.unpack(data)
            out = OrderedDict((k, v) for k, v in items)
            if meta is not None:
                out._metadata = meta  # type: ignore[attr-defined]
            return out
        if code == EXT_TENSOR:
            return self.tensor(self.unpack(data))
        if code == EXT_DTYPE:
            import torch  # a torch dtype was saved from a torch state

            name = data.decode("ascii", "replace")
            if name not in BY_TORCH:
                raise FormatError(f"{self.where}: malformed: unknown torch dtype {name!r}")
            return getattr(torch, name)
        raise FormatError(f"{self.where}: malformed: unknown msgpack extension type {code}")

    def unpack(self, data: bytes) -> Any:
        return msgpack.unpackb(data, ext_hook=self.ext, raw=False, strict_map_key=False, use_list=True)

    def entry(self, name: Any) -> dict[str, Any]:
        e = self.head.get(name) if isinstance(name, str) and name != "__metadata__" else None
        if e is None:
            raise FormatError(f"{self.where}: malformed: the state names tensor {name!r}, the header does not")
        return e

    def tensor(self, ref: Any) -> Any:
        if not isinstance(ref, list) or len(ref) < 2:
            raise FormatError(f"{self.where}: malformed: a tensor reference {ref!r}")
        name, kind = ref[0], ref[1]
        e = self.entry(name)
        a, b = (self.start + x for x in e["data_offsets"])
        if kind == "bytes":
            return bytes(memoryview(self.buf)[a:b])
        if kind in ("numpy", "scalar"):
            return self.numpy(name, e, a, b, kind == "scalar")
        if kind == "torch":
            return self.torch(name, e, a, b)
        if kind == "view" and len(ref) == 6 and _ints(ref[3]) and _ints(ref[4]) and type(ref[5]) is int \
                and ref[2] in DTYPES:
            return self.view(name, e, a, b, ref[2], ref[3], ref[4], ref[5])
        raise FormatError(f"{self.where}: malformed: a tensor reference {ref!r}")

    def numpy(self, name: str, e: dict, a: int, b: int, scalar: bool) -> Any:
        import numpy as np  # numpy arrays were saved: numpy is there to load them

        dt = DTYPES[e["dtype"]][2]
        if dt is None:
            raise FormatError(f"{self.where}: malformed: {e['dtype']} is no numpy dtype")
        arr = np.frombuffer(self.buf, dtype=np.dtype(dt).newbyteorder("<"), count=(b - a) // DTYPES[e["dtype"]][0],
                            offset=a).reshape(e["shape"])
        return arr[()] if scalar else arr

    def torch(self, name: str, e: dict, a: int, b: int) -> Any:
        if (name, "torch") in self.cache:
            return self.cache[(name, "torch")]
        torch = _torch(self.where)
        dtype = getattr(torch, DTYPES[e["dtype"]][1])
        if b == a:
            t = torch.empty(e["shape"], dtype=dtype)
        else:
            t = torch.frombuffer(self.buf, dtype=torch.uint8, count=b - a, offset=a).view(dtype).reshape(e["shape"])
        if self.device != "cpu":
            t = t.to(self.device)
        self.cache[(name, "torch")] = t
        return t

    def view(self, name: str, e: dict, a: int, b: int, dtype: str, shape: list, stride: list, offset: int) -> Any:
        torch = _torch(self.where)
        key = (name, dtype)
        if key not in self.cache:
            size = DTYPES[dtype][0]
            if (b - a) % size:
                raise FormatError(f"{self.where}: malformed: storage {name!r} is not a whole number of {dtype}")
            base = torch.frombuffer(self.buf, dtype=torch.uint8, count=b - a, offset=a) if b > a \
                else torch.empty(0, dtype=torch.uint8)
            self.cache[key] = base.view(getattr(torch, DTYPES[dtype][1])).to(self.device)
        base = self.cache[key]
        last = offset + sum((d - 1) * s for d, s in zip(shape, stride, strict=False)) if all(shape) else offset
        if len(shape) != len(stride) or last >= base.numel() or offset < 0:
            raise FormatError(f"{self.where}: malformed: a view outside its storage {name!r}")
        return base.as_strided(shape, stride, offset)


def _torch(where: str) -> Any:
    try:
        import torch  # lazily: a numpy-only state loads without torch
    except ImportError:
        raise FormatError(f"{where}: holds torch tensors, and torch is not installed here") from None
    return torch


def decode(buf: Any, where: str = "checkpoint", device: str = "cpu", plain_ok: bool = False) -> Any:
    """The state ``encode`` wrote, its tensors views of ``buf`` (a writable buffer: keep it).

    ``plain_ok``: a safetensors file without pbt-mq's metadata loads as {name: tensor}."""
    head, start = header(buf, where)
    meta = head.get("__metadata__") or {}
    dec = _Decoder(buf, head, start, device, where)
    if meta.get("format") != MAGIC or "pbt-mq" not in meta:
        if not plain_ok:
            raise FormatError(f"{where}: malformed: a safetensors file without pbt-mq's state (format {MAGIC!r})")
        return {n: dec.tensor([n, "torch"]) for n in head if n != "__metadata__"}
    try:
        skeleton = base64.b64decode(meta["pbt-mq"], validate=True)
        return dec.unpack(skeleton)
    except FormatError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise FormatError(f"{where}: malformed: its state does not decode ({type(exc).__name__}: {exc})") from None
