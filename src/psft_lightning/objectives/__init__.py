"""Objective plugins: ``ce``, ``kl``, ``psft``, ``psft_warmup``, ``dft``, ``asft``, ... and the registry
for your own."""

from psft_lightning.objectives.asft import ASFT, asft_loss
from psft_lightning.objectives.base import (
    ENTRY_POINT_GROUP,
    Objective,
    ObjectiveInputs,
    ObjectiveOutput,
    available_objectives,
    build_objective,
    nll_loss,
    objective_class,
    register_objective,
)
from psft_lightning.objectives.ce import CE
from psft_lightning.objectives.dft import DFT, dft_loss
from psft_lightning.objectives.kl import KL
from psft_lightning.objectives.needs import KLDirection, Needs, VocabFn
from psft_lightning.objectives.psft import PSFT, psft_loss
from psft_lightning.objectives.psft_warmup import PSFTWarmup

__all__ = [
    "ASFT",
    "CE",
    "DFT",
    "ENTRY_POINT_GROUP",
    "KL",
    "KLDirection",
    "Needs",
    "PSFT",
    "Objective",
    "ObjectiveInputs",
    "ObjectiveOutput",
    "PSFTWarmup",
    "asft_loss",
    "available_objectives",
    "build_objective",
    "dft_loss",
    "nll_loss",
    "objective_class",
    "psft_loss",
    "register_objective",
    "VocabFn",
]
