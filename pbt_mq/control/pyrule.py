"""Exploit rules that run in Python, inside the decision's WATCH: plug-ins (``rules.plugins``).

``decide.lua`` has recorded the score (rule "none"); here the board the member is ranked on is read,
best first and at most ``rules.plugins.BOARD_MAX`` members, the rule's ``choose()`` is called with the
decision's rng, and the donor's scored checkpoint is read. The result is a ``decide.Reply`` as if the
script had picked the donor, so interpreting, committing and the lineage record (whose snapshot is that
board: what replay re-runs the rule on) are the same as for the built-ins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from pbt_mq.broker.scripts import text
from pbt_mq.control.decide import Decider, Prepared, Reply
from pbt_mq.rules.plugins import BOARD_MAX


def pick_in_python(pipe: Any, decider: Decider, prep: Prepared, raw: Sequence[Any] | Reply) -> Reply:
    """decide.lua's reply, with the donor a Python rule picks when ``prep.python`` (else as it came)."""
    reply = raw if isinstance(raw, Reply) else Reply.parse(raw)
    if reply.status != "ok" or not prep.python:
        return reply
    board = [(text(m), float(s)) for m, s in pipe.zrevrange(prep.keys[4], 0, BOARD_MAX - 1, withscores=True)]
    donor = decider.exploit.choose(board, text(prep.args[0]), prep.score, prep.rng)
    record = pipe.hget(prep.keys[2], donor) if donor else None
    return dataclasses.replace(reply, donor=donor or "", donor_record=text(record) if record else "", board=board)
