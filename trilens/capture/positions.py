"""Which positions of each sequence to keep: indices relative to each sequence's real tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import InputError


def position_index(positions: Any, mask: torch.Tensor) -> torch.Tensor | None:
    """``[batch, k]`` padded-sequence indices of the requested positions, or None for all.

    ``positions`` is None (all), an int, a list of ints, ``"first"`` or ``"last"``; 0 is each
    sequence's first real token and -1 its last, whatever the padding side.
    """
    if positions is None:
        return None
    if positions == "last":
        positions = [-1]
    elif positions == "first":
        positions = [0]
    elif isinstance(positions, int):
        positions = [positions]
    elif not (isinstance(positions, Sequence) and positions and all(isinstance(p, int) for p in positions)):
        raise InputError(f"positions must be None, an int, a list of ints, 'first' or 'last', not {positions!r}.")
    lengths = mask.sum(dim=1)
    first = mask.float().argmax(dim=1)  # index of the first real token (left padding aware)
    wanted = torch.tensor(list(positions), dtype=torch.long)
    rel = torch.where(wanted[None, :] < 0, lengths[:, None] + wanted[None, :], wanted[None, :].expand(len(lengths), -1))
    bad = (rel < 0) | (rel >= lengths[:, None])
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise InputError(
            f"position {positions[col]} does not exist in sequence {row}, which has {int(lengths[row])} tokens."
        )
    return first[:, None] + rel


def gather_positions(x: torch.Tensor, index: torch.Tensor, axis: int) -> torch.Tensor:
    """Pick ``index`` ([batch, k]) along ``axis`` of ``x`` (batch first)."""
    shape = [index.shape[0]] + [1] * (x.dim() - 1)
    shape[axis] = index.shape[1]
    idx = index.to(x.device).view(shape).expand(*[x.shape[d] if d != axis else index.shape[1] for d in range(x.dim())])
    return x.gather(axis, idx)
