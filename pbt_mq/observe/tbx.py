"""The one adapter to tensorboardX (the ``tensorboard`` extra, ``tensorboardX>=2.6,<3``).

TensorBoard wants one event file per run; pbt-mq's runs (members) move between workers, so each
step is appended to the member's single file by whichever worker trained it. tensorboardX's
``SummaryWriter`` always starts a new file, so this uses three of its lower parts: the ``Event``
protobuf, ``summary.scalar`` and ``record_writer`` (``RecordWriter`` with a registered writer
factory that opens files for append). ``tests/observe/test_tensorboardx_contract.py`` checks the
installed version against the range and each of these parts.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

EVENT_FILE = "events.out.tfevents.0000000000.pbt-mq"  # one per member, whichever worker appends to it
PREFIX = "pbt-append"


class _Appending:
    """tensorboardX's writer factory for ``pbt-append:PATH``: append to the member's one file."""

    def open(self, path: str) -> Any:
        return open(path[len(PREFIX) + 1 :], "ab")  # buffered: a record pair goes out in one write at close

    def directory_check(self, path: str) -> None:
        Path(path[len(PREFIX) + 1 :]).mkdir(parents=True, exist_ok=True)


class EventFiles:
    """Appends scalars to ``LOGDIR/events.out.tfevents.0000000000.pbt-mq``, one file per run."""

    def __init__(self) -> None:
        try:
            tbx = importlib.import_module("tensorboardX")
        except ImportError:
            raise ImportError("--tensorboard-dir needs tensorboardX: pip install 'pbt-mq[tensorboard]'") from None
        self.Event = importlib.import_module("tensorboardX.proto.event_pb2").Event
        self.scalar = tbx.summary.scalar
        records = importlib.import_module("tensorboardX.record_writer")
        records.register_writer_factory(PREFIX, _Appending())
        self.RecordWriter = records.RecordWriter

    def append(self, logdir: Path, step: int, values: dict[str, float]) -> Path:
        """One step's scalars onto the run's event file (created with its header if new).

        Opened, appended and closed per call: a member's segments never overlap, so workers on a
        shared filesystem take turns on one file and TensorBoard sees its steps in order."""
        logdir.mkdir(parents=True, exist_ok=True)
        path = logdir / EVENT_FILE
        now = time.time()
        writer = self.RecordWriter(f"{PREFIX}:{path}")
        try:
            if not path.exists() or path.stat().st_size == 0:
                writer.write(self.Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
            summary = self.scalar("x", 0.0)
            del summary.value[:]
            for tag, v in values.items():
                summary.value.extend(self.scalar(tag, v).value)
            writer.write(self.Event(wall_time=now, step=step, summary=summary).SerializeToString())
        finally:
            writer.close()
        return path
