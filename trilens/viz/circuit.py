"""A circuit as a graph: components as nodes laid out by layer (rows) and kind (columns: attention heads, cross-
attention heads, MLP), edges as lines whose width grows with |score|; beside it, the faithfulness curve."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..errors import InputError
from ._common import layout

_NAME = re.compile(r"^(?:(enc|dec)\.)?(?:(input)|(encoder)|(logits)|([acmn])(\d+)(?:\.h(\d+)|\.(kv)|\.(\d))?)$")
WIDTHS = (1.0, 2.5, 4.5, 7.0)  # edge widths by quarter of the largest |score|


def _place(name: str, n_heads: int, enc_rows: int, layers: dict[str, int]) -> tuple[float, float]:
    """(x, y) of a node: y the layer (input below, logits above; a decoder above its encoder), x its kind and head."""
    m = _NAME.match(name)
    if m is None:
        raise InputError(f"{name!r} is not a circuit node name.")
    stack, inp, enc, logits, kind, layer, head, kv, norm = m.groups()
    base = enc_rows if stack == "dec" else 0
    mid = n_heads + 1.5
    if inp:
        return mid, base - 1.0
    if enc:
        return mid, float(layers.get("enc", 0))
    if logits:  # above the last stack (an encoder-decoder's decoder)
        return mid, float(enc_rows + layers.get("dec", layers.get("", 0)))
    y = base + int(layer)
    if kind == "m":
        return 2 * n_heads + 4.0, y
    if kind == "n":  # post-norm blocks: a norm after each sublayer, just right of it
        k = int(norm)
        if k == 1:
            return n_heads + 1.8, y + 0.3
        return (2 * n_heads + 3.2, y + 0.3) if k == 2 and stack == "dec" else (2 * n_heads + 6.0, y + 0.3)
    if kind == "a":
        return (1.0 + int(head), y + 0.15) if head is not None else (0.0, y - 0.15)
    if head is not None:
        return (n_heads + 3.0 + int(head), y + 0.15)
    return (n_heads + 2.0, y - 0.15) if kv is None else (n_heads + 2.0, y - 0.35)


def _row_label(y: int, enc_rows: int, layers: dict[str, int]) -> str:
    """What row ``y`` holds: an encoder-decoder's rows are encoder input, layers, output, then the decoder's."""
    if not enc_rows:
        n = layers.get("", 0)
        return "input" if y < 0 else "logits" if y >= n else f"L{y}"
    if y < enc_rows:
        n = layers.get("enc", 0)
        return "enc input" if y < 0 else "encoder output" if y >= n else f"enc L{y}"
    y -= enc_rows
    return "dec input" if y < 0 else "logits" if y >= layers.get("dec", 0) else f"dec L{y}"


def circuit_graph(
    edges: Sequence[dict[str, Any]],
    *,
    order: Sequence[str] = (),
    curve: tuple[Sequence[int], Sequence[float]] | None = None,
    title: str = "",
) -> Any:
    """Draw ``edges`` (``{"sender", "receiver", "score"}``); ``curve`` = (edge counts, recovered fraction) adds the
    faithfulness curve beside the graph."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(dict.fromkeys([e["sender"] for e in edges] + [e["receiver"] for e in edges]))
    every = list(order) or names
    parsed = [_NAME.match(n) for n in every]
    heads = [int(m.group(7)) for m in parsed if m and m.group(7) is not None]
    n_heads = max(heads, default=0) + 1
    layers: dict[str, int] = {}
    for m in parsed:
        if m and m.group(6) is not None:
            layers[m.group(1) or ""] = max(layers.get(m.group(1) or "", 0), int(m.group(6)) + 1)
    enc_rows = layers.get("enc", 0) + 2 if "enc" in layers else 0
    pos = {n: _place(n, n_heads, enc_rows, layers) for n in names}
    fig = make_subplots(rows=1, cols=2 if curve else 1, column_widths=[0.72, 0.28] if curve else [1.0],
                        subplot_titles=["circuit", "faithfulness"] if curve else None)
    top = max((abs(e["score"]) for e in edges), default=0.0) or 1.0
    for sign, colour in ((1, "rgba(202,0,32,0.55)"), (-1, "rgba(5,113,176,0.55)")):
        for q, width in enumerate(WIDTHS):
            xs: list[float | None] = []
            ys: list[float | None] = []
            for e in edges:
                share = abs(e["score"]) / top
                if (e["score"] >= 0) == (sign > 0) and min(int(share * 4), 3) == q:
                    (x0, y0), (x1, y1) = pos[e["sender"]], pos[e["receiver"]]
                    xs += [x0, x1, None]
                    ys += [y0, y1, None]
            if xs:
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": colour, "width": width},
                                         hoverinfo="skip", showlegend=False), row=1, col=1)
    label = {e["sender"] + " → " + e["receiver"]: e["score"] for e in edges}
    hover = [n + "".join(f"<br>{k}: {v:+.3g}" for k, v in label.items() if n in k.split(" → "))[:600] for n in names]
    fig.add_trace(go.Scatter(x=[pos[n][0] for n in names], y=[pos[n][1] for n in names], mode="markers+text",
                             text=names, textposition="top center", textfont={"size": 9}, hovertext=hover,
                             hoverinfo="text", marker={"size": 9, "color": "#444"}, showlegend=False), row=1, col=1)
    fig.update_xaxes(visible=False, row=1, col=1)
    rows = sorted({y for _, y in pos.values()})
    fig.update_yaxes(title_text="layer", tickvals=[round(y) for y in rows],
                     ticktext=[_row_label(round(y), enc_rows, layers) for y in rows], row=1, col=1)
    if curve:
        sizes, recovered = curve
        fig.add_trace(go.Scatter(x=[max(int(n), 0.5) for n in sizes], y=list(recovered), mode="lines+markers",
                                 showlegend=False, hovertemplate="%{x} edges: %{y:.3f}<extra></extra>"), row=1, col=2)
        fig.add_hline(y=0.9, line_dash="dot", row=1, col=2)
        fig.update_xaxes(type="log", title_text="edges in the circuit", row=1, col=2)
        fig.update_yaxes(title_text="metric recovered (1 = clean)", row=1, col=2)
    return layout(fig, title=title, x_title="", y_title="", height=max(420, 60 * (max(p[1] for p in pos.values())
                                                                                     if pos else 4) + 160))
