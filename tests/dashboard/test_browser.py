"""The page in a real browser: headless Chromium (Debian's chromium and chromium-driver, driven by
selenium) against ``pbt dashboard`` reading a live fleet: real redis-server, pbt-arbiter and
pbt-worker processes training the toy experiment.

Selenium is pointed at /usr/bin/chromedriver and /usr/bin/chromium explicitly, so Selenium
Manager never downloads anything. Without them the test skips on a laptop and fails under CI=true.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from helpers import PAPER_INIT_4, launch, pbt
from services import Dashboard

TOKEN = "browser-test-token-0123456789"


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # the page may be between renders
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def attrs(browser: Any, selector: str, name: str) -> list[str]:
    """``name`` of every element ``selector`` finds, read in one script: the page redraws its tables
    between two WebDriver calls, so an element found by one may be stale for the next."""
    return browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.getAttribute(arguments[1]))",
        selector, name)


def texts(browser: Any, selector: str) -> list[str]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.innerText)", selector)


def click(browser: Any, selector: str) -> None:
    """Click what ``selector`` finds; the page redraws its tables, so a found element may go stale."""
    wait_for(f"a click on {selector}", lambda: browser.find_element("css selector", selector).click() or True)


def test_the_page_follows_a_live_fleet(fleet, redis_url, tmp_path, browser):
    fleet.start("arbiter", "a1")
    for w in ("w1", "w2"):
        fleet.start("worker", w)
    # slow enough to watch: 0.25 s per segment, 4 members on 2 workers, 50 segments each
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=4", PAPER_INIT_4,
                 "trainable_args.delay_s=0.25", "stop.steps=200")
    dash = Dashboard(tmp_path / "logs", "--redis", redis_url, "--token", TOKEN)
    try:
        js = browser.execute_script
        browser.get(f"{dash.url}?token={TOKEN}")  # once; then an HttpOnly cookie
        assert "token" not in browser.current_url
        [cookie] = [c for c in browser.get_cookies() if c["name"] == "pbt_dashboard"]
        assert cookie["httpOnly"] and "pbt_dashboard" not in js("return document.cookie")  # scripts cannot read it

        wait_for("the running experiment in the list", lambda: "running" in " ".join(
            texts(browser, f'#experiments tr[data-experiment="{exp}"]')))
        click(browser, f'#experiments tr[data-experiment="{exp}"]')  # (the newest running one also opens by itself)
        wait_for("the member ids", lambda: attrs(browser, "#members tbody tr", "data-member")
                 == ["m000", "m001", "m002", "m003"])
        wait_for("score points for every member", lambda: (
            (p := js("return window.pbtDashboard.scorePoints()")) and len(p) == 4 and min(p.values()) >= 2))
        # what the chart drew is what it was given (both read in one script, between two renders)
        drawn, given = js("return [document.querySelector('#score-chart').getAttribute('data-points'),"
                          " Object.values(window.pbtDashboard.scorePoints()).reduce((a, b) => a + b, 0)]")
        assert int(drawn) == given, (drawn, given)
        wait_for("the schedules of h0 and h1", lambda: len(js("return Object.keys(window.pbtDashboard.charts.hparams)")) == 2)
        wait_for("a lineage lane per member", lambda: attrs(browser, "#lineage text.lane-label", "data-member")
                 == ["m000", "m001", "m002", "m003"])
        wait_for("both workers, healthy", lambda: sorted(
            t.split()[0] for t in texts(browser, "#workers tbody tr") if "ok" in t.split()) == ["w1", "w2"])

        # a new segment's score appears without a reload
        js("window.__same_page = true")
        before = sum(js("return window.pbtDashboard.scorePoints()").values())
        frames = js("return window.pbtDashboard.frames")
        wait_for("a new score on the chart", lambda: sum(js("return window.pbtDashboard.scorePoints()").values()) > before,
                 timeout_s=30)
        assert js("return window.__same_page") is True and js("return window.pbtDashboard.frames") > frames
        wait_for("an exploit marker", lambda: js("return window.pbtDashboard.exploitMarkers()") > 0)

        # selecting a member highlights its ancestry (score chart, schedules, lineage tree)
        click(browser, '#members tbody tr[data-member="m002"]')
        wait_for("m002 selected", lambda: browser.current_url.endswith(f"#/{exp}/m002"))
        wait_for("m002's ancestry drawn", lambda: js(
            "return window.pbtDashboard.charts.score.data.datasets.some(d => d.label === 'ancestry of m002')"))
        wait_for("m002's row marked", lambda: "selected" in " ".join(attrs(browser, '#members tr[data-member="m002"]', "class")))
        assert browser.find_elements("css selector", "#lineage path[stroke='#000']")

        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors  # no script error, no CSP violation, no failed request
    finally:
        pbt("stop", exp, "--redis", redis_url)
        dash.stop()


def test_a_tracker_that_cannot_start_is_said_on_the_page(fleet, redis_url, tmp_path, browser):
    """Issue 24: the experiment trains on untracked, and the page says why, as ``pbt status`` does."""
    fleet.start("arbiter", "a1")
    fleet.start("worker", "w1", "--heartbeat-s", "0.5")
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=2", "stop.steps=12",
                 'tracking.mlflow="nosuchscheme-tracker://x"')
    assert pbt("wait", exp, "--timeout", "60", "--redis", redis_url, timeout=80).returncode == 0
    dash = Dashboard(tmp_path / "logs", "--redis", redis_url)
    try:
        browser.get(f"{dash.url}#/{exp}")
        said = wait_for("the tracking problem in the summary", lambda: texts(browser, "#summary #tracking-problem"))
        assert said[0].startswith("tracking: not tracked: mlflow"), said[0]
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        dash.stop()
