"""Layerwise probes: how linearly decodable a property is at every layer of every stack."""

from .estimators import LogisticProbe, MLPProbe, RidgeProbe
from .layerwise import control_labels, cross_probe, evaluate_features, probe_layers
from .representations import Features, features_from_model, features_from_store
from .result import ProbeResult

__all__ = ["Features", "LogisticProbe", "MLPProbe", "ProbeResult", "RidgeProbe", "control_labels", "cross_probe",
           "evaluate_features", "features_from_model", "features_from_store", "probe_layers"]
