"""``GradientResult``: activations and gradients of an objective at hook sites and at the input embeddings."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from ..errors import InputError, SiteError, closest
from ..results import Result, group, register_result
from ..sites import PATTERN_KINDS, Site

EMBED_KIND = "input_embeds"
METHODS = ("norm", "input_x_gradient")


def embed_key(stack: str) -> str:
    """The name under which a stack's token-embedding gradients are kept."""
    return f"{stack}.{EMBED_KIND}"


@register_result
class GradientResult(Result):
    """What ``model.gradients`` returns.

    Every gradient has a step axis after the batch: ``[batch, step, ...activation shape]`` (one step for a single
    objective, one per teacher-forced token for ``StepScores``). ``values [batch, step]`` are the objective's values,
    ``valid`` marks real steps (padding steps have value 0 and zero gradients). ``grad("embed")`` /
    ``activation("embed")`` are the token embeddings of the (only, or given) stack; any captured hook name, or a
    ``(kind, layer[, stack])`` key, works too.
    """

    def __init__(self, *, grads: dict[str, torch.Tensor], acts: dict[str, torch.Tensor], sites: dict[str, Site],
                 values: torch.Tensor, valid: torch.Tensor, scored: dict[str, torch.Tensor], per_step: bool,
                 scored_stack: str, stacks: tuple[str, ...], masks: dict[str, torch.Tensor], ids: dict[str, torch.Tensor],
                 tokens: dict[str, list[list[str]]], step_tokens: list[list[str]] | None, info: dict[str, Any]):
        self.grads, self.acts, self.sites = grads, acts, sites
        self.values, self.valid, self.scored = values, valid, scored
        self.per_step, self.scored_stack, self.stacks = per_step, scored_stack, tuple(stacks)
        self.masks, self.ids, self._tokens = masks, ids, tokens
        self.step_tokens = step_tokens  # the scored token of each (sequence, step), as a string
        self.info = info

    # -- access ------------------------------------------------------------------------------
    @property
    def n_steps(self) -> int:
        return self.values.shape[1]

    def key(self, site: str | tuple, stack: str | None = None) -> str:
        """The stored name for a hook name, ``"embed"`` (with ``stack`` on encoder-decoders) or ``(kind, layer[, stack])``."""
        if isinstance(site, tuple):
            kind, layer, *rest = site
            stack = rest[0] if rest else stack
            found = {n: s for n, s in self.sites.items() if s.kind == kind and s.layer is not None
                     and (stack is None or s.stack == stack)}
            depth = 1 + max((s.layer for s in found.values()), default=-1)
            found = [n for n, s in found.items() if s.layer == (layer % depth if depth else layer)]
            if len(found) != 1:
                raise SiteError(f"{kind!r} at layer {layer}" + (f" of the {stack} stack" if stack else "")
                                + (" is ambiguous: pass the stack." if found else " was not taken."))
            return found[0]
        if site in ("embed", EMBED_KIND):
            if stack is None:
                if len(self.stacks) > 1:
                    raise SiteError(f"this model has stacks {list(self.stacks)}: pass stack= for its token embeddings.")
                stack = self.stacks[0]
            site = embed_key(stack)
        if site not in self.grads:
            hint = closest(site, list(self.grads))
            raise SiteError(f"no gradient at {site!r} in this result" + (f"; did you mean {', '.join(hint)}?" if hint else "")
                            + f" It holds: {', '.join(self.grads)}.")
        return site

    def grad(self, site: str | tuple, stack: str | None = None) -> torch.Tensor:
        """``[batch, step, ...]`` gradient of the objective at ``site``."""
        return self.grads[self.key(site, stack)]

    def activation(self, site: str | tuple, stack: str | None = None) -> torch.Tensor:
        """``[batch, ...]`` activation at ``site`` (the point the gradient was taken at)."""
        return self.acts[self.key(site, stack)]

    def tokens(self, stack: str | None = None) -> list[list[str]]:
        return self._tokens.get(stack or self.stacks[0], [])

    def saliency(self, site: str | tuple = "embed", stack: str | None = None, method: str = "norm") -> torch.Tensor:
        """``[batch, step, position]`` per-token scores at ``site``: the gradient's L2 norm over the hidden size
        (``"norm"``, Inseq's default aggregation) or ``sum(activation * gradient)`` (``"input_x_gradient"``).

        Pattern sites give ``[batch, step, query]`` with the norm (or sum) over heads and keys."""
        if method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, not {method!r}.")
        key = self.key(site, stack)
        g = self.grads[key].float()
        if self.sites[key].kind in PATTERN_KINDS:  # [b, step, head, q, k] -> per query
            g = g.movedim(2, 3).flatten(3)
            a = self.acts[key].float().movedim(1, 2).flatten(2)[:, None]
        else:
            g = g.flatten(3)
            a = self.acts[key].float().flatten(2)[:, None]
        return g.norm(dim=-1) if method == "norm" else (g * a).sum(-1)

    # -- the result contract -------------------------------------------------------------------
    def to_frame(self):
        """One row per (site, sequence, step, position) at real tokens and steps: the gradient's norm and
        activation x gradient there (pattern sites: per query position, over heads and keys)."""
        import pandas as pd

        frames = []
        for key, site in self.sites.items():
            stack = site.stack
            norm, ixg = self.saliency(key, method="norm"), self.saliency(key, method="input_x_gradient")
            mask = self.masks[stack]
            keep = self.valid[:, :, None] & mask[:, None, : norm.shape[2]]
            b, t, p = keep.nonzero(as_tuple=True)
            toks = self.tokens(stack)
            frames.append(pd.DataFrame({
                "site": key, "stack": stack, "layer": site.layer, "kind": site.kind, "sequence": b.numpy(), "step": t.numpy(),
                "position": p.numpy(), "token": [toks[i][j] for i, j in zip(b.tolist(), p.tolist())] if toks else None,
                "objective": self.values[b, t].numpy(), "grad_norm": norm[b, t, p].numpy(), "input_x_gradient": ixg[b, t, p].numpy()}))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def figure(self, site: str | tuple | None = None, *, stack: str | None = None, sequence: int = 0, method: str = "norm"):
        """Per-token scores (``saliency``) of one sequence: steps x tokens for per-step objectives (the source tokens
        for encoder-decoders, unless ``stack="decoder"``), or one row of tokens for a single objective."""
        from ..viz import token_heatmap

        if site is None:
            site = "embed" if any(s.kind == EMBED_KIND for s in self.sites.values()) else next(iter(self.sites))
        if site == "embed" and stack is None and len(self.stacks) > 1:
            stack = "encoder"
        key = self.key(site, stack)
        if not 0 <= sequence < self.values.shape[0]:
            raise InputError(f"sequence {sequence} does not exist; this result holds {self.values.shape[0]}.")
        stack = self.sites[key].stack
        scores = self.saliency(key, method=method)[sequence]
        cols = self.masks[stack][sequence].nonzero().flatten().tolist()
        steps = self.valid[sequence].nonzero().flatten().tolist()
        toks = self.tokens(stack)
        labels = [toks[sequence][c] for c in cols] if toks else [str(c) for c in cols]
        step_labels = [self._step_label(sequence, s) for s in steps]
        what = "gradient norm" if method == "norm" else "input x gradient"
        return token_heatmap(scores[steps][:, cols], labels, step_labels, colorbar=what, signed=method != "norm",
                             x_title=f"{stack} token", y_title="objective" if not self.per_step else "step: scored token",
                             title=f"{what} at {key} — {self.info.get('model', '')}")

    def _step_label(self, sequence: int, step: int) -> str:
        if self.step_tokens:
            return self.step_tokens[sequence][step]
        return f"step {step}" if self.per_step else "objective"

    def _state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {f"grad/{k}": v for k, v in self.grads.items()}
        tensors.update({f"act/{k}": v for k, v in self.acts.items()})
        tensors.update({f"mask/{s}": m.to(torch.uint8) for s, m in self.masks.items()})
        tensors.update({f"ids/{s}": t for s, t in self.ids.items()})
        tensors.update({f"scored/{k}": t for k, t in self.scored.items()})
        tensors.update(values=self.values, valid=self.valid.to(torch.uint8))
        data = {"sites": {n: asdict(s) for n, s in self.sites.items()}, "per_step": self.per_step, "stacks": list(self.stacks),
                "scored_stack": self.scored_stack, "tokens": self._tokens, "step_tokens": self.step_tokens}
        return data, tensors

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> GradientResult:
        grads, acts = group(tensors, "grad/"), group(tensors, "act/")
        return cls(grads={n: grads[n] for n in data["sites"]}, acts={n: acts[n] for n in data["sites"]},
                   sites={n: Site(**s) for n, s in data["sites"].items()}, values=tensors["values"],
                   valid=tensors["valid"].bool(), scored=group(tensors, "scored/"), per_step=data["per_step"],
                   scored_stack=data["scored_stack"], stacks=tuple(data["stacks"]),
                   masks={k: v.bool() for k, v in group(tensors, "mask/").items()}, ids=group(tensors, "ids/"),
                   tokens=data["tokens"], step_tokens=data.get("step_tokens"), info=info)

    def __repr__(self) -> str:
        what = f"{self.n_steps} steps" if self.per_step else "one objective"
        objective = self.info.get("params", {}).get("objective", "")
        return (f"GradientResult({self.values.shape[0]} inputs, {what}, {objective}, "
                f"sites: {', '.join(list(self.grads)[:4])}{', ...' if len(self.grads) > 4 else ''})")
