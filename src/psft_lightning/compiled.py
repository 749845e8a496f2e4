"""``torch.compile`` of a causal LM's decoder layers (``model.compile: true``).

Each layer's ``forward`` becomes one compiled function shared by all layers of that class, bound to the
layer as a method: the layers share one graph (their weights are its inputs), and a deep copy of the model
(the old-policy snapshot) binds the copy to its own weights rather than calling the original's. Shapes are
dynamic, so micro-batches of other lengths reuse the graph instead of recompiling per length.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from psft_lightning.models import backbone_and_head

_COMPILED: dict[tuple[type, str], object] = {}


def compile_layers(model: nn.Module, backend: str = "inductor") -> int:
    """Compile each decoder layer of ``model`` in place; returns how many layers were compiled.
    ``backend`` is torch.compile's (tests trace with ``eager``: the same graphs and guards, no codegen)."""
    body, _ = backbone_and_head(model)
    layers = getattr(body, "layers", None) or []
    for layer in layers:
        key = (type(layer), backend)
        if key not in _COMPILED:
            _COMPILED[key] = torch.compile(type(layer).forward, dynamic=True, backend=backend)
        layer.forward = types.MethodType(_COMPILED[key], layer)
    return len(layers)
