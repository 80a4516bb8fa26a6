"""``pbt dashboard``'s JSON and its token rule, over HTTP against real ``pbt dashboard`` processes
reading one real finished toy experiment (real pbt-worker and pbt-arbiter, real redis-server).

The experiment lives in its own Redis database, so the other tests' FLUSHDB leaves it alone.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import http.client
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from helpers import PAPER_INIT_4, ROOT, launch, pbt, status
from services import Dashboard, Fleet, unavailable

from pbt_mq.config.parse import load_file
from pbt_mq.core.keys import Keys
from pbt_mq.dashboard import api
from pbt_mq.dashboard.app import build_app
from pbt_mq.state.experiment import launch as launch_in_process
from pbt_mq.state.lineage import records

pytestmark = pytest.mark.xdist_group("dashboard-db9")  # (one module fixture: a fleet in Redis database 9) on one pytest-xdist worker

TOKEN = "s3cret-token-for-the-tests-0123"
STATIC = ROOT / "pbt_mq" / "dashboard" / "static"


@dataclass
class Run:
    url: str
    r: redis.Redis
    exp: str
    open: Dashboard  # loopback, no token
    locked: Dashboard  # loopback, with a token


@pytest.fixture(scope="module")
def run(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        unavailable("no starlette/uvicorn: pip install 'pbt-mq[dashboard]'")
    url = urlunsplit(urlsplit(redis_server)._replace(path="/9"))
    r = redis.Redis.from_url(url)
    r.flushdb()
    tmp = tmp_path_factory.mktemp("dashboard")
    fleet = Fleet(url, tmp / "logs")
    fleet.start("arbiter", "a1")
    for w in ("w1", "w2"):
        fleet.start("worker", w)
    exp = launch(url, f"file://{tmp / 'ckpt'}", "population.size=4", PAPER_INIT_4)
    res = pbt("wait", exp, "--timeout", "180", "--redis", url, timeout=200)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{fleet.all_logs()}"
    dashboards = [Dashboard(tmp / "logs", "--redis", url), Dashboard(tmp / "logs", "--redis", url, "--token", TOKEN)]
    yield Run(url, r, exp, *dashboards)
    for d in dashboards:
        d.stop()
    fleet.stop()
    r.flushdb()
    r.close()


def get(base: str, path: str, headers: dict[str, str] | None = None, method: str = "GET",
        timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        res = conn.getresponse()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
    finally:
        conn.close()


def get_json(base: str, path: str, headers: dict[str, str] | None = None, expect: int = 200) -> dict:
    code, hdrs, body = get(base, path, headers)
    assert code == expect, (path, code, body[:300])
    assert hdrs["content-type"].startswith("application/json")
    return json.loads(body)


# ---------------------------------------------------------------- the JSON


def test_experiments_list_agrees_with_status(run):
    doc = get_json(run.open.url, "/api/experiments")
    [row] = [e for e in doc["experiments"] if e["experiment"] == run.exp]
    st = status(run.url, run.exp)
    assert row["state"] == "done" and row["progress"] == 1.0
    assert row["best"] == {"member": st["best"]["member"], "score": st["best"]["score"]}
    assert (row["population"], row["finished"], row["metric"], row["mode"]) == (4, 4, "q", "max")
    assert row["age_s"] > 0 and row["done_ms"] >= row["created_ms"] > 0
    assert doc["redis"].endswith("/9")


def test_one_experiment_its_members_and_workers(run):
    doc = get_json(run.open.url, f"/api/experiments/{run.exp}")
    st = status(run.url, run.exp)
    assert doc["state"] == "done" and doc["best"] == st["best"]
    assert [m["id"] for m in doc["members"]] == ["m000", "m001", "m002", "m003"]
    for mine, theirs in zip(doc["members"], st["members"], strict=True):
        assert {k: mine[k] for k in theirs} == theirs  # `pbt status --json`, and more
        assert mine["worker_health"] in ("ok", "stale", "gone") and mine["flag"] is False
    assert doc["decisions"] == run.r.xlen(Keys(run.exp).lineage)
    assert doc["actions"]["exploit"] > 0 and doc["actions"]["done"] == 4
    assert doc["hparam_spaces"] == {"h0": {"type": "float", "low": 0.0, "high": 1.0, "log": False},
                                    "h1": {"type": "float", "low": 0.0, "high": 1.0, "log": False}}
    assert doc["progress"] == 1.0 and doc["stop_steps"] == 100 and doc["elapsed_s"] > 0
    last = {rec.member: rec for rec in records(run.r, run.exp) if rec.action == "exploit"}
    for m in doc["members"]:
        if m["id"] in last:
            assert m["last_exploit"] == {"parent": last[m["id"]].parent, "step": last[m["id"]].step,
                                         "parent_step": last[m["id"]].parent_step}
    members = get_json(run.open.url, f"/api/experiments/{run.exp}/members")
    assert members["members"] == doc["members"] and members["best"] == doc["best"]
    fleet = get_json(run.open.url, "/api/workers")
    assert {"w1", "w2"} <= {w["id"] for w in fleet["workers"]}
    assert all(w["health"] in ("ok", "stale", "gone") for w in fleet["workers"])
    assert get_json(run.open.url, "/api/health")["ok"] is True


def test_lineage_nodes_are_the_lineage_stream(run):
    recs = records(run.r, run.exp)
    doc = get_json(run.open.url, f"/api/experiments/{run.exp}/lineage")
    assert doc["from"] == 0 and doc["next"] == doc["total"] == len(recs) == len(doc["nodes"])
    index = {rec.ckpt_key: i for i, rec in enumerate(recs) if rec.ckpt_key}
    for i, (node, rec) in enumerate(zip(doc["nodes"], recs, strict=True)):
        assert node["i"] == i
        assert (node["m"], node["q"], node["a"], node["b"], node["y"], node["h"], node["x"], node["w"]) == (
            rec.member, rec.seq, rec.start_step, rec.step, rec.score, rec.hparams, str(rec.action), rec.worker)
        assert node["p"] == (index[rec.start_key] if rec.start_key else -1) and node["p"] < i
        if rec.action == "exploit":
            assert node["d"] == rec.parent and node["o"] == rec.ops
    # paging: what a page that already holds n nodes asks for
    page = get_json(run.open.url, f"/api/experiments/{run.exp}/lineage?after=5&limit=3")
    assert [n["i"] for n in page["nodes"]] == [5, 6, 7] and page["next"] == 8
    assert get_json(run.open.url, f"/api/experiments/{run.exp}/lineage?after={len(recs)}")["nodes"] == []


def test_a_members_ancestry_is_pbt_lineage(run):
    for m in ("m000", "m003"):
        res = pbt("lineage", run.exp, "--json", "--member", m, "--redis", run.url)
        assert res.returncode == 0, res.stderr
        cli = json.loads(res.stdout)
        doc = get_json(run.open.url, f"/api/experiments/{run.exp}/members/{m}/lineage")
        assert doc["segments"] == cli["segments"] and doc["phases"] == cli["phases"]
        assert doc["ckpt_key"] == cli["target"]["ckpt_key"]
    get_json(run.open.url, f"/api/experiments/{run.exp}/members/m999/lineage", expect=404)


def test_errors_are_json_with_a_status(run):
    assert "no experiment 'nope'" in get_json(run.open.url, "/api/experiments/nope", expect=404)["error"]
    get_json(run.open.url, "/api/experiments/bad%20id!/lineage", expect=404)
    assert "after" in get_json(run.open.url, f"/api/experiments/{run.exp}/lineage?after=x", expect=400)["error"]
    get_json(run.open.url, f"/api/experiments/{run.exp}/lineage?limit=0", expect=400)


def test_the_stream_sends_frames_with_the_node_cursor_as_id(run):
    total = run.r.xlen(Keys(run.exp).lineage)
    parts = urlsplit(run.open.url)
    for since, want in ((0, total), (total - 2, 2)):
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("GET", f"/api/experiments/{run.exp}/stream", headers={"Last-Event-ID": str(since)})
        res = conn.getresponse()
        assert res.status == 200 and res.getheader("content-type").startswith("text/event-stream")
        lines = []
        while not (lines and lines[-1] == "" and any(x.startswith("data: ") for x in lines)):
            lines.append(res.fp.readline().decode().rstrip("\n"))
        conn.close()
        frame = json.loads(next(x for x in lines if x.startswith("data: "))[6:])
        assert f"id: {total}" in lines and "event: frame" in lines
        assert frame["from"] == since and len(frame["nodes"]) == want and frame["next"] == total
        assert frame["snapshot"]["experiment"] == run.exp and frame["error"] is None


def test_the_page_and_its_assets_are_served_from_the_package(run):
    code, hdrs, body = get(run.open.url, "/")
    assert code == 200 and b'<script src="static/vendor/chart.umd.min.js">' in body
    assert "default-src 'self'" in hdrs["content-security-policy"] and hdrs["x-content-type-options"] == "nosniff"
    for asset in ("index.html", "app.js", "compare.js", "app.css", "vendor/chart.umd.min.js"):
        code, _, body = get(run.open.url, f"/static/{asset}")
        assert code == 200 and len(body) > 1000, asset
        assert body == (STATIC / asset).read_bytes()
    # compressed for a browser that asks (the chart library: 210 kB -> about 70 kB), the event stream never
    code, hdrs, body = get(run.open.url, "/static/vendor/chart.umd.min.js", {"Accept-Encoding": "gzip"})
    assert code == 200 and hdrs["content-encoding"] == "gzip", hdrs
    assert gzip.decompress(body) == (STATIC / "vendor/chart.umd.min.js").read_bytes() and len(body) < 100_000
    conn = http.client.HTTPConnection(urlsplit(run.open.url).hostname, urlsplit(run.open.url).port, timeout=30)
    conn.request("GET", f"/api/experiments/{run.exp}/stream", headers={"Accept-Encoding": "gzip"})
    res = conn.getresponse()
    assert res.getheader("content-encoding") is None and res.readline().startswith(b"retry:")
    conn.close()
    for own in ("index.html", "app.js", "compare.js", "app.css"):  # nothing is fetched from elsewhere
        urls = set(re.findall(r"https?://[^\s\"'`)]+", (STATIC / own).read_text()))
        assert urls <= {"http://www.w3.org/2000/svg"}, (own, urls)


def test_the_vendored_chart_library_is_the_one_its_note_names():
    vendor = STATIC / "vendor"
    note = (vendor / "VENDORED.txt").read_text()
    assert hashlib.sha256((vendor / "chart.umd.min.js").read_bytes()).hexdigest() in note
    assert "MIT" in (vendor / "chart.js.LICENSE.md").read_text()


# ---------------------------------------------------------------- the token rule


ROUTES = ["/", "/static/app.js", "/static/vendor/chart.umd.min.js", "/api/experiments", "/api/health",
          "/api/workers", "/api/experiments/{exp}", "/api/experiments/{exp}/members", "/api/experiments/{exp}/lineage",
          "/api/experiments/{exp}/stream", "/api/experiments/nope", "/no-such-page"]


def test_with_a_token_every_route_is_401_without_it(run):
    for route in ROUTES:
        path = route.format(exp=run.exp)
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Cookie": "pbt_dashboard=forged"}, {"Cookie": f"pbt_dashboard={TOKEN}"}):
            code, hdrs, body = get(run.locked.url, path, headers)
            assert code == 401, (path, headers, code)
            assert "token" in json.loads(body)["error"] and hdrs["www-authenticate"].startswith("Bearer")
    assert get(run.locked.url, f"/?token={TOKEN[:-1]}")[0] == 401


def test_with_the_token_in_a_header_every_route_answers(run):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for route in ROUTES[:-3]:
        path = route.format(exp=run.exp)
        code, _, _ = get(run.locked.url, path, auth)
        assert code == 200, path
    parts = urlsplit(run.locked.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("GET", f"/api/experiments/{run.exp}/stream", headers=auth)
    assert conn.getresponse().status == 200
    conn.close()
    assert get_json(run.locked.url, "/api/experiments", auth)["experiments"][0]["experiment"] == run.exp
    assert get(run.locked.url, "/api/experiments/nope", auth)[0] == 404
    assert get(run.locked.url, "/api/experiments", auth, method="POST")[0] == 405  # read-only


def test_the_token_once_in_the_address_becomes_an_httponly_cookie(run):
    code, hdrs, _ = get(run.locked.url, f"/?token={TOKEN}&x=1")
    assert code == 303 and hdrs["location"] == "/?x=1"  # the token leaves the address bar
    cookie = hdrs["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and TOKEN not in cookie
    jar = cookie.split(";", 1)[0]
    code, _, body = get(run.locked.url, "/", {"Cookie": jar})
    assert code == 200 and b"<title>pbt-mq dashboard</title>" in body
    assert get_json(run.locked.url, "/api/experiments", {"Cookie": f"other=1; {jar}"})["experiments"]
    code, hdrs, _ = get(run.locked.url, f"//evil.example/?token={TOKEN}")
    assert code == 303 and hdrs["location"].startswith("/") and not hdrs["location"].startswith("//")


def test_without_a_token_only_loopback_host_names_are_served(run):
    assert get(run.open.url, "/api/health")[0] == 200
    assert get(run.open.url, "/api/health", {"Host": "localhost"})[0] == 200
    code, _, body = get(run.open.url, "/api/health", {"Host": "attacker.example:8265"})  # DNS rebinding
    assert code == 403 and b"loopback" in body


def dashboard_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PBT_")}
    return subprocess.run([sys.executable, "-m", "pbt_mq", "dashboard", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**base, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=timeout)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "dashboard.example"])
def test_beyond_loopback_it_refuses_to_start_without_a_token(run, host):
    res = dashboard_cli("--redis", run.url, "--host", host, "--port", "0")
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert f"--host {host} is not a loopback address" in res.stderr and "PBT_DASHBOARD_TOKEN" in res.stderr
    assert res.stdout == ""


def test_a_weak_token_is_refused_from_the_flag_and_the_environment(run):
    res = dashboard_cli("--redis", run.url, "--host", "0.0.0.0", "--token", "short")
    assert res.returncode == 2 and "--token: expected at least 16" in res.stderr and res.stderr.count("\n") == 1
    res = dashboard_cli("--redis", run.url, env={"PBT_DASHBOARD_TOKEN": "short"})
    assert res.returncode == 2 and "PBT_DASHBOARD_TOKEN=***: expected at least 16" in res.stderr
    assert "short" not in res.stderr  # a secret is never echoed


def test_the_token_from_the_environment_is_required(run, tmp_path):
    d = Dashboard(tmp_path, "--redis", run.url, env={"PBT_DASHBOARD_TOKEN": TOKEN})
    try:
        assert get(d.url, "/api/health")[0] == 401
        assert get(d.url, "/api/health", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    finally:
        d.stop()


# ---------------------------------------------------------------- starting: --local, bad input


def test_local_reads_a_pbt_local_work_dir_with_nothing_running(run, tmp_path):
    wd = tmp_path / "wd"
    done = subprocess.run([sys.executable, "-m", "pbt_mq", "local", str(ROOT / "workers" / "toy.toml"), "--quiet",
                           "--dir", str(wd), "--set", "population.size=2", "--set", "stop.steps=20"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr
    exp = done.stdout.split("pbt local: ", 1)[1].split(":", 1)[0]
    d = Dashboard(tmp_path / "logs", "--local", str(wd))  # served from its saved state (tools.workdir)
    try:
        assert exp in {e["experiment"] for e in get_json(d.url, "/api/experiments")["experiments"]}
    finally:
        d.stop()
    res = dashboard_cli("--local", str(tmp_path / "missing"))
    assert res.returncode == 1 and "no saved pbt local state" in res.stderr and res.stderr.count("\n") == 1
    res = dashboard_cli("--local", str(wd), "--redis", run.url)
    assert res.returncode == 2 and "not allowed with argument" in res.stderr


def test_local_keeps_showing_a_pbt_local_run_after_it_ended(tmp_path, browser):
    """Issue 26: attached to a live ``pbt local``, the dashboard reads the run's saved state once the run
    ends (its own redis-server is gone), instead of answering 'Connection refused' from then on."""
    wd = tmp_path / "wd"
    local = subprocess.Popen([sys.executable, "-m", "pbt_mq", "local", str(ROOT / "workers" / "toy.toml"), "--quiet",
                              "--dir", str(wd), "--set", "population.size=2", "--set", "stop.steps=60",
                              "--set", "trainable_args.delay_s=0.3"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    d = None
    try:
        deadline = time.monotonic() + 60
        while not (wd / "redis.port").is_file() and local.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        d = Dashboard(tmp_path / "logs", "--local", str(wd))
        assert "reading the live pbt local" in d.log()
        deadline, live = time.monotonic() + 30, []
        while not live and time.monotonic() < deadline:  # launched a moment after its server started
            live = get_json(d.url, "/api/experiments")["experiments"]
            time.sleep(0.1)
        assert len(live) == 1, live
        exp = live[0]["experiment"]
        out, _ = local.communicate(timeout=180)
        assert local.returncode == 0, out
        deadline, doc = time.monotonic() + 60, {}
        while time.monotonic() < deadline and doc.get("state") != "done":
            code, _, body = get(d.url, f"/api/experiments/{exp}")
            doc = json.loads(body) if code == 200 else {}
            time.sleep(0.3)
        assert doc.get("state") == "done" and [m["id"] for m in doc["members"]] == ["m000", "m001"], doc
        assert "the saved state of" in get_json(d.url, "/api/experiments")["redis"]
        assert get_json(d.url, f"/api/experiments/{exp}/lineage")["total"] == doc["decisions"] > 0
        assert "ended: reading its saved state now" in d.log() and "Traceback" not in d.log(), d.log()
        # and the page, opened after the run ended, shows its members and charts
        js = browser.execute_script
        browser.get(f"{d.url}#/{exp}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not js(
                "return document.querySelectorAll('#members tbody tr').length === 2"
                " && window.pbtDashboard.charts.score !== null && window.pbtDashboard.scorePoints().m000 > 0"):
            time.sleep(0.2)
        assert js("return Array.from(document.querySelectorAll('#members tbody tr'), e => e.dataset.member)") == [
            "m000", "m001"]
        assert js("return window.pbtDashboard.scorePoints()")["m000"] > 0
        assert "saved state" in js("return document.querySelector('#redis').textContent")
    finally:
        if local.poll() is None:
            local.kill()
        if d is not None:
            d.stop()


def test_a_taken_port_or_an_unreachable_redis_is_one_line(run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        res = dashboard_cli("--redis", run.url, "--port", str(s.getsockname()[1]))
    assert res.returncode == 1 and "cannot listen on 127.0.0.1:" in res.stderr and res.stderr.count("\n") == 1
    res = dashboard_cli("--redis", "redis://127.0.0.1:1/0", "--port", "0")
    assert res.returncode == 1 and "cannot reach Redis" in res.stderr and res.stderr.count("\n") == 1


def test_without_the_extra_it_says_what_to_install(run):
    code = ("import sys; sys.modules['uvicorn'] = None\n"
            "from pbt_mq.cli import main\n"
            f"sys.exit(main(['dashboard', '--redis', {run.url!r}, '--port', '0']))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 1 and "pip install 'pbt-mq[dashboard]'" in res.stderr and res.stderr.count("\n") == 1



# ---------------------------------------------------------------- the data layer's bounds


def test_views_share_one_refresh_and_read_the_lineage_in_bounded_steps(run, monkeypatch):
    from pbt_mq.dashboard import data

    monkeypatch.setattr(data, "BATCH", 7)
    board = data.Board(redis.Redis.from_url(run.url))
    total = run.r.xlen(Keys(run.exp).lineage)
    view = board.view(run.exp)
    assert len(view.log.nodes) == 7 and view.snapshot["catching_up"] is True and view.generation == 1
    reads = 1
    while view.snapshot["catching_up"]:
        time.sleep(view.pace.cost_s + 0.01)  # catching up: the next read is due after as long as the last took
        assert board.view(run.exp) is view
        reads += 1
        assert len(view.log.nodes) == min(7 * reads, total)
    assert reads == total // 7 + 1 and len(view.log.nodes) == total
    assert view.log.nodes == get_json(run.open.url, f"/api/experiments/{run.exp}/lineage")["nodes"]
    # caught up and ended: many requests now share one snapshot, and Redis is not read again for a while
    generation = view.generation
    for _ in range(50):
        board.view(run.exp)
    assert view.generation == generation and view.pace.due - view.pace.clock() > 1.0
    assert board.experiments() is board.experiments()  # the list is cached too


# ---------------------------------------------------------------- in process: the guard and the stream count


def _asgi(app, scope: dict, messages: list, disconnect_after_s: float = 0.0):
    """Run one ASGI call; the client disconnects after ``disconnect_after_s``."""
    async def receive():
        await asyncio.sleep(disconnect_after_s)
        return {"type": "http.disconnect"}

    async def send(message):
        messages.append(message)

    asyncio.run(app(scope, receive, send))


def _scope(kind: str, path: str = "/") -> dict:
    return {"type": kind, "path": path, "method": "GET", "headers": [(b"host", b"127.0.0.1")],
            "query_string": b"", "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
            "root_path": "", "http_version": "1.1"}


def test_a_websocket_never_reaches_the_app(r):
    for token in (None, "a" * 32):
        messages: list = []
        _asgi(build_app(r, token, "test"), _scope("websocket", "/api/experiments"), messages)
        assert messages == [{"type": "websocket.close", "code": 1008}]


def test_open_streams_are_capped_even_when_pages_open_at_once(r, tmp_path, monkeypatch):
    """Counted as the request is answered, not as the stream starts: two pages opening together
    with room for one get one stream and one 503; both released as the pages go."""
    monkeypatch.setattr(api, "MAX_STREAMS", 1)
    exp = launch_in_process(r, load_file(ROOT / "workers" / "toy.toml"), f"file://{tmp_path}", exp_id="toy-count")
    guard = build_app(r, None, "test")
    statuses: list[int] = []
    counts: list[int] = []

    async def page() -> None:
        async def receive():
            await asyncio.sleep(0.5)
            return {"type": "http.disconnect"}

        async def send(message):
            counts.append(guard.app.state.streams)
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await guard(_scope("http", f"/api/experiments/{exp}/stream"), receive, send)

    async def both() -> None:
        await asyncio.gather(page(), page())

    asyncio.run(both())
    assert sorted(statuses) == [200, 503]
    assert max(counts) == 1
    assert guard.app.state.streams == 0
