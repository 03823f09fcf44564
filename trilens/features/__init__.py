"""Gradient-based feature neurons: GRADIEND (a feature learned from the model's own weight gradients, read as one
value per text and written back as a weight-space rewrite) and knowledge neurons beside it.

A sibling of ``trilens.attribution`` rather than part of it: attribution explains one prediction by its inputs;
feature neurons learn a concept across many texts, in weight space, and change the model (on a copy).
"""

from .data import FeatureData, FeatureRow, read_jsonl, zoo_feature_data
from .encodings import EncodingResult
from .gradiend import Gradiend
from .kn_result import KnowledgeNeurons
from .knowledge_neurons import knowledge_neurons
from .params import select_parameters
from .rewrite import copy_model, rewrite, save_model
from .rewrite_grid import RewriteGrid, rewrite_grid
from .training import train_gradiend

__all__ = ["FeatureData", "FeatureRow", "read_jsonl", "zoo_feature_data", "EncodingResult", "Gradiend",
           "KnowledgeNeurons", "knowledge_neurons", "select_parameters", "copy_model", "rewrite", "save_model",
           "RewriteGrid", "rewrite_grid", "train_gradiend"]
