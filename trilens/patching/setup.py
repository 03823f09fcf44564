"""What every patching method starts from: the paired batches, the panels, one traced run of each side, the metric
bound to the patched run and its value on the clean and corrupted runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..provenance import provenance
from ..sources import is_source, read_pairs
from .cells import Panel, pair_batches, panels
from .metrics import ResolvedMetric, as_metric, describe, resolve
from .result import PatchingResult, stack_tokens

if TYPE_CHECKING:
    from ..capture.cache import ActivationCache
    from ..inputs import Batch
    from ..model import Model

DIRECTIONS = ("denoise", "noise")


@dataclass
class Prepared:
    """A sweep's inputs: ``base`` is the run that is patched, ``source`` the run whose activations are written in."""

    spec: Any
    direction: str
    base_batch: Batch
    clean_batch: Batch  # its tokens label the positions: denoising writes the clean run's activations in
    panels: list[Panel]
    base: ActivationCache
    source: ActivationCache
    bound: ResolvedMetric
    m_clean: torch.Tensor
    m_corrupted: torch.Tensor
    n_pairs: int

    @property
    def sites(self) -> list[str]:
        return [s for p in self.panels for s in p.sites]

    @property
    def m_base(self) -> torch.Tensor:
        return self.m_corrupted if self.direction == "denoise" else self.m_clean

    def result(self, model: Model, values: dict[str, torch.Tensor], method: str, params: dict[str, Any],
               **extra: Any) -> PatchingResult:
        return PatchingResult(
            values=values, panels=self.panels, m_clean=self.m_clean.cpu(), m_corrupted=self.m_corrupted.cpu(),
            tokens=stack_tokens(model, self.clean_batch), direction=self.direction, method=method, family=model.family,
            magnitudes=extra.pop("magnitudes", None),
            info=provenance(model, "patching" if method == "exact" else "attribution_patching",
                            {"method": method, "sites": [p.key for p in self.panels], "direction": self.direction,
                             **params, **describe(self.spec)}, self.n_pairs, **extra))


def prepare(model: Model, clean: Any, corrupted: Any, metric: Any, *, sites: str | Sequence[str] | None,
            heads: bool | str | Sequence[str], positions: str, direction: str, step: int | None,
            stacks: str | Sequence[str] | None = None, extra_sites: Any = None) -> Prepared:
    """Encode and pair the inputs, choose the panels, trace both runs (at the panels' sites and at what
    ``extra_sites(panels)`` adds) and bind the metric."""
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}.")
    if is_source(clean):  # a data source with columns "clean" and "corrupted" (others: trilens.sources.read_pairs)
        if corrupted is not None:
            raise InputError("a data source holds both runs (columns clean and corrupted): pass corrupted=None, or "
                             "read other columns with trilens.sources.read_pairs(source, clean_column=..., ...).")
        clean, corrupted = read_pairs(clean)
    spec = as_metric(metric)
    cb, kb, aligned = pair_batches(model, clean, corrupted)
    panel_list = panels(model, sites, heads, positions, cb, kb, aligned, stacks)
    names = [s for p in panel_list for s in p.sites]
    names += [s for s in (extra_sites(panel_list) if extra_sites else []) if s not in names]
    clean_run = model.trace(clean, sites=names)
    corrupted_run = model.trace(corrupted, sites=names)
    denoise = direction == "denoise"
    base_batch = (kb if denoise else cb).to(model.device)
    bound = resolve(model, base_batch, spec, clean_run.logits, corrupted_run.logits, step)
    return Prepared(spec, direction, base_batch, cb, panel_list, corrupted_run if denoise else clean_run,
                    clean_run if denoise else corrupted_run, bound, bound.of_run(clean_run.logits, cb.to(model.device)),
                    bound.of_run(corrupted_run.logits, kb.to(model.device)), cb.input_ids.shape[0])
