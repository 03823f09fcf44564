"""Causal localisation: activation patching sweeps (exact, batched), attribution patching (AtP, AtP*) and edge
attribution circuits (EAP, EAP-IG)."""

from .atp import attribution_patching
from .circuit import CircuitResult
from .edges import circuit_faithfulness, edge_attribution
from .metrics import KLDivergence
from .result import PatchingResult
from .sweep import patching_sweep

__all__ = ["patching_sweep", "attribution_patching", "edge_attribution", "circuit_faithfulness", "PatchingResult",
           "CircuitResult", "KLDivergence"]
