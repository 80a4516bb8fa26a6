"""pbt top / plot / lineage / export / replay and the metrics, on one real finished toy experiment.

The experiment runs once per module: real pbt-worker and pbt-arbiter processes (with their
Prometheus ports open and TensorBoard output on), real redis-server, checkpoints on a real
S3 server. It lives in its own Redis database so the other tests' FLUSHDB leaves it alone.
"""

from __future__ import annotations

import json
import math
import struct
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from helpers import PAPER_INIT_4, launch, pbt, status
from services import ROOT, Fleet, free_port

import pbt_mq
from pbt_mq.config.parse import load_file, tomllib  # tomli before Python 3.11
from pbt_mq.core.ids import member_seed
from pbt_mq.core.keys import EXPERIMENTS, WORKERS, Keys, worker_key
from pbt_mq.core.protocol import ReadyEvent
from pbt_mq.rules.base import fmt
from pbt_mq.state.experiment import load_config
from pbt_mq.state.lineage import records

pytestmark = pytest.mark.xdist_group("inspect-db7")  # (one module fixture: a fleet in Redis database 7) on one pytest-xdist worker


@dataclass
class Run:
    url: str
    r: redis.Redis
    exp: str
    tmp: Path
    ports: dict[str, int]
    fleet: Fleet

    def events(self, exp: str | None = None) -> list[ReadyEvent]:
        return [ReadyEvent.decode(f[b"msg"]) for _, f in self.r.xrange(Keys(exp or self.exp).events)]

    def experiments(self) -> list[str]:
        """Every experiment in this module's database (some tests launch more than the toy)."""
        return [e.decode() for e in self.r.zrange(EXPERIMENTS, 0, -1)]


@pytest.fixture(scope="module")
def run(redis_server: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory):
    parts = urlsplit(redis_server)
    url = urlunsplit(parts._replace(path="/7"))
    r = redis.Redis.from_url(url)
    r.flushdb()
    tmp = tmp_path_factory.mktemp("inspect")
    fleet = Fleet(url, tmp / "logs")
    ports = {name: free_port() for name in ("a1", "w1", "w2")}
    local = ("--metrics-addr", "127.0.0.1")
    fleet.start("arbiter", "a1", "--metrics-port", str(ports["a1"]), *local)
    for w in ("w1", "w2"):
        fleet.start("worker", w, "--metrics-port", str(ports[w]), *local, "--tensorboard-dir", str(tmp / "tb"))
    store = f"s3://inspect/ckpt?endpoint={s3_endpoint}&secure=false&region=us-east-1"
    exp = launch(url, store, "population.size=4", PAPER_INIT_4)
    res = pbt("wait", exp, "--timeout", "180", "--redis", url, timeout=200)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{fleet.all_logs()}"
    yield Run(url, r, exp, tmp, ports, fleet)
    fleet.stop()
    r.flushdb()
    r.close()


def lineage_json(run: Run, *args: str) -> dict:
    res = pbt("lineage", run.exp, "--json", "--redis", run.url, *args)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


# ---------------------------------------------------------------- lineage


def test_lineage_of_the_best_agrees_with_the_event_stream(run):
    doc = lineage_json(run)
    best = status(run.url, run.exp)["best"]
    assert doc["target"]["member"] == best["member"] and doc["target"]["score"] == best["score"]
    segs = doc["segments"]
    events = {(e.member, e.seq): e for e in run.events()}
    assert segs[0]["start"]["kind"] == "init" and segs[0]["from_step"] == 0
    assert segs[-1]["to_step"] == 100 and segs[-1]["ckpt_key"] == doc["target"]["ckpt_key"]
    for prev, s in zip([None, *segs], segs, strict=False):
        ev = events[(s["member"], s["seq"])]
        assert (ev.start_step, ev.step, ev.score, ev.hparams) == (s["from_step"], s["to_step"], s["score"], s["hparams"])
        assert ev.checkpoint.key == s["ckpt_key"] and (ev.start_key or "") == s["start"]["ckpt_key"]
        if prev is None:
            continue
        assert s["start"]["ckpt_key"] == prev["ckpt_key"] and s["from_step"] == prev["to_step"]
        assert s["start"]["member"] == prev["member"]
        if s["start"]["kind"] == "exploit":  # each mutation turns the donor's values into this segment's
            assert s["member"] != prev["member"] and s["start"]["ops"]
            for op in s["start"]["ops"]:
                name, _, rest = op.partition(": ")
                assert rest.startswith(fmt(prev["hparams"][name]) + " ") and rest.endswith("> " + fmt(s["hparams"][name]))
        else:
            assert s["member"] == prev["member"] and s["hparams"] == prev["hparams"]
    assert any(s["start"]["kind"] == "exploit" for s in segs), "the toy's best must descend through an exploit"
    # the schedule's phases cover the steps without gaps, and change exactly where the values do
    ph = doc["phases"]
    assert ph[0]["from_step"] == 0 and ph[-1]["to_step"] == 100
    assert all(a["to_step"] == b["from_step"] and a["hparams"] != b["hparams"] for a, b in zip(ph, ph[1:], strict=False))


def test_lineage_text_and_other_members(run):
    res = pbt("lineage", run.exp, "--redis", run.url)
    assert res.returncode == 0, res.stderr
    doc = lineage_json(run)
    n_exploits = sum(s["start"]["kind"] == "exploit" for s in doc["segments"])
    assert res.stdout.count(" inherits ") == n_exploits > 0
    assert "(fresh start)" in res.stdout and "hyperparameter schedule:" in res.stdout
    for m in ("m000", "m001", "m002", "m003"):
        other = lineage_json(run, "--member", m)
        ckpt = run.r.hget(Keys(run.exp).member(m), "ckpt_key").decode()
        assert other["target"]["member"] == m and other["segments"][-1]["ckpt_key"] == ckpt
    res = pbt("lineage", run.exp, "--member", "m099", "--redis", run.url)
    assert res.returncode == 1 and "m099" in res.stderr and "Traceback" not in res.stderr


# ---------------------------------------------------------------- export and replay


@pytest.fixture(scope="module")
def exported(run: Run) -> Path:
    out = run.tmp / "export"
    res = pbt("export", run.exp, "--best", "-o", str(out), "--redis", run.url)
    assert res.returncode == 0, res.stderr
    assert "verified" in res.stdout
    return out


def test_export_checkpoint_loads_and_verifies(run, exported):
    import hashlib

    from workers.toy import Toy

    sched = json.loads((exported / "schedule.json").read_text())
    fin = sched["final"]
    h = run.r.hgetall(Keys(run.exp).member(fin["member"]))
    assert not (exported / "checkpoint.pt").exists()  # this release's experiments: no pickle
    data = (exported / "checkpoint.safetensors").read_bytes()
    assert hashlib.sha256(data).hexdigest() == fin["sha256"] == h[b"ckpt_sha256"].decode()
    assert len(data) == fin["size"]
    state = pbt_mq.load_checkpoint(exported / "checkpoint.safetensors", sha256=fin["sha256"])
    assert state["step"] == fin["step"] == 100 and state["member"] == fin["member"]
    toy = Toy(state["hparams"])
    toy.load_state_dict(state["state"])
    assert toy.evaluate()["q"] == fin["score"] == status(run.url, run.exp)["best"]["score"]


def test_export_schedule_and_experiment_file(run, exported):
    sched = json.loads((exported / "schedule.json").read_text())
    cfg = load_config(run.r, run.exp)
    first = sched["segments"][0]["member"]
    assert sched["trainable"] == cfg.trainable and sched["trainable_args"] == cfg.trainable_args
    assert sched["seed"] == member_seed(cfg.seed, first) and sched["complete"]
    assert sched["segments"] == lineage_json(run)["segments"]
    for s in sched["segments"]:
        assert {"from_step", "to_step", "hparams", "member", "start"} <= set(s)
    assert load_file(exported / "experiment.toml") == cfg  # overrides (population, initial) included


def test_replay_reproduces_the_best_member_exactly(run, exported):
    res = pbt("replay", str(exported / "schedule.json"), "--check", "--json", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    best = status(run.url, run.exp)["best"]["score"]
    assert out["final_score"] == out["recorded_score"] == best and out["exact"]
    assert out["same_state"] is True
    assert all(row["replayed"] == row["recorded"] for row in out["segments"])
    text = pbt("replay", str(exported), timeout=120)
    assert text.returncode == 0 and ": identical" in text.stdout and "bit-for-bit identical" in text.stdout


def test_replay_notices_a_different_schedule(exported, tmp_path):
    sched = json.loads((exported / "schedule.json").read_text())
    mid = sched["segments"][len(sched["segments"]) // 2]
    mid["hparams"] = {k: v * 0.5 for k, v in mid["hparams"].items()}
    bad = tmp_path / "schedule.json"
    bad.write_text(json.dumps(sched))
    res = pbt("replay", str(bad), "--check", "--json", "--compare", str(exported / "checkpoint.safetensors"), timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert not out["exact"] and out["same_state"] is False
    del sched["segments"][3]
    bad.write_text(json.dumps(sched))
    res = pbt("replay", str(bad))
    assert res.returncode == 2 and "segments[3]: does not start where segments[2] ended" in res.stderr


def test_replay_reproduces_a_digits_member_bit_for_bit(run):
    """A real torch model: SGD with momentum, a seeded batch generator kept in the state dict."""
    pytest.importorskip("sklearn", reason="the examples extra provides scikit-learn")
    digits = str(ROOT / "workers" / "digits.toml")
    exp = launch(run.url, f"file://{run.tmp / 'digits-ckpt'}", "population.size=4", "stop.steps=100", file=digits)
    res = pbt("wait", exp, "--timeout", "180", "--redis", run.url, timeout=200)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{run.fleet.all_logs()}"
    out = run.tmp / "digits-export"
    assert pbt("export", exp, "-o", str(out), "--redis", run.url).returncode == 0
    res = pbt("replay", str(out), "--check", "--json", timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    got = json.loads(res.stdout)
    assert got["exact"] and got["same_state"] is True
    assert got["final_score"] == status(run.url, exp)["best"]["score"]


# ---------------------------------------------------------------- plot


def test_plot_writes_a_png_with_every_panel(run, tmp_path):
    import numpy as np
    from matplotlib.image import imread

    from pbt_mq.observe.plot import collect, figure

    out = tmp_path / "report.png"
    res = pbt("plot", run.exp, "-o", str(out), "--redis", run.url)
    assert res.returncode == 0, res.stderr
    panels = res.stdout.strip().split(": panels ")[1].split(", ")
    assert {"score", "hparam:h0", "hparam:h1", "lineage"} <= set(panels) <= {"score", "score:zoom", "hparam:h0",
                                                                           "hparam:h1", "lineage"}
    img = imread(out)[:, :, :3]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rep = collect(run.r, run.exp)
    fig = figure(rep)
    FigureCanvasAgg(fig).draw()  # the renderer savefig uses: the same constrained layout as the PNG
    assert [ax.get_label() for ax in fig.axes] == panels
    assert img.shape[:2] == (round(fig.bbox.height), round(fig.bbox.width))
    for ax in fig.axes:  # inside every panel's frame: data drawn in colour or black, not a blank grid
        x0, y0, x1, y1 = (round(v) for v in ax.get_window_extent().extents)
        crop = img[img.shape[0] - y1 + 4 : img.shape[0] - y0 - 4, x0 + 4 : x1 - 4]
        data = ((crop.max(axis=2) - crop.min(axis=2)) > 0.3) | (crop.max(axis=2) < 0.3)
        assert data.mean() > 0.002, (ax.get_label(), data.mean())
        assert len(np.unique(crop.reshape(-1, 3), axis=0)) > 20, ax.get_label()
    axes = {ax.get_label(): ax for ax in fig.axes}
    n_exploits = sum(rec.action == "exploit" for rec in records(run.r, run.exp))
    n_segments = sum(len(v) for v in rep.hist.values())
    assert len(rep.exploits) == n_exploits > 0
    markers = [ln for ln in axes["score"].lines if ln.get_marker() == "v" and len(ln.get_xdata()) == 1]
    assert len(markers) == n_exploits
    assert len(axes["score"].lines) >= n_segments
    arrows = [t for t in axes["lineage"].texts if getattr(t, "arrow_patch", None) is not None]
    assert len(arrows) == n_exploits


# ---------------------------------------------------------------- top


def test_top_once_shows_members_exploits_and_stale_workers(run):
    now = int(run.r.time()[0]) * 1000
    run.r.zadd(WORKERS, {"ghost": now - 30_000, "zombie": now - 20_000})
    run.r.hset(worker_key("zombie"), mapping={"beat_ms": now - 20_000, "device": "cpu", "current": ""})
    mkey = Keys(run.exp).member("m001")
    saved = run.r.hmget(mkey, "state", "worker")
    run.r.hset(mkey, mapping={"state": "running", "worker": "ghost"})
    try:
        res = pbt("top", run.exp, "--once", "--width", "220", "--redis", run.url)
        js = pbt("top", run.exp, "--once", "--json", "--redis", run.url)
    finally:
        run.r.hset(mkey, mapping={"state": saved[0], "worker": saved[1]})
        run.r.zrem(WORKERS, "ghost", "zombie")
        run.r.delete(worker_key("zombie"))
    assert res.returncode == 0 and js.returncode == 0, res.stderr + js.stderr
    best = status(run.url, run.exp)["best"]["member"]
    lines = res.stdout.splitlines()
    assert any(ln.startswith(f"{best} *") for ln in lines), res.stdout
    assert "events/s" in res.stdout and "decisions" in res.stdout and "median" in res.stdout
    snap = json.loads(js.stdout)
    health = {w["id"]: w["health"] for w in snap["workers"]}
    assert health["ghost"] == "gone" and health["zombie"] == "stale" and health["w1"] == "ok"
    assert [m["id"] for m in snap["members"] if m["flag"]] == ["m001"]
    assert next(ln for ln in lines if ln.startswith("m001")).count("(GONE)") == 1
    assert any(ln.startswith("zombie") and "STALE" in ln for ln in lines)
    exploited = {rec.member: rec for rec in records(run.r, run.exp) if rec.action == "exploit"}
    for m, rec in exploited.items():
        row = next(ln for ln in lines if ln.startswith(m))
        assert f"from {rec.parent} at step {rec.parent_step}" in row, row


def test_top_redraws_live_in_a_terminal_until_ctrl_c(run):
    import fcntl
    import os
    import pty
    import select
    import signal
    import subprocess
    import sys
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color"}
    proc = subprocess.Popen([sys.executable, "-m", "pbt_mq", "top", run.exp, "--interval", "0.1", "--redis", run.url],
                            stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env)
    os.close(slave)
    out = b""
    poller = select.poll()  # not select(): a long test session may hold descriptors past 1024
    poller.register(master, select.POLLIN)
    try:
        while out.count(b"decisions/s") < 4 and proc.poll() is None:  # the first frame and three redraws
            if poller.poll(1000):
                out += os.read(master, 1 << 16)
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # keep reading: a full terminal would block its last writes
            if poller.poll(200):
                try:
                    out += os.read(master, 1 << 16)
                except OSError:  # EIO: the child closed the terminal
                    break
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=5) == 0, out.decode(errors="replace")[-2000:]
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert b"\x1b[?1049h" in out and b"\x1b[?1049l" in out  # drew on the alternate screen, and left it
    assert b"\x1b[2J" not in out[out.index(b"\x1b[?1049h"):out.index(b"\x1b[?1049l")]  # redraws never clear it
    assert out.count(b"decisions/s") >= 4 and b"Traceback" not in out


# ---------------------------------------------------------------- metrics


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in samples.items() if n == name and set(labels.items()) <= set(lab))


def test_arbiter_metrics_count_every_decision(run, tmp_path):
    recs = records(run.r, run.exp)
    arb = scrape(run.ports["a1"])
    for action in ("continue", "exploit", "done"):
        assert total(arb, "pbt_decisions_total", experiment=run.exp, action=action) == sum(
            rec.action == action for rec in recs), action
    assert total(arb, "pbt_exploits_total", experiment=run.exp) == sum(rec.action == "exploit" for rec in recs)
    assert total(arb, "pbt_decision_lag_seconds_count") == sum(len(records(run.r, e)) for e in run.experiments())
    # a running experiment on a queue no worker serves: its backlog shows in the gauges
    idle = launch(run.url, f"file://{tmp_path / 'ckpt'}", "population.size=3", "queue=idle")
    try:
        arb = scrape(run.ports["a1"])
        assert arb[("pbt_queue_depth", (("queue", "idle"),))] == 3
        assert arb[("pbt_members", (("experiment", idle), ("state", "queued")))] == 3
        assert arb[("pbt_events_pending", (("experiment", idle),))] == 0
        assert arb[("pbt_events_undelivered", (("experiment", idle),))] == 0
        assert total(arb, "pbt_workers", health="ok") == 2
    finally:
        assert pbt("stop", idle, "--redis", run.url).returncode == 0


def test_worker_metrics_match_the_events_it_published(run):
    events = run.events()
    for w in ("w1", "w2"):
        mine = [e for e in events if e.worker == w]
        got = scrape(run.ports[w])
        assert total(got, "pbt_segments_total", experiment=run.exp) == len(mine) > 0
        assert total(got, "pbt_steps_total", experiment=run.exp) == sum(e.step - e.start_step for e in mine)
        everything = [e for exp in run.experiments() for e in run.events(exp) if e.worker == w]
        assert total(got, "pbt_checkpoint_bytes_total", direction="save") == sum(e.checkpoint.size for e in everything)
        assert total(got, "pbt_checkpoint_seconds_count", direction="save") == len(everything)
        assert total(got, "pbt_segment_seconds_count", phase="train") == len(everything)
        assert got[("pbt_queue_depth", (("queue", "pbt"),))] == 0
    loads = sum(total(scrape(run.ports[w]), "pbt_checkpoint_bytes_total", direction="load") for w in ("w1", "w2"))
    assert loads > 0  # members move between the two workers, so some segments start from a download


def test_tensorboard_reads_every_members_scalars(run):
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = run.events()
    for m in ("m000", "m001", "m002", "m003"):
        acc = EventAccumulator(str(run.tmp / "tb" / run.exp / m))
        acc.Reload()
        mine = sorted((e for e in events if e.member == m), key=lambda e: e.seq)
        assert [(s.step, s.value) for s in acc.Scalars("q")] == [(e.step, float(np.float32(e.score))) for e in mine]
        assert [s.value for s in acc.Scalars("hparams/h0")] == [float(np.float32(e.hparams["h0"])) for e in mine]
        assert "time/train_s" in acc.Tags()["scalars"]


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize("name", ["toy.toml", "digits.toml"])
def test_experiment_toml_round_trips(name):
    from pbt_mq.observe.export import to_toml

    raw = load_file(Path(__file__).resolve().parents[2] / "workers" / name).raw
    assert tomllib.loads(to_toml(raw)) == raw


def test_toml_writer_quotes_what_toml_needs():
    from pbt_mq.observe.export import to_toml

    raw = {"name": 'a "quoted"\\ name\twith tabs, é and \x7f', "x": math.inf, "t": {"odd key": [1, 2.5, True],
           "sub": {"inline": [{"a": -1e-06}]}}}
    assert tomllib.loads(to_toml(raw)) == raw


def test_sparkline():
    from pbt_mq.observe.top import sparkline

    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
    assert sparkline([1.0, 0.5, 0.0], higher_is_better=False) == "▁▅█"
    assert sparkline([2.0, 2.0]) == "▅▅"
    assert sparkline([1.0, math.nan, 2.0]) == "▁·█"


def test_arbiter_and_cli_never_import_torch_matplotlib_the_web_server_or_an_integration(redis_url):
    code = (
        "import sys, redis\n"
        "from pbt_mq.config.parse import load_file\n"
        "import pbt_mq.control.arbiter, pbt_mq.cli, pbt_mq.state.experiment, pbt_mq.control.gc\n"
        "import pbt_mq.control.reaper, pbt_mq.broker.cluster\n"
        "import pbt_mq.control.replace, pbt_mq.control.synch, pbt_mq.control.pyrule, pbt_mq.control.refusals\n"
        "import pbt_mq.rules.pareto, pbt_mq.rules.plugins, pbt_mq.state.failure, pbt_mq.state.front\n"
        "from pbt_mq.rules.registry import exploit_rule; exploit_rule(load_file('workers/pareto.toml', []).exploit)\n"
        "from pbt_mq.observe.metrics import PrometheusHook\n"
        f"PrometheusHook(redis.Redis.from_url({redis_url!r}), 'arbiter', {free_port()}, '127.0.0.1')\n"
        "from pbt_mq.cli import daemons, pbt\n"
        "pbt.build_pbt_parser(); daemons.build_arbiter_parser(); daemons.build_worker_parser()\n"
        "from pbt_mq.config.parse import load_file; load_file('workers/digits.toml', ['tracking.mlflow=file:///x'])\n"
        "from pbt_mq.cli import dashboard; import pbt_mq.dashboard.data, pbt_mq.dashboard.auth\n"
        "import pbt_mq; pbt_mq.session; pbt_mq.Run\n"
        "import pbt_mq.tools.study.run; load_file('workers/cartpole.toml', []); load_file('workers/charlm.toml', [])\n"
        "heavy = ('torch', 'matplotlib', 'starlette', 'uvicorn', 'lightning', 'pytorch_lightning', 'transformers',"
        " 'mlflow', 'wandb', 'tensorboardX', 'tensorboard', 'stable_baselines3', 'gymnasium')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
