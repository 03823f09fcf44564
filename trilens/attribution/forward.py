"""The forward function trilens gives captum: every generation step of every input scored at once.

captum's methods attribute one scalar per input row. Here a row is one (input, step) pair: each attributed stack's
token embeddings are repeated once per step (``[inputs x steps, position, d]``, steps fastest), and row (b, t) returns
step t's score of input b. captum's own expansions (integrated gradients' interpolation points, occlusion's perturbed
copies, DeepLift's baselines) stack whole blocks of such rows, so a block of ``steps`` consecutive rows always belongs
to one input.

Where the rows of a block are equal (every method but gradient SHAP with noise, and DeepLift, which needs its hooks on
plain autograd), the model runs once per block: one forward pass yields every step's score, and when captum asks for
gradients, the steps' backward passes run batched (``embedding_step_gradients``) and row (b, t) receives step t's
gradient only. Otherwise each row runs on its own, scoring its own step (plain autograd).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from ..capture.grad_hooks import (
    embedding_modules,
    frozen_weights,
    head_rows,
    replaced_embeddings,
)
from ..capture.gradients import embedding_step_gradients
from ..capture.objectives import ScoredRows, token_scores
from ..inputs import Batch

if TYPE_CHECKING:
    from ..model import Model


class _SharedSteps(torch.autograd.Function):
    """Scores ``[blocks x steps]`` from one pass per block; the backward hands row (b, t) step t's gradient."""

    @staticmethod
    def forward(ctx: Any, run: Callable, n_steps: int, *embeds: torch.Tensor) -> torch.Tensor:
        values, grads = run([_first_of_blocks(e, n_steps) for e in embeds], True)
        ctx.n_steps = n_steps
        ctx.save_for_backward(*grads)
        return values.reshape(-1).to(embeds[0].dtype)

    @staticmethod
    def backward(ctx: Any, seed: torch.Tensor) -> tuple[Any, ...]:
        out = []
        for g in ctx.saved_tensors:  # [blocks, steps, position, d]
            scale = seed.view(-1, ctx.n_steps, *[1] * (g.dim() - 2)).to(g.dtype)
            out.append((scale * g).reshape(-1, *g.shape[2:]))
        return (None, None, *out)


class _Embed(torch.nn.Module):
    """A stack's own token-embedding call (ids -> embeddings) as a module of its own: the layer that captum's layer
    methods hook, one per stack even where the stacks share their embedding."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.module(ids)


class StepForward(torch.nn.Module):
    """captum's forward function (and, for DeepLift, its model) over ``batch``'s inputs and ``rows``' steps.

    Args:
        stacks: the stacks whose token embeddings are the inputs, in the order captum passes them.
        ids: inputs are token ids (``[rows, position]``) embedded by ``embed[stack]`` (for layer methods); else
            embeddings.
        share: run equal rows once (see the module's docstring); False: every row on its own.
    """

    def __init__(self, model: Model, batch: Batch, rows: ScoredRows, score: str, stacks: Sequence[str], *,
                 ids: bool = False, share: bool = True, step_batch: int | None = None):
        super().__init__()
        self.model, self.batch, self.rows, self.score = model, batch, rows, score
        self.stacks, self.ids, self.share, self.step_batch = list(stacks), ids, share, step_batch
        self.hf = model.hf_model  # a submodule, so DeepLift finds the model's nonlinearities
        modules = embedding_modules(model)
        self.embed = torch.nn.ModuleDict({s: _Embed(modules[s]) for s in self.stacks})
        self.n_inputs, self.n_steps = rows.positions.shape
        self.rows_run = 0  # rows the model ran (one per block where rows are shared), for provenance

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        embeds = [self.embed[s](x) for s, x in zip(self.stacks, inputs)] if self.ids else list(inputs)
        n_rows = embeds[0].shape[0]
        if n_rows % (self.n_inputs * self.n_steps):
            raise RuntimeError(f"{n_rows} rows are not whole blocks of {self.n_inputs} inputs x {self.n_steps} steps.")
        if self.share and all(_steps_equal(e, self.n_steps) for e in embeds):
            if torch.is_grad_enabled() and any(e.requires_grad for e in embeds):
                return _SharedSteps.apply(self._per_block, self.n_steps, *embeds)
            with torch.no_grad():
                values, _ = self._per_block([_first_of_blocks(e, self.n_steps) for e in embeds], False)
            return values.reshape(-1).to(embeds[0].dtype)
        return self._per_row(embeds)

    def _per_block(self, embeds: list[torch.Tensor], grads: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``[blocks, steps]`` scores of blocks with these embeddings, and (``grads``) each step's gradient at them."""
        index = torch.arange(embeds[0].shape[0]) % self.n_inputs
        batch, rows = self.batch.rows(index), self.rows.take(index)
        given = dict(zip(self.stacks, embeds))
        self.rows_run += len(index)
        if not grads:
            return step_values(self.model, batch, rows, self.score, given), []
        values, found = embedding_step_gradients(self.model, batch, rows, given, score=self.score,
                                                 step_batch=self.step_batch)
        return values, [found[s] for s in self.stacks]

    def _per_row(self, embeds: list[torch.Tensor]) -> torch.Tensor:
        """Row r = (block, input, step) scores its own step only."""
        n_rows = embeds[0].shape[0]
        r = torch.arange(n_rows)
        b, t = (r // self.n_steps) % self.n_inputs, r % self.n_steps
        one = self.rows.take(b[:, None], t[:, None])  # [rows, 1]: each row's own step
        self.rows_run += n_rows
        with frozen_weights(self.model.hf_model):
            return step_values(self.model, self.batch.rows(b), one, self.score, dict(zip(self.stacks, embeds)))[:, 0]


def _steps_equal(e: torch.Tensor, n_steps: int) -> bool:
    """Whether every block of ``n_steps`` rows holds one row repeated."""
    blocks = e.detach().reshape(-1, n_steps, *e.shape[1:])
    return bool(torch.equal(blocks, blocks[:, :1].expand_as(blocks)))


def _first_of_blocks(e: torch.Tensor, n_steps: int) -> torch.Tensor:
    """``[blocks, ...]``: the first row of each block of ``n_steps`` rows."""
    return e.reshape(-1, n_steps, *e.shape[1:])[:, 0]


def step_values(model: Model, batch: Batch, rows: ScoredRows, score: str,
                embeds: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``[batch, step]`` scores at ``rows`` (differentiable where grad is on), with the stacks in ``embeds`` reading
    those token embeddings; the LM head runs on the scored positions only (a vocabulary-wide row per step, not per
    position)."""
    with replaced_embeddings(model, embeds or {}), head_rows(model, rows.positions):
        logits = model.hf_model(**batch.to(model.device).forward_kwargs()).logits
    steps = torch.arange(rows.positions.shape[1]).expand_as(rows.positions)
    return token_scores(logits, replace(rows, positions=steps), score)


