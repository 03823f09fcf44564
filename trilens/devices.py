"""Validate user-given dtypes and devices once, with errors that say what is allowed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .errors import TrilensError

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64,
}


def as_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A floating torch dtype from a name or dtype; None stays None."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise TrilensError(f"dtype {dtype} is not a floating-point type; use one of {sorted(set(_DTYPES))}.")
        return dtype
    key = str(dtype).removeprefix("torch.")
    if key not in _DTYPES:
        raise TrilensError(f"unknown dtype {dtype!r}; use one of {sorted(set(_DTYPES))}.")
    return _DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def as_device(device: str | torch.device | None) -> torch.device | None:
    """A torch device that exists on this machine; None stays None."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise TrilensError(f"{device!r} is not a device name; use 'cpu', 'cuda', 'cuda:0' or 'mps'.") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrilensError(f"device {device!r} was asked for but CUDA is not available here; use device='cpu'.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrilensError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s).")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise TrilensError(f"device {device!r} was asked for but MPS is not available here; use device='cpu'.")
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise TrilensError(f"device type {dev.type!r} is not supported; use 'cpu', 'cuda' or 'mps'.")
    return dev


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s forward starts: its first parameter that holds data. A model dispatched by ``accelerate``
    with layers offloaded to disk or CPU keeps those layers' parameters on the meta device until their forward runs."""
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def offloaded_modules(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules of ``module`` whose weights ``accelerate`` offloaded (to CPU or disk); none without accelerate."""
    try:
        from accelerate.utils import has_offloaded_params
    except ImportError:  # no accelerate: nothing can be offloaded
        return []
    return [m for m in module.modules() if has_offloaded_params(m)]


@contextmanager
def onloaded(module: torch.nn.Module) -> Iterator[None]:
    """Within the block, every layer that ``accelerate`` offloaded (to CPU or disk) holds its weights on its execution
    device, and its hook leaves them there: ``torch.func`` transforms (forward-mode derivatives) cannot run the hook's
    loading, which reads the data pointers of tensors that batched tensors do not have. Costs the offloaded layers'
    memory for the block; a model that is not offloaded is left as it is."""
    from contextlib import ExitStack

    offloaded = offloaded_modules(module)
    if not offloaded:
        yield
        return
    from accelerate.utils import align_module_device

    hooks = [m._hf_hook for m in offloaded]
    with ExitStack() as stack:
        for m in offloaded:
            stack.enter_context(align_module_device(m))
        for hook in hooks:
            hook.offload = False
        try:
            yield
        finally:
            for hook in hooks:
                hook.offload = True


def with_weights_onloaded(fn):
    """Decorator for an analysis ``fn(model, ...)`` that reads weights outside the forward (a head's W_O, say): its
    whole run sees offloaded layers' weights on their execution device (``onloaded``)."""
    import functools

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        with onloaded(model.hf_model):
            return fn(model, *args, **kwargs)

    return wrapper


def parameters_by_memory(module: torch.nn.Module) -> dict[int, list[torch.nn.Parameter]]:
    """``module``'s parameters (each once) grouped by the memory they lie in: a group of several holds a parameter and
    views into it (a bridge's split q/k/v of GPT-2's ``c_attn``)."""
    groups: dict[int, list[torch.nn.Parameter]] = {}
    seen: set[int] = set()
    for _, p in module.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            groups.setdefault(p.untyped_storage().data_ptr(), []).append(p)
    return groups


def _shared_views(module: torch.nn.Module) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter, tuple, tuple, int]]:
    """(view, the parameter holding the whole memory, the view's size, stride and offset from that parameter's start)."""
    out = []
    for params in parameters_by_memory(module).values():
        whole = max(params, key=lambda t: t.numel())
        out += [(p, whole, tuple(p.shape), tuple(p.stride()), p.storage_offset() - whole.storage_offset())
                for p in params if p is not whole]
    return out


@contextmanager
def views_kept(module: torch.nn.Module) -> Iterator[None]:
    """``module.to(...)`` inside the block copies every parameter on its own; afterwards each parameter that was a view
    into another one is made a view of that one's new memory again (so writing the whole still changes the view)."""
    views = _shared_views(module)
    yield
    with torch.no_grad():
        for view, whole, size, stride, offset in views:
            view.data = whole.data.as_strided(size, stride, whole.data.storage_offset() + offset)
