"""Plotly figure builders shared by results, notebooks, the app and study reports.

Builders take arrays (tensors, numpy or lists) and token labels, never result objects, so any result can
call them; values are kept as float32 (plotly sends them as typed arrays). Only this package and the
studies import plotly.
"""

from .attention import attention, attention_pattern, head_grid
from .attribution import attribution_map
from .circuit import circuit_graph
from .curves import curves
from .features import feature_values, rewrite_grid, training_curve
from .heatmap import layer_heatmap
from .html import figure_html, write_html
from .patching import panel_heatmaps
from .tokens import token_heatmap

__all__ = ["attention", "attention_pattern", "head_grid", "attribution_map", "circuit_graph", "curves", "feature_values", "layer_heatmap", "panel_heatmaps",
           "rewrite_grid", "token_heatmap", "training_curve", "figure_html", "write_html"]
