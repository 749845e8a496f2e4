"""psft-lightning: SFT, SFT-KL and Proximal SFT for Hugging Face causal LMs on PyTorch Lightning."""

from psft_lightning.errors import ConfigError, DataError, PSFTError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "PSFTError", "__version__"]
