"""trilens: mechanistic interpretability for encoder, decoder and encoder-decoder transformers."""

from .capture import (
    AblateHeads, AblateNeurons, ActivationCache, ActivationStore, Hook, Intervention, Patch, Steer, capture_dataset,
)
from .errors import InputError, ModelLoadError, SiteError, StoreError, TrilensError, UnsupportedArchitectureError
from .loading import load
from .model import Model

__version__ = "0.1.0"

__all__ = [
    "load", "Model", "ActivationCache", "ActivationStore", "capture_dataset",
    "Intervention", "Patch", "Steer", "AblateHeads", "AblateNeurons", "Hook",
    "TrilensError", "ModelLoadError", "UnsupportedArchitectureError", "SiteError", "InputError", "StoreError",
]
