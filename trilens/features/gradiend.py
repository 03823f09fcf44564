"""GRADIEND (Drechsel & Herbold 2025): an encoder that reads a weight gradient as one feature value (class A about
+1, class B about -1, neutral text near 0) and a decoder that maps a feature value back to a direction in weight space.

``Gradiend`` is what training returns: the trained weights, the parameters and coordinates they read, the classes,
the training curve and the held-out evaluation. It follows the result contract (``save`` / ``Gradiend.load`` /
``trilens.load_result``, ``to_frame`` and ``figure`` of the training curve).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..results import Result, register_result
from .data import FeatureRow
from .params import ParamLayout

if TYPE_CHECKING:
    from ..model import Model
    from .encodings import EncodingResult


class GradiendModule(torch.nn.Module):
    """h = tanh(W_e x + b_e) with ``k`` feature neurons; x_hat = W_d h + b_d. The paper's initialisation: W_e, b_e as
    ``nn.Linear``'s default, W_d and b_d uniform in (-a, a) with a = max |W_e|."""

    def __init__(self, n: int, k: int = 1, *, generator: torch.Generator | None = None):
        super().__init__()
        bound = 1 / n ** 0.5  # nn.Linear's default: U(-1/sqrt(n), 1/sqrt(n)) for weight and bias
        self.encoder_weight = torch.nn.Parameter(torch.empty(k, n).uniform_(-bound, bound, generator=generator))
        self.encoder_bias = torch.nn.Parameter(torch.empty(k).uniform_(-bound, bound, generator=generator))
        a = float(self.encoder_weight.detach().abs().max())
        self.decoder_weight = torch.nn.Parameter(torch.empty(n, k).uniform_(-a, a, generator=generator))
        self.decoder_bias = torch.nn.Parameter(torch.empty(n).uniform_(-a, a, generator=generator))

    @property
    def n_features(self) -> int:
        return self.encoder_weight.shape[0]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[rows, n]`` gradients -> ``[rows, k]`` feature values."""
        return torch.tanh(torch.nn.functional.linear(x, self.encoder_weight, self.encoder_bias))

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """``[rows, k]`` feature values -> ``[rows, n]`` weight-space directions."""
        return torch.nn.functional.linear(h, self.decoder_weight, self.decoder_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def flip(self, feature: int) -> None:
        """Negate feature ``feature`` (h -> -h) without changing any reconstruction: W_e, b_e and W_d's column flip,
        b_d stays."""
        self.encoder_weight[feature].neg_()
        self.encoder_bias[feature].neg_()
        self.decoder_weight[:, feature].neg_()


@register_result
class Gradiend(Result):
    """A trained GRADIEND: ``module`` reads the gradient of ``layout``'s parameters (only coordinates ``keep`` when
    pre-pruned) for the ``source`` pairing; feature 0 is +1 for ``classes[0]``.

    ``curve`` holds the held-out |Pearson r| per evaluation (seed, step, r, loss); ``evaluation`` the held-out
    summary of the kept checkpoint."""

    def __init__(self, *, module: GradiendModule, layout: ParamLayout, keep: torch.Tensor | None, classes: Sequence[str],
                 class_tokens: dict[str, list[Any]], source: str, target: str, curve: list[dict[str, Any]],
                 evaluation: dict[str, Any], info: dict[str, Any]):
        self.module, self.layout, self.keep = module, layout, keep
        self.classes = tuple(classes)
        self.class_tokens, self.source, self.target = class_tokens, source, target
        self.curve, self.evaluation, self.info = curve, evaluation, info

    @property
    def n_coordinates(self) -> int:
        return self.layout.size if self.keep is None else int(self.keep.numel())

    def __repr__(self) -> str:
        r = self.evaluation.get("abs_r")
        r = "?" if r is None else f"{r:.3f}"
        return (f"Gradiend({self.classes[0]} +1 / {self.classes[1]} -1, {self.module.n_features} feature(s) over "
                f"{self.n_coordinates:,} weight coordinates, held-out |r| {r}, source {self.source})")


    # -- reading and writing weight space ----------------------------------------------------------------------
    def reader(self, model: Model):
        """A ``GradientReader`` of this GRADIEND's parameters and coordinates on ``model``."""
        from .gradients import GradientReader

        return GradientReader(model, self.layout, self.keep)

    def encode_gradients(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module.encode(x.to(self.module.encoder_weight.dtype))

    def encode(self, model: Model, rows: Sequence[FeatureRow | str], *, labels: Sequence[str | None] | None = None,
               progress: bool = False) -> EncodingResult:
        """The feature value of each row (a ``FeatureRow``, or a text with its class slot: the gradient is then taken
        for the model's own top prediction there) -> ``EncodingResult``."""
        from .encodings import encode_rows

        return encode_rows(self, model, rows, labels=labels, progress=progress)

    def h_toward(self, cls: str) -> float:
        """The feature value whose rewrite θ + α·dec(h) (α > 0) moves the model toward class ``cls``.

        The decoder reconstructs a loss gradient, and adding a loss gradient raises that loss: with the ``diff`` or
        ``factual`` target, dec(+1) raises class A's loss, so toward A is h = -1; with the ``counterfactual`` target,
        dec(+1) raises class B's loss on class-A rows, so toward A is h = +1."""
        if cls not in self.classes:
            raise InputError(f"class must be one of {list(self.classes)}, not {cls!r}.")
        sign = 1.0 if self.target == "counterfactual" else -1.0
        return sign if cls == self.classes[0] else -sign

    def direction(self, h: float | Sequence[float]) -> torch.Tensor:
        """dec(h): the weight-space direction ``[n_coordinates]`` for feature value(s) ``h``."""
        h_t = torch.as_tensor(h, dtype=self.module.decoder_weight.dtype).reshape(1, -1)
        if h_t.shape[1] != self.module.n_features:
            raise InputError(f"this GRADIEND has {self.module.n_features} feature(s); got {h_t.shape[1]} value(s).")
        with torch.no_grad():
            return self.module.decode(h_t)[0]

    def decoder_weights(self, feature: int = 0) -> torch.Tensor:
        """|W_d| of ``feature`` over the full parameter layout ``[layout.size]`` (zero where pruned away)."""
        w = self.module.decoder_weight.detach()[:, feature].abs()
        if self.keep is None:
            return w
        return torch.zeros(self.layout.size, dtype=w.dtype).index_copy_(0, self.keep, w)

    # -- the result contract -----------------------------------------------------------------------------------
    def to_frame(self):
        """The training curve: one row per (seed, evaluated step)."""
        import pandas as pd

        return pd.DataFrame(self.curve, columns=["seed", "step", "r", "abs_r", "loss"])

    def figure(self):
        """Held-out |Pearson r| over training steps, one line per seed."""
        from ..viz import training_curve

        frame = self.to_frame()
        return training_curve(frame, title=f"GRADIEND training: held-out |r| ({self.classes[0]} vs {self.classes[1]})")

    def _state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        data = {"layout": self.layout.to_dict(), "classes": list(self.classes), "class_tokens": self.class_tokens,
                "source": self.source, "target": self.target, "curve": self.curve, "evaluation": self.evaluation,
                "n_features": self.module.n_features, "n": self.n_coordinates}
        tensors = {f"module.{k}": v for k, v in self.module.state_dict().items()}
        if self.keep is not None:
            tensors["keep"] = self.keep
        return data, tensors

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> Gradiend:
        module = GradiendModule(int(data["n"]), int(data["n_features"]))
        module.load_state_dict({k.removeprefix("module."): v for k, v in tensors.items() if k.startswith("module.")})
        return cls(module=module, layout=ParamLayout.from_dict(data["layout"]), keep=tensors.get("keep"),
                   classes=data["classes"], class_tokens=data["class_tokens"], source=data["source"],
                   target=data["target"], curve=data["curve"], evaluation=data["evaluation"], info=info)
