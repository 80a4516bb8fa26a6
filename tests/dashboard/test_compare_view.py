"""Issue 26 (item 2): experiments side by side, ``pbt compare A B`` in the terminal (and a figure) and
the dashboard's ``#/compare/A,B`` view in real Chromium, both from the same summaries, on two real
``pbt local`` runs read back from their work dir after they ended.

Set ``PBT_SCREENSHOTS=DIR`` to keep the view as ``DIR/dashboard-compare.png`` (the README's)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from helpers import ROOT, launch, pbt
from services import Dashboard
from test_browser import attrs, click, wait_for

from pbt_mq.core.ids import member_ids


def status_of(wd, exp: str) -> dict:
    res = pbt("status", exp, "--json", "--local", str(wd))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def local_run(wd, *sets: str) -> str:
    """A real ``pbt local`` toy run in ``wd``; returns its experiment id."""
    args = [a for s in sets for a in ("--set", s)]
    done = subprocess.run([sys.executable, "-m", "pbt_mq", "local", str(ROOT / "workers" / "toy.toml"), "--quiet",
                           "--dir", str(wd), *args], capture_output=True, text=True, cwd=wd.parent, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split("pbt local: ", 1)[1].split(":", 1)[0]


def test_two_experiments_side_by_side_in_the_terminal_and_the_browser(redis_url, tmp_path, browser):
    """PBT against the same population with exploit and explore off, two real pbt local runs."""
    wd = tmp_path / "wd"
    a, b = local_run(wd), local_run(wd, "exploit.rule=none", "explore.rule=none")
    res = pbt("compare", a, b, "--json", "--local", str(wd))
    assert res.returncode == 0, res.stderr
    doc = {s["experiment"]: s for s in json.loads(res.stdout)}
    finals = {e: doc[e]["final"] for e in (a, b)}
    for e in (a, b):
        assert finals[e] == status_of(wd, e)["best"]["score"]  # the final best is the experiment's best
        assert doc[e]["by_step"][-1][0] == 100 and doc[e]["schedule"] and doc[e]["wall_s"] > 0
    assert finals[a] > finals[b] and finals[b] <= 0.4  # the paper's toy: without exploit and explore Q stays <= 0.39
    res = pbt("compare", a, b, "-o", str(tmp_path / "cmp.png"), "--local", str(wd))
    assert res.returncode == 0 and (tmp_path / "cmp.png").stat().st_size > 10_000, res.stderr
    table = res.stdout.splitlines()
    assert table[1].startswith(a) and "+0" in table[1] and table[2].startswith(b)
    assert "panels best:step, best:time, hparam:h0, hparam:h1" in res.stdout
    other = launch(redis_url, f"file://{tmp_path / 'c'}", file=str(ROOT / "workers" / "rising.toml"))
    toy = launch(redis_url, f"file://{tmp_path / 'd'}")
    for args, says in (((toy, other), "the experiments measure different things"), ((toy,), "give 2 to 8 different")):
        res = pbt("compare", *args, "--redis", redis_url)
        assert res.returncode == 2 and says in res.stderr and res.stderr.count("\n") == 1, res.stderr

    dash = Dashboard(tmp_path / "logs", "--local", str(wd))
    try:
        js = browser.execute_script
        browser.get(dash.url)
        wait_for("the ticks", lambda: len(attrs(browser, "#experiments input.pick", "data-pick")) == 2)
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
        assert js("return Chart.getChart(document.querySelector('#compare-time')).data.datasets.every(d => d.data.length > 2)")
        if os.environ.get("PBT_SCREENSHOTS"):
            browser.save_screenshot(str(tmp_path / "compare.png"))
            shutil.copy(tmp_path / "compare.png", os.path.join(os.environ["PBT_SCREENSHOTS"], "dashboard-compare.png"))

        # the address is the view: opened afresh, it shows the same; back to one experiment, it goes
        browser.get(f"{dash.url}#/compare/{b},{a}")
        wait_for("the shared view", lambda: (d := js("return window.pbtDashboard.compareDoc"))
                 and [e["experiment"] for e in d["experiments"]] == [b, a])
        js("location.hash = arguments[0]", f"#/{a}")
        wait_for("the experiment's page", lambda: js("return document.querySelector('#compare').hidden")
                 and attrs(browser, "#members tbody tr", "data-member") == member_ids(2))
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        dash.stop()
