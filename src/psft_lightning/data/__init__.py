"""Data: rows -> tokenised examples -> step-planned micro-batches."""

from psft_lightning.data.datamodule import PSFTDataModule
from psft_lightning.data.formats import IGNORE_INDEX, Example, Fields, row_to_example

__all__ = ["IGNORE_INDEX", "Example", "Fields", "PSFTDataModule", "row_to_example"]
