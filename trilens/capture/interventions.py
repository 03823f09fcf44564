"""Interventions: hooks that change a run (patch, ablate heads or neurons, steer, or any function).

Each is a small spec; ``hooks(model, state)`` turns it into ``(hook_name, fn)`` pairs for one run.
They apply to ``trace``, ``run`` and ``generate`` alike; during generation, ``positions`` are
absolute positions in the growing sequence and the hook sees only the new tokens of each step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..sites import PATTERN_KINDS

if TYPE_CHECKING:
    from ..model import Model
    from .cache import ActivationCache


@dataclass
class RunState:
    """What hooks need to know about the run in progress."""

    offsets: dict[str, int] = field(default_factory=dict)  # stack -> absolute position of this forward's first token
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # stack -> [batch, pos] real tokens of this forward
    rows: slice | None = None  # the rows of the whole input that this forward runs (a chunked trace)

    def offset(self, stack: str | None) -> int:
        return self.offsets.get(stack or "", 0)


class Intervention:
    """Base class: ``site`` is a hook name; subclasses implement ``edit``."""

    site: str

    def hooks(self, model: Model, state: RunState) -> list[tuple[str, Callable]]:
        site = model.site_index.site(self.site)
        axis = 2 if site.kind in PATTERN_KINDS else 1
        prepared = self.prepare(model, state, site)

        def fn(x: torch.Tensor, hook: Any = None) -> torch.Tensor:
            return self.edit(x.clone(), axis, state.offset(site.stack), prepared)

        return [(self.site, fn)]

    def prepare(self, model: Model, state: RunState, site: Any) -> Any:
        """Per-run preparation (once per forward's hooks); its result is passed to ``edit``."""
        return None

    def edit(self, x: torch.Tensor, axis: int, offset: int, prepared: Any) -> torch.Tensor:
        raise NotImplementedError


def _window(positions: Sequence[int] | None, offset: int, n: int) -> tuple[list[int], list[int]]:
    """(indices into the current forward, indices into ``positions``) for positions inside it."""
    if positions is None:
        return list(range(n)), list(range(n))
    local, which = [], []
    for k, p in enumerate(positions):
        if offset <= p < offset + n:
            local.append(p - offset)
            which.append(k)
    return local, which


def _positions(p: int | Sequence[int] | None) -> list[int] | None:
    if p is None:
        return None
    out = [p] if isinstance(p, int) else list(p)
    if any(q < 0 for q in out):
        raise InputError("intervention positions are absolute (0 = first position); negative positions are not allowed.")
    return out


@dataclass
class Patch(Intervention):
    """Replace the activation at ``site`` with ``value`` or with ``source``'s activation there.

    ``value`` broadcasts to the activation; if it has a position axis it covers the positions
    patched (all, or ``positions``). ``source`` is an ``ActivationCache`` of another run.
    """

    site: str
    value: torch.Tensor | float | None = None
    source: ActivationCache | None = None
    positions: int | Sequence[int] | None = None

    def prepare(self, model: Model, state: RunState, site: Any) -> Any:
        if (self.value is None) == (self.source is None):
            raise InputError("Patch needs exactly one of value= or source=.")
        if self.value is not None:
            return torch.as_tensor(self.value)
        value = self.source[self.site]
        if state.rows is not None and value.shape[0] > 1:  # a chunk of a batched trace: its own rows of the source
            value = value[state.rows]
        return value

    def edit(self, x, axis, offset, value):
        positions = _positions(self.positions)
        local, which = _window(positions, offset, x.shape[axis])
        if not local:
            return x
        v = value.to(x.device, x.dtype)
        if v.dim() == x.dim():  # has a position axis: pick the rows for the positions in this window
            # A full-sequence value (e.g. another run's cache) is indexed by absolute position; a value with
            # one row per requested position is indexed by its place in ``positions``.
            per_position = positions is not None and self.source is None and v.shape[axis] == len(positions)
            src = torch.tensor(which if per_position else [offset + i for i in local], device=v.device)
            if int(src.max()) >= v.shape[axis]:
                raise InputError(f"patch value for {self.site} has {v.shape[axis]} positions; position {int(src.max())} is needed.")
            v = v.index_select(axis, src)
        idx = torch.tensor(local, device=x.device)
        target = x.index_select(axis, idx)
        return x.index_copy(axis, idx, torch.broadcast_to(v, target.shape).contiguous())


@dataclass
class PatchRows(Intervention):
    """A batched ``Patch``: row ``rows[i]`` of the batch gets ``values[i]`` at its own position and head.

    Each row patches one cell (at most one per row and site). ``positions [k]`` are absolute positions (query
    positions of an attention pattern); None patches every position of the row. ``heads [k]``, for per-head sites
    (``z``, ``q``, ``k``, ``v``: ``[batch, pos, head, d_head]``; patterns: ``[batch, head, query, key]``), picks the
    head. ``values`` has one entry per row: the activation at that cell (with a position axis when ``positions`` is
    None). What an activation patching sweep runs: one forward pass patches as many cells as the batch has rows.
    """

    site: str
    rows: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor | None = None
    heads: torch.Tensor | None = None

    def edit(self, x, axis, offset, prepared):
        rows = self.rows.to(x.device)
        v = self.values.to(x.device, x.dtype)
        pattern = axis == 2
        if self.heads is not None:
            if x.dim() < 4:
                raise InputError(f"{self.site} has no head axis: patch heads at z, q, k, v or an attention pattern.")
            n_heads = x.shape[1 if pattern else 2]
            if self.heads.numel() and not 0 <= int(self.heads.min()) <= int(self.heads.max()) < n_heads:
                raise InputError(f"{self.site} has {n_heads} heads (0..{n_heads - 1}); head {int(self.heads.max())} "
                                 "does not exist.")
        if self.positions is None:
            if offset:
                raise InputError("PatchRows with every position needs the whole sequence in one forward pass.")
            index: tuple = (rows,) if self.heads is None else (rows, self.heads.to(x.device)) if pattern else \
                (rows, slice(None), self.heads.to(x.device))
        else:
            pos = self.positions.to(x.device) - offset
            inside = (pos >= 0) & (pos < x.shape[axis])
            if not bool(inside.any()):
                return x
            rows, pos, v = rows[inside], pos[inside], v[inside]
            heads = None if self.heads is None else self.heads.to(x.device)[inside]
            if pattern:
                index = (rows, slice(None), pos) if heads is None else (rows, heads, pos)
            else:
                index = (rows, pos) if heads is None else (rows, pos, heads)
        x[index] = v
        return x


@dataclass
class Steer(Intervention):
    """Add ``scale * vector`` to the activation at ``site`` (at ``positions``, or everywhere)."""

    site: str
    vector: torch.Tensor
    scale: float = 1.0
    positions: int | Sequence[int] | None = None

    def edit(self, x, axis, offset, prepared):
        local, _ = _window(_positions(self.positions), offset, x.shape[axis])
        if not local:
            return x
        v = torch.as_tensor(self.vector).to(x.device, x.dtype)
        if v.shape[-1] != x.shape[-1]:
            raise InputError(f"steering vector has size {v.shape[-1]}, but {self.site} has size {x.shape[-1]}.")
        idx = torch.tensor(local, device=x.device)
        return x.index_add(axis, idx, (self.scale * v).expand_as(x.index_select(axis, idx)).contiguous())


@dataclass
class _Ablate(Intervention):
    layer: int
    units: Sequence[int]
    stack: str | None = None
    mode: str = "zero"
    mean: torch.Tensor | None = None
    kind = ""

    def hooks(self, model, state):
        if self.mode not in ("zero", "mean"):
            raise InputError(f"ablation mode must be 'zero' or 'mean', not {self.mode!r}.")
        self.site = model.site(self.kind, self.layer, self.stack)
        return super().hooks(model, state)

    def prepare(self, model, state, site):
        return state.masks.get(site.stack or "")

    def edit(self, x, axis, offset, mask):
        dim = 2 if self.kind.endswith("z") else x.dim() - 1  # z: [batch, pos, head, d_head]
        units = torch.tensor(list(self.units), device=x.device)
        if units.numel() == 0 or int(units.max()) >= x.shape[dim] or int(units.min()) < 0:
            raise InputError(f"{self.site} has {x.shape[dim]} units on the ablated axis; got {list(self.units)}.")
        if self.mode == "zero":
            return x.index_fill(dim, units, 0.0)
        if self.mean is not None:
            mean = torch.as_tensor(self.mean).to(x.device, x.dtype)
        elif mask is not None and tuple(mask.shape) == tuple(x.shape[:2]):  # over real tokens only, not padding
            w = mask.to(x.device, x.dtype).view(*mask.shape, *[1] * (x.dim() - 2))
            mean = ((x * w).sum(dim=(0, 1)) / w.sum().clamp_min(1)).detach()
        else:
            mean = x.mean(dim=(0, 1)).detach()  # over batch and positions
        # detached: a constant, so no gradient flows from one input's objective into another input through it
        picked = mean.index_select(dim - 2, units) if mean.dim() > dim - 2 else mean
        return x.index_copy(dim, units, torch.broadcast_to(picked, x.index_select(dim, units).shape).contiguous())


@dataclass
class AblateHeads(_Ablate):
    """Zero- or mean-ablate attention heads ``units`` of ``layer`` (their per-head output ``z``)."""

    cross: bool = False

    def hooks(self, model, state):
        self.kind = "cross_z" if self.cross else "z"
        return super().hooks(model, state)


@dataclass
class AblateNeurons(_Ablate):
    """Zero- or mean-ablate MLP neurons ``units`` of ``layer`` (after the non-linearity)."""

    kind = "mlp_post"


@dataclass
class Hook(Intervention):
    """Any function ``fn(activation) -> activation`` at ``site``."""

    site: str
    fn: Callable[[torch.Tensor], torch.Tensor]

    def edit(self, x, axis, offset, prepared):
        return self.fn(x)
