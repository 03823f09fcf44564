"""One site read off another: the map from a site's value at one position per row to a later site's value there, with
everything else in the run held, and its Jacobian in forward mode (the linear shortcut's W is its mean).

The map is square (d_model -> d_model), so its Jacobian takes d passes in either mode; forward mode keeps no
activations for a backward pass, so more input directions fit in one batched forward."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from ..devices import onloaded
from ..errors import InputError
from ..inputs import Batch
from .trace import require_fired

if TYPE_CHECKING:
    from ..model import Model

# directions x rows x positions x d_model per batched forward, about 4x that in an MLP's hidden layer: vmap's memory
# grows faster than its speed beyond this (GPT-2-small, 25 rows: 16 directions 18.1 s / +122 MB, 32: 18.9 s / +464 MB)
ELEMENTS_PER_FORWARD = 2**18


class _Enough(Exception):
    """Raised by the hook of the last site needed: the rest of the forward (later blocks, the LM head) is skipped."""


@contextmanager
def reading_sites(model: Model, sites: Sequence[str], store: dict[str, torch.Tensor], *, last: str | None,
                  replace: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> Iterator[None]:
    """Keep ``sites``' activations in ``store`` (in firing order) during the block; once ``last`` fires the forward
    stops there (the block ends quietly). ``replace[site]`` maps a site's activation to the one the run goes on with
    (out of place, so ``torch.func`` transforms can run it)."""
    replace = replace or {}

    def hook_for(name: str) -> Callable:
        def hook(x: torch.Tensor, hook: Any = None) -> torch.Tensor | None:
            if name in replace:
                x = replace[name](x)
            store.pop(name, None)  # insertion order = firing order
            store[name] = x
            if name == last:
                raise _Enough
            return x if name in replace else None

        return hook

    with model.hooks([(s, hook_for(s)) for s in dict.fromkeys(sites)]):
        try:
            yield
        except _Enough:
            pass


def read_until(model: Model, batch: Batch, sites: Sequence[str]) -> dict[str, torch.Tensor]:
    """The activations at ``sites`` (in firing order, the last one last), running the model only until the last one
    fires: a site in layer l costs the blocks up to l, not the whole forward and the LM head."""
    store: dict[str, torch.Tensor] = {}
    with torch.no_grad(), reading_sites(model, list(sites), store, last=list(sites)[-1]):
        model.hf_model(**batch.to(model.device).forward_kwargs())
    require_fired(list(sites), store)
    return store


class SiteMap:
    """``y = f(x)``: ``x [rows, d]`` the value of site ``source`` at one position per row (``positions``), ``y`` the
    value of site ``target`` at the same positions, the rest of the run as in ``batch``.

    ``x0``/``y0`` are the unchanged run's values; ``jacobian()`` gives ``∂y/∂x`` per row ``[rows, d_y, d_x]``.

    In a causal decoder-only model nothing before a row's position depends on ``x``, so the map runs that one token
    only, reading the earlier tokens' keys and values from a KV cache of the unchanged run (checked on ``x0``
    against the whole run; where it differs, as with a cache that cannot be read this way, whole sequences run)."""

    def __init__(self, model: Model, batch: Batch, source: str, target: str, positions: torch.Tensor):
        if source == target:
            raise InputError(f"source and target are one site ({source}): the map is the identity.")
        self.model, self.batch, self.source, self.target = model, batch.to(model.device), source, target
        self.rows = torch.arange(len(positions), device=model.device)
        self.positions = positions.to(model.device)
        found = read_until(model, self.batch, [source, target])
        if list(found) != [source, target]:
            raise InputError(f"{target} fires before {source}: the target must come later in the forward pass.")
        self.x0, self.y0 = found[source][self.rows, self.positions], found[target][self.rows, self.positions]
        self._width = found[source].shape[1]
        self._late: dict[str, Any] | None = None
        if model.family == "decoder" and int(self.positions.min()) > 0:
            self._late = self._late_start()
            with torch.no_grad():
                late_y = self(self.x0)
            if not torch.allclose(late_y, self.y0, rtol=1e-4, atol=1e-5 * float(self.y0.abs().max())):
                self._late = None

    def _late_start(self) -> dict[str, Any]:
        """The forward arguments of the one-token runs: each row's token at its position, the KV cache of the tokens
        before it (left-padded, so that the new token is every row's last), its position id and attention mask."""
        ids, mask = self.batch.input_ids, self.batch.attention_mask
        width = int(self.positions.max())
        # column c of row i holds the row's token c - (width - p_i), where that is a token before p_i
        source = torch.arange(width, device=ids.device)[None, :] - (width - self.positions[:, None])
        before = source >= 0
        prefix = ids.gather(1, source.clamp_min(0)).masked_fill(~before, self.model.pad_token_id)
        prefix_mask = mask.gather(1, source.clamp_min(0)).masked_fill(~before, 0)
        positions = (prefix_mask.cumsum(1) - 1).clamp_min(0)
        with torch.no_grad():
            cache = self.model.hf_model(input_ids=prefix, attention_mask=prefix_mask, position_ids=positions,
                                        use_cache=True).past_key_values
        token = ids[self.rows, self.positions][:, None]
        return {"input_ids": token, "attention_mask": torch.cat([prefix_mask, torch.ones_like(token)], 1),
                "position_ids": prefix_mask.sum(1, keepdim=True), "past_key_values": cache}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``y`` for new source values ``x [rows, d]`` (out of place, so ``torch.func`` transforms can run it)."""
        if self._late is not None:  # one token per row: it is the run's only position
            kwargs = {**self._late, "past_key_values": copy.deepcopy(self._late["past_key_values"])}
            rows, positions = self.rows, torch.zeros_like(self.positions)
            width = 1
        else:
            kwargs, rows, positions, width = self.batch.forward_kwargs(), self.rows, self.positions, self._width
        at = torch.zeros(len(rows), width, 1, dtype=torch.bool, device=x.device)
        at[rows, positions] = True

        def put(act: torch.Tensor) -> torch.Tensor:
            return torch.where(at, x[:, None, :].to(act.dtype), act)

        store: dict[str, torch.Tensor] = {}
        with reading_sites(self.model, [self.source, self.target], store, last=self.target, replace={self.source: put}):
            self.model.hf_model(**kwargs)
        require_fired([self.source, self.target], store)
        return store[self.target][rows, positions]

    def jacobian(self, *, chunk: int | None = None) -> torch.Tensor:
        """``[rows, d_y, d_x]`` in forward mode: one batched forward per chunk of input directions, every row at once
        (direction i of every row moves together; rows never mix, so each row's output reads its own column i)."""
        from torch.func import jvp, vmap

        x0 = self.x0.detach()
        x0 = x0 if x0.dtype == torch.float64 else x0.float()
        d = x0.shape[-1]
        width = 1 if self._late is not None else self._width
        chunk = chunk or max(1, min(d, ELEMENTS_PER_FORWARD // max(1, len(self.rows) * width * d)))

        def derivative(u: torch.Tensor) -> torch.Tensor:
            return jvp(self, (x0,), (u,))[1]

        columns = []
        eye = torch.eye(d, device=x0.device, dtype=x0.dtype)
        with onloaded(self.model.hf_model):
            for start in range(0, d, chunk):
                u = eye[start:start + chunk, None, :].expand(-1, len(self.rows), -1)
                with torch.no_grad():
                    columns.append(vmap(derivative)(u).to(x0.dtype))  # [chunk, rows, d_y]
        return torch.cat(columns).permute(1, 2, 0)
