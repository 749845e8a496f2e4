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
from psft_lightning.objectives.deft import DEFT, deft_gate, deft_loss
from psft_lightning.objectives.dft import DFT, dft_loss
from psft_lightning.objectives.eaft import EAFT, eaft_loss, eaft_weight
from psft_lightning.objectives.eksft import EKSFT, eksft_loss, eksft_selection
from psft_lightning.objectives.gift import GIFT, gift_loss, gift_token_values
from psft_lightning.objectives.kl import KL
from psft_lightning.objectives.needs import KLDirection, Needs, VocabFn
from psft_lightning.objectives.prob import Prob, prob_loss
from psft_lightning.objectives.psft import PSFT, psft_loss
from psft_lightning.objectives.psft_warmup import PSFTWarmup
from psft_lightning.objectives.trsft import TrSFT, trsft_loss

__all__ = [
    "ASFT",
    "CE",
    "DEFT",
    "DFT",
    "EAFT",
    "EKSFT",
    "GIFT",
    "ENTRY_POINT_GROUP",
    "KL",
    "KLDirection",
    "Needs",
    "PSFT",
    "Objective",
    "ObjectiveInputs",
    "ObjectiveOutput",
    "PSFTWarmup",
    "Prob",
    "TrSFT",
    "asft_loss",
    "available_objectives",
    "build_objective",
    "deft_gate",
    "deft_loss",
    "dft_loss",
    "eaft_loss",
    "eaft_weight",
    "eksft_loss",
    "eksft_selection",
    "gift_loss",
    "gift_token_values",
    "nll_loss",
    "objective_class",
    "prob_loss",
    "psft_loss",
    "register_objective",
    "trsft_loss",
    "VocabFn",
]
