"""The cells of a patching sweep: which sites (a panel per stack and kind, one site per layer), which positions and
heads, for which clean/corrupted pairs; and how one cell's activation is read from a run's tensors.

A panel's values are ``[pair, layer, position(, head)]`` (``positions="each"``) or ``[pair, layer(, head)]``
(``positions="all"``: a cell is a whole layer, or a head at every position). Positions are those of the panel's stack
(an encoder-decoder's encoder sites at source positions, its decoder's at target positions), padded to the longest
pair; cells past a pair's length do not exist (NaN in the result).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError, SiteError
from ..sites import PATTERN_KINDS

if TYPE_CHECKING:
    from ..inputs import Batch
    from ..model import Model

DEFAULT_SITES = ("resid_pre", "attn_out", "mlp_out")
CROSS_OUT = "cross_attn_out"  # added to the default sites of an encoder-decoder
HEAD_KINDS = ("z", "q", "k", "v", "attn_pattern")
CROSS_HEAD_KINDS = {"z": "cross_z", "q": "cross_q", "k": "cross_k", "v": "cross_v", "attn_pattern": "cross_attn_pattern"}
# Per-head kinds whose position axis is the encoder's although they sit in the decoder (cross-attention keys, values).
ENCODER_POSITIONED = frozenset({"cross_k", "cross_v"})
POSITIONS = ("each", "all")


@dataclass(frozen=True)
class Panel:
    """One stack's sites of one kind, one per layer."""

    stack: str
    kind: str
    sites: tuple[str, ...]
    n_heads: int | None  # per-head kinds: heads per layer
    per_position: bool

    @property
    def key(self) -> str:
        return f"{self.stack}.{self.kind}"

    @property
    def pattern(self) -> bool:
        return self.kind in PATTERN_KINDS

    @property
    def position_stack(self) -> str:
        """The stack whose positions index this panel's cells."""
        return "encoder" if self.kind in ENCODER_POSITIONED else self.stack

    def reads(self) -> tuple[str, ...]:
        """The stacks whose token lengths must agree between clean and corrupted runs for this panel."""
        if self.kind in ENCODER_POSITIONED or self.kind in ("cross_attn_pattern", "cross_attn_scores"):  # source keys
            return tuple(dict.fromkeys((self.stack, "encoder")))
        return (self.stack,)

    def shape(self, n_pairs: int, n_positions: dict[str, int]) -> tuple[int, ...]:
        dims = [n_pairs, len(self.sites)]
        if self.per_position:
            dims.append(n_positions[self.position_stack])
        if self.n_heads is not None:
            dims.append(self.n_heads)
        return tuple(dims)

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """A site's elementwise ``[pair, ...activation]`` tensor summed within each cell -> ``[pair, position(, head)]``
        or ``[pair(, head)]``."""
        if self.pattern:  # [pair, head, query, key] -> [pair, query, head]
            per = x.sum(-1).transpose(1, 2)
        elif self.n_heads is not None:  # [pair, position, head, d_head]
            per = x.sum(-1)
        else:  # [pair, position, d]
            per = x.sum(-1)
        return per if self.per_position else per.sum(1)

    def read(self, t: torch.Tensor, pairs: torch.Tensor, positions: torch.Tensor | None,
             heads: torch.Tensor | None) -> torch.Tensor:
        """The activation of each cell ``(pairs[i], positions[i], heads[i])`` in a site's tensor ``t [pair, ...]``."""
        if self.pattern:
            if positions is None:
                return t[pairs] if heads is None else t[pairs, heads]
            return t[pairs, :, positions] if heads is None else t[pairs, heads, positions]
        if positions is None:
            return t[pairs] if heads is None else t[pairs, :, heads]
        return t[pairs, positions] if heads is None else t[pairs, positions, heads]


def pair_batches(model: Model, clean: Any, corrupted: Any) -> tuple[Batch, Batch, dict[str, bool]]:
    """The clean and corrupted batches, and per stack whether every pair has equal token lengths there."""
    cb, kb = model.encode(clean), model.encode(corrupted)
    if cb.input_ids.shape[0] != kb.input_ids.shape[0]:
        raise InputError(f"{cb.input_ids.shape[0]} clean inputs but {kb.input_ids.shape[0]} corrupted ones: pair them "
                         "row by row (one corrupted input per clean input).")
    if model.family == "encoder-decoder" and (cb.decoder_input_ids is None or kb.decoder_input_ids is None):
        raise InputError("an encoder-decoder's patching metric reads the decoder's predictions: pass (source, target) "
                         "pairs for the clean and the corrupted inputs (the target teacher-forced, usually the same).")
    aligned = {}
    for stack in cb.masks:
        a, b = cb.masks[stack].sum(1), kb.masks[stack].sum(1)
        aligned[stack] = a.shape == b.shape and bool((a == b).all())
    return cb, kb, aligned


def _unaligned(cb: Batch, kb: Batch, stack: str) -> str:
    a, b = cb.masks[stack].sum(1), kb.masks[stack].sum(1)
    pair = int((a != b).nonzero()[0])
    where = {"encoder": "source" if "decoder" in cb.masks else "input", "decoder": "target" if "encoder" in cb.masks else "input"}
    return f"pair {pair}'s clean and corrupted {where[stack]}s have {int(a[pair])} and {int(b[pair])} tokens"


def panels(model: Model, sites: Sequence[str] | None, heads: bool | Sequence[str], positions: str,
           cb: Batch, kb: Batch, aligned: dict[str, bool], stacks: Sequence[str] | None = None) -> list[Panel]:
    """The panels a sweep patches: ``sites`` kinds (default: residual stream, attention and MLP outputs, and an
    encoder-decoder's cross-attention output) on every stack that has them (or on ``stacks`` only), and per-head kinds
    (``heads=True``: each head's output ``z``, cross-attention's too)."""
    chosen = list(model.stacks) if stacks is None else ([stacks] if isinstance(stacks, str) else list(stacks))
    for stack in chosen:
        if stack not in model.stacks:
            raise InputError(f"this {model.family} model has no {stack!r} stack; its stacks are {list(model.stacks)}.")
    if positions not in POSITIONS:
        raise InputError(f"positions must be one of {', '.join(POSITIONS)}, not {positions!r}.")
    if sites is None:
        kinds = list(DEFAULT_SITES) + ([CROSS_OUT] if model.family == "encoder-decoder" else [])
    else:
        kinds = [sites] if isinstance(sites, str) else list(sites)
    head_kinds = ["z"] if heads is True else [] if heads is False else ([heads] if isinstance(heads, str) else list(heads))
    for k in head_kinds:
        if k not in HEAD_KINDS and k not in CROSS_HEAD_KINDS.values():
            raise InputError(f"heads= names per-head kinds ({', '.join(HEAD_KINDS)}), not {k!r}.")
        if k in kinds:
            kinds.remove(k)
    bad = [k for k in kinds if k in HEAD_KINDS or k in CROSS_HEAD_KINDS.values()]
    if bad:
        raise InputError(f"{bad[0]!r} is a per-head kind: pass it as heads=[{bad[0]!r}] (sites= takes whole-layer kinds "
                         "such as resid_pre, attn_out, mlp_out, cross_attn_out).")
    if not kinds and not head_kinds:
        raise InputError("nothing to patch: pass at least one site kind (sites=, e.g. 'resid_pre') or heads=True.")
    if model.family == "encoder-decoder":
        head_kinds += [CROSS_HEAD_KINDS[k] for k in head_kinds if k in CROSS_HEAD_KINDS]
    out = []
    for kind in dict.fromkeys(kinds + head_kinds):
        found = False
        for stack in chosen:
            names = model.site_index.select(stack=stack, kind=kind) if kind in model.site_index.kinds else []
            if not names:
                continue
            found = True
            per_head = kind not in kinds
            n_heads = model.n_heads[stack] if per_head else None
            if kind in ("k", "v") and model.family == "decoder" and _kv_heads(model) != n_heads:
                n_heads = _kv_heads(model)
            out.append(Panel(stack, kind, tuple(names), n_heads, positions == "each"))
        if not found:
            raise SiteError(f"this {model.family} model has no {kind!r} sites" + (f" in {', '.join(chosen)}" if stacks else "")
                            + "; its kinds are "
                            f"{', '.join(model.site_index.kinds)}.")
    for panel in out:
        if panel.pattern:
            _check_pattern_edits(model, panel, cb)
        for stack in panel.reads():
            if not aligned[stack]:
                raise InputError(f"{_unaligned(cb, kb, stack)}: patching {panel.key} needs equal token lengths in each "
                                 "pair (write the corrupted input with as many tokens as the clean one, e.g. one name for "
                                 "another of one token)." + (" Decoder sites need only equal targets: pass stacks='decoder' "
                                 "(CLI: --stacks decoder) to patch those alone." if model.family == "encoder-decoder" else ""))
    return out


def _check_pattern_edits(model: Model, panel: Panel, batch: Batch) -> None:
    """Refuse pattern panels where an edited pattern does not reach the model's output: bridges that let HF compute
    attention fire ``hook_pattern`` after HF has used the probabilities, and drop what the hook returns."""
    import warnings

    def flatten(x: torch.Tensor, hook: Any = None) -> torch.Tensor:
        return torch.ones_like(x) / x.shape[-1]

    one = batch.rows(slice(0, 1)).to(model.device)
    with torch.no_grad():
        plain = model.hf_model(**one.forward_kwargs()).logits
        with warnings.catch_warnings(), model.hooks([(panel.sites[0], flatten)]):
            warnings.simplefilter("ignore")  # TransformerLens warns that it discards the edit: that is what is tested
            edited = model.hf_model(**one.forward_kwargs()).logits
    if torch.equal(plain, edited):
        raise InputError(f"patching {panel.key} would change nothing on this {model.architecture}: its bridge reads the "
                         "attention probabilities after HF has used them, so an edited pattern never reaches the output. "
                         "Patch the heads' q, k, v or z instead (heads=['q', 'k', 'v', 'z']).")


def _kv_heads(model: Model) -> int:
    c = model.config
    return getattr(c, "num_key_value_heads", None) or model.n_heads[model.stacks[0]]


@dataclass
class Cells:
    """Every cell of a sweep, flat: its panel, layer, pair, position (-1: all) and head (-1: none)."""

    panel: torch.Tensor
    layer: torch.Tensor
    pair: torch.Tensor
    position: torch.Tensor
    head: torch.Tensor

    def __len__(self) -> int:
        return int(self.panel.numel())

    def take(self, index: Any) -> Cells:
        return Cells(self.panel[index], self.layer[index], self.pair[index], self.position[index], self.head[index])


def enumerate_cells(panel_list: list[Panel], masks: dict[str, torch.Tensor]) -> Cells:
    """Every (panel, layer, pair, position, head) that exists: real positions of each pair only, ordered by pair, then
    panel, layer, position and head."""
    parts = []
    for i, panel in enumerate(panel_list):
        mask = masks[panel.position_stack].cpu().bool()  # [pair, position]
        n_pairs = mask.shape[0]
        pos = torch.arange(mask.shape[1]) if panel.per_position else torch.tensor([-1])
        heads = torch.arange(panel.n_heads) if panel.n_heads is not None else torch.tensor([-1])
        pair, layer, p, h = torch.meshgrid(torch.arange(n_pairs), torch.arange(len(panel.sites)), pos, heads, indexing="ij")
        pair, layer, p, h = pair.flatten(), layer.flatten(), p.flatten(), h.flatten()
        keep = mask[pair, p.clamp_min(0)] if panel.per_position else torch.ones_like(pair, dtype=torch.bool)
        parts.append(torch.stack([torch.full_like(pair, i), layer, pair, p, h])[:, keep])
    flat = torch.cat(parts, 1)
    order = torch.argsort(flat[2] * (flat.shape[1] + 1) + torch.arange(flat.shape[1]), stable=True)  # pair-major
    flat = flat[:, order]
    return Cells(*flat)

