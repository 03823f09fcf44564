"""Build the ``TransformerBridge`` for an HF model, configuring TransformerLens's adapters where real checkpoints need it.

TransformerLens 4.3's BART-family adapters (BART, Marian, Pegasus, MBart, M2M100) refuse encoder and decoder stacks
of different depths (``require_symmetric_layers``), although nothing in the bridge depends on it: each stack's blocks
are built from its own HF module list, and hook names follow. Blenderbot's adapter already turns the check off. Real
checkpoints are often unequal (distilled BART 12/6, many Marian and Pegasus distillations), so trilens builds those
bridges with a subclass of the registered adapter that turns it off too. Different head counts or FFN widths per
stack remain unsupported: the adapter keeps one ``n_heads`` and ``d_mlp`` for both stacks.

Layers that accelerate offloaded (to CPU or disk) hold their weights only while their own HF module runs. The
bridge's attention reads the weights of its projections outside their modules' runs where a setting asks for heads
one by one (``hook_result`` multiplies each head's z by its slice of W_O; ``hook_q_input`` and ``hook_attn_in``
project each head's copy by its slice of W_Q, W_K, W_V), so such a bridge's attention components run with their whole
layer's weights brought in (``_onload_attention``): one attention layer at a time, as accelerate itself would.

HF keeps some modules in float32 when a model loads in float16 (``_keep_in_fp32_modules``: T5's ``wo``), and relies
on its norms to bring the float32 residual stream back to the weights' dtype (``T5LayerNorm`` casts to its weight's
dtype). The bridge's norms return their input's dtype instead, so the next 16-bit projection would receive float32;
in such a mixed-dtype model the bridge's norms cast their output to their weight's dtype, as HF's do
(``_norms_in_weight_dtype``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .devices import offloaded_modules, onloaded
from .errors import UnsupportedArchitectureError

_LOCK = threading.Lock()  # the adapter registry is process-wide: one build at a time swaps it
_UNEQUAL: dict[type, type] = {}


def _unequal_depths(base: type) -> type:
    """The subclass of ``base`` that accepts encoder and decoder stacks of different depths."""
    if base not in _UNEQUAL:
        _UNEQUAL[base] = type(base.__name__, (base,), {"require_symmetric_layers": False, "__module__": __name__,
                                                        "__doc__": f"{base.__name__} for stacks of unequal depth."})
    return _UNEQUAL[base]


@contextmanager
def _adapter_for_unequal_depths(architecture: str) -> Iterator[None]:
    from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory as factory

    factory.discover_entry_points()
    base = factory._adapters.get(architecture)
    if base is None or not getattr(base, "require_symmetric_layers", False):
        yield
        return
    factory.register_adapter(architecture, _unequal_depths(base))
    try:
        yield
    finally:
        factory.register_adapter(architecture, base)


def build_bridge(hf: Any, name: str) -> Any:
    """The ``TransformerBridge`` around ``hf`` (its own modules, so its outputs stay HF's)."""
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    architecture = type(hf).__name__
    with _LOCK, _adapter_for_unequal_depths(architecture):
        try:
            bridge = build_bridge_from_module(hf, architecture, hf_config=hf.config, model_name=name)
        except ValueError as err:
            if "symmetric" not in str(err):
                raise
            raise UnsupportedArchitectureError(
                f"TransformerLens's {architecture} adapter cannot wrap this checkpoint: {err} Both stacks share one "
                "attention and MLP shape in the bridge, so encoder and decoder must have the same number of heads "
                "and the same FFN width (unequal depths are fine)."
            ) from err
    _onload_attention(bridge)
    _norms_in_weight_dtype(bridge, hf)
    return bridge


def _norms_in_weight_dtype(bridge: Any, hf: Any) -> None:
    """In a model whose weights have several float dtypes, each bridge norm's output takes its weight's dtype."""
    from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge

    if len({p.dtype for p in hf.parameters() if p.is_floating_point()}) < 2:
        return

    def cast(module: Any, args: Any, output: Any) -> Any:
        weight = getattr(module.original_component, "weight", None)
        if isinstance(output, torch.Tensor) and weight is not None and output.dtype != weight.dtype:
            return output.to(weight.dtype)
        return output

    for component in bridge.modules():
        if isinstance(component, NormalizationBridge) and component.original_component is not None:
            component.register_forward_hook(cast)


def _onload_attention(bridge: Any) -> None:
    """Each attention component of ``bridge`` whose layer accelerate offloaded runs with that layer's weights in."""
    import functools

    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    for component in bridge.modules():
        layer = getattr(component, "original_component", None)
        if not isinstance(component, AttentionBridge) or layer is None or not offloaded_modules(layer):
            continue

        @functools.wraps(component.forward)
        def forward(*args: Any, _forward: Any = component.forward, _layer: Any = layer, **kwargs: Any) -> Any:
            with onloaded(_layer):
                return _forward(*args, **kwargs)

        object.__setattr__(component, "forward", forward)  # the bridge's __setattr__ would set the HF module's

