"""trilens: mechanistic interpretability for encoder, decoder and encoder-decoder transformers."""

from .capture import (
    AblateHeads, AblateNeurons, ActivationCache, ActivationStore, Generation, GradientResult, Hook, Intervention, LogitFunction, Patch,
    Steer, StepScores, TokenScore, capture_dataset,
)
from .errors import InputError, ModelLoadError, SiteError, StoreError, TrilensError, UnsupportedArchitectureError
from .loading import load
from .model import Model
from .results import Result, list_results, load_result, register_result
from .version import __version__

__all__ = [
    "load", "Model", "load_result", "Result", "register_result", "list_results", "__version__", "ActivationCache", "ActivationStore", "capture_dataset",
    "Generation", "GradientResult", "TokenScore", "StepScores", "LogitFunction", "Intervention", "Patch", "Steer", "AblateHeads", "AblateNeurons", "Hook",
    "TrilensError", "ModelLoadError", "UnsupportedArchitectureError", "SiteError", "InputError", "StoreError",
]
