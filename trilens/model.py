"""``Model``: one wrapped HF model of any family, with its tokenizer, stacks, sites and bridge."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from .architectures import STACK_PREFIXES
from .inputs import Batch, encode
from .sites import SiteIndex

if TYPE_CHECKING:
    from .capture.cache import ActivationCache
    from .capture.generate import Generation
    from .capture.gradient_result import GradientResult
    from .capture.interventions import Intervention
    from .capture.objectives import Objective


class Model:
    """A transformer of one of the three families, wrapped by TransformerLens's ``TransformerBridge``.

    Build it with ``trilens.load``. The HF model keeps its own forward, so logits equal HF's; hooks
    are the bridge's TransformerLens-named hook points.
    """

    def __init__(self, bridge: Any, tokenizer: Any, family: str, name: str, *, has_trained_head: bool = True):
        self.bridge = bridge
        self.hf_model = bridge.original_model
        self.tokenizer = tokenizer
        self.family = family
        self.name = name
        self.has_trained_head = has_trained_head
        self.language_map: dict[str, str] | None = None  # token -> language (a folder's languages.json)
        from .capture.bridge_settings import firing_sites

        # only the hook points that fire (some need a bridge setting, turned on for the runs that use them)
        self.site_probe = firing_sites(bridge, self.hf_model, family)
        self.site_index = SiteIndex(self.site_probe.names, family, never_fire=self.site_probe.never)
        self.stacks: tuple[str, ...] = tuple(STACK_PREFIXES[family])
        self.n_layers: dict[str, int] = dict(self.site_index.n_layers)

    # -- facts about the model -------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.hf_model.config

    @property
    def architecture(self) -> str:
        return type(self.hf_model).__name__

    @property
    def d_model(self) -> int:
        c = self.config
        return getattr(c, "d_model", None) or getattr(c, "hidden_size", None) or c.n_embd

    @property
    def n_heads(self) -> dict[str, int]:
        c = self.config
        if self.family == "encoder-decoder":
            enc = getattr(c, "encoder_attention_heads", None) or c.num_heads
            dec = getattr(c, "decoder_attention_heads", None) or getattr(c, "num_decoder_heads", None) or c.num_heads
            return {"encoder": enc, "decoder": dec}
        n = getattr(c, "num_attention_heads", None) or getattr(c, "n_head", None)
        return {self.stacks[0]: n}

    @property
    def vocab_size(self) -> int:
        return self.hf_model.get_output_embeddings().weight.shape[0] if self.hf_model.get_output_embeddings() is not None else self.config.vocab_size

    @property
    def max_length(self) -> int | None:
        """The longest input the model's position embeddings allow (None: no fixed limit, e.g. T5)."""
        c = self.config
        n = getattr(c, "n_positions", None) or getattr(c, "max_position_embeddings", None)
        if n is None or getattr(c, "model_type", "") == "t5":
            return None
        if getattr(c, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            n -= (c.pad_token_id or 0) + 1  # RoBERTa positions start after the padding index
        return int(n)

    @property
    def pad_token_id(self) -> int:
        for src in (self.tokenizer, self.config):
            pid = getattr(src, "pad_token_id", None) if src is not None else None
            if pid is not None:
                return int(pid)
        eos = getattr(self.config, "eos_token_id", None)
        return int(eos[0] if isinstance(eos, list) else eos or 0)

    @property
    def decoder_start_token_id(self) -> int:
        c = self.config
        start = getattr(c, "decoder_start_token_id", None)
        if start is None:
            start = getattr(getattr(self.hf_model, "generation_config", None), "decoder_start_token_id", None)
        return int(start if start is not None else self.pad_token_id)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device the forward starts on (with a ``device_map``, where the embeddings run)."""
        from .devices import execution_device

        return execution_device(self.hf_model)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype

    def __repr__(self) -> str:
        layers = ", ".join(f"{s}: {n} layers" for s, n in self.n_layers.items())
        return f"Model({self.name!r}, {self.architecture}, family={self.family!r}, {layers}, d_model={self.d_model})"

    def info(self) -> dict[str, Any]:
        """A JSON-ready description: family, stacks, layer counts, sizes, site kinds."""
        return {
            "name": self.name, "architecture": self.architecture, "family": self.family,
            "stacks": {s: {"layers": self.n_layers[s], "heads": self.n_heads[s]} for s in self.stacks},
            "d_model": self.d_model, "vocab_size": self.vocab_size, "max_length": self.max_length,
            "dtype": str(self.dtype).removeprefix("torch."), "device": str(self.device),
            "has_trained_head": self.has_trained_head, "site_kinds": self.site_index.kinds,
            "n_sites": len(self.site_index.names), "placement": self.placement(),
        }

    @property
    def result_device(self) -> torch.device | None:
        """Where captured activations go unless an analysis is told (``device=``): a model placed across devices
        gathers them on the device its forward starts on; a model in one piece leaves each where it was made."""
        return self.device if self.placement() else None

    def placement(self) -> dict[str, str] | None:
        """Where each part of the model lives when ``accelerate`` placed it (``trilens.load(..., device_map=...)``):
        module -> device ("disk" and "cpu" for offloaded layers, which run on the first device); None when whole."""
        device_map = getattr(self.hf_model, "hf_device_map", None)
        return {name: str(dev) for name, dev in device_map.items()} if device_map else None

    # -- sites -------------------------------------------------------------------------------
    def sites(
        self,
        stack: str | None = None,
        layer: int | Sequence[int] | None = None,
        kind: str | Sequence[str] | None = None,
    ) -> list[str]:
        """Hook names, filtered by stack, layer and kind (see ``trilens.sites.KIND_SUFFIXES``)."""
        return self.site_index.select(stack=stack, layer=layer, kind=kind)

    def site(self, kind: str, layer: int, stack: str | None = None) -> str:
        """The one hook name of ``kind`` at ``layer`` (of ``stack``, needed on encoder-decoders)."""
        return self.site_index.name(kind, layer, stack)

    # -- running -----------------------------------------------------------------------------
    def encode(self, inputs: Any, *, truncate: bool = False, padding_side: str = "right") -> Batch:
        """Tokenize and pad ``inputs`` (texts, ids, or (source, target) pairs)."""
        return encode(self, inputs, truncate=truncate, padding_side=padding_side)

    @contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str, Any]]):
        """Attach ``(hook_name, fn(activation, hook))`` pairs for the duration of the block (turning on, for the
        block only, any bridge setting a hook point needs to fire)."""
        from .capture.bridge_settings import settings_for

        fwd_hooks = list(fwd_hooks)
        for name, _ in fwd_hooks:
            self.site_index.site(name)  # a name that never fires here fails now, with suggestions
        with settings_for(self.bridge, [n for n, _ in fwd_hooks], self.site_probe), self.bridge.hooks(fwd_hooks=fwd_hooks):
            yield self

    def trace(
        self,
        inputs: Any,
        sites: str | Sequence[str] = "resid_post",
        *,
        positions: Any = None,
        dtype: Any = None,
        device: Any = None,
        interventions: Sequence[Intervention] = (),
        truncate: bool = False,
        batch_size: int | None = None,
    ) -> ActivationCache:
        """Run ``inputs`` once and capture ``sites`` (hook names or kinds) -> ``ActivationCache``."""
        from .capture.trace import trace

        return trace(self, inputs, sites, positions=positions, dtype=dtype, device=device,
                     interventions=interventions, truncate=truncate, batch_size=batch_size)

    def run(self, inputs: Any, *, interventions: Sequence[Intervention] = (), truncate: bool = False) -> torch.Tensor:
        """Plain forward (with optional interventions) -> logits ``[batch, pos, vocab]``."""
        from .capture.trace import run

        return run(self, inputs, interventions=interventions, truncate=truncate)

    def generate(
        self,
        inputs: Any,
        *,
        capture: str | Sequence[str] | None = None,
        max_new_tokens: int = 20,
        interventions: Sequence[Intervention] = (),
        dtype: Any = None,
        device: Any = None,
        truncate: bool = False,
        **generate_kwargs: Any,
    ) -> Generation:
        """Generate from ``inputs`` and capture ``capture`` sites at every step -> ``Generation``."""
        from .capture.generate import generate

        return generate(self, inputs, capture=capture, max_new_tokens=max_new_tokens, interventions=interventions,
                        dtype=dtype, device=device, truncate=truncate, **generate_kwargs)

    def gradients(
        self,
        inputs: Any,
        objective: Objective | None = None,
        *,
        sites: str | Sequence[str] = (),
        embeddings: bool = True,
        interventions: Sequence[Intervention] = (),
        step_batch: int | None = None,
        batch_size: int | None = None,
        truncate: bool = False,
    ) -> GradientResult:
        """One forward pass with gradients: activations and gradients of ``objective`` at ``sites`` and at the
        input embeddings -> ``GradientResult`` (see ``trilens.capture.gradients.gradients``)."""
        from .capture.gradients import gradients

        return gradients(self, inputs, objective, sites=sites, embeddings=embeddings, interventions=interventions,
                         step_batch=step_batch, batch_size=batch_size, truncate=truncate)

    def to(self, device: Any) -> Model:
        """Move the model to ``device``, the bridge's views into HF's weights kept as views (``nn.Module.to`` alone
        would copy GPT-2's split q/k/v apart from ``c_attn``)."""
        from .devices import as_device, views_kept
        from .errors import TrilensError

        if self.placement() is not None:
            raise TrilensError("this model was placed by a device_map (see model.placement()); it stays where "
                               "accelerate put it: load it again with another device_map, or without one, instead.")
        with views_kept(self.hf_model):
            self.hf_model.to(as_device(device))
        return self
