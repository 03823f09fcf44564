"""Capture: traces into an ``ActivationCache``, interventions, generation capture, the on-disk store."""

from .cache import ActivationCache
from .dataset import capture_dataset
from .store import ActivationStore
from .interventions import AblateHeads, AblateNeurons, Hook, Intervention, Patch, Steer

__all__ = ["ActivationCache", "ActivationStore", "capture_dataset", "AblateHeads", "AblateNeurons", "Hook", "Intervention", "Patch", "Steer"]
