"""The linear shortcut (Wang et al., ACL 2025): the last layers replaced by one affine map fitted at the answer slot.

From layer l to the last layer L: ``W`` = the mean Jacobian ``∂h_L/∂h_l`` over fitting prompts (the residual stream at
the answer slot, every other position held), ``b = mean(h_L - W h_l)``, and the shortcut's output
``z = β W h_l + b`` decoded by the model's final norm and unembedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..capture import SiteMap, read_until
from ..errors import InputError
from ..inputs import token_names
from ..provenance import provenance
from ..results import Result, register_result
from .languages import answer_id, slot_inputs
from .unembed import Unembed

if TYPE_CHECKING:
    from ..model import Model

PAPER_BETA = 2.25
BETA_GRID = tuple(x / 4 for x in range(2, 21))  # 0.5 .. 5.0, what beta="fit" searches


def slot_site(model: Model, layer: int) -> str:
    """The hook site holding the residual stream after ``layer`` blocks (0 = the embeddings) of the last stack."""
    stack = model.stacks[-1]
    n = model.n_layers[stack]
    if not 0 <= layer <= n:
        raise InputError(f"layer {layer} is out of range: the {stack} has layers 0 (the embeddings) to {n}.")
    return model.site("resid_pre", 0, stack) if layer == 0 else model.site("resid_post", layer - 1, stack)


def slot_batches(model: Model, prompts: Sequence[str], batch_size: int):
    """(batch, answer-slot position per row) for ``prompts`` in chunks of ``batch_size``."""
    stack = model.stacks[-1]
    inputs = slot_inputs(model, prompts)
    for start in range(0, len(inputs), batch_size):
        batch = model.encode(inputs[start:start + batch_size])
        yield batch, batch.masks[stack].sum(1) - 1  # right padding: the last real token


def slot_values(model: Model, prompts: Sequence[str], layer: int, *, batch_size: int = 64) -> torch.Tensor:
    """``h_layer`` at each prompt's answer slot ``[n, d]``, running only the blocks up to ``layer``."""
    site = slot_site(model, layer)
    out = []
    for batch, pos in slot_batches(model, prompts, batch_size):
        act = read_until(model, batch, [site])[site]
        out.append(act[torch.arange(len(pos)), pos.to(act.device)].float().cpu())
    return torch.cat(out)


@register_result
class LinearShortcut(Result):
    """An affine map from the residual stream after ``layer`` to the last layer's, decoded by the model's head.

    Fit it with ``LinearShortcut.fit(model, prompts, layer=...)``; ``logits``/``predict`` run the model only up to
    ``layer``. ``fit_error`` is ``|W h_l + b - h_L| / |h_L|`` per fitting prompt (β = 1)."""

    def __init__(self, *, layer: int, n_layers: int, W: torch.Tensor, b: torch.Tensor, beta: float,
                 fit_prompts: list[str], fit_error: torch.Tensor, info: dict[str, Any]):
        self.layer, self.n_layers, self.W, self.b, self.beta = layer, n_layers, W, b, float(beta)
        self.fit_prompts, self.fit_error, self.info = fit_prompts, fit_error, info

    @classmethod
    def fit(cls, model: Model, prompts: Sequence[str], *, layer: int, beta: float | str = PAPER_BETA,
            answers: Sequence[str] | None = None, batch_size: int = 25, progress: bool = True) -> LinearShortcut:
        """Fit ``W`` and ``b`` on ``prompts`` (the paper uses at most 25).

        Args:
            beta: the scale of ``W h_l`` (the paper's 2.25), or ``"fit"``: the value in ``BETA_GRID`` that gives the
                fitting prompts' ``answers`` the highest mean log-probability (without answers: the lowest KL from
                the model's own output distribution).
            batch_size: prompts per batched Jacobian (forward mode, every prompt and a chunk of directions at once).
        """
        stack = model.stacks[-1]
        n_layers = model.n_layers[stack]
        source, target = slot_site(model, layer), slot_site(model, n_layers)
        if not prompts:
            raise InputError("no fitting prompts: pass the prompts (texts ending where the answer starts) to fit on.")
        if answers is not None and len(answers) != len(prompts):
            raise InputError(f"{len(answers)} answers for {len(prompts)} fitting prompts: give one per prompt.")
        if layer == n_layers:  # the identity: nothing to differentiate
            x = y = slot_values(model, prompts, layer, batch_size=batch_size)
            W = torch.eye(x.shape[-1])
        else:
            xs, ys, jacobian_sum = [], [], torch.zeros(())
            for batch, pos in tqdm(list(slot_batches(model, prompts, batch_size)), desc=f"shortcut from layer {layer}",
                                   disable=not progress):
                site_map = SiteMap(model, batch, source, target, pos)
                xs.append(site_map.x0.float().cpu())
                ys.append(site_map.y0.float().cpu())
                jacobian_sum = jacobian_sum + site_map.jacobian().cpu().sum(0)  # [d, d]: prompts are only averaged
            x, y = torch.cat(xs), torch.cat(ys)
            W = jacobian_sum / len(x)
        b = (y - x @ W.T).mean(0)
        fit_error = (x @ W.T + b - y).norm(dim=-1) / y.norm(dim=-1)
        params = {"layer": layer, "beta": beta, "n_fit": len(prompts), "stack": stack}
        shortcut = cls(layer=layer, n_layers=n_layers, W=W, b=b, beta=1.0, fit_prompts=list(prompts),
                       fit_error=fit_error, info=provenance(model, "linear shortcut", params, len(prompts)))
        shortcut.beta = shortcut._fitted_beta(model, x, y, answers) if beta == "fit" else float(beta)
        shortcut.info["params"]["beta_used"] = shortcut.beta
        return shortcut

    def _fitted_beta(self, model: Model, x: torch.Tensor, y: torch.Tensor, answers: Sequence[str] | None) -> float:
        unembed = Unembed(model, model.stacks[-1])
        dtype = unembed.head.weight.dtype
        with torch.no_grad():
            if answers is not None:
                ids = torch.tensor([answer_id(model, a) for a in answers])
            else:
                final = unembed(y.to(dtype)).float().log_softmax(-1)
            scores = []
            for beta in BETA_GRID:
                logp = unembed((beta * x @ self.W.T + self.b).to(dtype)).float().log_softmax(-1)
                if answers is not None:
                    scores.append(float(logp[torch.arange(len(ids)), ids].mean()))
                else:
                    scores.append(-float((final.exp() * (final - logp)).sum(-1).mean()))
        return BETA_GRID[max(range(len(BETA_GRID)), key=scores.__getitem__)]

    # -- using it ----------------------------------------------------------------------------------
    def hidden(self, h: torch.Tensor) -> torch.Tensor:
        """``z = β W h + b`` for residual states ``h [..., d]`` after layer ``self.layer``."""
        return self.beta * h.float() @ self.W.T + self.b

    def logits(self, model: Model, prompts: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
        """``[n, vocab]``: the shortcut's prediction at each prompt's answer slot (the model runs to ``layer`` only)."""
        self._check(model)
        unembed = Unembed(model, model.stacks[-1])
        h = slot_values(model, prompts, self.layer, batch_size=batch_size)
        with torch.no_grad():
            return unembed(self.hidden(h).to(unembed.head.weight.dtype)).float()

    def predict(self, model: Model, prompts: Sequence[str], *, k: int = 1) -> list[list[str]]:
        """The top ``k`` tokens of the shortcut's prediction for each prompt."""
        top = self.logits(model, prompts).topk(k, dim=-1).indices
        return [token_names(model.tokenizer, row) for row in top.tolist()]

    def _check(self, model: Model) -> None:
        n = model.n_layers[model.stacks[-1]]
        if n != self.n_layers or model.d_model != self.W.shape[0]:
            raise InputError(f"this shortcut was fitted on a model with {self.n_layers} layers and d_model "
                             f"{self.W.shape[0]}, not on {model.name} ({n} layers, d_model {model.d_model}).")

    # -- the result contract -----------------------------------------------------------------------
    def to_frame(self):
        """One row per fitting prompt: its relative fit error."""
        import pandas as pd

        return pd.DataFrame({"prompt": self.fit_prompts, "fit_error": self.fit_error.numpy()})

    def figure(self):
        """The singular values of ``W`` (all ones for the identity at the last layer)."""
        from ..viz import curves

        s = torch.linalg.svdvals(self.W)
        return curves(list(range(len(s))), {f"W, layer {self.layer} -> {self.n_layers}": s.numpy()}, log_y=True,
                      x_title="index", y_title="singular value", title="linear shortcut: singular values of W")

    def __repr__(self) -> str:
        return (f"LinearShortcut: layer {self.layer} -> {self.n_layers}, beta {self.beta:g}, fitted on "
                f"{len(self.fit_prompts)} prompts, mean fit error {float(self.fit_error.mean()):.3f}")

    def _state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return ({"layer": self.layer, "n_layers": self.n_layers, "beta": self.beta, "fit_prompts": self.fit_prompts},
                {"W": self.W, "b": self.b, "fit_error": self.fit_error})

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> LinearShortcut:
        return cls(layer=data["layer"], n_layers=data["n_layers"], W=tensors["W"], b=tensors["b"], beta=data["beta"],
                   fit_prompts=data["fit_prompts"], fit_error=tensors["fit_error"], info=info)
