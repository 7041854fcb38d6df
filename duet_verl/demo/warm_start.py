"""Supervised warm start of the tiny model on worked solutions, so RL starts from partial accuracy.

The targets come from :func:`duet_verl.demo.tasks.warm_start_text`: mostly clean solutions ending in
``\\boxed{...}``, some that keep talking after the answer and some that never give one — the habits
DUET's stop and abort rules act on. Loss is next-token cross-entropy on the assistant part only.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import torch

from duet_verl.demo.tasks import Problem, warm_start_text

__all__ = ["chat_prompt_ids", "warm_start"]


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of the chat-formatted user prompt with the assistant header (as the rollout builds it)."""
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def warm_start(
    model: torch.nn.Module,
    tokenizer,
    problems: list[Problem],
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[float]:
    """Train ``model`` in place for ``steps`` optimizer steps; returns the loss per step."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    examples = []
    for p in problems:
        prompt = chat_prompt_ids(tokenizer, p.prompt)
        examples.append((prompt, p))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    model.train()
    losses, start = [], time.monotonic()
    for step in range(steps):
        batch = rng.sample(examples, min(batch_size, len(examples)))
        rows = []
        for prompt, problem in batch:
            target = tokenizer.encode(warm_start_text(problem, rng), add_special_tokens=False) + [eos]
            rows.append((prompt + target, len(prompt)))
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, prompt_len) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
            attention[i, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress and (step + 1) % max(1, steps // 10) == 0:
            progress(f"warm start {step + 1}/{steps}: loss {losses[-1]:.3f} ({time.monotonic() - start:.0f}s)")
    model.eval()
    return losses
