"""Capture: traces into an ``ActivationCache``, interventions, generation capture, the on-disk store."""

from .cache import ActivationCache
from .interventions import AblateHeads, AblateNeurons, Hook, Intervention, Patch, Steer

__all__ = ["ActivationCache", "AblateHeads", "AblateNeurons", "Hook", "Intervention", "Patch", "Steer"]
