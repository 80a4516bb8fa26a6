"""The loop API: a plain PyTorch training script under PBT (README, "From your script to PBT"; the
script it was is docs/examples/digits_plain.py).

    pbt local workers/digits_loop.toml
"""

import torch
from torch import nn

import pbt_mq
from workers.digits import dataset


def main() -> None:
    run = pbt_mq.session()
    torch.manual_seed(run.seed)
    xt, yt, xv, yv = (t.to(run.device) for t in dataset())
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).to(run.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(run.seed)
    while not run.done:
        if run.state is not None:  # a checkpoint to load: a cold start, an exploit or another member
            model.load_state_dict(run.state["model"])
            opt.load_state_dict(run.state["opt"])
            gen.set_state(run.state["gen"])
        for g in opt.param_groups:
            g["lr"], g["momentum"] = run.hparams["lr"], run.hparams["momentum"]
        step = run.step
        while not run.should_report(step):
            idx = torch.randint(len(xt), (64,), generator=gen)
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        with torch.no_grad():
            metrics = {"accuracy": (model(xv).argmax(1) == yv).float().mean().item()}
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state()}
        run = run.report(metrics, step=step, state=state)
