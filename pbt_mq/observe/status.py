"""``pbt status``: an experiment and its members as a table."""

from __future__ import annotations

from typing import Any


def format_status(st: dict[str, Any]) -> str:
    lines = [f"{st['experiment']}  state={st['state']}  finished={st['finished']}/{st['population']}"]
    if st.get("reason"):
        lines[0] += f"  ({st['reason']})"
    best = st.get("best")
    if best:
        lines.append(f"best: {best['member']} {st['metric']}={best['score']:.6g} at step {best['step']}")
    lines.append(f"{'member':<8} {'state':<8} {'step':>7} {st['metric']:>12}  {'worker':<24} hparams")
    for m in st["members"]:
        score = "-" if m["score"] is None else f"{m['score']:.6g}"
        hp = " ".join(f"{k}={_short(v)}" for k, v in sorted(m["hparams"].items()))
        lines.append(f"{m['id']:<8} {m['state']:<8} {m['step']:>7} {score:>12}  {m['worker'][:24]:<24} {hp}")
    return "\n".join(lines)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
