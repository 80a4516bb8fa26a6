"""The redis-py adapter: what pbt-mq needs of pipelines beyond their public API, in one place.

* ``evalsha_many``: several EVALSHA calls in one write on a WATCHing pipeline's connection, while
  it is still in immediate mode (redis-py only pipelines after MULTI): ``Connection.pack_commands``,
  ``send_packed_command`` and ``read_response``, and the pipeline's ``connection`` attribute.
* ``Replies``: a MULTI whose replies are read by name, not by position.

``tests/broker/test_pipes_contract.py`` checks both against the installed redis-py and a real
server.
"""

from __future__ import annotations

from typing import Any

import redis

from pbt_mq.broker.scripts import sha


def evalsha_many(pipe: Any, name: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any] | None:
    """EVALSHA of script ``name`` for every (keys, args) in one write on ``pipe``'s connection
    (a pipeline in WATCH/immediate mode); None if any reply is an error (a script not loaded yet,
    a refused argument): the caller then goes one call at a time, which loads it."""
    conn = pipe.connection
    digest = sha(name)
    conn.send_packed_command(conn.pack_commands([("EVALSHA", digest, len(k), *k, *a) for k, a in calls]))
    replies, failed = [], False
    for _ in calls:
        try:
            replies.append(conn.read_response())
        except redis.ResponseError:
            failed = True
            replies.append(None)
    return None if failed else replies


class Replies:
    """Name the reply of a command queued in a MULTI; ``execute()`` returns them by name."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self._at: dict[str, int] = {}

    def name(self, name: str) -> None:
        """The command queued last answers to ``name``."""
        self._at[name] = len(self.pipe) - 1

    def execute(self) -> dict[str, Any]:
        results = self.pipe.execute()
        return {name: results[i] for name, i in self._at.items()}
