"""Ulysses sequence parallelism: the ``k`` ranks of a group each hold a contiguous 1/k of every row.

Everything but attention is per token, so each rank runs the model on its slice alone. Attention
trades the slices for heads with one all-to-all (every rank then holds the whole sequence for h/k of
the heads), runs SDPA, and trades back (verl's ``verl/utils/ulysses.py`` pattern). It is a function in
transformers' attention registry (``ULYSSES``), not a forked model; the model gets the group and the
whole rows' positions through a forward keyword (``sequence_parallel``), so activation checkpointing's
recomputation sees them too.

Labels are shifted before the rows are sliced, so each slice's first token is predicted from the
previous slice's last one (verl issue #6068 shifted after slicing and lost those targets).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psft_lightning.data.batch import Batch
from psft_lightning.data.formats import IGNORE_INDEX
from psft_lightning.errors import ConfigError
from psft_lightning.models import ULYSSES

SEQUENCE_DIM = "sequence_parallel"
DATA_DIM = "data_parallel"


@dataclass(eq=False)
class SequenceLayout:
    """What attention needs beyond its slice: the group, and the whole rows' positions and padding."""

    group: object  # torch.distributed.ProcessGroup of the k ranks
    size: int
    position_ids: Tensor  # [rows, k * slice], global
    attention_mask: Tensor | None = None  # [rows, k * slice], 1 on real tokens; None: none padded
    _mask: Tensor | None = field(default=None, repr=False)

    def mask(self) -> Tensor | None:
        """The boolean ``[rows, 1, L, L]`` mask (causal, within one example, real keys), or None when it
        is the plain causal one; built once per forward, shared by the layers."""
        if self._mask is None:
            self._mask = _document_mask(self.position_ids, self.attention_mask)
        return self._mask if self._mask.numel() else None


def _document_mask(position_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Causal attention within each example: a new example starts where positions do not go up by 1.
    A padded query sees itself only (no row of SDPA may be empty). Empty when plainly causal."""
    rows, length = position_ids.shape
    breaks = position_ids.diff(dim=1) != 1
    starts = F.pad(breaks, (1, 0), value=True)
    single = not bool(breaks.any())
    if single and (attention_mask is None or bool(attention_mask.all())):
        return position_ids.new_empty(0, dtype=torch.bool)
    docs = starts.cumsum(1)
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    mask = (docs[:, :, None] == docs[:, None, :]) & causal
    if attention_mask is not None:
        mask &= attention_mask.bool()[:, None, :]
        mask |= torch.eye(length, dtype=torch.bool, device=position_ids.device)
    return mask[:, None]


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` over the first dimension; its gradient is the same exchange."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        import torch.distributed as dist

        ctx.group = group
        x = x.contiguous()
        out = torch.empty_like(x)  # of a strided x it would keep the strides, which the exchange ignores
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _AllToAll.apply(grad.contiguous(), ctx.group), None


def slices_to_heads(x: Tensor, group, k: int) -> Tensor:
    """``[b, h, s, d]`` (all heads, this rank's slice) -> ``[b, h/k, k*s, d]`` (h/k heads, whole rows)."""
    b, h, s, d = x.shape
    chunks = x.reshape(b, k, h // k, s, d).transpose(0, 1)  # [k, b, h/k, s, d]: head group j for rank j
    got = _AllToAll.apply(chunks, group)  # got[j]: rank j's slice of my head group
    return got.permute(1, 2, 0, 3, 4).reshape(b, h // k, k * s, d)


def heads_to_slices(x: Tensor, group, k: int) -> Tensor:
    """The inverse of ``slices_to_heads``."""
    b, hk, length, d = x.shape
    chunks = x.reshape(b, hk, k, length // k, d).permute(2, 0, 1, 3, 4)  # [k, b, h/k, s, d]
    got = _AllToAll.apply(chunks, group)  # got[j]: my slice of rank j's head group
    return got.transpose(0, 1).reshape(b, k * hk, length // k, d)


def ulysses_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sequence_parallel: SequenceLayout | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """SDPA over whole rows for h/k heads; the registered ``ULYSSES`` attention. Without a layout (a
    forward outside training, e.g. generation) it is transformers' own SDPA."""
    if sequence_parallel is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    group, k = sequence_parallel.group, sequence_parallel.size
    if key.shape[1] % k:  # fewer (or indivisible) KV heads: repeat them to one per query head
        repeat = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeat, 1), value.repeat_interleave(repeat, 1)
    q, kk, v = (slices_to_heads(t, group, k) for t in (query, key, value))
    if kk.shape[1] != q.shape[1]:  # one KV head per query head: SDPA's fused kernels, not its GQA path
        kk, v = (t.repeat_interleave(q.shape[1] // kk.shape[1], 1) for t in (kk, v))
    mask = sequence_parallel.mask()
    out = F.scaled_dot_product_attention(
        q,
        kk,
        v,
        attn_mask=mask,
        dropout_p=dropout if module.training else 0.0,
        is_causal=mask is None,
        scale=scaling,
    )
    return heads_to_slices(out, group, k).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``ULYSSES`` an attention implementation transformers knows (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ULYSSES, ulysses_attention)


def check_heads(model: nn.Module, k: int) -> None:
    """Each rank runs h/k query heads: the model's head count must divide by k."""
    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if heads % k:
        raise ConfigError(
            f"sequence_parallel_size {k} must divide the model's attention heads, but "
            f"{type(model).__name__} has num_attention_heads={heads} (num_key_value_heads={kv_heads}). "
            f"Use a sequence_parallel_size that divides {heads}."
        )


@dataclass(frozen=True)
class SequenceParallel:
    """This rank's place in its sequence-parallel group, and how it slices a batch."""

    group: object
    size: int
    rank: int

    @classmethod
    def of(cls, mesh) -> SequenceParallel | None:
        """The group of a mesh with a ``sequence_parallel`` dimension of size > 1, else None."""
        names = getattr(mesh, "mesh_dim_names", None) or ()
        if SEQUENCE_DIM not in names or mesh[SEQUENCE_DIM].size() == 1:
            return None
        sub = mesh[SEQUENCE_DIM]
        return cls(sub.get_group(), sub.size(), sub.get_local_rank())

    def shard(self, batch: Batch | dict) -> Batch:
        """This rank's slice of every row of ``batch`` (a ``Batch`` or dict), labels shifted first and
        rows padded to a multiple of k (label -100); a slice is returned unchanged."""
        batch = Batch.of(batch)
        if batch.sequence_parallel is not None:
            return batch
        rows, length = batch.input_ids.shape
        padded = -(-length // self.size) * self.size
        position_ids = batch.position_ids
        if position_ids is None:
            position_ids = torch.arange(length, device=batch.input_ids.device).expand(rows, length)
        shifted = torch.full_like(batch.labels, IGNORE_INDEX)
        shifted[:, :-1] = batch.targets  # shifted here, before slicing
        extra = padded - length
        # the padding continues the last example: it is never a key of a real token (it comes last), and a
        # single example per row keeps SDPA's causal kernels (no [L, L] mask)
        tail = position_ids[:, -1:] + 1 + torch.arange(extra, device=position_ids.device)
        position_ids = torch.cat([position_ids, tail], 1)
        input_ids = F.pad(batch.input_ids, (0, extra))
        labels, shifted = (F.pad(t, (0, extra), value=IGNORE_INDEX) for t in (batch.labels, shifted))
        mask = None if batch.attention_mask is None else F.pad(batch.attention_mask, (0, extra))
        cut = slice(self.rank * (padded // self.size), (self.rank + 1) * (padded // self.size))
        return Batch(
            input_ids=input_ids[:, cut],
            labels=labels[:, cut],
            position_ids=position_ids[:, cut],
            num_input_tokens=self._input_tokens(batch, mask, cut),
            step_loss_tokens=batch.step_loss_tokens,
            shifted_labels=shifted[:, cut],
            sequence_parallel=SequenceLayout(self.group, self.size, position_ids, mask),
        )

    def _input_tokens(self, batch: Batch, mask: Tensor | None, cut: slice) -> Tensor:
        """This slice's share of the real input tokens, so the group's shares add up to the batch's."""
        if mask is not None:
            return mask[:, cut].sum()
        total = int(batch.input_tokens())
        return torch.tensor(total // self.size + (self.rank < total % self.size))
