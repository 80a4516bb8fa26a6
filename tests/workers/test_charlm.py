"""workers/charlm.py: a character transformer on CPython's docs, resumable to the bit."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from pbt_mq.observe.replay import same_state
from workers.charlm import VOCAB, CharLM, corpus

HP = {"lr": 3e-3, "warmup": 10, "dropout": 0.1, "weight_decay": 0.01}
OTHER = {"lr": 1e-3, "warmup": 50, "dropout": 0.2, "weight_decay": 0.1}
SMALL = {"context": 16, "d_model": 32, "heads": 2, "layers": 1, "batch_size": 8, "eval_windows": 8}


@pytest.fixture(autouse=True)
def one_thread():
    """As pbt local runs workers on a 2-core machine; tiny ops on two contended threads crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def member(hp: dict, seed: int) -> CharLM:
    torch.manual_seed(seed)
    return CharLM(hp, seed=seed, **SMALL)


def through_disk(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_the_corpus_is_split_by_topic_with_a_fixed_vocabulary():
    data = corpus()
    assert set(data) == {"train", "val", "test"}
    assert len(data["train"]) > 300_000 and len(data["val"]) > 20_000 and len(data["test"]) > 20_000
    for split in data.values():
        assert 0 <= int(split.min()) and int(split.max()) <= len(VOCAB)
    assert corpus.__wrapped__()["val"].equal(data["val"])  # deterministic: read again, the same


def test_a_checkpoint_continues_exactly_in_another_member():
    a = member(HP, seed=7)
    a.train(5)
    saved = through_disk(a.state_dict())
    a.apply(OTHER)
    a.train(5)
    b = member(OTHER, seed=3)
    b.train(2)
    b.load_state_dict(saved)
    b.apply(OTHER)
    b.train(5)
    assert b.evaluate() == a.evaluate()
    assert same_state(b.state_dict(), a.state_dict()) and b.step == 10


def test_members_sharing_a_process_do_not_disturb_each_other():
    alone = member(HP, seed=1)
    alone.train(6)
    a, b = member(HP, seed=1), member(OTHER, seed=2)
    a.train(3)
    b.train(4)
    torch.rand(3)
    a.train(3)
    assert same_state(a.state_dict(), alone.state_dict())


def test_hyperparameters_are_applied_in_place_and_warmup_counts_model_steps():
    m = member(HP, seed=0)
    m.train(4)
    moments = {k: v.clone() for k, v in m.opt.state_dict()["state"][0].items()}
    m.apply(OTHER)
    assert all(d.p == OTHER["dropout"] for d in m.model.modules() if isinstance(d, nn.Dropout))
    assert [g["weight_decay"] for g in m.opt.param_groups] == [OTHER["weight_decay"], 0.0]
    assert all(torch.equal(m.opt.state_dict()["state"][0][k], v) for k, v in moments.items())
    assert m.lr_at(4) == OTHER["lr"] * 5 / 50 and m.lr_at(49) == m.lr_at(500) == OTHER["lr"]
    m.train(1)
    assert m.opt.param_groups[0]["lr"] == OTHER["lr"] * 5 / 50  # the step trained was the model's fifth


def test_the_score_is_on_fixed_windows_and_changes_nothing():
    m = member(HP, seed=0)
    m.train(3)
    before = through_disk(m.state_dict())
    first = m.evaluate()
    assert m.evaluate() == first and same_state(m.state_dict(), before)
    assert 0 < first["val_loss"] < 6 and 0 < first["test_loss"] < 6  # ln(97) = 4.57 at chance
