"""``duet-verl score-prompts``: the cold-start feature of DUET's surrogate, as a dataset column.

For each prompt of a verl parquet file (chat ``prompt`` column) it runs the policy over the chat-formatted
prompt and stores the mean token log-probability (teacher forcing, first token excluded) in a new column
(default ``duet_prompt_logprob``, the trainer's ``duet.surrogate.feature_key``). Without the column the
surrogate's cold start uses the median of recently seen features, i.e. no per-prompt information until a
prompt has been observed once.
"""

from __future__ import annotations

import math
import sys

import torch

__all__ = ["prompt_mean_logprobs", "score_prompts"]


@torch.no_grad()
def prompt_mean_logprobs(model, tokenizer, prompts: list[list[dict]], batch_size: int = 8) -> list[float]:
    """Mean token log-prob of each chat prompt under ``model`` (NaN for prompts of fewer than two tokens)."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        encoded = []
        for messages in prompts[start : start + batch_size]:
            ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
            encoded.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, ids in enumerate(encoded):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None].to(device))[..., 0]
        valid = mask[:, 1:].to(device).float()
        counts = valid.sum(-1)
        means = (logp * valid).sum(-1) / counts.clamp(min=1)
        out += [float(m) if c > 0 else math.nan for m, c in zip(means.tolist(), counts.tolist(), strict=True)]
    return out


def score_prompts(
    model_path: str, input_path: str, output_path: str, column: str = "duet_prompt_logprob", batch_size: int = 8
) -> None:
    """Read ``input_path``, add ``column``, write ``output_path`` (progress on stderr)."""
    import pandas as pd
    from transformers import AutoModelForCausalLM, AutoTokenizer

    frame = pd.read_parquet(input_path)
    if "prompt" not in frame.columns:
        raise ValueError(f"{input_path}: no 'prompt' column (verl's chat prompt format)")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device).eval()
    prompts = [list(p) for p in frame["prompt"]]
    values: list[float] = []
    for start in range(0, len(prompts), 256):
        values += prompt_mean_logprobs(model, tokenizer, prompts[start : start + 256], batch_size)
        print(f"[score-prompts] {min(start + 256, len(prompts))}/{len(prompts)}", file=sys.stderr, flush=True)
    frame[column] = values
    frame.to_parquet(output_path)
