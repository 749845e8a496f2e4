"""LoRA through ``peft``: adapters injected into the policy, a reference that is the base model with the
adapters switched off (no second copy), and an old policy that snapshots the adapter weights only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from psft_lightning.errors import ConfigError


@dataclass
class LoraSettings:
    """Low-rank adapters on ``target_modules`` (module names, e.g. the attention projections).

    Args:
        r: rank of the update ``B @ A``.
        alpha: scale ``alpha / r`` of the update.
        dropout: dropout on the adapter's input.
        target_modules: names (suffixes) of the linear layers that get adapters; ``all-linear`` for all.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"model.lora.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("model.lora.target_modules is empty: name the layers that get adapters")


def lora_settings(value: LoraSettings | dict | None) -> LoraSettings | None:
    """Accept the dataclass (CLI) or its dict form (checkpoint hyper-parameters)."""
    if value is None or isinstance(value, LoraSettings):
        return value
    if isinstance(value, dict):
        return LoraSettings(**value)
    raise ConfigError(f"model.lora must be a mapping of LoRA settings, got {type(value).__name__}")


def settings_dict(settings: LoraSettings | None) -> dict[str, Any] | None:
    """Plain-type form stored in checkpoints (loadable with ``torch.load(weights_only=True)``)."""
    return None if settings is None else asdict(settings)


def _import_peft():
    try:
        import peft
    except ImportError as err:
        raise ConfigError("model.lora needs the 'peft' package: pip install 'psft-lightning[lora]'") from err
    return peft


def apply_lora(model: nn.Module, settings: LoraSettings):
    """Inject adapters into ``model`` in place and freeze everything else; returns the peft wrapper.

    The wrapper's ``base_model.model`` is ``model`` itself, so the state-dict keys of ``model`` are the
    same whether it is trained bare (as the module does) or merged through the wrapper (as export does).
    """
    peft = _import_peft()
    target = settings.target_modules
    config = peft.LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target[0] if list(target) == ["all-linear"] else list(target),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        wrapper = peft.get_peft_model(model, config)
    except ValueError as err:
        raise ConfigError(f"model.lora.target_modules={list(target)} do not fit this model: {err}") from err
    if _adapter_layers(model.get_output_embeddings()):
        raise ConfigError(
            f"model.lora.target_modules={list(target)} puts an adapter on the LM head, which the chunked "
            "LM-head math reads as a plain weight; leave the head (e.g. lm_head) out"
        )
    return wrapper


def _adapter_layers(model: nn.Module | None) -> list[nn.Module]:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # without peft there are no adapters
        return []
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)] if model is not None else []


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode (no dropout) and put back the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """The base model, in eval mode: the KL reference under LoRA, with no copy of the weights."""
    layers = _adapter_layers(model)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        with eval_mode(model):
            yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


class AdapterSnapshot:
    """The old policy under LoRA: a frozen copy of the trainable (adapter) tensors only.

    Its ``state_dict`` keys are the policy's own keys, so the OldPolicy callback refreshes and
    checkpoints it like a full frozen copy. Old log-probs are computed by the policy itself with the
    snapshot swapped into its adapters for the duration of one no-grad forward.
    """

    def __init__(self, policy: nn.Module) -> None:
        self.keys = [name for name, p in policy.named_parameters() if p.requires_grad]
        state = policy.state_dict()
        self.tensors = {key: state[key].detach().clone() for key in self.keys}

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.tensors)

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        missing = set(self.tensors) - set(state_dict)
        unexpected = set(state_dict) - set(self.tensors)
        if missing or unexpected:
            raise ConfigError(
                "The old-policy snapshot in the checkpoint does not match this run's LoRA adapters "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}): "
                "was it saved with other model.lora settings?"
            )
        for key, tensor in self.tensors.items():
            tensor.copy_(state_dict[key])

    @contextmanager
    def swapped_into(self, policy: nn.Module) -> Iterator[nn.Module]:
        """``policy`` in eval mode carrying the snapshot's adapter weights; the live ones are put back."""
        params = dict(policy.named_parameters())
        live = {key: params[key].detach().clone() for key in self.keys}
        with torch.no_grad():
            for key in self.keys:
                params[key].copy_(self.tensors[key])
        try:
            with eval_mode(policy):
                yield policy
        finally:
            with torch.no_grad():
                for key in self.keys:
                    params[key].copy_(live[key])
