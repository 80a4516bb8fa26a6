"""Hyperparameters into live optimizers, in place (pbt_mq.integrations.optim): no library needed but torch."""

from __future__ import annotations

import torch

from pbt_mq.integrations.optim import apply_hparams


def test_hparams_go_into_param_groups_in_place_and_into_the_schedulers_base():
    w, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.01}, {"params": [b], "weight_decay": 0.0}], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    w.grad = torch.ones(2)
    opt.step()
    state_before = opt.state[w]["exp_avg"].clone()
    applied = apply_hparams([opt], {"learning_rate": 0.05, "weight_decay": 0.2, "eps": 1e-6, "dropout": 0.1,
                                    "flag": True}, [sched])
    assert applied == {"learning_rate", "weight_decay", "eps"}  # dropout names no param-group key
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.05] and sched.base_lrs == [0.05, 0.05]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]  # the no-decay group stays at 0
    assert torch.equal(opt.state[w]["exp_avg"], state_before)  # in place: the optimizer's state survives
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.05]  # the scheduler no longer undoes it
