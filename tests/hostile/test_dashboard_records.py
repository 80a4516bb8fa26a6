"""Issue 24 in the dashboard: a garbage heartbeat or stored config spoils one row, never every page;
cookies are parsed as browsers send them; a token in the address always leaves it."""

from __future__ import annotations

import http.client
import importlib.util
import json
import time
from urllib.parse import urlsplit

import pytest
from helpers import launch
from services import Dashboard, unavailable

from pbt_mq.core.keys import WORKERS, Keys, worker_key

TOKEN = "s3cret-token-for-the-hostile-tests"


@pytest.fixture
def dashboards(redis_url, tmp_path):
    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        unavailable("no starlette/uvicorn: pip install 'pbt-mq[dashboard]'")
    boards = [Dashboard(tmp_path / "logs", "--redis", redis_url),
              Dashboard(tmp_path / "logs", "--redis", redis_url, "--token", TOKEN)]
    yield boards
    for d in boards:
        d.stop()


def get(base: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        res = conn.getresponse()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
    finally:
        conn.close()


def test_garbage_heartbeat_and_config_spoil_one_row(r, redis_url, tmp_path, dashboards):
    store = f"file://{tmp_path / 'ckpt'}"
    good, broken = launch(redis_url, store, "population.size=2"), launch(redis_url, store, "population.size=2")
    r.zadd(WORKERS, {"ghost": time.time() * 1000})
    r.hset(worker_key("ghost"), mapping={"segments": "many", "pid": "x", "beat_ms": "soon", "device": "\x1b[2J"})
    r.hset(Keys(broken).meta, "config", "{not json")
    base = dashboards[0].url
    code, _, body = get(base, "/api/experiments")
    assert code == 200, body[:300]
    rows = {row["experiment"]: row for row in json.loads(body)["experiments"]}
    assert set(rows) == {good, broken} and "unreadable" in rows[broken]["reason"]
    for path in (f"/api/experiments/{good}", "/api/workers", f"/api/experiments/{good}/members"):
        code, _, body = get(base, path)
        assert code == 200, (path, body[:300])
    ghost = next(w for w in json.loads(get(base, "/api/workers")[2])["workers"] if w["id"] == "ghost")
    assert ghost["segments"] == 0 and any("segments" in p for p in ghost["problems"])
    code, _, body = get(base, f"/api/experiments/{broken}")
    assert code == 422 and "stored config" in json.loads(body)["error"]


def test_cookies_in_any_order_and_the_token_always_leaves_the_address(redis_url, dashboards):
    base = dashboards[1].url
    code, hdrs, _ = get(base, f"/?token={TOKEN}")
    assert code == 303 and hdrs["location"] == "/"
    ours = hdrs["set-cookie"].split(";", 1)[0]
    for cookie in (f'prefs={{"theme":"dark","cols":[1,2]}}; {ours}', f"{ours}; prefs={{x}}", f'a="b; {ours}'):
        code, _, body = get(base, "/api/experiments", {"Cookie": cookie})
        assert code == 200, (cookie, code, body[:200])
    code, hdrs, _ = get(base, f"/?view=x&token={TOKEN}", {"Cookie": ours})  # signed in already: still redirected
    assert code == 303 and hdrs["location"] == "/?view=x"
    code, hdrs, _ = get(base, "/?token=wrong-token-wrong-token", {"Cookie": ours})
    assert code == 303 and hdrs["location"] == "/" and "set-cookie" not in hdrs  # a wrong one gives no cookie
    assert get(base, "/?token=wrong-token-wrong-token")[0] == 401
