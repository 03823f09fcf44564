"""The tuned lens (Belrose et al. 2023): one affine translator per layer, trained to match the final layer.

TL_l(h) = LogitLens(h + A_l h + b_l), A_l and b_l zero-initialised, trained to minimise
KL(p_final || p_lens) with SGD + Nesterov momentum, weight decay, gradient clipping and linear decay.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..atomic import atomic_dir
from ..capture.grad_hooks import frozen_weights
from ..errors import InputError, StoreError
from ..provenance import model_fingerprint
from .divergence import kl_to_final, row_dot
from .logit import Lens
from .unembed import Unembed

if TYPE_CHECKING:
    from ..model import Model


class TunedLens(Lens):
    """A learned affine translator per layer before the model's own unembedding (the last layer is identity)."""

    name = "tuned"

    def __init__(self, unembed: Unembed, n_layers: int, d_model: int, info: dict[str, Any]):
        super().__init__(unembed)
        self.translators = torch.nn.ModuleList(torch.nn.Linear(d_model, d_model) for _ in range(n_layers))
        for t in self.translators:
            torch.nn.init.zeros_(t.weight)
            torch.nn.init.zeros_(t.bias)
        self.info = info

    @classmethod
    def from_model(cls, model: Model, stack: str | None = None) -> TunedLens:
        stack = stack or ("decoder" if model.family != "encoder" else "encoder")
        info = {"model": model.name, "architecture": model.architecture, "stack": stack,
                "fingerprint": model_fingerprint(model), "n_layers": model.n_layers[stack], "d_model": model.d_model}
        lens = cls(Unembed(model, stack), model.n_layers[stack], model.d_model, info)
        return lens.to(model.device)

    def transform_hidden(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        if layer >= len(self.translators):
            return h
        t = self.translators[layer]
        return h + t(h.to(t.weight.dtype)).to(h.dtype)

    def translator_parameters(self):
        return self.translators.parameters()

    # -- training ----------------------------------------------------------------------------
    def fit(self, model: Model, texts: Sequence[Any], *, steps: int = 250, batch_size: int = 8, lr: float = 1.0,
            momentum: float = 0.9, weight_decay: float = 1e-3, clip: float = 1.0, seed: int = 0,
            truncate: bool = True, progress: bool = True) -> list[float]:
        """Train the translators on ``texts``; returns the loss (mean KL over layers and tokens) per step."""
        self._check(model)
        if not texts:
            raise InputError("the tuned lens needs training texts.")
        stack = self.info["stack"]
        sites = model.sites(stack=stack, layer=0, kind="resid_pre") + model.sites(stack=stack, kind="resid_post")
        opt = torch.optim.SGD(self.translator_parameters(), lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
        rng = random.Random(seed)
        torch.manual_seed(seed)
        losses: list[float] = []
        with frozen_weights(self.unembed, trainable=list(self.translator_parameters())):  # the model's own stay as they are
            for _ in tqdm(range(steps), desc="tuned lens", disable=not progress, unit="step"):
                batch = [texts[rng.randrange(len(texts))] for _ in range(batch_size)]
                cache = model.trace(batch, sites=sites, truncate=truncate)
                opt.zero_grad(set_to_none=True)
                losses.append(self._backward_kl(cache.accumulated_resid(stack), cache.logits, cache.mask(stack)))
                torch.nn.utils.clip_grad_norm_(self.translator_parameters(), clip)
                opt.step()
                sched.step()
        return losses

    def _backward_kl(self, states: torch.Tensor, final_logits: torch.Tensor, mask: torch.Tensor) -> float:
        """Accumulate the gradient of the mean KL over layers and real tokens; returns that mean.

        Padding is dropped before the unembedding, and each layer's loss is back-propagated at once,
        so only one layer's ``[tokens, vocab]`` logits are alive at a time.
        """
        states = states[:, mask]  # [layer, token, d]
        final_logp = final_logits[mask].float().log_softmax(-1)
        p_final = final_logp.exp()
        neg_entropy_final = row_dot(p_final, final_logp)
        scale = 1.0 / (states.shape[1] * len(self.translators))
        total = 0.0
        for layer in range(len(self.translators)):
            loss = kl_to_final(self(states[layer], layer).float(), p_final, neg_entropy_final) * scale
            loss.backward()
            total += float(loss.detach())
        return total

    # -- saving ------------------------------------------------------------------------------
    def _check(self, model: Model) -> None:
        if model_fingerprint(model) != self.info["fingerprint"]:
            raise StoreError(f"this tuned lens was trained for {self.info['model']!r} ({self.info['architecture']}); "
                             f"it does not fit {model.name!r}. Train one for this model with TunedLens.from_model(model).fit(...).")

    def save(self, path: str | Path) -> Path:
        """Write ``translators.safetensors`` and ``lens.json`` into folder ``path`` (atomically)."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.translators.state_dict().items()}, tmp / "translators.safetensors")
            (tmp / "lens.json").write_text(json.dumps({"format": "trilens.TunedLens/1", **self.info}, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path, model: Model) -> TunedLens:
        """Load a tuned lens for ``model``; refuses a lens trained for another model."""
        path = Path(path)
        try:
            info = json.loads((path / "lens.json").read_text())
            state = load_file(path / "translators.safetensors")
        except (OSError, ValueError) as err:
            raise StoreError(f"{path} does not hold a saved tuned lens ({err}).") from err
        info.pop("format", None)
        lens = cls(Unembed(model, info["stack"]), info["n_layers"], info["d_model"], info)
        lens._check(model)
        lens.translators.load_state_dict(state)
        return lens.to(model.device)
