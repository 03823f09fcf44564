"""Text metrics for lens outputs: exact match and chrF (Popović 2015), written out to avoid a dependency."""

from __future__ import annotations

from collections import Counter


def exact_match(output: str, reference: str) -> bool:
    """Equal after collapsing white space."""
    return " ".join(output.split()) == " ".join(reference.split())


def chrf(output: str, reference: str, *, n: int = 6, beta: float = 2.0) -> float:
    """Character n-gram F-score (chrF, n = 1..6, beta = 2, spaces removed), 0..100."""
    hyp, ref = output.replace(" ", ""), reference.replace(" ", "")
    precisions, recalls = [], []
    for k in range(1, n + 1):
        h = Counter(hyp[i:i + k] for i in range(len(hyp) - k + 1))
        r = Counter(ref[i:i + k] for i in range(len(ref) - k + 1))
        if not h and not r:
            continue
        match = sum((h & r).values())
        precisions.append(match / sum(h.values()) if h else 0.0)
        recalls.append(match / sum(r.values()) if r else 0.0)
    if not precisions:
        return 100.0
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if p + r == 0:
        return 0.0
    return 100 * (1 + beta**2) * p * r / (beta**2 * p + r)
