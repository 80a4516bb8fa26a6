"""Issue 26 (item 1): charts a user can read, in real Chromium: drag a box to zoom, shift-drag to pan,
double-click or the button to reset, a log scale to tick, smoothing, and a zoom that survives the
live updates.

Set ``PBT_SCREENSHOTS=DIR`` to keep the zoomed page as ``DIR/dashboard-zoom.png`` (the README's)."""

from __future__ import annotations

import os
import shutil

from helpers import launch, write_history
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select
from services import Dashboard
from test_browser import wait_for

MEMBER_YS = ("return window.pbtDashboard.charts.score.data.datasets.filter(d => d.pbtMember === 'm000')[0]"
             ".data.map(p => p.y)")
X_RANGE = "const c = window.pbtDashboard.charts.score; return [c.scales.x.min, c.scales.x.max]"


def test_a_chart_zooms_to_a_dragged_box_and_resets(r, redis_url, tmp_path, browser):
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=4")
    write_history(r, exp, 4)
    dash = Dashboard(tmp_path / "logs", "--redis", redis_url)
    try:
        js = browser.execute_script
        browser.get(f"{dash.url}#/{exp}")
        wait_for("the score chart", lambda: js("return window.pbtDashboard.charts.score !== null"
                                              " && window.pbtDashboard.scorePoints().m000 > 0"))
        full = js(X_RANGE)
        assert full == [0, 30], full
        canvas = browser.find_element("css selector", "#score-chart")
        ActionChains(browser).move_to_element_with_offset(canvas, -60, -40).click_and_hold() \
            .move_by_offset(90, 70).release().perform()
        zoomed = wait_for("a narrower x range", lambda: (xs := js(X_RANGE)) != full and xs)
        assert full[0] < zoomed[0] < zoomed[1] < full[1], zoomed
        assert js("return document.querySelector('#score-reset').hidden") is False
        if os.environ.get("PBT_SCREENSHOTS"):
            browser.save_screenshot(str(tmp_path / "zoom.png"))
            shutil.copy(tmp_path / "zoom.png", os.path.join(os.environ["PBT_SCREENSHOTS"], "dashboard-zoom.png"))

        # shift-drag pans: the same width, further right
        ActionChains(browser).move_to_element_with_offset(canvas, 40, 0).key_down(Keys.SHIFT).click_and_hold() \
            .move_by_offset(-40, 0).release().key_up(Keys.SHIFT).perform()
        panned = wait_for("a moved x range", lambda: (xs := js(X_RANGE)) != zoomed and xs)
        assert panned[0] > zoomed[0] and abs((panned[1] - panned[0]) - (zoomed[1] - zoomed[0])) < 1e-6, (zoomed, panned)
        zoomed = panned

        # the page redraws (a new selection, as a live update would): the zoom stays
        js("location.hash = arguments[0]", f"#/{exp}/m001")
        wait_for("the redraw for m001", lambda: js("return window.pbtDashboard.drawnSelection") == "m001")
        assert js(X_RANGE) == zoomed
        # the ancestry is drawn over the members' lines, the exploit marks over everything
        orders = js("return Object.fromEntries(window.pbtDashboard.charts.score.data.datasets"
                    ".filter(d => d.pbtRole).map(d => [d.pbtRole, d.order]))")
        assert orders == {"ancestry": -1, "exploits": -2}, orders

        ActionChains(browser).double_click(canvas).perform()
        wait_for("the full range again", lambda: js(X_RANGE) == full)
        assert js("return document.querySelector('#score-reset').hidden") is True

        before = js("return window.pbtDashboard.charts.score.options.scales.y.type")
        browser.find_element("css selector", "#score-log").click()
        wait_for("the other y scale", lambda: js("return window.pbtDashboard.charts.score.options.scales.y.type")
                 == ("linear" if before == "logarithmic" else "logarithmic"))
        # smoothing: an exponential moving average of each member's curve, the raw value kept
        raw = js(MEMBER_YS)
        Select(browser.find_element("css selector", "#score-smooth")).select_by_value("0.9")
        smoothed = wait_for("smoothed curves", lambda: (ys := js(MEMBER_YS)) != raw and ys)
        assert len(smoothed) == len(raw) and smoothed[0] == raw[0], (raw, smoothed)
        assert js("return window.pbtDashboard.charts.score.data.datasets[0].data.filter(p => p.raw !== undefined).length") > 0
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        dash.stop()
