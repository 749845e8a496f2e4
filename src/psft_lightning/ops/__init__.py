"""Memory-lean LM-head math: per-token log-probs, entropy, KL and user vocabulary functions without
full fp32 logits."""

from psft_lightning.ops.full_logits import naive_logprobs, naive_token_stats
from psft_lightning.ops.lm_head import (
    KLDirection,
    TokenStats,
    auto_chunk_size,
    chunked_logprobs,
    chunked_token_stats,
)
from psft_lightning.ops.vocab import VocabFn, chunked_vocab_values, naive_vocab_values

__all__ = [
    "KLDirection",
    "TokenStats",
    "VocabFn",
    "auto_chunk_size",
    "chunked_logprobs",
    "chunked_token_stats",
    "chunked_vocab_values",
    "naive_logprobs",
    "naive_token_stats",
    "naive_vocab_values",
]
