"""The attribution methods (captum's classes) and step scores trilens offers, with what each needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError


@dataclass(frozen=True)
class MethodSpec:
    """How trilens drives one captum method.

    ``baseline``: ``"none"`` (takes none), ``"zeros"`` (default zero embeddings) or ``"required"`` (give one).
    ``kind``: ``"gradient"`` (inputs are embeddings), ``"layer"`` (inputs are ids, the embedding layer is
    attributed), ``"perturbation"`` (forward passes only). ``share``: equal rows run once (see ``forward``); DeepLift
    needs plain autograd for its hooks. ``steps``: takes ``n_steps`` (interpolation points); ``delta``: returns a
    convergence delta."""

    name: str
    captum: str
    kind: str
    baseline: str
    description: str
    share: bool = True
    steps: bool = False
    delta: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)


METHODS = {m.name: m for m in (
    MethodSpec("saliency", "Saliency", "gradient", "none", "the gradient of the step's score (signed; "
               "method_args={'abs': True} for captum's absolute value)", defaults={"abs": False}),
    MethodSpec("input_x_gradient", "InputXGradient", "gradient", "none", "embedding x gradient"),
    MethodSpec("integrated_gradients", "IntegratedGradients", "gradient", "zeros",
               "path integral of gradients from a baseline (Sundararajan et al. 2017)", steps=True, delta=True),
    MethodSpec("layer_integrated_gradients", "LayerIntegratedGradients", "layer", "zeros",
               "integrated gradients at the embedding layer, baseline given as tokens (pad by default)", steps=True,
               delta=True),
    MethodSpec("deeplift", "DeepLift", "gradient", "zeros", "DeepLift rescale rule (Shrikumar et al. 2017)",
               share=False, delta=True),
    MethodSpec("gradient_shap", "GradientShap", "gradient", "required",
               "expected gradients between random baselines and the input (Lundberg & Lee 2017)", delta=True,
               defaults={"n_samples": 5, "stdevs": 0.0}),
    MethodSpec("occlusion", "Occlusion", "perturbation", "zeros", "score change when one token's embedding is "
               "replaced by the baseline (Zeiler & Fergus 2014)"),
    MethodSpec("feature_ablation", "FeatureAblation", "perturbation", "zeros",
               "score change when each token is ablated to the baseline, one token per feature"),
)}
ALIASES = {"ig": "integrated_gradients", "lig": "layer_integrated_gradients", "ixg": "input_x_gradient",
           "grad": "saliency", "gradients": "saliency", "shap": "gradient_shap", "ablation": "feature_ablation"}

# Step scores: name -> what it is. Read from the logits at each step's position.
STEP_SCORES = {
    "probability": "p(token | prefix)",
    "logprob": "log p(token | prefix)",
    "entropy": "entropy of the next-token distribution (nats)",
    "cross_entropy": "-log p(token | prefix)",
    "rank": "rank of the token among the vocabulary (0 = top prediction)",
    "contrast_prob_diff": "p(token) - p(foil) (needs contrast=)",
}


def method_spec(name: str) -> MethodSpec:
    """The spec of ``name`` (or an alias); an error lists the valid names."""
    key = ALIASES.get(name, name)
    if key not in METHODS:
        raise InputError(f"unknown attribution method {name!r}; choose from {', '.join(METHODS)} "
                         f"(aliases: {', '.join(f'{a}={m}' for a, m in ALIASES.items())}).")
    return METHODS[key]


def check_step_scores(names: Any, contrastive: bool) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)
    bad = [n for n in names if n not in STEP_SCORES]
    if bad:
        raise InputError(f"unknown step score {bad[0]!r}; choose from {', '.join(STEP_SCORES)}.")
    if "contrast_prob_diff" in names and not contrastive:
        raise InputError("the step score 'contrast_prob_diff' needs a contrast: pass contrast=.")
    return names


def list_attribution_methods() -> dict[str, dict[str, str]]:
    """``{"methods": {name: description}, "step_scores": {name: description}}``."""
    return {"methods": {m.name: f"{m.description} [captum.attr.{m.captum}; baseline: {m.baseline}]"
                        for m in METHODS.values()},
            "step_scores": dict(STEP_SCORES)}
