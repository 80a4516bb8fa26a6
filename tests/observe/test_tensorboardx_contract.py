"""What pbt-mq relies on in tensorboardX (observe/tbx.py), against the installed tensorboardX."""

from __future__ import annotations

import tensorboardX
from contracts import declared, in_range
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pbt_mq.observe.tbx import EVENT_FILE, EventFiles


def test_the_installed_tensorboardx_is_in_the_declared_range():
    assert in_range("tensorboardX", tensorboardX.__version__), (tensorboardX.__version__, str(declared("tensorboardX")))


def test_the_parts_the_adapter_uses_exist():
    from tensorboardX import record_writer
    from tensorboardX.proto.event_pb2 import Event

    assert callable(record_writer.register_writer_factory) and callable(record_writer.RecordWriter)
    assert {"wall_time", "step", "summary", "file_version"} <= set(Event.DESCRIPTOR.fields_by_name)
    assert tensorboardX.summary.scalar("t", 1.5).value[0].tag == "t"


def test_two_writers_append_to_one_file_that_tensorboard_reads_in_order(tmp_path):
    """Two workers (two adapters) take turns on a member's one event file; TensorBoard reads every step."""
    first, second = EventFiles(), EventFiles()
    for step in range(1, 7):
        (first if step % 2 else second).append(tmp_path / "m000", step, {"q": step / 2, "hparams/lr": 0.1})
    assert [p.name for p in (tmp_path / "m000").iterdir()] == [EVENT_FILE]
    acc = EventAccumulator(str(tmp_path / "m000"))
    acc.Reload()
    assert [(s.step, s.value) for s in acc.Scalars("q")] == [(s, s / 2) for s in range(1, 7)]
    assert len(acc.Scalars("hparams/lr")) == 6
