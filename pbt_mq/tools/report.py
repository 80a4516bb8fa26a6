"""What ``pbt local`` leaves when an experiment ends: its summary, ``DIR/EXP/report.png`` (with the
``plot`` extra) and the best model exported as ``pbt export --best`` does, into ``DIR/EXP/best/``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Member
from pbt_mq.observe import plot
from pbt_mq.observe.export import checkpoint_file, export, export_front
from pbt_mq.state.experiment import load_config
from pbt_mq.state.front import format_front
from pbt_mq.state.lineage import ancestry, format_schedule, records, schedule
from pbt_mq.tools.workdir import shown


def summary(r: Any, exp: str, st: dict, wall_s: float) -> str:
    lines = [f"\n{exp}: {st['state']} ({st.get('reason') or ''}) in {wall_s:.1f} s"]
    if st.get("tracking_problem"):  # the run itself went on; what it did not send is said here, not only in logs
        lines.append(f"tracking: {st['tracking_problem']}")
    if st.get("front") is not None:  # several metrics: the front, not one best
        return "\n".join(lines + format_front(st["front"], st["population"]))
    best = st.get("best")
    if not best:
        return "\n".join(lines + ["no member produced a finite score"])
    lines.append(f"best member: {best['member']}  {st['metric']} = {best['score']:.6g}  (step {best['step']})")
    key = Member.read(r, Keys(exp).member(best["member"]), "ckpt_key").ckpt_key
    if key:
        chain = ancestry(records(r, exp), key)
        lines.append(f"checkpoint: {key}")
        lines.append("hyperparameter schedule of the best model (oldest first):")
        lines.append(format_schedule(schedule(chain)))
    return "\n".join(lines)


def outputs(r: Any, exp: str, wd: Path, local_flag: str) -> list[str]:
    """Write the report and the best model under ``wd/exp``; the lines that say where they are and
    what to run next (``local_flag``: " --local DIR" when readers would not find ``wd`` by default)."""
    out = wd / exp
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    if importlib.util.find_spec("matplotlib") is None:
        lines.append("report: not drawn: matplotlib is not installed (pip install 'pbt-mq[plot]')")
    else:
        try:
            plot.write(plot.collect(r, exp), out / "report.png")
            lines.append(f"report: {shown(out / 'report.png')}")
        except Exception as exc:  # the run's result stands; the picture is a bonus
            lines.append(f"report: not drawn: {type(exc).__name__}: {exc}")
    if load_config(r, exp).multi:  # several metrics: the whole front
        try:
            rows = export_front(r, exp, out / "front")
            lines.append(f"Pareto front: {shown(out / 'front')}/ ({len(rows)} members, each as pbt export writes it;"
                         " front.json)")
        except Exception as exc:
            lines.append(f"front: not exported: {type(exc).__name__}: {exc}")
        return lines + [f"  pbt export {exp}{local_flag} --front -o front"]
    try:
        sched = export(r, exp, out / "best")
        fin = sched["final"]
        lines.append(f"best model: {shown(out / 'best')}/ ({fin['member']} at step {fin['step']}:"
                     f" {checkpoint_file(fin['ckpt_key'])},"
                     f" schedule.json, experiment.toml; replay it: pbt replay {shown(out / 'best')})")
    except Exception as exc:  # as above: say why, lose nothing else
        lines.append(f"best model: not exported: {type(exc).__name__}: {exc}")
    lines += ["look at it again (this directory, nothing running):", f"  pbt plot {exp}{local_flag} -o report.png",
              f"  pbt lineage {exp}{local_flag}", f"  pbt export {exp}{local_flag} --best -o best"]
    return lines
