"""FSDP2 sharding of the policy and of its frozen twins (KL reference, old-policy snapshot).

Each decoder layer is its own ``fully_shard`` unit and the root (embeddings, final norm, LM head; a
tied head shares the embedding's unit) is the last one. The twins are built from a parameter-free
skeleton taken before the policy is sharded, sharded the same way, and filled shard by shard from
the policy: no rank ever holds a second full copy, and copying weights between twins and policy is
a local ``copy_`` of each rank's shards, never a collective.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from psft_lightning.errors import ConfigError
from psft_lightning.models import backbone_and_head

FsdpDtype = Literal["bf16", "fp32"]
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32}


def is_sharded(model: nn.Module) -> bool:
    """True for a module that ``fully_shard`` made an FSDP2 root or unit."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard one by one: the classes Hugging Face lists in ``_no_split_modules``."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(
            f"Cannot find the decoder layers of {type(model).__name__} to shard with FSDP "
            f"(_no_split_modules={sorted(names)})"
        )
    return layers


@dataclass(frozen=True)
class Sharder:
    """How every model of a run is sharded: one mesh and one mixed-precision policy for all."""

    mesh: object  # torch.distributed.device_mesh.DeviceMesh (1-D, data parallel)
    param_dtype: FsdpDtype = "fp32"
    reduce_dtype: FsdpDtype = "fp32"

    def __call__(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(
            param_dtype=DTYPES[self.param_dtype], reduce_dtype=DTYPES[self.reduce_dtype]
        )
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=self.mesh, mp_policy=policy)
        fully_shard(model, mesh=self.mesh, mp_policy=policy)
        return model


def skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters live on the meta device (no memory); buffers are copied.

    Tied parameters stay tied: the deep copy maps each parameter object to one meta parameter.
    """
    memo = {
        id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
        for p in model.parameters()
    }
    return copy.deepcopy(model, memo)


def sharded_twin(template: nn.Module, source: nn.Module, shard: Sharder) -> nn.Module:
    """A frozen, eval-mode copy of the FSDP2 model ``source``, sharded alike, built from its skeleton."""
    twin = shard(copy.deepcopy(template))
    twin.to_empty(device=_local(next(source.parameters())).device)
    copy_local_shards(twin, source)
    twin.requires_grad_(False)
    return twin.eval()


def _local(tensor: Tensor) -> Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


@torch.no_grad()
def copy_local_shards(dst: nn.Module, src: nn.Module) -> None:
    """``dst <- src`` for same-structured, same-sharded models, each rank copying only its own shards."""
    dst_tensors = [*dst.named_parameters(), *dst.named_buffers()]
    src_tensors = [*src.named_parameters(), *src.named_buffers()]
    for (name, d), (src_name, s) in zip(dst_tensors, src_tensors, strict=True):
        if name != src_name:
            raise RuntimeError(f"cannot copy {src_name} into {name}: the models differ")
        _local(d).copy_(_local(s))


def root_hidden_states(model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
    """Final hidden states of an FSDP2 causal LM, computed through the root's own forward.

    Calling the body directly would skip the root's FSDP hooks and meet sharded embeddings. Through
    the root, FSDP2 gathers the root unit (embeddings, final norm, head) and keeps it gathered after
    forward, so ``head.weight`` can feed the chunked LM-head math and its gradient is reduce-scattered
    in backward; ``logits_to_keep`` of no position keeps the model from projecting any logits itself.
    """
    body, _ = backbone_and_head(model)
    captured: list[Tensor] = []
    handle = body.register_forward_hook(lambda _m, _args, out: captured.append(out.last_hidden_state))
    try:
        none = torch.empty(0, dtype=torch.long, device=inputs["input_ids"].device)
        model(**inputs, use_cache=False, logits_to_keep=none)
    finally:
        handle.remove()
    return captured[0]


def gathered(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Full copies of a small state's DTensors (e.g. LoRA adapters), for the rank-0 checkpoint file.

    Every rank must call it (``full_tensor`` is a collective), as every rank builds a checkpoint.
    """
    return {
        key: value.full_tensor() if hasattr(value, "full_tensor") else value for key, value in state.items()
    }


def sharded_like(state: dict[str, Tensor], like: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of ``gathered``: each full tensor cut to this rank's shard of the DTensor in ``like``."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    return {
        key: distribute_tensor(
            value.to(like[key].device), like[key].device_mesh, like[key].placements, src_data_rank=None
        )
        if isinstance(like.get(key), DTensor) and not isinstance(value, DTensor)
        else value
        for key, value in state.items()
    }


def per_rank(value: object) -> list[object]:
    """``value`` of every rank (a list of one without a process group): for per-rank callback state,
    of which only rank 0's copy reaches the checkpoint."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    values: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def this_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
