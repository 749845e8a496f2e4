"""Memory-lean LM-head math: per-token log-probs, entropy and KL without full fp32 logits."""

from psft_lightning.ops.lm_head import TokenStats, auto_chunk_size, chunked_token_stats, naive_token_stats

__all__ = ["TokenStats", "auto_chunk_size", "chunked_token_stats", "naive_token_stats"]
