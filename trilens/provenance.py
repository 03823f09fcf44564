"""Where a result came from: trilens's version, the model and a fingerprint of its weights, the method, the date."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import torch

from .version import __version__

if TYPE_CHECKING:
    from .model import Model


def model_fingerprint(model: Model) -> str:
    """A hash of the config and of a sample of every parameter: a different model -> a different hash.

    Kept on the model while its config object stays and no parameter is replaced or changed in place (torch counts
    in-place writes per tensor), so results of many small runs do not re-hash the weights each time.
    """
    params = list(model.hf_model.named_parameters())
    # a parameter offloaded by accelerate is a meta tensor between forwards (an inference tensor, without a version,
    # after a forward under inference_mode); its values live in its offload hook
    state = (id(model.config), *((id(p), p.data_ptr(), -1 if p.is_inference() else p._version) for _, p in params))
    cached = getattr(model, "_fingerprint", None)
    if cached is not None and cached[0] == state:
        return cached[1]
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    with torch.inference_mode():
        for name, p in params:
            h.update(name.encode())
            h.update(_stored(model.hf_model, name, p).detach().flatten()[:64].float().cpu().numpy().tobytes())
    value = h.hexdigest()[:32]
    model._fingerprint = (state, value)
    return value


def _stored(hf: torch.nn.Module, name: str, p: torch.Tensor) -> torch.Tensor:
    """A parameter's values: where ``accelerate`` offloaded it to disk or CPU (it is on the meta device until its
    module runs), the values its hook keeps for it, so an offloaded model hashes as the same model loaded whole."""
    if p.device.type != "meta":
        return p
    owner, _, local = name.rpartition(".")
    weights = getattr(getattr(hf.get_submodule(owner), "_hf_hook", None), "weights_map", None)
    if weights is None or local not in weights:
        raise RuntimeError(f"parameter {name} is on the meta device and no offload hook holds its values.")
    return weights[local]


def jsonable(value: Any) -> Any:
    """``value`` with tensors, tuples and other objects turned into what JSON holds (lists, numbers, strings)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return getattr(value, "__name__", None) or type(value).__name__


def model_provenance(model: Model, **extra: Any) -> dict[str, Any]:
    """Which model: its name, architecture, family and weights fingerprint (plus ``extra`` facts)."""
    return {"model": model.name, "architecture": model.architecture, "family": model.family,
            "fingerprint": model_fingerprint(model), **jsonable(extra)}


def provenance(model: Model | None, method: str, params: dict[str, Any] | None = None, n_inputs: int | None = None,
               /, **extra: Any) -> dict[str, Any]:
    """The ``info`` dict every result carries; ``extra`` keys are method-specific facts kept beside it."""
    info: dict[str, Any] = {"trilens": __version__, "method": method}
    if model is not None:
        info.update(model_provenance(model))
    info.update(params=jsonable(params or {}), n_inputs=n_inputs,
                date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    info.update(jsonable(extra))
    return info
