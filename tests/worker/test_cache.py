"""The worker's checkpoint cache (``worker.cache``): bounded in bytes, least recently used out, and a
hit is verified like a download: bytes that changed in memory are never decoded."""

from __future__ import annotations

import hashlib

from pbt_mq.core.protocol import CheckpointRef
from pbt_mq.worker.cache import CheckpointCache, default_limit_bytes


def obj(i: int, size: int = 1000) -> tuple[CheckpointRef, memoryview]:
    data = memoryview(bytearray(bytes([i % 256]) * size))
    return CheckpointRef(f"exp/m{i:03d}/000001-s4-ab.safetensors", hashlib.sha256(data).hexdigest(), size), data


def test_a_hundred_members_stay_within_the_bound_and_the_newest_are_kept():
    cache = CheckpointCache(10_500)
    refs = []
    for i in range(100):
        ref, data = obj(i)
        assert cache.put(ref.key, data, ref.sha256)
        refs.append(ref)
        assert cache.bytes <= cache.limit_bytes
    assert cache.peak_bytes <= 10_500 and len(cache) == 10 and cache.evicted == 90
    assert all(cache.get(r) is None for r in refs[:90])
    assert all(bytes(cache.get(r)) == bytes(obj(i)[1]) for i, r in enumerate(refs) if i >= 90)
    assert cache.hits == 10 and cache.misses == 90


def test_using_an_entry_keeps_it_longer():
    cache = CheckpointCache(3000)
    (a, da), (b, db), (c, dc), (d, dd) = (obj(i) for i in range(4))
    for ref, data in ((a, da), (b, db), (c, dc)):
        cache.put(ref.key, data, ref.sha256)
    assert cache.get(a) is not None  # a is now the most recently used
    cache.put(d.key, dd, d.sha256)  # evicts b, the least recently used
    assert a.key in cache and b.key not in cache and c.key in cache and d.key in cache
    cache.demote(d.key)  # a member's start checkpoint, superseded by its new one
    cache.put(b.key, db, b.sha256)
    assert d.key not in cache and a.key in cache and c.key in cache


def test_a_hit_is_verified_and_changed_bytes_are_dropped():
    cache = CheckpointCache(10_000)
    ref, data = obj(1)
    cache.put(ref.key, data, ref.sha256)
    data[0] = 99  # a trainable kept the decoded tensors and trained them in place
    assert cache.get(ref) is None and ref.key not in cache and cache.rejected == 1 and cache.bytes == 0
    other, odata = obj(2)
    cache.put(other.key, odata, other.sha256)
    forged = CheckpointRef(other.key, "0" * 64, other.size)  # the reference names other bytes
    assert cache.get(forged) is None and other.key in cache


def test_off_too_big_and_replaced():
    assert not CheckpointCache(0).put("k", b"x", "s")
    cache = CheckpointCache(500)
    ref, data = obj(1)
    assert not cache.put(ref.key, data, ref.sha256) and cache.bytes == 0  # larger than the whole cache
    cache = CheckpointCache(5000)
    cache.put(ref.key, data, ref.sha256)
    cache.put(ref.key, data, ref.sha256)
    assert cache.bytes == 1000 and len(cache) == 1
    cache.discard(ref.key)
    assert cache.bytes == 0 and cache.get(ref) is None


def test_the_default_is_at_most_4_gib_and_an_eighth_of_memory():
    assert 0 < default_limit_bytes() <= 4096 << 20
