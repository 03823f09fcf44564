"""What a run must leave as it found it: every hook on every module, the weights, their flags and gradients."""

from __future__ import annotations

import torch
import torch.nn.modules.module as torch_module

_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_DICTS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks", "_global_forward_hooks_with_kwargs", "_global_forward_hooks_always_called")
_SETTINGS = ("use_attn_result", "use_split_qkv_input", "use_attn_in", "use_hook_mlp_in")


def hook_snapshot(*roots: torch.nn.Module) -> dict:
    """``{(module path, kind): ids}`` for every torch hook, TransformerLens hook-point handle and patched forward."""
    snap = {}
    for r, root in enumerate(roots):
        for path, module in root.named_modules(remove_duplicate=False):
            key = f"{r}:{path}"
            for kind in _HOOK_DICTS:
                hooks = getattr(module, kind, None)
                if hooks:
                    snap[(key, kind)] = tuple((k, id(v)) for k, v in hooks.items())
            for kind in ("fwd_hooks", "bwd_hooks"):
                handles = getattr(module, kind, None)
                if handles:
                    snap[(key, kind)] = tuple((id(h), h.is_permanent) for h in handles)
            if "forward" in module.__dict__:
                snap[(key, "forward")] = id(module.__dict__["forward"])
    for kind in _GLOBAL_DICTS:
        hooks = getattr(torch_module, kind, None)
        if hooks:
            snap[("<global>", kind)] = tuple((k, id(v)) for k, v in hooks.items())
    return snap


def model_state(model) -> dict:
    """Hooks, bridge settings, and per parameter: requires_grad, whether it has a .grad, a checksum of its values."""
    params = {n: (p.requires_grad, p.grad is not None, float(p.detach().double().sum()))
              for n, p in model.hf_model.named_parameters()}
    settings = {s: bool(getattr(model.bridge.cfg, s, False)) for s in _SETTINGS}
    return {"hooks": hook_snapshot(model.bridge, model.hf_model), "params": params, "settings": settings}
