"""A plain PyTorch training script (README, "From your script to PBT": workers/digits_loop.py is it under PBT)."""

import torch
from torch import nn

from workers.digits import dataset


def main(lr: float = 0.05, momentum: float = 0.9, steps: int = 400) -> None:
    torch.manual_seed(0)
    xt, yt, xv, yv = dataset()
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    for g in opt.param_groups:
        g["lr"], g["momentum"] = lr, momentum
    step = 0
    while step < steps:
        idx = torch.randint(len(xt), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
    with torch.no_grad():
        metrics = {"accuracy": (model(xv).argmax(1) == yv).float().mean().item()}
    print(metrics)


if __name__ == "__main__":
    main()
