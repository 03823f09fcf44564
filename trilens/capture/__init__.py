"""Capture: traces into an ``ActivationCache``, interventions, generation capture, the on-disk store."""

from .cache import ActivationCache
from .dataset import capture_dataset
from .generation import Generation
from .gradient_result import GradientResult
from .interventions import AblateHeads, AblateNeurons, Hook, Intervention, Patch, PatchRows, Steer
from .objectives import LogitFunction, Objective, StepScores, TokenScore
from .site_map import SiteMap, read_until
from .store import ActivationStore

__all__ = ["ActivationCache", "ActivationStore", "capture_dataset", "AblateHeads", "AblateNeurons", "Hook", "Intervention",
           "Patch", "PatchRows", "Steer", "Generation", "GradientResult", "Objective", "TokenScore", "StepScores", "LogitFunction",
           "SiteMap", "read_until"]
