"""PBT with Hugging Face Transformers: a tiny GPT-2 built from a config (no download), trained as a
character-level language model on text that ships with Python (the reference manual's help topics
in ``pydoc_data``), by a ``Trainer`` as usual, plus ``train(trainer, run)``.

    pip install 'pbt-mq[torch,hf]'
    pbt local workers/hf_tiny.toml

The tokenizer is the text's characters, built here. ``PBTCallback`` (``pbt_mq.integrations.hf``)
evaluates at each segment's end, reports ``eval_loss``, and loads exploits into the live model,
AdamW and scheduler; ``learning_rate`` and ``weight_decay`` are set in the optimizer in place.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache

import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer

import pbt_mq
from pbt_mq.integrations.hf import arguments, train

TOPICS = ("assignment", "for", "while", "if", "try", "with", "function", "class")


@lru_cache(maxsize=1)
def corpus() -> tuple[str, dict[str, int]]:
    from pydoc_data.topics import topics  # the help() texts: part of Python's standard library

    text = "\n".join(topics[t] for t in TOPICS)
    return text, {c: i for i, c in enumerate(sorted(set(text)))}


class Windows(Dataset):
    """Fixed windows of character ids; the labels are the inputs (the model shifts them)."""

    def __init__(self, ids: torch.Tensor, width: int) -> None:
        self.ids, self.width = ids, width

    def __len__(self) -> int:
        return max(0, len(self.ids) - self.width) // 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.ids[i * 8 : i * 8 + self.width]
        return {"input_ids": x, "labels": x}


def main(width: int = 32, embd: int = 32, layers: int = 2, batch_size: int = 16) -> None:
    run = pbt_mq.session()
    text, vocab = corpus()
    ids = torch.tensor([vocab[c] for c in text])
    cut = int(len(ids) * 0.9)
    torch.manual_seed(run.seed)
    config = GPT2Config(vocab_size=len(vocab), n_positions=width, n_embd=embd, n_layer=layers, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    with tempfile.TemporaryDirectory(prefix="pbt-hf-") as out:  # the Trainer wants a directory; PBT saves nothing there
        args = arguments(run, out, per_device_train_batch_size=batch_size)
        trainer = Trainer(model=GPT2LMHeadModel(config), args=args, train_dataset=Windows(ids[:cut], width),
                          eval_dataset=Windows(ids[cut:], width))
        train(trainer, run)
