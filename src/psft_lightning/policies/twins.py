"""The policy and its frozen twins (KL reference, FSDP2 old-policy snapshot), built once from the same
initial weights: loading, attention, gradient checkpointing, LoRA and sharding in that order."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import nn

from psft_lightning.errors import ConfigError
from psft_lightning.lora import LoraSettings, apply_lora
from psft_lightning.models import load_model
from psft_lightning.sequence_parallel import (
    DATA_DIM,
    SEQUENCE_DIM,
    ULYSSES,
    SequenceParallel,
    check_heads,
    register,
)
from psft_lightning.sharding import FsdpDtype, Sharder, sharded_twin, skeleton

# the dtype autocast runs matmuls in under a Lightning precision (the frozen twins' Linears are kept in it)
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def frozen(model: nn.Module, linear_dtype: torch.dtype | None = None) -> nn.Module:
    """A detached, eval-mode copy that takes no gradient (old policy, reference); with ``linear_dtype``
    its Linear layers are stored in that dtype (``store_linears``)."""
    clone = copy.deepcopy(model)
    clone.requires_grad_(False)
    if linear_dtype is not None:
        store_linears(clone, linear_dtype)
    return clone.eval()


def store_linears(model: nn.Module, dtype: torch.dtype) -> None:
    """Keep a frozen model's Linear weights and biases in autocast's compute ``dtype``, cast once here.

    Autocast casts them to ``dtype`` on every forward anyway, and caches no cast of a weight that
    takes no gradient: each forward of a frozen fp32 twin re-cast its weights (``aten::copy_``, about
    a tenth of a no-grad forward on a CPU). The cast is the same rounding either way, so the twin's
    forward under autocast gives the same bits. Embeddings and norms, which autocast runs in their
    own dtype, stay as they are, and so does a Linear tied to the input embedding (a tied LM head).
    Only for a twin run under autocast of ``dtype``: outside it, its Linears would meet fp32 inputs.
    """
    embedding = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else None
    for layer in model.modules():
        if isinstance(layer, nn.Linear) and layer.weight is not embedding:
            layer.to(dtype)


@dataclass
class PolicySettings:
    """How the policy is built: ``PSFTModule``'s model arguments."""

    model: str
    tiny_config: dict | None = None
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False
    lora: LoraSettings | None = None
    fsdp_param_dtype: FsdpDtype = "fp32"
    fsdp_reduce_dtype: FsdpDtype = "fp32"
    sequence_parallel_size: int = 1  # set from the device mesh by build_twins

    def __post_init__(self) -> None:
        for name in ("fsdp_param_dtype", "fsdp_reduce_dtype"):
            if getattr(self, name) not in ("bf16", "fp32"):
                raise ConfigError(f"model.{name} must be bf16 or fp32, got {getattr(self, name)!r}")


@dataclass
class Twins:
    """The trainable policy, the frozen reference (None without a KL, and under LoRA, where the reference
    is the policy with its adapters off) and, under FSDP2, the sharded old-policy snapshot."""

    policy: nn.Module
    reference: nn.Module | None = None
    old_policy: nn.Module | None = None


def load_policy(settings: PolicySettings) -> nn.Module:
    """The trainable policy in train mode, adapters injected under LoRA."""
    policy = load_model(settings.model, settings.tiny_config)
    policy.config.use_cache = False
    check_heads(policy, settings.sequence_parallel_size)
    if settings.sequence_parallel_size > 1:
        register()
        policy.set_attn_implementation(ULYSSES)  # SDPA around the all-to-alls, whatever was asked
    elif settings.attn_implementation:
        try:
            policy.set_attn_implementation(settings.attn_implementation)
        except (ValueError, ImportError) as err:
            raise ConfigError(f"model.attn_implementation: {err}") from err
    if settings.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    if settings.lora is not None:
        policy = apply_lora(policy, settings.lora).base_model.model
    return policy


def build_twins(
    settings: PolicySettings,
    mesh,
    reference: bool,
    snapshot: bool,
    linear_dtype: torch.dtype | None = None,
) -> Twins:
    """The policy and the twins asked for. Without a device mesh nothing is sharded (DDP and Lightning's
    FSDPStrategy wrap the module themselves later, twins included); with one, all are sharded with FSDP2
    and the snapshot exists from the start, so the sharded checkpoint carries its shards. An unsharded
    reference keeps its Linears in ``linear_dtype`` (autocast's, see ``store_linears``) when given."""
    sequence = SequenceParallel.of(mesh)
    settings = replace(settings, sequence_parallel_size=sequence.size if sequence else 1)
    policy = load_policy(settings)
    reference = reference and settings.lora is None  # LoRA: the adapters switched off
    sharder = _sharder(mesh, settings)
    if sharder is None:
        return Twins(policy, frozen(policy, linear_dtype) if reference else None)
    template = skeleton(policy)
    sharder(policy)
    ref_twin = sharded_twin(template, policy, sharder) if reference else None
    old_twin = sharded_twin(template, policy, sharder) if snapshot and settings.lora is None else None
    return Twins(policy, ref_twin, old_twin)


def _sharder(mesh, settings: PolicySettings) -> Sharder | None:
    """FSDP2 over the data-parallel mesh that ModelParallelStrategy hands over, or None."""
    if mesh is None:
        return None
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ConfigError(
            "PSFTModule shards with FSDP only, but the strategy set up tensor parallelism of size "
            f"{mesh['tensor_parallel'].size()}. Use strategy psft_lightning.strategies.FSDP2Strategy, or "
            "ModelParallelStrategy with tensor_parallel_size: 1 and data_parallel_size: <world size>."
        )
    if SEQUENCE_DIM in names:  # the ranks of a sequence-parallel group hold the same weights: shard over all
        dp_mesh = mesh[DATA_DIM, SEQUENCE_DIM]._flatten()
    else:
        dp_mesh = mesh[DATA_DIM] if DATA_DIM in names else mesh
    return Sharder(dp_mesh, settings.fsdp_param_dtype, settings.fsdp_reduce_dtype)


def check_strategy(strategy, objective_name: str, old_policy: bool) -> None:
    """Lightning's FSDPStrategy (FSDP1) shards parameters outside its wrapped training step, where pi_old
    runs: PSFT needs FSDP2, whose sharded twins run anywhere."""
    from lightning.pytorch.strategies import FSDPStrategy

    if old_policy and isinstance(strategy, FSDPStrategy):
        raise ConfigError(
            f"objective {objective_name!r} needs an old policy, which Lightning's "
            "FSDPStrategy cannot run outside the training step; use strategy "
            "psft_lightning.strategies.FSDP2Strategy (FSDPStrategy works for ce and kl)."
        )


REFERENCE_PREFIX = "reference."


def drop_reference(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """State-dict hook: the reference is re-derived from the initial weights, never checkpointed."""
    for key in [k for k in state_dict if k.startswith(prefix + REFERENCE_PREFIX)]:
        del state_dict[key]


def keep_reference(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    """Load pre-hook: a checkpoint without reference weights loads into a module that has a reference."""
    if module.reference is None:
        return
    for key, value in module.reference.state_dict().items():
        state_dict.setdefault(prefix + REFERENCE_PREFIX + key, value)
