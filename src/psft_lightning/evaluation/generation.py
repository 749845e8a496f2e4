"""Batched generation with the KV cache: left-padded prompts rendered exactly as training renders them."""

from __future__ import annotations

import torch
from torch import nn

from psft_lightning.data.formats import render_prompt


def prompt_batch(prompts: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Left-pad token-id prompts so every row's last prompt token sits in the last column."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, width - len(prompt) :] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def render_prompts(tokenizer, questions: list[str], use_chat_template: bool = True) -> list[list[int]]:
    """Token ids of each question as a training prompt (chat template included), ready to generate."""
    return [render_prompt(tokenizer, q, use_chat_template) for q in questions]


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int = 16,
    num_samples: int = 1,
    temperature: float = 0.0,
) -> list[list[str]]:
    """``num_samples`` completions per prompt: greedy when ``temperature`` is 0, else pure sampling.

    Sampling uses the full distribution at ``temperature`` (no top-k/top-p), as avg@k is defined.
    The caller owns the RNG (see ``isolated``). Returns decoded text without special tokens.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_samples > 1 and temperature <= 0:
        raise ValueError("several samples per prompt need temperature > 0 (greedy decoding repeats itself)")
    device = next(model.parameters()).device
    sampling = temperature > 0
    sample_options = {"temperature": temperature, "top_k": 0, "top_p": 1.0} if sampling else {}
    texts: list[list[str]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        batch = prompt_batch(chunk, tokenizer.pad_token_id, device)
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_samples,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            use_cache=True,
            do_sample=sampling,
            **sample_options,
        )
        new = out[:, batch["input_ids"].shape[1] :]
        decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
        texts.extend(decoded[i : i + num_samples] for i in range(0, len(decoded), num_samples))
    return texts
