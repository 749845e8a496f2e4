"""The objective interface and its registry.

An objective turns per-token quantities (policy log-probs, old-policy log-probs, KL to a reference,
values of a full-vocabulary function) into a loss. It holds hyper-parameters only, never trainer state,
so it is a pure function of its inputs and can be unit-tested by hand. What it needs beyond the
policy's log-probs it declares once, in ``needs()`` (``objectives.needs.Needs``).

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
from psft_lightning.objectives.needs import Needs
from psft_lightning.objectives.token_mean import masked_contribution as masked_contribution  # re-exported
from psft_lightning.objectives.token_mean import nll_loss as nll_loss
from psft_lightning.objectives.token_mean import normaliser as normaliser

ENTRY_POINT_GROUP = "psft_lightning.objectives"


@dataclass
class ObjectiveInputs:
    """Per-token tensors of one micro-batch, all of the same shape.

    The step gives them flat, one entry per loss position of the batch (``data.batch.Batch``), so every
    entry counts and ``mask`` is left out (all True). ``mask`` is for a caller that lays the tokens out
    otherwise, e.g. padded ``[rows, length]`` as the objectives' unit tests do: False entries are
    ignored by every objective's loss and metrics.
    """

    logprobs: Tensor
    mask: Tensor | None = None
    step: int = 0
    num_tokens: float | Tensor | None = None
    old_logprobs: Tensor | None = None
    ref_kl: Tensor | None = None
    entropy: Tensor | None = None
    vocab: Tensor | None = None

    def __post_init__(self) -> None:
        if self.mask is None:
            self.mask = torch.ones_like(self.logprobs, dtype=torch.bool)


@dataclass
class ObjectiveOutput:
    """The loss, its metric contributions, and optional per-token diagnostics (detached tensors aligned
    with the inputs' tokens, e.g. PSFT's ratios) that callbacks read from the step's outputs."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
    tokens: dict[str, Tensor] = field(default_factory=dict)


class Objective:
    """Base class of every objective plugin.

    Subclasses set ``name`` (``@register_objective``), implement ``__call__`` and, if they use more than
    the policy's log-probs, override ``needs()``.
    """

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        legacy = [a for a in _LEGACY_FLAGS if a in vars(cls)]
        if legacy:
            raise TypeError(
                f"{cls.__qualname__} declares {', '.join(legacy)}, which objectives no longer read: "
                "override needs() and return psft_lightning.objectives.Needs(old_policy_from=..., "
                "ref_kl='reverse' | 'forward', vocab_fn=..., entropy=...) instead"
            )

    def needs(self) -> Needs:
        """What this objective needs beyond the policy's log-probs, for the whole run."""
        return Needs()

    def dashboard_charts(self) -> dict[str, list[str]]:
        """Charts this objective adds to the TensorBoard dashboard: chart title -> metric tags."""
        return {}

    def __call__(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


_LEGACY_FLAGS = ("needs_reference", "needs_old_logprobs", "uses_old_policy", "old_policy_start_step")


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
