"""The checkpoint format (safetensors + msgpack, no pickle): what round-trips, what is refused, and
that the objects are real safetensors files (read back with the safetensors library itself)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import struct
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import pbt_mq
from pbt_mq.core.protocol import CheckpointRef
from pbt_mq.observe.replay import same_state
from pbt_mq.store import checkpoint
from pbt_mq.store.checkpoint import UnsafeCheckpoint
from pbt_mq.store.format import FormatError, encode
from pbt_mq.store.format_read import decode
from pbt_mq.store.open import open_store

ROOT = Path(__file__).resolve().parents[2]


def to_bytes(obj) -> bytearray:
    enc = encode(obj)
    data = bytearray(b"".join(enc.buffers))
    assert len(data) == enc.size
    return data


def trained_state() -> dict:
    """A real training state: a model with tied weights, Adam after two steps, every RNG there is."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 6), torch.nn.Linear(6, 6), torch.nn.LayerNorm(6),
                                torch.nn.Linear(6, 11, bias=False))
    model[3].weight = model[0].weight  # tied: one Parameter in two places
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    for _ in range(2):
        model(torch.randint(0, 11, (4,))).sum().backward()
        opt.step()
    py = random.Random(7)
    py.random()
    gen = torch.Generator().manual_seed(3)
    torch.rand(2, generator=gen)
    return {
        "state": {"model": model.state_dict(), "opt": opt.state_dict(), "py_rng": py.getstate(),
                  "np_legacy": np.random.RandomState(5).get_state(),
                  "np_pcg": np.random.default_rng(9).bit_generator.state, "torch_rng": gen.get_state(),
                  "counts": {0: 1, 2**70: -3, -5: 2.5}, "blob": b"\x00\xff" * 3, "big_blob": os.urandom(100_000),
                  "name": "ünïcode", "nothing": None, "flag": True, "nan": float("nan"), "inf": -float("inf"),
                  "pair": (1, (2.0, "three")), "bf16": torch.randn(5).bfloat16(), "half": torch.randn(2, 3).half(),
                  "mask": torch.rand(7) > 0.5, "scalar": torch.tensor(4), "empty": torch.empty(0, 3),
                  "dtype": torch.float16, "np_scalar": np.float32(1.5), "np_int": np.int64(-2),
                  "np_mat": np.arange(12, dtype=np.float64).reshape(3, 4).T},  # non-contiguous
        "step": 40, "hparams": {"lr": 0.01, "layers": 3}, "member": "m003",
    }


def test_a_training_state_round_trips_exactly() -> None:
    state = trained_state()
    out = decode(to_bytes(state))
    assert same_state(out, state)
    s, o = state["state"], out["state"]
    assert isinstance(o["model"], OrderedDict) and o["model"]._metadata == s["model"]._metadata
    assert list(o["opt"]["state"]) == [0, 1, 2, 3, 4]  # int keys stay ints
    assert o["opt"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert o["pair"] == (1, (2.0, "three")) and o["counts"] == {0: 1, 2**70: -3, -5: 2.5}
    assert o["dtype"] is torch.float16 and type(o["np_scalar"]) is np.float32 and type(o["np_int"]) is np.int64
    # every RNG comes back in the form its setter wants, and continues the same sequence
    py = random.Random()
    py.setstate(o["py_rng"])
    ref = random.Random(7)
    ref.random()
    assert py.random() == ref.random()
    legacy = np.random.RandomState()
    legacy.set_state(o["np_legacy"])
    assert legacy.rand() == np.random.RandomState(5).rand()
    pcg = np.random.default_rng()
    pcg.bit_generator.state = o["np_pcg"]
    assert pcg.random() == np.random.default_rng(9).random()
    gen = torch.Generator()
    gen.set_state(o["torch_rng"])
    ref_gen = torch.Generator().manual_seed(3)
    torch.rand(2, generator=ref_gen)
    assert torch.equal(torch.rand(3, generator=gen), torch.rand(3, generator=ref_gen))
    # and it loads into a fresh model and optimizer of the same shape
    model = torch.nn.Sequential(torch.nn.Embedding(11, 6), torch.nn.Linear(6, 6), torch.nn.LayerNorm(6),
                                torch.nn.Linear(6, 11, bias=False))
    model[3].weight = model[0].weight
    model.load_state_dict(o["model"])
    torch.optim.Adam(model.parameters()).load_state_dict(o["opt"])


def test_tied_weights_are_stored_once_and_come_back_tied() -> None:
    w = torch.randn(256, 64)
    base = torch.arange(40.0)
    state = {"enc.weight": w, "dec.weight": w, "also": w.detach(), "a": base[:10], "b": base[5:30:5],
             "t": base.view(8, 5).t()}
    data = to_bytes(state)
    assert len(data) < w.numel() * 4 + base.numel() * 4 + 4096  # each storage once
    out = decode(data)
    assert out["enc.weight"] is out["dec.weight"] is out["also"]
    assert out["a"].untyped_storage().data_ptr() == out["b"].untyped_storage().data_ptr() \
        == out["t"].untyped_storage().data_ptr()
    out["a"][5] = -1.0  # still one storage: a write through one view shows in the other
    assert out["b"][0] == -1.0 and out["t"][0, 1] == -1.0
    assert same_state({k: v for k, v in out.items() if k not in "abt"}, {k: state[k] for k in state if k not in "abt"})


def test_the_object_is_a_safetensors_file(tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    state = trained_state()
    path = tmp_path / "c.safetensors"
    path.write_bytes(to_bytes(state))
    arrays = load_file(str(path))  # the reference reader validates the header and offsets
    assert torch.equal(arrays["state.half"], state["state"]["half"])
    assert np.array_equal(arrays["state.np_mat"].numpy(), state["state"]["np_mat"])
    with safetensors.safe_open(str(path), "pt") as f:
        assert f.metadata()["format"] == "pbt-mq/1"
        assert torch.equal(f.get_tensor("state.bf16"), state["state"]["bf16"])
    # and a plain safetensors file (another tool's) loads with pbt_mq.load_checkpoint as {name: tensor}
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.ones(3)}, str(plain))
    assert torch.equal(pbt_mq.load_checkpoint(plain)["x"], torch.ones(3))


def test_load_checkpoint_reads_both_formats_and_checks_a_sha256(tmp_path: Path) -> None:
    state = trained_state()
    new = tmp_path / "checkpoint.safetensors"
    sha = checkpoint.save_file(new, state)
    assert sha == hashlib.sha256(new.read_bytes()).hexdigest()
    assert same_state(pbt_mq.load_checkpoint(new, sha256=sha), state)
    old = tmp_path / "checkpoint.pt"  # exported from an experiment of an earlier release
    torch.save({"state": {"w": torch.ones(2)}, "step": 3}, old)
    assert pbt_mq.load_checkpoint(old)["step"] == 3
    with pytest.raises(pbt_mq.store.base.ChecksumError, match="does not match"):
        pbt_mq.load_checkpoint(new, sha256="0" * 64)


def test_a_state_that_cannot_be_stored_says_where() -> None:
    with pytest.raises(FormatError, match=r"state\.opt\.sched is a builtins\.object; a checkpoint holds tensors"):
        encode({"state": {"opt": {"sched": object()}}})
    with pytest.raises(FormatError, match="numpy ndarray of dtype object is not supported"):
        encode({"x": np.array([object()])})


# ---------------------------------------------------------------- refused, with one clear line each


def evil_pickle() -> bytes:
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    return pickle.dumps({"state": Evil()}, protocol=4)


def torch_zip() -> bytes:
    buf = io.BytesIO()
    torch.save({"state": {"w": torch.ones(2)}}, buf)
    return buf.getvalue()


def malformed_header() -> bytes:
    good = bytes(to_bytes({"w": torch.ones(4)}))
    (n,) = struct.unpack("<Q", good[:8])
    head = json.loads(good[8:8 + n])
    head["w"]["data_offsets"] = [4, 20]  # a hole before it, past the end after it
    text = json.dumps(head).encode()
    return struct.pack("<Q", len(text)) + text + good[8 + n:]


def unknown_extension() -> bytes:
    good = bytes(to_bytes({"w": 1}))
    (n,) = struct.unpack("<Q", good[:8])
    head = json.loads(good[8:8 + n])
    import base64

    import msgpack

    head["__metadata__"]["pbt-mq"] = base64.b64encode(msgpack.packb({"x": msgpack.ExtType(42, b"os.system")})).decode()
    text = json.dumps(head).encode()
    return struct.pack("<Q", len(text)) + text


BAD = {
    "pickle": (evil_pickle, r"holds a pickle; .*refusing it"),
    "torch-zip": (torch_zip, r"holds a pickle \(a torch.save file\)"),
    "truncated": (lambda: bytes(to_bytes({"w": torch.ones(1000)}))[:-100], r"truncated: its tensors need 4000 bytes"),
    "truncated-header": (lambda: bytes(to_bytes({"w": 1}))[:20], r"truncated: the header says"),
    "malformed-offsets": (malformed_header, r"malformed: tensor 'w' starts at 4, not 0"),
    "malformed-json": (lambda: struct.pack("<Q", 5) + b"{abc}", r"malformed: the header is not JSON"),
    "malformed-ext": (unknown_extension, r"malformed: unknown msgpack extension type 42"),
    "no-state": (lambda: struct.pack("<Q", 2) + b"{}", r"malformed: a safetensors file without pbt-mq's state"),
    "garbage": (lambda: b"\x01" * 40, r"malformed: not a safetensors file"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_objects_are_refused_with_one_line(store_url: str, tmp_path: Path, kind: str) -> None:
    make, message = BAD[kind]
    data = make()
    s = open_store(store_url)
    s.check()
    src = tmp_path / "obj"
    src.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    key = f"bad/{kind}.safetensors"
    s.put_file(key, str(src), sha, len(data))  # a valid sha256: the checksum does not save us here
    with pytest.raises(UnsafeCheckpoint, match=message) as e:
        checkpoint.load(s, CheckpointRef(key, sha, len(data)))
    assert "\n" not in str(e.value) and key in str(e.value)


def test_a_numpy_only_state_needs_no_torch(tmp_path: Path) -> None:
    """Saved and loaded in a process where importing torch fails."""
    script = f"""
import sys
sys.modules["torch"] = None  # any import of torch raises ImportError
import numpy as np
from pbt_mq.store import checkpoint
from pbt_mq.store.open import open_store
s = open_store({str(tmp_path / 'st')!r}); s.check()
state = {{"w": np.arange(6, dtype=np.float32).reshape(2, 3), "rng": np.random.RandomState(1).get_state(), "step": 3}}
ref = checkpoint.save(s, "np/000001.safetensors", state)
out = checkpoint.load(s, ref)
assert np.array_equal(out["w"], state["w"]) and out["w"].dtype == np.float32 and out["step"] == 3
r = np.random.RandomState(); r.set_state(out["rng"]); assert r.rand() == np.random.RandomState(1).rand()
print("ok", "torch" in sys.modules and sys.modules["torch"] is not None)
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["ok", "False"]
