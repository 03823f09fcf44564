"""Attention figures: one pattern with query and key tokens (self- or cross-attention), and a layer x head grid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ._common import as_array, layout, token_labels

if TYPE_CHECKING:
    from ..capture.cache import ActivationCache


def attention_pattern(
    pattern: Any,
    query_tokens: Sequence[str],
    key_tokens: Sequence[str],
    *,
    title: str = "",
    query_title: str = "query (attends from)",
    key_title: str = "key (attends to)",
    difference: bool = False,
    value_title: str | None = None,
) -> Any:
    """Heatmap of one attention pattern ``[query, key]`` (one head, or a mean over heads), rows = queries;
    ``difference=True`` for a difference of two patterns (a diverging scale centred on 0); ``value_title`` names the
    values (colour bar and hover) where they are not attention weights (relevancy, say)."""
    import plotly.graph_objects as go

    z = as_array(pattern, 2, "an attention pattern")
    q, k = token_labels(query_tokens, z.shape[0], "query"), token_labels(key_tokens, z.shape[1], "key")
    scale = {"colorscale": "RdBu", "zmid": 0.0} if difference else {"colorscale": "Blues", "zmin": 0.0}
    name = value_title or ("difference" if difference else "weight")
    fig = go.Figure(go.Heatmap(z=z, x=k, y=q, colorbar={"title": name}, **scale,
                               hovertemplate="query %{y}<br>key %{x}<br>" + name + " %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")  # first query on top, as the sequence reads
    return layout(fig, title=title, x_title=key_title, y_title=query_title)


def head_grid(values: Any, *, title: str = "", colorbar: str = "", colorscale: str = "Viridis",
              layers: Sequence[Any] | None = None) -> Any:
    """Layer x head grid of one number per head (entropy, mass on the first token, a score)."""
    import plotly.graph_objects as go

    z = as_array(values, 2, "a layer x head grid")
    rows = list(layers) if layers is not None else list(range(z.shape[0]))
    if len(rows) != z.shape[0]:
        raise InputError(f"{len(rows)} layer labels for {z.shape[0]} rows.")
    fig = go.Figure(go.Heatmap(z=z, x=list(range(z.shape[1])), y=rows, colorscale=colorscale, colorbar={"title": colorbar},
                               texttemplate="%{z:.2f}" if z.size <= 400 else None,
                               hovertemplate="layer %{y}, head %{x}<br>" + (colorbar or "value") + " %{z:.3g}<extra></extra>"))
    return layout(fig, title=title, x_title="head", y_title="layer")


def attention(cache: ActivationCache, layer: int, head: int | None = None, *, stack: str | None = None,
              cross: bool = False, sequence: int = 0) -> Any:
    """The attention of one layer (one ``head``, or the mean over heads) for one sequence of a trace.

    Self-attention of ``stack`` (needed on encoder-decoders), or the decoder's cross-attention over the
    source with ``cross=True``. Padding is cut from both axes.
    """
    kind = "cross_attn_pattern" if cross else "attn_pattern"
    return pattern_figure(cache, cache.site_name(kind, layer, "decoder" if cross else stack), head, sequence)


def pattern_figure(cache: ActivationCache, name: str, head: int | None = None, sequence: int = 0) -> Any:
    """One sequence's pattern at hook ``name`` (``[batch, head, query, key]``): padding cut, tokens on both axes."""
    site = cache.site(name)
    query_stack = site.stack
    key_stack = "encoder" if site.kind.startswith("cross") else query_stack
    pattern = cache[name]
    if not 0 <= sequence < pattern.shape[0]:
        raise InputError(f"sequence {sequence} does not exist; this trace holds {pattern.shape[0]}.")
    if head is not None and not -pattern.shape[1] <= head < pattern.shape[1]:
        raise InputError(f"head {head} does not exist; this layer has {pattern.shape[1]} heads.")
    if tuple(pattern.shape[2:]) != (cache.masks[query_stack].shape[1], cache.masks[key_stack].shape[1]):
        raise InputError("this pattern was captured at selected positions; trace without positions= to draw it.")
    p = pattern[sequence].float()
    p = p.mean(0) if head is None else p[head]
    q_keep = cache.masks[query_stack][sequence].nonzero().flatten().tolist()
    k_keep = cache.masks[key_stack][sequence].nonzero().flatten().tolist()
    p = p[q_keep][:, k_keep]
    who = "mean over heads" if head is None else f"head {head % pattern.shape[1]}"
    model = f" — {cache.info['model']}" if cache.info.get("model") else ""
    title = f"{'cross-' if key_stack != query_stack else ''}attention, {query_stack} layer {site.layer}, {who}{model}"
    return attention_pattern(p, _tokens(cache, query_stack, sequence, q_keep),
                             _tokens(cache, key_stack, sequence, k_keep), title=title,
                             query_title=f"query: {query_stack} token", key_title=f"key: {key_stack} token")


def _tokens(cache: ActivationCache, stack: str, sequence: int, keep: list[int]) -> list[str]:
    tokens = cache.tokens(stack)
    return [tokens[sequence][i] for i in keep] if tokens else [str(i) for i in keep]
