"""Issue 26 (item 1): charts a user can read, in real Chromium: drag a box to zoom, double-click or the
button to reset, a log scale to tick, and a zoom that survives the live updates.

Set ``PBT_SCREENSHOTS=DIR`` to keep the zoomed page as ``DIR/dashboard-zoom.png`` (the README's)."""

from __future__ import annotations

import os
import shutil

from helpers import launch, write_history
from selenium.webdriver.common.action_chains import ActionChains
from services import Dashboard
from test_browser import wait_for

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
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        dash.stop()
