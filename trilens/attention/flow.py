"""Attention flow (Abnar & Zuidema 2020): the maximum flow from each top position to each input token through the
layered graph whose edges carry the layers' residual-mixed, head-averaged attention (``rollout.residual_attention``).

S x S max-flow problems over (L + 1) x S nodes: capped at ``MAX_FLOW_TOKENS`` tokens (about a second per sequence of
32 tokens on a 6-layer model; the cost grows with the fourth power of the length). Solved by scipy's
``maximum_flow`` (integer capacities: attention scaled by ``SCALE`` and rounded, so flows are exact to about 1e-6).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputError
from .rollout import residual_attention

MAX_FLOW_TOKENS = 64
SCALE = 2**20


def attention_flow(patterns: torch.Tensor, rows: Sequence[int] | None = None, *,
                   max_tokens: int = MAX_FLOW_TOKENS) -> torch.Tensor:
    """Flow of one sequence's self-attention ``patterns [L, H, S, S]``: ``[len(rows), S]``, row r = the maximum flow
    from position ``rows[r]`` at the top to each input token, normalised to sum to 1 (default rows: every position)."""
    try:
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import maximum_flow
    except ImportError as err:  # pragma: no cover - scipy comes with the analysis extra
        raise InputError("attention flow needs scipy: pip install 'trilens[analysis]'.") from err
    if patterns.dim() != 4:
        raise InputError(f"attention_flow takes one sequence's patterns [layer, head, query, key], not {tuple(patterns.shape)}.")
    n_layers, s = patterns.shape[0], patterns.shape[-1]
    if s > max_tokens:
        raise InputError(f"attention flow over {s} tokens is {s * s} max-flow problems on {(n_layers + 1) * s} nodes; it "
                         f"is capped at {max_tokens} tokens (max_tokens=). Use rollout for long inputs.")
    rows = list(range(s)) if rows is None else [int(r) for r in rows]
    if any(not 0 <= r < s for r in rows):
        raise InputError(f"rows must be positions 0..{s - 1}, not {rows}.")
    mixed = residual_attention(patterns.double()).cpu().numpy()  # [L, S, S]
    # node (l, i) = l * S + i; layer l's attention connects (l, i) -> (l - 1, j)
    src, dst, cap = [], [], []
    for layer in range(n_layers):
        i, j = np.nonzero(mixed[layer] > 0)
        src.append((layer + 1) * s + i)
        dst.append(layer * s + j)
        cap.append(np.rint(mixed[layer][i, j] * SCALE).astype(np.int32))
    n = (n_layers + 1) * s
    graph = csr_matrix((np.concatenate(cap), (np.concatenate(src), np.concatenate(dst))), shape=(n, n))
    out = np.zeros((len(rows), s))
    for r, i in enumerate(rows):
        for j in range(s):
            out[r, j] = maximum_flow(graph, n_layers * s + i, j).flow_value / SCALE
    total = out.sum(1, keepdims=True)
    return torch.from_numpy(np.divide(out, total, out=np.zeros_like(out), where=total > 0)).float()
