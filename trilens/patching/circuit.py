"""``CircuitResult``: the score of every edge of the residual graph, the circuits of the top edges, and how much of the
metric each circuit recovers (its faithfulness)."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from ..results import Result, register_result

METHOD_TITLES = {"eap": "edge attribution (EAP)", "eap-ig": "edge attribution (EAP-IG)"}


@register_result
class CircuitResult(Result):
    """``scores [pair, sender, receiver]``: each edge's first-order effect on the metric (NaN where no edge exists);
    edges are ranked by |mean over pairs|. ``sizes`` and ``faithful [pair, size]``: the metric of the clean run with
    only the top-n edges clean (every other edge given its corrupted value), where measured.

    Senders are ``input``, ``a{layer}.h{head}`` (attention heads), ``c{layer}.h{head}`` (cross-attention heads), ``m{layer}``
    (MLPs), ``encoder`` (an encoder-decoder's encoder output); receivers ``a{layer}`` (a layer's heads, through their
    shared input), ``c{layer}`` / ``c{layer}.kv`` (cross-attention's query / key-value inputs), ``m{layer}``,
    ``encoder`` and ``logits``. An encoder-decoder's names carry ``enc.`` / ``dec.``.
    """

    def __init__(self, *, senders: list[str], receivers: list[str], feeds: dict[str, list[str]],
                 adjacency: torch.Tensor, scores: torch.Tensor, m_clean: torch.Tensor, m_corrupted: torch.Tensor,
                 method: str, tokens: dict[str, list[list[str]]], info: dict[str, Any],
                 sizes: list[int] | None = None, faithful: torch.Tensor | None = None):
        self.senders, self.receivers, self.feeds = list(senders), list(receivers), dict(feeds)
        self.adjacency, self.scores = adjacency.bool(), scores.double()
        self.m_clean, self.m_corrupted = m_clean.double(), m_corrupted.double()
        self.method, self.tokens, self.info = method, tokens, info
        self.sizes = None if sizes is None else [int(n) for n in sizes]
        self.faithful = None if faithful is None else faithful.double()

    # -- edges -------------------------------------------------------------------------------
    @property
    def n_edges(self) -> int:
        return int(self.adjacency.sum())

    @property
    def n_pairs(self) -> int:
        return int(self.m_clean.shape[0])

    def mean_scores(self) -> torch.Tensor:
        """``[sender, receiver]``: the mean score over pairs (NaN where no edge)."""
        return self.scores.mean(0)

    def _ranked(self) -> torch.Tensor:
        """Edge indices ``[n_edges, 2]`` (sender, receiver), by |mean score|, largest first (ties: graph order)."""
        idx = self.adjacency.nonzero()
        vals = self.mean_scores()[idx[:, 0], idx[:, 1]].abs().nan_to_num(0.0)
        return idx[torch.argsort(-vals, stable=True)]

    def top_edges(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` edges with the largest |mean score|: sender, receiver and score."""
        mean = self.mean_scores()
        return [{"sender": self.senders[s], "receiver": self.receivers[r], "score": float(mean[s, r])}
                for s, r in self._ranked()[:k].tolist()]

    def circuit_mask(self, n_edges: int) -> torch.Tensor:
        """``[sender, receiver]`` bool: the top ``n_edges`` edges."""
        if not 0 <= n_edges <= self.n_edges:
            raise InputError(f"a circuit has 0 to {self.n_edges} edges, not {n_edges}.")
        mask = torch.zeros_like(self.adjacency)
        chosen = self._ranked()[:n_edges]
        mask[chosen[:, 0], chosen[:, 1]] = True
        return mask

    def circuit(self, n_edges: int) -> list[dict[str, Any]]:
        """The top ``n_edges`` edges that lie on a path from an input to the logits (the connected subgraph; edges
        off every such path carry their corrupted value either way, so dropping them changes nothing)."""
        mask = self.circuit_mask(n_edges)
        alive = self._connected(mask)
        mean = self.mean_scores()
        return [{"sender": self.senders[s], "receiver": self.receivers[r], "score": float(mean[s, r])}
                for s, r in self._ranked().tolist() if mask[s, r] and alive[s, r]]

    def _connected(self, mask: torch.Tensor) -> torch.Tensor:
        """Edges of ``mask`` reachable from an input sender and reaching the logits."""
        s_index = {n: i for i, n in enumerate(self.senders)}
        reached = {n for n in self.senders if n.endswith("input")}
        for r, name in enumerate(self.receivers):  # receivers come in forward order
            if any(mask[s_index[s], r] for s in reached if s in s_index):
                reached.update(self.feeds.get(name, []))
        useful = {"logits"}
        for r in reversed(range(len(self.receivers))):
            name = self.receivers[r]
            if name in useful or any(f in useful for f in self.feeds.get(name, [])):
                useful.add(name)
                useful.update(self.senders[s] for s in mask[:, r].nonzero().flatten().tolist())
        keep = torch.zeros_like(mask)
        for s, r in mask.nonzero().tolist():
            keep[s, r] = self.senders[s] in reached and (self.receivers[r] in useful)
        return keep

    # -- faithfulness ------------------------------------------------------------------------
    def set_faithfulness(self, sizes: list[int], values: torch.Tensor) -> None:
        self.sizes, self.faithful = [int(n) for n in sizes], values.double()

    def recovered(self) -> torch.Tensor:
        """``[size]``: (mean m_circuit − mean m_corrupted) / (mean m_clean − mean m_corrupted) per measured size."""
        if self.faithful is None:
            raise InputError("no faithfulness was measured: run edge_attribution with faithfulness=True (or sizes).")
        gap = float(self.m_clean.mean() - self.m_corrupted.mean())
        return (self.faithful.mean(0) - float(self.m_corrupted.mean())) / (gap if abs(gap) > 1e-12 else float("nan"))

    def edges_to_recover(self, fraction: float = 0.9) -> int | None:
        """The fewest measured edges whose circuit recovers at least ``fraction`` of the metric (None: none does)."""
        rec = self.recovered()
        for n, v in zip(self.sizes, rec.tolist()):
            if v >= fraction:
                return n
        return None

    # -- reading -----------------------------------------------------------------------------
    def to_frame(self):
        """One row per (pair, edge): sender, receiver, score, and the edge's rank by |mean score|."""
        import pandas as pd

        ranked = self._ranked()
        rank = torch.empty(self.adjacency.shape, dtype=torch.long)
        rank[ranked[:, 0], ranked[:, 1]] = torch.arange(len(ranked))
        edges = self.adjacency.nonzero()  # [edge, 2], each edge's rows pair by pair
        s, r, n = edges[:, 0].repeat_interleave(self.n_pairs), edges[:, 1].repeat_interleave(self.n_pairs), self.n_pairs
        return pd.DataFrame({"pair": torch.arange(n).repeat(len(edges)).numpy(),
                             "sender": [self.senders[i] for i in s.tolist()],
                             "receiver": [self.receivers[i] for i in r.tolist()],
                             "score": self.scores[:, edges[:, 0], edges[:, 1]].T.flatten().numpy(),
                             "rank": rank[s, r].numpy()})

    def figure(self, n_edges: int | None = None):
        """The circuit of the top ``n_edges`` edges (default: the fewest measured that recover 90%, else 30): nodes by
        layer, edge width by |score|, red for edges that raise the metric and blue for those that lower it."""
        from ..viz import circuit_graph

        if n_edges is None:
            n_edges = (self.edges_to_recover(0.9) if self.faithful is not None else None) or min(30, self.n_edges)
        edges = self.circuit(min(n_edges, self.n_edges))
        curve = None if self.faithful is None else (self.sizes, self.recovered().tolist())
        return circuit_graph(edges, order=self.senders + self.receivers, curve=curve,
                             title=f"{METHOD_TITLES.get(self.method, self.method)}: {len(edges)} edges — "
                                   f"{self.info.get('model', '')}")

    # -- the contract ------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {"adjacency": self.adjacency.to(torch.uint8), "scores": self.scores, "m_clean": self.m_clean,
                   "m_corrupted": self.m_corrupted}
        if self.faithful is not None:
            tensors["faithful"] = self.faithful
        return {"senders": self.senders, "receivers": self.receivers, "feeds": self.feeds, "method": self.method,
                "tokens": self.tokens, "sizes": self.sizes}, tensors

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> CircuitResult:
        return cls(senders=data["senders"], receivers=data["receivers"], feeds=data["feeds"],
                   adjacency=tensors["adjacency"].bool(), scores=tensors["scores"], m_clean=tensors["m_clean"],
                   m_corrupted=tensors["m_corrupted"], method=data["method"], tokens=data["tokens"], info=info,
                   sizes=data.get("sizes"), faithful=tensors.get("faithful"))

    def __repr__(self) -> str:
        tail = ""
        if self.faithful is not None:
            n = self.edges_to_recover(0.9)
            tail = f"; {n} edges recover 90%" if n is not None else "; no measured circuit recovers 90%"
        return (f"CircuitResult({self.method}; {len(self.senders)} senders, {len(self.receivers)} receivers, "
                f"{self.n_edges} edges over {self.n_pairs} pair{'s' if self.n_pairs != 1 else ''}; metric clean "
                f"{float(self.m_clean.mean()):.3g}, corrupted {float(self.m_corrupted.mean()):.3g}{tail})")
