"""The objective interface and its registry.

An objective turns per-token quantities (policy log-probs, old-policy log-probs, KL to a reference)
into a loss. It holds hyper-parameters only, never trainer state, so it is a pure function of its
inputs and can be unit-tested by hand.

Metric convention: every value in ``ObjectiveOutput.metrics`` is a token-weighted *contribution*
(already divided by the normaliser ``num_tokens``), so summing over micro-batches and ranks gives
the exact token-mean of the optimizer step. Keys that end in ``_max`` are reduced with ``max``.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import ClassVar

import torch
from torch import Tensor

from psft_lightning.errors import ConfigError

ENTRY_POINT_GROUP = "psft_lightning.objectives"


@dataclass
class ObjectiveInputs:
    """Per-token tensors of one micro-batch, all of the same shape, aligned with ``mask``."""

    logprobs: Tensor
    mask: Tensor
    step: int = 0
    num_tokens: float | Tensor | None = None
    old_logprobs: Tensor | None = None
    ref_kl: Tensor | None = None


@dataclass
class ObjectiveOutput:
    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def normaliser(mask: Tensor, num_tokens: float | Tensor | None) -> Tensor:
    """The token count a loss is divided by: the mask's, or the whole optimizer step's when given."""
    denom = (
        mask.sum(dtype=torch.float32)
        if num_tokens is None
        else torch.as_tensor(num_tokens, dtype=torch.float32, device=mask.device)
    )
    if float(denom) <= 0:
        raise ValueError(
            "This batch has no loss tokens (every label is -100), so its loss is undefined. "
            "Check that responses are not empty and not truncated away by max_length."
        )
    return denom


def masked_contribution(values: Tensor, mask: Tensor, denom: Tensor) -> Tensor:
    """Sum of ``values`` over ``mask`` divided by ``denom``, in fp32."""
    return (values.float() * mask.float()).sum() / denom


def nll_loss(logprobs: Tensor, mask: Tensor, num_tokens: float | Tensor | None = None) -> tuple[Tensor, dict]:
    """Token-mean negative log-likelihood: SFT as policy gradient with advantage 1."""
    denom = normaliser(mask, num_tokens)
    loss = masked_contribution(-logprobs, mask, denom)
    return loss, {"train/nll": loss.detach()}


class Objective:
    """Base class of every objective plugin.

    Subclasses set ``name`` and implement ``__call__``. They declare what they need:
    ``needs_old_logprobs(step)`` asks the OldPolicy callback for a frozen snapshot's log-probs, and
    ``needs_reference`` asks the module to keep the frozen initial model and compute ``ref_kl``.
    """

    name: ClassVar[str] = ""
    needs_reference: ClassVar[bool] = False

    def needs_old_logprobs(self, step: int) -> bool:
        return False

    @property
    def uses_old_policy(self) -> bool:
        """True if the objective needs the old policy at any step (so a snapshot must be kept)."""
        return False

    def old_policy_start_step(self) -> int:
        """The step the old-policy refresh schedule is anchored to (first step that needs it)."""
        return 0

    def dashboard_charts(self) -> dict[str, list[str]]:
        """Charts this objective adds to the TensorBoard dashboard: chart title -> metric tags."""
        return {}

    def __call__(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


_REGISTRY: dict[str, type[Objective]] = {}


def register_objective(name: str):
    """Class decorator: make an objective selectable by ``name`` in YAML (``objective: name``)."""

    def wrap(cls: type[Objective]) -> type[Objective]:
        if not (isinstance(cls, type) and issubclass(cls, Objective)):
            raise TypeError(f"@register_objective({name!r}) needs an Objective subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ConfigError(f"Objective name {name!r} is already registered by {existing.__qualname__}")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return wrap


def _load_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            cls = ep.load()
        except Exception as err:  # a broken third-party plugin must not hide the others
            raise ConfigError(
                f"Objective plugin {ep.name!r} (entry point {ep.value!r} in group {ENTRY_POINT_GROUP!r}) "
                f"failed to import: {err}"
            ) from err
        register_objective(ep.name)(cls)


def available_objectives() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def objective_class(name: str) -> type[Objective]:
    """Look up a registered (or entry-point) objective by name; a dotted path is imported."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    _load_entry_points()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if "." in name:
        module_name, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except Exception as err:
            raise ConfigError(f"Cannot import objective class {name!r}: {err}") from err
        if isinstance(cls, type) and issubclass(cls, Objective):
            return cls
        raise ConfigError(f"{name!r} is not a subclass of psft_lightning.objectives.Objective")
    known = sorted(_REGISTRY)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"Unknown objective {name!r}.{hint} Known objectives: {', '.join(known)}. A custom objective is "
        f"selected with 'class_path: your.module.YourObjective' or registered under the entry-point "
        f"group {ENTRY_POINT_GROUP!r}."
    )


def build_objective(spec: str | Objective) -> Objective:
    """Turn a name or an instance into an objective instance."""
    if isinstance(spec, Objective):
        return spec
    if isinstance(spec, str):
        cls = objective_class(spec)
        try:
            return cls()
        except TypeError as err:  # a plugin whose __init__ has required arguments
            raise ConfigError(
                f"Objective {spec!r} cannot be built from its name alone ({err}); select it with "
                f"class_path: {cls.__module__}.{cls.__qualname__} and its init_args"
            ) from err
    raise ConfigError(f"objective must be a name or an Objective instance, got {type(spec).__name__}")
