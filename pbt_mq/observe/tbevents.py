"""A tiny TensorBoard event-file writer (scalars only), pure Python, no tensorboard or protobuf needed.

An event file is a sequence of records ``[len u64][masked crc32c(len) u32][data][masked
crc32c(data) u32]`` whose data is a serialized ``tensorflow.Event`` protobuf. Scalars need
four fields, so they are encoded by hand here: Event{wall_time=1 double, step=2 varint,
file_version=3 string, summary=5 {value=1 {tag=1 string, simple_value=2 float}}}.
``tests/test_inspect.py`` reads the files back with TensorBoard's own EventAccumulator.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli, reflected
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # negative int64 as protobuf does: ten bytes
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:  # length-delimited (wire type 2)
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def event(step: int, wall_time: float, scalars: dict[str, float] | None = None, file_version: str = "") -> bytes:
    """One serialized Event: a file-version header, or scalars at ``step``."""
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version:
        out += _field(3, file_version.encode())
    if scalars:
        values = b"".join(
            _field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", float(v))) for tag, v in scalars.items()
        )
        out += _field(5, values)
    return out


def record(data: bytes) -> bytes:
    n = struct.pack("<Q", len(data))
    return n + struct.pack("<I", masked_crc(n)) + data + struct.pack("<I", masked_crc(data))


FILE_NAME = "events.out.tfevents.0000000000.pbt-mq"


def append(logdir: str | Path, step: int, values: dict[str, float], wall_time: float | None = None) -> Path:
    """Append one step's scalars to the run's single event file (created with its header if new).

    Opened, appended and closed per call: the writers of one member's run are its segments,
    which never overlap, so workers on a shared filesystem take turns on one file and
    TensorBoard sees the member's steps in the order they happened.
    """
    d = Path(logdir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / FILE_NAME
    now = time.time() if wall_time is None else wall_time
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        head = record(event(0, now, file_version="brain.Event:2")) if os.fstat(fd).st_size == 0 else b""
        os.write(fd, head + record(event(step, now, values)))  # one write: no torn header/record pair
    finally:
        os.close(fd)
    return path
