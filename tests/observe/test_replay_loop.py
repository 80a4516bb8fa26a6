"""Replaying a function (the loop API) gives it the seeds and states its worker call had: a replaced
member's own seed from its restart on, and a donor's checkpoint after a replacement from one; and the
same checks of its reports (every metric of a multi-objective experiment)."""

from __future__ import annotations

import pytest

from pbt_mq.core.ids import member_seed, replacement_seed
from pbt_mq.observe.replay import Scripted
from pbt_mq.worker.session import SessionError


def seg(member: str, a: int, b: int, **start) -> dict:
    return {"member": member, "from_step": a, "to_step": b, "score": 0.5, "hparams": {"lr": 0.1}, "start": start}


def sched(*segments: dict) -> dict:
    return {"segments": list(segments), "experiment_seed": 7, "seed": 0, "metric": "q", "trainable_args": {},
            "trainable": "tests.loops:toy"}


def test_a_fresh_replacement_keeps_its_own_seed_for_the_call_and_a_new_member_gets_its_own():
    own = replacement_seed(7, "m001", 3)
    sc = Scripted(sched(seg("m001", 0, 4, kind="replaced", seed=own), seg("m001", 4, 8, kind="continue"),
                        seg("m002", 8, 12, kind="exploit")), "cpu")
    assert [sc.assignment(i, None).seed for i in range(3)] == [own, own, member_seed(7, "m002")]
    assert own != member_seed(7, "m001")


def test_a_replacement_from_a_donor_hands_over_the_donors_state():
    sc = Scripted(sched(seg("m000", 0, 4, kind="init"), seg("m001", 4, 8, kind="replaced")), "cpu")
    run = sc.current()
    nxt = sc.report(run, {"q": 0.5}, 4, {"w": 1.0})
    assert nxt._a.state == {"w": 1.0} and nxt._a.member == "m001" and nxt._a.seed == member_seed(7, "m001")


def test_with_several_metrics_a_report_missing_one_is_refused_by_name():
    sc = Scripted({**sched(seg("m000", 0, 4, kind="init")), "metrics": ["q", "density"]}, "cpu")
    run = sc.current()
    with pytest.raises(SessionError, match="the experiment's metric is 'density'"):
        run.report({"q": 0.5}, step=4, state={"w": 1.0})
