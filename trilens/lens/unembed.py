"""``Unembed``: the model's own final norm + LM head, applied to any residual stream state.

Module paths come from the bridge's component mapping (data, not per-architecture code); the
few places where a model's forward does more than norm + head follow that model's own code:
T5 rescales by d_model^-0.5 (``config.scale_decoder_outputs``), BART and Marian add
``final_logits_bias``, and masked LMs run their whole prediction head (transform + decoder).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import TrilensError

if TYPE_CHECKING:
    from ..model import Model


def _module(root: torch.nn.Module, path: str | None) -> torch.nn.Module | None:
    if not path:
        return None
    mod: Any = root
    for part in path.split("."):
        mod = getattr(mod, part, None)
        if mod is None:
            return None
    return mod


def _mapping_path(model: Model, key: str) -> str | None:
    comp = model.bridge.adapter.component_mapping.get(key)
    return getattr(comp, "name", None) if comp is not None else None


class Unembed(torch.nn.Module):
    """Maps a residual stream state of one stack to vocabulary logits, exactly as the model's forward does."""

    def __init__(self, model: Model, stack: str | None = None):
        super().__init__()
        stack = stack or ("decoder" if model.family != "encoder" else "encoder")
        if model.family == "encoder-decoder" and stack == "encoder":
            raise TrilensError("the encoder of an encoder-decoder has no LM head; use the decoder lens to read "
                               "encoder layers (trilens.lens.decoder_lens).")
        hf = model.hf_model
        self.stack = stack
        self.scale = 1.0
        self.bias: torch.Tensor | None = None
        unembed_path = _mapping_path(model, "unembed")
        if model.family == "encoder":
            # the masked-LM head is one module (BERT's cls, RoBERTa's lm_head): transform, norm, decoder
            self.norm: torch.nn.Module | None = None
            self.head = _module(hf, unembed_path.split(".")[0]) if unembed_path else None
        else:
            norm_key = "decoder_ln_final" if model.family == "encoder-decoder" else "ln_final"
            self.norm = _module(hf, _mapping_path(model, norm_key))
            if self.norm is None and model.family == "encoder-decoder":
                self.norm = _module(hf, "model.decoder.layer_norm")  # mBART-style final norm, if any
            self.head = hf.get_output_embeddings()
            if getattr(model.config, "scale_decoder_outputs", False):
                self.scale = model.d_model ** -0.5
            self.bias = getattr(hf, "final_logits_bias", None)
        if self.head is None:
            raise TrilensError(f"{model.architecture} has no LM head to read the residual stream with "
                               "(a headless encoder?): the logit lens needs one.")
        self.fingerprint = f"{model.architecture}:{model.d_model}:{model.vocab_size}"

    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        """The final norm (and T5's rescaling) that the model applies before its head."""
        if self.norm is not None:
            h = self.norm(h)
        return h * self.scale if self.scale != 1.0 else h

    def forward(self, h: torch.Tensor, *, normed: bool = False) -> torch.Tensor:
        """Logits for residual states ``h`` ``[..., d_model]`` (``normed``: the final norm was already applied)."""
        x = h if normed else self.normalize(h)
        logits = self.head(x)
        return logits + self.bias.to(logits.dtype) if self.bias is not None else logits


def encoder_final_norm(model: Model) -> torch.nn.Module | None:
    """The encoder's final norm of an encoder-decoder (None for post-LN models such as BART and Marian)."""
    hf = model.hf_model
    return _module(hf, _mapping_path(model, "encoder_ln_final")) or _module(hf, "model.encoder.layer_norm")
