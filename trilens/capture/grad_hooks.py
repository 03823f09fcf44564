"""What a forward pass with gradients needs around the model: frozen weights, input embeddings on the autograd path,
the LM head's input, and hook-site tensors kept in the graph. Every context removes what it added, also on error."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from ..errors import TrilensError

if TYPE_CHECKING:
    from ..model import Model


@contextmanager
def frozen_weights(module: torch.nn.Module, trainable: Sequence[torch.nn.Parameter] = ()) -> Iterator[None]:
    """Parameters stop requiring gradients for the block (no weight-gradient graph is recorded, none is kept), except
    ``trainable``, which require them; then every parameter gets its own flag back."""
    chosen = {id(p) for p in trainable}
    before = [(p, p.requires_grad) for p in module.parameters()] + [(p, p.requires_grad) for p in trainable]
    for p, _ in before:
        p.requires_grad_(id(p) in chosen)
    try:
        yield
    finally:
        for p, flag in before:
            p.requires_grad_(flag)


def embedding_modules(model: Model) -> dict[str, torch.nn.Module]:
    """The token-embedding module each stack calls (encoder-decoders often share one): the HF module itself, inside
    the bridge's wrapper, so the bridge's own embedding hooks see the leaf this file makes there."""
    hf = model.hf_model
    if model.family != "encoder-decoder":
        found = {model.stacks[0]: hf.get_input_embeddings()}
    else:
        found = {stack: getattr(part, "embed_tokens", None) or part.get_input_embeddings()
                 for stack, part in (("encoder", hf.get_encoder()), ("decoder", hf.get_decoder()))}
    return {stack: getattr(module, "original_component", None) or module for stack, module in found.items()}


@contextmanager
def embedding_calls(model: Model, on_call: Callable[[str, torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
    """During the block, each call of a stack's token-embedding module passes ``(stack, output)`` to ``on_call``; what
    it returns (unless None) replaces the output. A module shared by both stacks of an encoder-decoder is called by
    the encoder first, then by the decoder."""
    by_module: dict[int, tuple[torch.nn.Module, list[str]]] = {}
    for stack, module in embedding_modules(model).items():
        by_module.setdefault(id(module), (module, []))[1].append(stack)

    def make_hook(stacks: list[str]) -> Callable:
        calls = [0]

        def hook(module: torch.nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
            if calls[0] >= len(stacks):
                raise TrilensError("the token embedding was called more often than this model's stacks: trilens cannot "
                                   "tell which call embeds which input; please report the architecture.")
            calls[0] += 1
            return on_call(stacks[calls[0] - 1], out)

        return hook

    handles = [module.register_forward_hook(make_hook(stacks)) for module, stacks in by_module.values()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def replaced_embeddings(model: Model, values: dict[str, torch.Tensor]) -> Iterator[None]:
    """During the block, the token embeddings of each stack in ``values`` are ``values[stack]`` (same shape); every
    other stack's are the model's own."""
    def swap(called: str, out: torch.Tensor) -> torch.Tensor | None:
        return _given(values, called, out) if called in values else None

    with embedding_calls(model, swap):
        yield


def _given(values: dict[str, torch.Tensor], stack: str, out: torch.Tensor) -> torch.Tensor:
    """``values[stack]``, which replaces the embedding module's output ``out`` (same shape)."""
    if out.shape != values[stack].shape:
        raise TrilensError(f"the {stack} embeddings have shape {tuple(out.shape)}, the values given "
                           f"{tuple(values[stack].shape)}.")
    return values[stack]


@contextmanager
def input_embeddings(model: Model, values: dict[str, torch.Tensor] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Yields ``{stack: token embeddings}`` filled during the forward: the output of each stack's token-embedding
    module (or ``values[stack]`` in its place, same shape), made a leaf of the autograd graph so every activation after
    it has a gradient path."""
    captured: dict[str, torch.Tensor] = {}
    values = values or {}

    def leaf(stack: str, out: torch.Tensor) -> torch.Tensor:
        if stack in values:
            out = _given(values, stack, out).detach().to(out.dtype)
        captured[stack] = out if out.requires_grad else out.detach().requires_grad_()
        return captured[stack]

    with embedding_calls(model, leaf):
        yield captured


@contextmanager
def head_input(model: Model) -> Iterator[dict[str, torch.Tensor]]:
    """Yields ``{"x": tensor}``: the input of the LM head's output projection (row p of the logits depends on row p
    of it only), filled during the forward."""
    box: dict[str, torch.Tensor] = {}
    head = model.hf_model.get_output_embeddings()
    if head is None:
        yield box
        return

    def pre(module: torch.nn.Module, args: Any) -> None:
        box["x"] = args[0]

    handle = head.register_forward_pre_hook(pre)
    try:
        yield box
    finally:
        handle.remove()


@contextmanager
def head_rows(model: Model, positions: torch.Tensor) -> Iterator[None]:
    """During the block the LM head's output projection sees only ``positions [batch, step]`` of its input, so the
    logits are ``[batch, step, vocab]``."""
    head = model.hf_model.get_output_embeddings()

    def pre(module: torch.nn.Module, args: Any) -> Any:
        x = args[0]
        idx = positions.to(x.device)[..., None].expand(-1, -1, x.shape[-1])
        return (x.gather(1, idx), *args[1:])

    handle = head.register_forward_pre_hook(pre)
    try:
        yield
    finally:
        handle.remove()


# Elementwise activation modules (HF's ``ACT2FN`` classes and torch's), minus those whose backward is already one
# cheap operation (ReLU-like) or nothing (identity).
_PIECEWISE_LINEAR = ("ReLU", "ReLU6", "LeakyReLU", "LinearActivation", "Identity")


def _elementwise_activations() -> set[type]:
    from transformers.activations import ACT2CLS

    classes = {c[0] if isinstance(c, tuple) else c for c in ACT2CLS.values()}
    return {c for c in classes if c.__name__ not in _PIECEWISE_LINEAR}


@contextmanager
def linearized_activations(model: Model, active: bool = True) -> Iterator[int]:
    """Elementwise activations (GELU, SiLU, ...) keep their output but backpropagate by one multiplication with their
    derivative, computed once in the forward pass: ``y + (x - x.detach()) * f'(x)`` has value ``y`` and gradient
    ``f'(x) * g`` exactly, where the activation's own backward recomputes ``f'`` from about a dozen elementwise
    operations at every backward pass (and vmaps each of them when steps are batched). Pays where one forward serves
    many backward passes (per-step gradients; measured in benchmarks/gradients.py). Yields the number of activation
    modules changed (0 when not ``active``)."""
    classes = _elementwise_activations() if active else set()
    modules = [m for m in model.hf_model.modules() if type(m) in classes]

    def hook(module: torch.nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
        x = args[0] if args else None
        if not torch.is_tensor(x) or not x.requires_grad or not torch.is_grad_enabled() or x.shape != out.shape:
            return None
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            (slope,) = torch.autograd.grad(module.forward(leaf), leaf, torch.ones_like(out))
        return out.detach() + (x - x.detach()) * slope

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield len(modules)
    finally:
        for h in handles:
            h.remove()


@contextmanager
def split_encoder(model: Model, active: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Yields ``{"out": E, "leaf": E'}``, filled during the forward of an encoder-decoder: the decoder reads ``E'``, a
    copy of the encoder's output that is a leaf of its own, so a backward pass from the decoder's outputs stops there
    and the encoder's backward (from ``E``) can run later, for many objectives at once."""
    box: dict[str, torch.Tensor] = {}
    if not active or model.family != "encoder-decoder":
        yield box
        return

    def hook(module: torch.nn.Module, args: Any, out: Any) -> Any:
        hidden = out[0]
        if not torch.is_tensor(hidden) or not hidden.requires_grad or "out" in box:
            return None
        box["out"], box["leaf"] = hidden, hidden.detach().requires_grad_()
        if isinstance(out, tuple):
            return (box["leaf"], *out[1:])
        out["last_hidden_state"] = box["leaf"]
        return out

    handle = model.hf_model.get_encoder().register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def keep_hook(store: dict[str, torch.Tensor], name: str, *, own_copy: bool = False) -> Callable:
    """A hook that keeps the activation itself (in the graph, not a copy) and hands it on, so it is the tensor the
    model goes on to use and its gradient is the true derivative. Handing it on matters where the bridge shows a hook
    a converted view of the activation (GPT-2's per-head ``z``, reshaped from the flat tensor the output projection
    reads): the model then continues from that view (converted back), not from the original beside it.

    ``own_copy``: keep and hand on a copy instead, so the gradient is the one through this hook's reader alone (the
    original goes on to every other reader: the residual stream around a norm, the other layers' cross-attention)."""

    def hook(x: torch.Tensor, hook: Any = None) -> torch.Tensor:
        store[name] = x.clone() if own_copy else x
        return store[name]

    return hook
