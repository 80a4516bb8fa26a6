"""A language model: a small character-level transformer in plain torch, on text Python ships.

The text is CPython's own documentation, the ~460,000 characters of ``pydoc_data.topics`` (the
language reference and library topics that ``help()`` prints; part of every CPython since 2.x,
so nothing is downloaded). Its 79 topics, sorted by name, are split by topic: every tenth
(index % 10 == 0) is validation, index % 10 == 5 is a held-out test split, the rest is training.
The vocabulary is fixed (newline and printable ASCII; anything else is one "other" token), so it
does not depend on the text. The exact text depends on the Python version: compare runs made on
one version.

Tunes learning rate, warmup, dropout and weight decay (AdamW; no decay on biases, norms and
embeddings), all applied in place: the optimizer's state and the step counter are kept, dropout
modules get the new rate. The learning rate ramps linearly over ``warmup`` steps from the
member's first step (``step < warmup``), then stays at ``lr``: any decay is for PBT to find.

Score ``val_loss`` (mode min): mean cross-entropy in nats per character on fixed windows of the
validation split; ``test_loss`` is the same on the test split, never selected on. Batches and
dropout draw from one torch generator state that lives in the checkpoint and is swapped into
torch's global generator only while training (a worker trains many members in one process).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pbt_mq import Trainable

VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))  # index len(VOCAB): any other character


@lru_cache(maxsize=1)
def corpus() -> dict[str, torch.Tensor]:
    from pydoc_data.topics import topics  # CPython's help() text: always present, read from disk

    index = {c: i for i, c in enumerate(VOCAB)}
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, name in enumerate(sorted(topics)):
        split = "val" if i % 10 == 0 else "test" if i % 10 == 5 else "train"
        parts[split].append(topics[name])
    return {k: torch.tensor([index.get(c, len(VOCAB)) for c in "\n\n".join(v)], dtype=torch.long)
            for k, v in parts.items()}


def windows(data: torch.Tensor, context: int, n: int) -> torch.Tensor:
    """``n`` evenly spaced, fixed windows of ``context + 1`` characters: the evaluation set."""
    starts = torch.linspace(0, len(data) - context - 2, n).long()
    return torch.stack([data[s : s + context + 1] for s in starts.tolist()])


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=0.0, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, h, attn_mask=mask, need_weights=False)[0])
        return x + self.drop(self.mlp(self.ln2(x)))


class CharTransformer(nn.Module):
    def __init__(self, vocab: int, context: int, d: int, heads: int, layers: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(context, d)
        self.drop = nn.Dropout(0.0)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.register_buffer("mask", torch.triu(torch.full((context, context), -math.inf), 1), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.drop(self.tok(idx) + self.pos(torch.arange(t, device=idx.device)))
        for block in self.blocks:
            x = block(x, self.mask[:t, :t])
        return self.head(self.ln(x))


class CharLM(Trainable):
    def setup(self, context: int = 32, d_model: int = 64, heads: int = 4, layers: int = 2, batch_size: int = 32,
              eval_windows: int = 64) -> None:
        data = corpus()
        self.train_data = data["train"]
        self.val = windows(data["val"], context, eval_windows).to(self.device)
        self.test = windows(data["test"], context, eval_windows).to(self.device)
        self.context, self.batch_size = context, batch_size
        self.model = CharTransformer(len(VOCAB) + 1, context, d_model, heads, layers).to(self.device)
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2 and "tok" not in n and "pos" not in n]
        other = [p for n, p in self.model.named_parameters() if not (p.dim() >= 2 and "tok" not in n and "pos" not in n)]
        self.opt = torch.optim.AdamW([{"params": decay}, {"params": other, "weight_decay": 0.0}], lr=1e-3)
        self.step = 0
        self.rng = torch.Generator().manual_seed(self.seed).get_state()  # batches and dropout masks
        self.apply(self.hparams)

    def apply(self, hparams: dict[str, Any]) -> None:
        self.hparams = dict(hparams)
        self.opt.param_groups[0]["weight_decay"] = float(hparams["weight_decay"])
        for m in self.model.modules():
            if isinstance(m, nn.Dropout):
                m.p = float(hparams["dropout"])

    def lr_at(self, step: int) -> float:
        return float(self.hparams["lr"]) * min(1.0, (step + 1) / max(1, int(self.hparams["warmup"])))

    def train(self, steps: int) -> None:
        self.model.train()
        outer = torch.get_rng_state()
        torch.set_rng_state(self.rng)  # one stream for batch positions and dropout, this member's own
        try:
            for _ in range(steps):
                for g in self.opt.param_groups:
                    g["lr"] = self.lr_at(self.step)
                starts = torch.randint(len(self.train_data) - self.context - 1, (self.batch_size,))
                batch = torch.stack([self.train_data[s : s + self.context + 1] for s in starts.tolist()]).to(self.device)
                logits = self.model(batch[:, :-1])
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.opt.step()
                self.step += 1
            self.rng = torch.get_rng_state()
        finally:
            torch.set_rng_state(outer)

    @torch.no_grad()
    def loss_on(self, batch: torch.Tensor) -> float:
        logits = self.model(batch[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)).item()

    def evaluate(self) -> dict[str, float]:
        self.model.eval()  # no dropout: the same fixed windows give the same loss for the same weights
        return {"val_loss": self.loss_on(self.val), "test_loss": self.loss_on(self.test), "lr_now": self.lr_at(self.step)}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": self.step, "rng": self.rng}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])
        self.rng = state["rng"]
