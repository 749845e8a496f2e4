"""Per-token statistics of a batch at its loss positions, and the objective inputs they make.

What is computed follows the objective's ``Needs`` alone: the KL direction, a vocabulary function and
whether the reference's logits reach it. Heads the chunked kernels do not cover (bias, soft-capping)
take the naive full-logits path with the same results.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from psft_lightning.data.batch import Batch
from psft_lightning.lora import adapters_disabled
from psft_lightning.models import backbone_and_head, uses_plain_head
from psft_lightning.objectives import Needs, ObjectiveInputs
from psft_lightning.ops import (
    TokenStats,
    chunked_logprobs,
    chunked_token_stats,
    chunked_vocab_values,
    naive_logprobs,
    naive_token_stats,
    naive_vocab_values,
)
from psft_lightning.ops.vocab import CHUNK_DIVISOR
from psft_lightning.sharding import is_sharded, root_hidden_states

NO_NEEDS = Needs()


def token_stats(
    model: nn.Module,
    batch: Batch | dict,
    reference: nn.Module | None = None,
    needs: Needs = NO_NEEDS,
    chunk_size: int | None = None,
) -> TokenStats:
    """Log-probs, entropy and accuracy at the batch's loss positions; with ``reference`` also the KL in
    ``needs.ref_kl``'s direction (reverse when it is None), and ``needs.vocab_fn``'s values."""
    batch = Batch.of(batch)
    targets, mask, inputs = batch.targets, batch.loss_mask, batch.model_inputs()
    direction = needs.ref_kl or "reverse"
    # a reference given without a declaration gets the reverse KL; one for a vocabulary function only, none
    with_kl = reference is not None and (needs.ref_kl is not None or needs.vocab_fn is None)
    if not uses_plain_head(model):
        logits = batch.predicting(model(**inputs, use_cache=False).logits)[mask]
        ref_logits = None
        if reference is not None:
            with torch.no_grad(), adapters_disabled(reference):
                ref_logits = batch.predicting(reference(**inputs, use_cache=False).logits)[mask]
        stats = naive_token_stats(logits, targets[mask], ref_logits if with_kl else None, direction)
        if needs.vocab_fn is not None:
            vocab_ref = ref_logits if needs.vocab_ref else None
            stats.vocab = naive_vocab_values(needs.vocab_fn, logits, targets[mask], vocab_ref)
        return stats
    _, head = backbone_and_head(model)
    hidden = batch.predicting(_final_hidden(model, inputs))[mask]
    ref_hidden = ref_weight = None
    if reference is not None:
        _, ref_head = backbone_and_head(reference)
        with torch.no_grad(), adapters_disabled(reference):
            ref_hidden = batch.predicting(_final_hidden(reference, inputs))[mask]
        ref_weight = ref_head.weight  # read after the forward: FSDP2 has gathered it by then
    kl_hidden, kl_weight = (ref_hidden, ref_weight) if with_kl else (None, None)
    stats = chunked_token_stats(
        hidden, head.weight, targets[mask], kl_hidden, kl_weight, chunk_size, direction
    )
    if needs.vocab_fn is not None:
        ref_args = (ref_hidden, ref_weight) if needs.vocab_ref else (None, None)
        stats.vocab = chunked_vocab_values(
            needs.vocab_fn, hidden, head.weight, targets[mask], *ref_args, _vocab_chunk(chunk_size)
        )
    return stats


@torch.no_grad()
def token_logprobs(model: nn.Module, batch: Batch | dict, chunk_size: int | None = None) -> Tensor:
    """Log-probs alone at the batch's loss positions, no graph: pi_old's (and a lookahead's) forward.
    The same numbers as ``token_stats(...).logprobs`` with the same ``chunk_size``."""
    batch = Batch.of(batch)
    targets, mask, inputs = batch.targets, batch.loss_mask, batch.model_inputs()
    if not uses_plain_head(model):
        logits = batch.predicting(model(**inputs, use_cache=False).logits)[mask]
        return naive_logprobs(logits, targets[mask])
    hidden = batch.predicting(_final_hidden(model, inputs))[mask]
    _, head = backbone_and_head(model)  # read after the forward: FSDP2 has gathered the weight by then
    return chunked_logprobs(hidden, head.weight, targets[mask], chunk_size)


def _vocab_chunk(chunk_size: int | None) -> int | None:
    """The vocabulary path's chunk for a configured kernel chunk (None: its own automatic size)."""
    return None if chunk_size is None else max(1, chunk_size // CHUNK_DIVISOR)


def objective_inputs(
    stats: TokenStats, needs: Needs, step: int, num_tokens, old_logprobs: Tensor | None = None
) -> ObjectiveInputs:
    """The objective's inputs at optimizer ``step``: the declared statistics and ``old_logprobs``
    (pi_old's, given by the step when ``needs.old_logprobs_at(step)``)."""
    return ObjectiveInputs(
        stats.logprobs,
        step=step,
        num_tokens=num_tokens,
        old_logprobs=old_logprobs,
        ref_kl=stats.ref_kl,
        entropy=stats.entropy if needs.entropy else None,
        vocab=stats.vocab,
    )


def _final_hidden(model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
    """Hidden states after the final norm; an FSDP2 model runs through its root so its hooks fire."""
    if is_sharded(model):
        return root_hidden_states(model, inputs)
    body, _ = backbone_and_head(model)
    return body(**inputs, use_cache=False).last_hidden_state
