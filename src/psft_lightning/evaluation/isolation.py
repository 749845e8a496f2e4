"""Run an evaluation without side effects on training: RNG streams, train/eval mode, autograd."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from psft_lightning.checkpointing import rng_states, set_rng_states


@contextmanager
def isolated(model: nn.Module, seed: int) -> Iterator[None]:
    """Evaluate ``model`` in eval mode, without grad, from a fixed ``seed``; then put everything back.

    Every random stream training may draw from (Python, NumPy, torch CPU and all CUDA devices) is
    saved and restored, so a run with evaluation takes the same dropout masks and data order as one
    without, and sampled metrics do not depend on when they were taken.
    """
    was_training = model.training
    states = rng_states()
    try:
        with torch.no_grad():
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            model.eval()
            yield
    finally:
        model.train(was_training)
        set_rng_states(states)
