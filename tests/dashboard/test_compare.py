"""Issue 26 (item 2): experiments side by side, ``pbt compare A B`` in the terminal (and a figure) and
the dashboard's ``#/compare/A,B`` view in real Chromium, both from the same summaries.

Set ``PBT_SCREENSHOTS=DIR`` to keep the view as ``DIR/dashboard-compare.png`` (the README's)."""

from __future__ import annotations

import json
import os
import shutil

from helpers import ROOT, launch, pbt, write_history
from services import Dashboard
from test_browser import attrs, click, wait_for

from pbt_mq.core.ids import member_ids


def test_two_experiments_side_by_side_in_the_terminal_and_the_browser(r, redis_url, tmp_path, browser):
    a = launch(redis_url, f"file://{tmp_path / 'a'}", "population.size=4")
    b = launch(redis_url, f"file://{tmp_path / 'b'}", "population.size=4")
    finals = {a: max(write_history(r, a, 4, seed=1).values()), b: max(write_history(r, b, 4, seed=2).values())}

    res = pbt("compare", a, b, "--json", "--redis", redis_url)
    assert res.returncode == 0, res.stderr
    doc = {s["experiment"]: s for s in json.loads(res.stdout)}
    assert {e: doc[e]["final"] for e in (a, b)} == finals
    assert all(len(doc[e]["by_step"]) == 3 and doc[e]["schedule"] and doc[e]["segments"] == 12 for e in (a, b))
    res = pbt("compare", a, b, "-o", str(tmp_path / "cmp.png"), "--redis", redis_url)
    assert res.returncode == 0 and (tmp_path / "cmp.png").stat().st_size > 10_000, res.stderr
    table = res.stdout.splitlines()
    best = max(finals, key=finals.get)
    assert table[1].startswith(best) and "+0" in table[1] and "panels best:step, best:time, hparam:h0" in res.stdout
    other = launch(redis_url, f"file://{tmp_path / 'c'}", file=str(ROOT / "workers" / "rising.toml"))
    for args, says in (((a, other), "the experiments measure different things"), ((a,), "give 2 to 8 different")):
        res = pbt("compare", *args, "--redis", redis_url)
        assert res.returncode == 2 and says in res.stderr and res.stderr.count("\n") == 1, res.stderr

    dash = Dashboard(tmp_path / "logs", "--redis", redis_url)
    try:
        js = browser.execute_script
        browser.get(dash.url)
        wait_for("the ticks", lambda: len(attrs(browser, "#experiments input.pick", "data-pick")) == 3)
        for exp in (a, b):
            click(browser, f'#experiments input.pick[data-pick="{exp}"]')
        click(browser, "#compare-picked")
        wait_for("the comparison", lambda: (d := js("return window.pbtDashboard.compareDoc")) and len(d["experiments"]) == 2)
        assert js("return location.hash") == f"#/compare/{a},{b}"
        assert js("return document.querySelector('#detail').hidden") is True
        assert attrs(browser, "#compare-table tbody tr", "data-compared") == sorted((a, b), key=lambda e: -finals[e])
        shown = js("return window.pbtDashboard.compareDoc.experiments.map(e => [e.experiment, e.final])")
        assert dict(shown) == finals
        assert js("return Chart.getChart(document.querySelector('#compare-step')).data.datasets.map(d => d.label)") == [a, b]
        assert js("return document.querySelectorAll('#compare-hparams canvas').length") == 2  # h0 and h1
        if os.environ.get("PBT_SCREENSHOTS"):
            browser.save_screenshot(str(tmp_path / "compare.png"))
            shutil.copy(tmp_path / "compare.png", os.path.join(os.environ["PBT_SCREENSHOTS"], "dashboard-compare.png"))

        # the address is the view: opened afresh, it shows the same; back to one experiment, it goes
        browser.get(f"{dash.url}#/compare/{b},{a}")
        wait_for("the shared view", lambda: (d := js("return window.pbtDashboard.compareDoc"))
                 and [e["experiment"] for e in d["experiments"]] == [b, a])
        js("location.hash = arguments[0]", f"#/{a}")
        wait_for("the experiment's page", lambda: js("return document.querySelector('#compare').hidden")
                 and attrs(browser, "#members tbody tr", "data-member") == member_ids(4))
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        dash.stop()
