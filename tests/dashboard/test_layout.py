"""Issue 26 (item 5), in real Chromium at 800 px: the page never overflows sideways, a long failure
reason does not push the experiments table off screen, the list and the open experiment show the same
progress, and an error from the experiment's stream stays on screen through the list's refreshes."""

from __future__ import annotations

from helpers import launch, write_history
from services import Dashboard
from test_browser import texts, wait_for

from pbt_mq.core.keys import Keys
from pbt_mq.core.model import ExperimentState, Meta

REASON = "a failure reason written by a very long traceback: " + "frame " * 400


def test_the_page_holds_at_800_px_with_long_reasons_and_keeps_errors_visible(r, redis_url, tmp_path, browser):
    exp = launch(redis_url, f"file://{tmp_path / 'a'}", "population.size=4")
    write_history(r, exp, 4)
    failed = launch(redis_url, f"file://{tmp_path / 'b'}", "population.size=2")
    r.hset(Keys(failed).meta, mapping=Meta.fields(state=ExperimentState.FAILED, reason=REASON))
    dash = Dashboard(tmp_path / "logs", "--redis", redis_url)
    try:
        js = browser.execute_script
        browser.set_window_size(800, 1000)
        browser.get(f"{dash.url}#/{exp}")
        wait_for("both experiments listed and the summary drawn", lambda: len(texts(browser, "#experiments tbody tr")) == 2
                 and js("return window.pbtDashboard.snapshot !== null"))
        assert js("return document.documentElement.scrollWidth <= window.innerWidth"), js(
            "return [document.documentElement.scrollWidth, window.innerWidth]")
        row_h = js(f"return document.querySelector('#experiments tr[data-experiment=\"{failed}\"]').offsetHeight")
        assert row_h < 60, row_h  # the reason is cut to one line (its whole text in the title)
        assert js(f"return document.querySelector('#experiments tr[data-experiment=\"{failed}\"] .reason').title") == REASON

        # one source: the open experiment's row says what its summary says
        listed = texts(browser, f'#experiments tr[data-experiment="{exp}"] td')[4]  # after the tick, name, state, best
        summary = js("return document.querySelector('#summary .bar').getAttribute('title')")
        assert listed.split()[-2] == summary.split()[0], (listed, summary)

        # the experiment's stored config is broken while the page is open: its stream answers 422
        r.hset(Keys(exp).meta, "config", "{not json")
        wait_for("the stream's error in the banner", lambda: exp in js("return document.querySelector('#banner').textContent"),
                 timeout_s=30)
        loads = js("return window.pbtDashboard.listLoads")
        wait_for("two refreshes of the list, which succeed", lambda: js("return window.pbtDashboard.listLoads") >= loads + 2)
        text = js("return document.querySelector('#banner').hidden ? '' : document.querySelector('#banner').textContent")
        assert exp in text, text
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "/stream" not in e["message"]
                and "422" not in e["message"]] == []
    finally:
        dash.stop()
