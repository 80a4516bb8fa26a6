"""Issue 26 (item 4) and issue 24's bound: a population of ``config.parse.MAX_POPULATION`` members in
real Chromium. Above ``bands.LARGE_POPULATION`` the page draws quantile bands, the best members as
lines and the best rows, and every update stays under 1 MB; at or below it, every member's line.

The lineage is written straight into Redis (three segments per member, with exploits), as the
arbiters write it: training 10,000 members on the CI machine would prove nothing more here.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from helpers import SEGMENTS, launch, write_history
from services import Dashboard
from test_browser import TOKEN, wait_for

from pbt_mq.config.parse import MAX_POPULATION
from pbt_mq.dashboard.bands import LARGE_POPULATION, TOP_LINES, TOP_ROWS


def get(url: str, token: str | None = None) -> bytes:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as res:
        return res.read()


@pytest.mark.timeout(300)
def test_a_population_at_the_bound_renders_as_bands_with_bounded_updates(r, redis_url, tmp_path, browser):
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", f"population.size={MAX_POPULATION}")
    score = write_history(r, exp, MAX_POPULATION)
    best = sorted(score, key=lambda m: -score[m])
    dash = Dashboard(tmp_path / "logs", "--redis", redis_url, "--token", TOKEN)
    try:
        api = f"{dash.url.rstrip('/')}/api/experiments/{exp}"
        # the dashboard follows the whole lineage first (it reads 5,000 entries per refresh)
        wait_for("the lineage read", lambda: not (doc := json.loads(get(api, TOKEN)))["catching_up"]
                 and doc["decisions"] == SEGMENTS * MAX_POPULATION, timeout_s=120)
        doc = json.loads(get(api, TOKEN))
        assert doc["large"]["top"] == best[:TOP_LINES]
        assert [m["id"] for m in doc["members"]] == best[:TOP_ROWS]  # none failing: the best rows only
        assert sum(doc["counts"].values()) == MAX_POPULATION
        assert doc["large"]["bands"]["n"] == [MAX_POPULATION] * SEGMENTS
        assert len(json.loads(get(f"{api}/members", TOKEN))["members"]) == MAX_POPULATION

        js = browser.execute_script
        started = time.monotonic()
        browser.get(f"{dash.url}?token={TOKEN}#/{exp}")
        wait_for("the bands and the best members' lines", lambda: js(
            "const c = window.pbtDashboard.charts.score; if (!c) return false;"
            "const roles = c.data.datasets.map(d => d.pbtRole || 'member');"
            "return roles.filter(x => x === 'band').length === 5 && roles.filter(x => x === 'member').length"
            f" === {TOP_LINES} && document.querySelectorAll('#members tbody tr').length === {TOP_ROWS}"), timeout_s=30)
        rendered_s = time.monotonic() - started
        assert rendered_s <= 5.0, f"{MAX_POPULATION} members took {rendered_s:.1f} s to render"
        assert js("return document.querySelector('#members-note').hidden") is False
        wait_for("a lineage lane per best member", lambda: set(best[:TOP_LINES]) <= set(js(
            "return Array.from(document.querySelectorAll('#lineage text.lane-label'), e => e.dataset.member)")))
        assert len(js("return Object.keys(window.pbtDashboard.charts.hparams)")) == 2
        biggest = js("return window.pbtDashboard.maxFrameBytes")
        assert 0 < biggest <= 1_000_000, biggest
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        browser.save_screenshot(str(tmp_path / "large.png"))  # kept with the test's files, to look at
        print(f"{MAX_POPULATION} members: rendered in {rendered_s:.2f} s, largest update {biggest / 1e3:.0f} kB")
    finally:
        dash.stop()


def test_a_population_at_the_threshold_draws_every_member(r, redis_url, tmp_path):
    """At LARGE_POPULATION members the page still gets every member and every node (no bands)."""
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", f"population.size={LARGE_POPULATION}")
    write_history(r, exp, LARGE_POPULATION)
    dash = Dashboard(tmp_path / "logs", "--redis", redis_url)
    try:
        api = f"{dash.url.rstrip('/')}/api/experiments/{exp}"
        doc = wait_for("the lineage read", lambda: (d := json.loads(get(api)))["decisions"] == SEGMENTS * LARGE_POPULATION
                       and not d["catching_up"] and d)
        assert "large" not in doc and len(doc["members"]) == LARGE_POPULATION
        assert len(json.loads(get(f"{api}/lineage?limit=5000"))["nodes"]) == SEGMENTS * LARGE_POPULATION
    finally:
        dash.stop()
