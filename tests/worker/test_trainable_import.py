"""What an experiment's ``trainable`` may name: whoever can write to Redis writes experiments, so a
worker imports only a Trainable subclass or a plain function of the module named (never a builtin,
a standard-library function or a re-export), and with PBT_TRAINABLES only from the modules listed."""

from __future__ import annotations

import time

import pytest
from helpers import TOY, launch, pbt

from pbt_mq.worker.trainable import TrainableImportError, allowed, import_trainable


@pytest.mark.parametrize(("path", "why"), [
    ("os:system", "must be a Trainable subclass or a Python function defined in os"),
    ("shutil:rmtree", "a standard-library function is never a trainable"),
    ("subprocess:Popen", "a class must subclass pbt_mq.Trainable"),
    ("workers.digits_loop:dataset", "defined in workers.digits_loop"),  # imported into it from workers.digits
    ("workers.toy:nothing", "has no attribute"),
])
def test_only_trainables_and_the_modules_own_functions_are_accepted(path, why):
    with pytest.raises(TrainableImportError, match=why):
        import_trainable(path)


def test_a_trainable_class_and_a_loop_function_are_accepted_and_the_allowlist_holds():
    assert import_trainable("workers.toy:Toy").__name__ == "Toy"
    assert import_trainable("workers.digits_loop:main").__name__ == "main"
    assert allowed("workers.toy:Toy", ("workers",)) and not allowed("workersx.toy:Toy", ("workers",))
    with pytest.raises(TrainableImportError, match="not under this worker's PBT_TRAINABLES"):
        import_trainable("workers.toy:Toy", ("mypkg",))


def test_a_forged_experiment_naming_os_system_runs_nothing(fleet, redis_url, tmp_path):
    marker = tmp_path / "pwned"
    fleet.start("worker", "w1")
    fleet.start("arbiter", "a1")
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "trainable=os:system", f"trainable_args.command=touch {marker}",
                 "population.size=1", "population.initial=[]", "worker.max_retries=0", file=TOY)
    res = pbt("wait", exp, "--timeout", "60", "--redis", redis_url, timeout=90)
    assert res.returncode == 1 and "failed" in res.stdout, res.stdout + res.stderr
    time.sleep(0.5)
    assert not marker.exists()
    assert "must be a Trainable subclass or a Python function" in fleet.log("w1")
