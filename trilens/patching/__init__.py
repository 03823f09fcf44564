"""Causal localisation: activation patching sweeps (exact, batched) and attribution patching (AtP, AtP*)."""

from .atp import attribution_patching
from .metrics import KLDivergence
from .result import PatchingResult
from .sweep import patching_sweep

__all__ = ["patching_sweep", "attribution_patching", "PatchingResult", "KLDivergence"]
