"""``pbt lineage | export | replay | top | plot | compare``: reading an experiment, and taking its result away."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from pbt_mq.broker.connect import connect
from pbt_mq.cli.options import RAW_OUTPUT, UsageError, env_option, state_options
from pbt_mq.core import settings
from pbt_mq.core.model import Action
from pbt_mq.observe import compare, plot, top
from pbt_mq.observe.export import checkpoint_file, export, export_front
from pbt_mq.observe.lineage import NoCheckpoint, explain, format_lineage, format_phases, phases, record_json, target
from pbt_mq.observe.replay import load_exported, load_schedule, replay, same_state
from pbt_mq.state.experiment import load_config
from pbt_mq.state.lineage import records
from pbt_mq.store.checkpoint import save_file


def add_lineage_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment")
    p.add_argument("--member", default=None, help="whose latest checkpoint to trace (default: the best member)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="segments, origins and the schedule as JSON")
    out.add_argument("--records", action="store_true",
                     help="every decision record of the experiment, archived or not, oldest first, as JSON lines")
    state_options(p)
    p.set_defaults(fn=cmd_lineage)


def cmd_lineage(a: argparse.Namespace) -> int:
    r = connect(a.redis)
    cfg = load_config(r, a.experiment)
    if a.records:
        for rec in records(r, a.experiment):
            sys.stdout.write(json.dumps(record_json(rec), sort_keys=True) + "\n")
        return 0
    recs = records(r, a.experiment)
    failed = [rec for rec in recs if a.member and rec.member == a.member and rec.action in (Action.FAILED,
                                                                                           Action.REPLACED)]
    try:
        tgt = target(r, a.experiment, a.member)
    except NoCheckpoint:
        if not failed or a.json:
            raise
        tgt = None
    if failed and not a.json:  # a failed member's story starts with its failures (pbt status EXP M: tracebacks)
        for rec in failed:
            why = [line for line in (rec.reason or "").strip().splitlines() if line.strip()]
            print(f"{a.experiment} {rec.member}: segment seq {rec.seq} from step {rec.start_step} {rec.action}: "
                  f"{why[-1].strip() if why else '(no reason recorded)'}")
        print(f"the tracebacks: pbt status {a.experiment} {a.member}")
        if tgt is None:
            print(f"{a.member} has no checkpoint, so no ancestry")
            return 0
    assert tgt is not None
    segs = explain(recs, tgt["ckpt_key"])
    if a.json:
        doc = {"experiment": a.experiment, "metric": cfg.metric, "mode": cfg.mode, "target": tgt,
               "segments": segs, "phases": phases(segs)}
        print(json.dumps(doc, indent=2))
        return 0
    who = f"{tgt['member']}" + ("" if a.member else " (the best member)")
    print(f"{a.experiment}: lineage of {who}, {cfg.metric}={tgt['score']:.6g} at step {tgt['step']}")
    print(f"checkpoint {tgt['ckpt_key']} (sha256 {tgt['sha256'][:16]}…)")
    print(f"ancestry, oldest first ({len(segs)} segments, members {', '.join(_members(segs))}):")
    print(format_lineage(segs, cfg.metric))
    print("hyperparameter schedule:")
    print(format_phases(phases(segs)))
    return 0


def _members(segs: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for s in segs:
        if not out or out[-1] != s["member"]:
            out.append(s["member"])
    return out


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--best", action="store_true", help="the best member (the default)")
    who.add_argument("--member", default=None, help="this member's latest checkpoint instead")
    who.add_argument("--front", action="store_true",
                     help="several metrics: every member of the Pareto front, into DIR/MEMBER/, and DIR/front.json")
    p.add_argument("-o", "--out", required=True, help="directory to write into (created if needed)")
    state_options(p)
    p.set_defaults(fn=cmd_export)


def cmd_export(a: argparse.Namespace) -> int:
    if a.front:
        rows = export_front(connect(a.redis), a.experiment, a.out)
        for row in rows:
            vals = " ".join(f"{k}={v:.6g}" for k, v in row["values"].items())
            print(f"{Path(a.out) / row['member']}/: {row['member']} at step {row['step']}, {vals}")
        print(f"{Path(a.out) / 'front.json'}: the Pareto front, {len(rows)} members")
        return 0
    sched = export(connect(a.redis), a.experiment, a.out, a.member)
    out, fin = Path(a.out), sched["final"]
    print(f"{out / checkpoint_file(fin['ckpt_key'])}: {fin['member']} at step {fin['step']}, {sched['metric']}={fin['score']:.6g},"
          f" {fin['size']} bytes, sha256 {fin['sha256'][:16]}… verified")
    n = len(sched["phases"])
    print(f"{out / 'schedule.json'}: {len(sched['segments'])} segments, {n} phase{'s' * (n != 1)} of hyperparameters,"
          f" members {', '.join(_members(sched['segments']))}")
    print(f"{out / 'experiment.toml'}: the experiment file")
    if not sched["complete"]:
        print("pbt: warning: the lineage does not reach back to a fresh start; the schedule cannot be replayed", file=sys.stderr)
    print(f"replay it: pbt replay {out / 'schedule.json'}")
    return 0


def add_replay_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("schedule", help="schedule.json from `pbt export` (or the export directory), or the id of an"
                                    " experiment `pbt local` ran: its best model, DIR/EXP/best")
    p.add_argument("--local", dest="local_dir", default=None, metavar="DIR",
                   help="the pbt local work dir an experiment id refers to (default $PBT_LOCAL_DIR)")
    env_option(p, "--device", env="PBT_DEVICE", help="torch device")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 keeps torch's default")
    p.add_argument("--save", default=None, metavar="PATH",
                   help="write the replayed state as a checkpoint file (read it with pbt_mq.load_checkpoint)")
    p.add_argument("--compare", default=None, metavar="CKPT",
                   help="compare the final state bit for bit with this checkpoint (default: the exported"
                        " checkpoint.safetensors or checkpoint.pt beside the schedule)")
    p.add_argument("--check", action="store_true", help="exit 1 unless the final score (and state) match exactly")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_replay)


def cmd_replay(a: argparse.Namespace) -> int:
    import torch  # replay trains, so it needs what workers need

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    a.schedule = str(exported_path(a.schedule, a.local_dir))
    sched = load_schedule(a.schedule)
    metric = sched["metric"]

    def show(row: dict[str, Any]) -> None:
        mark = "=" if row["replayed"] == row["recorded"] else "≠"
        print(f"  steps {row['from_step']:>6}-{row['to_step']:<6} {row['member']:<6} recorded {metric}="
              f"{row['recorded']:<12.8g} replayed {row['replayed']:<12.8g} {mark}")

    res = replay(sched, a.device, None if a.json else show)
    same = _compare_state(a, sched, res.state)
    if a.save:
        save_file(a.save, {"state": res.state, "step": sched["segments"][-1]["to_step"],
                           "hparams": sched["segments"][-1]["hparams"], "member": "replay"})
    if a.json:
        print(json.dumps({"final_score": res.final_score, "recorded_score": res.recorded_score,
                          "exact": res.exact, "same_state": same, "segments": res.segments}, indent=2))
    else:
        verdict = "identical" if res.exact else f"differs by {res.final_score - res.recorded_score:+.3g}"
        print(f"replayed {metric}={res.final_score:.8g} at step {sched['segments'][-1]['to_step']};"
              f" recorded {res.recorded_score:.8g}: {verdict}")
        if same is not None:
            print(f"final state {'bit-for-bit identical to' if same else 'differs from'} the exported checkpoint")
    ok = res.exact and same is not False
    return 0 if ok or not a.check else 1


def exported_path(given: str, local_dir: str | None) -> Path:
    """The schedule as given, or where `pbt local` exported experiment ``given``'s best model."""
    p = Path(given)
    if p.exists() or "/" in given or given.endswith(".json"):
        return p
    best = Path(local_dir or settings.read("PBT_LOCAL_DIR")) / given / "best"
    return best if best.is_dir() else p


def _compare_state(a: argparse.Namespace, sched: dict[str, Any], state: Any) -> bool | None:
    path = a.compare
    sha = None
    if path is None:
        beside = (Path(a.schedule) if Path(a.schedule).is_dir() else Path(a.schedule).parent) \
            / checkpoint_file(sched["final"].get("ckpt_key", ""))
        if not beside.exists():
            return None
        path, sha = beside, sched["final"].get("sha256")
    return same_state(load_exported(path, sha)["state"], state)




def add_top_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    p.add_argument("--stale-s", type=float, default=6.0,
                   help="flag a worker whose last heartbeat is older than this (pbt-worker's TTL is 3 beats: 6 s)")
    p.add_argument("--once", action="store_true", help="print one frame and exit (no terminal needed)")
    p.add_argument("--json", action="store_true", help="with --once: the frame's data as JSON")
    p.add_argument("--width", type=int, default=None, help="columns (default: the terminal's, else 160)")
    state_options(p)
    p.set_defaults(fn=cmd_top)


def cmd_top(a: argparse.Namespace) -> int:
    r = connect(a.redis)
    load_config(r, a.experiment)  # an unknown experiment fails here with the usual one-line error
    follower = top.Follower(r, a.experiment)
    console = Console(width=a.width or (None if Console().is_terminal else 160))
    if a.once:
        snap = top.snapshot(r, a.experiment, follower, a.stale_s)
        if a.json:
            print(json.dumps(snap, indent=2, default=str))
        else:
            console.print(top.render(snap))
        return 0
    return top.live(r, a.experiment, follower, console, a.interval, a.stale_s)




RAW_OUTPUT.add(cmd_top)  # it draws with ANSI; its data is escaped (core.terminal.safe_tree)


def add_plot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment")
    p.add_argument("-o", "--out", default=None, help="output file (.png, .svg, .pdf; default EXP.png)")
    state_options(p)
    p.set_defaults(fn=cmd_plot)


FIGURES = (".png", ".svg", ".pdf")


def figure_path(out: str, flag: str = "-o") -> str:
    """``out`` if matplotlib can write it (by its extension), else one line saying what can."""
    if Path(out).suffix.lower() not in FIGURES:
        raise UsageError(f"{flag} {out}: expected a file ending in {', '.join(FIGURES)}")
    return out


def cmd_plot(a: argparse.Namespace) -> int:
    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError("pbt plot needs matplotlib: pip install 'pbt-mq[plot]'")
    out = figure_path(a.out or f"{a.experiment}.png")
    rep = plot.collect(connect(a.redis), a.experiment)
    panels = plot.write(rep, out)
    print(f"wrote {out}: panels {', '.join(panels)}")
    return 0


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiments", nargs="+", metavar="EXP")
    p.add_argument("-o", "--out", default=None, help="also draw them: best against step and wall time, the final"
                   " bests' schedules (.png, .svg, .pdf; needs the plot extra)")
    p.add_argument("--json", action="store_true", help="each experiment's summary as JSON")
    state_options(p)
    p.set_defaults(fn=cmd_compare)


def cmd_compare(a: argparse.Namespace) -> int:
    exps = list(dict.fromkeys(a.experiments))
    if problem := compare.count_problem(exps):
        raise UsageError(f"pbt compare: {problem}")
    if a.out:
        figure_path(a.out)
        if importlib.util.find_spec("matplotlib") is None:
            raise ImportError("pbt compare -o needs matplotlib: pip install 'pbt-mq[plot]'")
    r = connect(a.redis)
    summaries = [compare.collect(r, e) for e in exps]
    problem = compare.comparable(summaries)
    if problem:
        raise UsageError(problem)
    if a.json:
        print(json.dumps([s.to_json() for s in summaries], indent=2))
    else:
        print(compare.table(summaries))
    if a.out:
        panels = compare.draw(summaries, a.out)
        print(f"wrote {a.out}: panels {', '.join(panels)}", file=sys.stderr if a.json else sys.stdout)
    return 0


def register(sub: Any) -> None:
    add_top_arguments(sub.add_parser("top", help="live view: members, trends, last exploits, workers, events/s"))
    add_plot_arguments(sub.add_parser("plot", help="PNG report: score curves with exploits, schedules, lineage tree"))
    add_compare_arguments(sub.add_parser("compare", help="experiments side by side: best against step and wall time,"
                                         " final scores, the schedules found (-o: a figure)"))
    add_lineage_arguments(sub.add_parser("lineage", help="a member's ancestry and hyperparameter schedule"))
    add_export_arguments(sub.add_parser("export", help="the best checkpoint, its schedule and experiment file"))
    add_replay_arguments(sub.add_parser("replay", help="train one member along an exported schedule"))
