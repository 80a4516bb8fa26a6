"""The lineage archive: Redis keeps the newest ``[lineage] redis_window`` records, the store the rest.

The arbiters' maintenance (``control.maintenance``) moves the oldest records, in chunks of
``CHUNK_RECORDS``, to immutable store objects ``EXP/_lineage/FIRST_LAST.msgpack`` (msgpack,
checksummed like a checkpoint, never pickle) and lists each chunk in ``pbt:{EXP}:archive``. A chunk
is the entries exactly as the stream held them (ids and fields), so a record read back is the
record that was decided. Several arbiters may archive at once: the chunk's bytes and key are a
function of its entries (two writers write the same object), and ``archive_chunk.lua`` lists it
and trims the stream only if the stream still starts at its first entry: exactly once.

``read`` serves ``state.lineage.records``: the chunks (cached by key: they never change), then the
live stream, read in one transaction so that a chunk moved meanwhile is seen once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import msgpack

from pbt_mq.broker.scripts import call as call_script
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Lineage, Meta
from pbt_mq.core.protocol import CheckpointRef
from pbt_mq.store.base import ChecksumError, Store, StoreError, retrying
from pbt_mq.store.open import open_store

log = logging.getLogger(__name__)
CHUNK_RECORDS = 1000
FORMAT = "pbt-mq.lineage/1"
MAX_CHUNK_BYTES = 512 << 20
CACHE_CHUNKS = 64


class ArchiveError(StoreError):
    """An archived chunk could not be read back as it was written; the text says which."""


@dataclass(frozen=True)
class Chunk:
    """One archived chunk, as ``pbt:{EXP}:archive`` lists it."""

    key: str
    sha256: str
    size: int
    count: int
    first: str
    last: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Chunk:
        try:
            d = json.loads(raw)
            return cls(str(d["key"]), str(d["sha256"]), int(d["size"]), int(d["count"]), str(d["first"]),
                       str(d["last"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ArchiveError(f"lineage archive: an index entry is not a chunk ({exc}): {raw!r:.200}") from None

    @property
    def ref(self) -> CheckpointRef:
        return CheckpointRef(self.key, self.sha256, self.size)


def entry_id(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def id_tuple(entry: str) -> tuple[int, int]:
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0)


def chunk_key(exp: str, first: str, last: str) -> str:
    return f"{exp}/_lineage/{first}_{last}.msgpack"


def encode_chunk(entries: list[tuple[Any, dict[Any, Any]]]) -> bytes:
    """The entries as the stream holds them: ids and every field's bytes, in order."""
    records = [[entry_id(i), {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}]
               for i, fields in entries]
    return msgpack.packb({"format": FORMAT, "records": records}, use_bin_type=True)


def decode_chunk(data: Any, chunk: Chunk) -> tuple[Lineage, ...]:
    """Check a chunk's structure (no extension types, its ids in order from first to last) and type it."""
    where = f"lineage archive {chunk.key}"
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext, max_bin_len=MAX_CHUNK_BYTES)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ArchiveError(f"{where}: not a lineage chunk ({exc})") from None
    recs = doc.get("records") if isinstance(doc, dict) and doc.get("format") == FORMAT else None
    if not isinstance(recs, list) or len(recs) != chunk.count:
        raise ArchiveError(f"{where}: not a lineage chunk of {chunk.count} records ({FORMAT})")
    out = []
    for item in recs:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], dict)):
            raise ArchiveError(f"{where}: a record is not [id, fields]")
        out.append(Lineage.from_entry(item[0], item[1]))
    if out and (out[0].id != chunk.first or out[-1].id != chunk.last):
        raise ArchiveError(f"{where}: holds {out[0].id}..{out[-1].id}, the index says {chunk.first}..{chunk.last}")
    return tuple(out)


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"unexpected msgpack extension type {code}")


# ---------------------------------------------------------------- writing (the arbiters)


def archive(r: Any, store: Store, exp: str, window: int, chunk_records: int = CHUNK_RECORDS,
            keep_from: tuple[int, int] | None = None) -> int:
    """Move the records beyond the newest ``window`` to the store, whole chunks at a time, none from
    ``keep_from`` on (the tracker sender reads them from Redis); returns how many records this call moved."""
    k = Keys(exp)
    size = max(1, min(chunk_records, window))
    moved = 0
    while r.xlen(k.lineage) >= window + size:
        entries = r.xrange(k.lineage, "-", "+", count=size)
        if len(entries) < size:
            break
        first, last = entry_id(entries[0][0]), entry_id(entries[-1][0])
        if keep_from is not None and id_tuple(last) >= keep_from:
            break
        data = encode_chunk(entries)
        chunk = Chunk(chunk_key(exp, first, last), hashlib.sha256(data).hexdigest(), len(data), len(entries),
                      first, last)
        _put_once(store, chunk, data)
        ms, seq = id_tuple(last)
        if not call_script(r, "archive_chunk", [k.lineage, k.archive], [first, last, f"{ms}-{seq + 1}",
                                                                        chunk.to_json()]):
            break  # another arbiter moved it first
        moved += len(entries)
    return moved


def _put_once(store: Store, chunk: Chunk, data: bytes) -> None:
    """Write the chunk; an existing object with the same bytes (another arbiter's) is as good."""
    try:
        retrying(lambda: store.put_buffers(chunk.key, [memoryview(data)], chunk.sha256, chunk.size),
                 f"archive {chunk.key}")
    except StoreError:
        if not store.exists(chunk.key):
            raise
        store.fetch_bytes(chunk.ref)  # raises ChecksumError unless it holds exactly these bytes


# ---------------------------------------------------------------- reading (everyone)


class _Cache:
    """Decoded chunks by (store, key, sha256): they never change, and readers such as ``pbt top``
    read the whole log again and again."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[tuple[str, str, str], tuple[Lineage, ...]] = OrderedDict()
        self.stores: dict[str, Store] = {}
        self.lock = threading.Lock()

    def store(self, url: str) -> Store:
        with self.lock:
            if url not in self.stores:
                self.stores[url] = open_store(url)
            return self.stores[url]

    def get(self, url: str, chunk: Chunk) -> tuple[Lineage, ...]:
        key = (url, chunk.key, chunk.sha256)
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        try:
            data = retrying(lambda: self.store(url).fetch_bytes(chunk.ref), f"read {chunk.key}")
        except ChecksumError as exc:
            raise ArchiveError(f"lineage archive: {exc}") from None
        recs = decode_chunk(data, chunk)
        del data
        with self.lock:
            self.items[key] = recs
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return recs


_cache = _Cache(CACHE_CHUNKS)


def read_archived(r: Any, exp: str) -> list[Lineage]:
    """Only the records moved to the store, oldest first (a follower then reads the stream after them)."""
    k = Keys(exp)
    index = r.lrange(k.archive, 0, -1)
    if not index:
        return []
    url = Meta.read(r, k.meta, "store").store
    if not url:
        raise ArchiveError(f"experiment {exp}: archived lineage, but no store URL in its meta hash")
    return [rec for raw in index for rec in _cache.get(url, Chunk.from_json(raw))]


def read(r: Any, exp: str, after: str | None = None) -> list[Lineage]:
    """Every record, archived then live, oldest first; with ``after`` (an entry id) only newer ones."""
    k = Keys(exp)
    pipe = r.pipeline(transaction=True)
    pipe.lrange(k.archive, 0, -1)
    pipe.xrange(k.lineage, "-" if after is None else f"({after}", "+")
    index, live = pipe.execute()
    out: list[Lineage] = []
    if index:
        floor = id_tuple(after) if after else None
        url = Meta.read(r, k.meta, "store").store
        if not url:
            raise ArchiveError(f"experiment {exp}: archived lineage, but no store URL in its meta hash")
        for raw in index:
            chunk = Chunk.from_json(raw)
            if floor is not None and id_tuple(chunk.last) <= floor:
                continue
            recs = _cache.get(url, chunk)
            out.extend(recs if floor is None else [rec for rec in recs if id_tuple(rec.id) > floor])
    out.extend(Lineage.from_entry(i, _pairs(f)) for i, f in live)
    return readable(exp, out)


def readable(exp: str, recs: list[Lineage]) -> list[Lineage]:
    """The records every release writes: an action, every field of its type. Anything else (an entry added
    by hand with redis-cli) is left out, and said in one line, so every reader goes on without it."""
    bad = [rec for rec in recs if rec.problems or rec.action is None]
    if not bad:
        return recs
    first = bad[0]
    why = "; ".join(first.problems) or "no action"
    log.warning("%s: skipped %d unreadable lineage record%s (the first, entry %s: %s)", exp, len(bad),
                "" if len(bad) == 1 else "s", first.id or "?", why)
    return [rec for rec in recs if not (rec.problems or rec.action is None)]


def _pairs(fields: Any) -> dict[Any, Any]:
    """A stream entry's fields: a dict, or in a cluster transaction's raw reply a flat list."""
    return fields if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2], strict=True))
