"""Hook sites: enumerate TransformerLens hook names by stack, layer and kind, and validate them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .architectures import STACK_PREFIXES
from .errors import SiteError, closest

# Canonical kinds -> hook-name suffix inside a block. ``{attn}`` is the block's self-attention
# module: ``attn`` in encoder and decoder-only blocks, ``self_attn`` in encoder-decoder decoders.
KIND_SUFFIXES: dict[str, str] = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "cross_attn_out": "hook_cross_attn_out",
    "mlp_out": "hook_mlp_out",
    "mlp_pre": "mlp.hook_pre",
    "mlp_post": "mlp.hook_post",
    "attn_scores": "{attn}.hook_attn_scores",
    "attn_pattern": "{attn}.hook_pattern",
    "q": "{attn}.hook_q",
    "k": "{attn}.hook_k",
    "v": "{attn}.hook_v",
    "z": "{attn}.hook_z",
    "cross_attn_scores": "cross_attn.hook_attn_scores",
    "cross_attn_pattern": "cross_attn.hook_pattern",
    "cross_q": "cross_attn.hook_q",
    "cross_k": "cross_attn.hook_k",
    "cross_v": "cross_attn.hook_v",
    "cross_z": "cross_attn.hook_z",
}
# Kinds whose activation is [batch, query, (key), ...] with heads on axis 1 (patterns, scores).
PATTERN_KINDS = frozenset({"attn_scores", "attn_pattern", "cross_attn_scores", "cross_attn_pattern"})
_BLOCK_RE = re.compile(r"^(blocks|encoder_blocks|decoder_blocks)\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Site:
    """One hook point: its TransformerLens name and where it sits."""

    name: str
    stack: str | None
    layer: int | None
    kind: str


def _attn_module(prefix: str) -> str:
    return "self_attn" if prefix == "decoder_blocks" else "attn"


class SiteIndex:
    """All hook sites of one model, searchable by stack, layer and kind."""

    def __init__(self, hook_names: Iterable[str], family: str, never_fire: dict[str, str] | None = None):
        self.family = family
        self.never_fire = dict(never_fire or {})  # hook names the bridge lists that never fire here -> why
        self._prefix_to_stack = {p: s for s, p in STACK_PREFIXES[family].items()}
        self._sites: dict[str, Site] = {}
        for name in hook_names:
            self._sites[name] = self._parse(name)
        # Bridges without a block-level cross-attention output hook (BART, Marian, Pegasus): the cross-attention
        # module's own output is that kind (on T5, which has both, they are the same tensor).
        have = {(s.stack, s.layer) for s in self._sites.values() if s.kind == "cross_attn_out"}
        for name, s in list(self._sites.items()):
            if s.kind == "cross_attn.hook_out" and (s.stack, s.layer) not in have:
                self._sites[name] = Site(name, s.stack, s.layer, "cross_attn_out")
        self.n_layers = {
            stack: 1 + max((s.layer for s in self._sites.values() if s.stack == stack and s.layer is not None), default=-1)
            for stack in STACK_PREFIXES[family]
        }

    def _parse(self, name: str) -> Site:
        m = _BLOCK_RE.match(name)
        if m is None:
            stack = None
            for stack_name in ("encoder", "decoder"):
                if name.startswith(stack_name + "_"):
                    stack = stack_name
            if stack is None and len(STACK_PREFIXES[self.family]) == 1:
                stack = next(iter(STACK_PREFIXES[self.family]))
            return Site(name, stack, None, name)
        prefix, layer, suffix = m.group(1), int(m.group(2)), m.group(3)
        attn = _attn_module(prefix)
        kind = suffix
        for canonical, pattern in KIND_SUFFIXES.items():
            if pattern.format(attn=attn) == suffix:
                kind = canonical
                break
        return Site(name, self._prefix_to_stack[prefix], layer, kind)

    # -- queries -----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._sites)

    @property
    def kinds(self) -> list[str]:
        """Canonical kinds that exist on this model, in canonical order."""
        present = {s.kind for s in self._sites.values()}
        return [k for k in KIND_SUFFIXES if k in present]

    def __contains__(self, name: str) -> bool:
        return name in self._sites

    def site(self, name: str) -> Site:
        """The ``Site`` for a hook name; a misspelt name raises an error naming close ones."""
        try:
            return self._sites[name]
        except KeyError:
            if name in self.never_fire:
                raise SiteError(f"site {name} never fires on this model: {self.never_fire[name]}. "
                                "List the sites that do with model.sites().") from None
            hint = closest(name, list(self._sites) + self.kinds)
            raise SiteError(
                f"no hook site named {name!r} on this model. "
                + (f"Did you mean: {', '.join(hint)}? " if hint else "")
                + "List valid sites with model.sites() (kinds: " + ", ".join(self.kinds) + ")."
            ) from None

    def name(self, kind: str, layer: int, stack: str | None = None) -> str:
        """The hook name of one kind at one layer of one stack."""
        matches = self.select(stack=stack, layer=layer, kind=kind)
        if len(matches) != 1:
            stacks = sorted({self._sites[m].stack for m in matches if self._sites[m].stack})
            raise SiteError(
                f"{kind!r} at layer {layer} is ambiguous between stacks {stacks}: pass stack=."
                if len(matches) > 1
                else f"no {kind!r} site at layer {layer}" + (f" of the {stack} stack" if stack else "") + "."
            )
        return matches[0]

    def select(
        self,
        stack: str | None = None,
        layer: int | Sequence[int] | None = None,
        kind: str | Sequence[str] | None = None,
    ) -> list[str]:
        """Hook names filtered by stack, layer (negative counts from the end) and kind."""
        if stack is not None and stack not in self.n_layers:
            raise SiteError(f"this {self.family} model has no {stack!r} stack; its stacks are {list(self.n_layers)}.")
        kinds = None if kind is None else ([kind] if isinstance(kind, str) else list(kind))
        if kinds is not None:
            known = {s.kind for s in self._sites.values()}
            for k in kinds:
                if k not in known:
                    hint = closest(k, known)
                    raise SiteError(
                        f"no site kind {k!r} on this model. "
                        + (f"Did you mean: {', '.join(hint)}? " if hint else "")
                        + f"Canonical kinds here: {', '.join(self.kinds)}."
                    )
        layers = None if layer is None else ([layer] if isinstance(layer, int) else list(layer))
        out = []
        for s in self._sites.values():
            if stack is not None and s.stack != stack:
                continue
            if kinds is not None and s.kind not in kinds:
                continue
            if layers is not None:
                if s.layer is None or s.stack is None:
                    continue
                n = self.n_layers[s.stack]
                if not any(s.layer == (lay % n if lay < 0 else lay) for lay in layers):
                    continue
            out.append(s.name)
        return out

    def resolve(self, spec: str | Sequence[str]) -> list[str]:
        """Expand a site spec (hook names, canonical kinds, or ``"resid"``) into validated hook names."""
        items = [spec] if isinstance(spec, str) else list(spec)
        if not items:
            raise SiteError("no sites requested: pass hook names or kinds (see model.sites()).")
        out: list[str] = []
        for item in items:
            if item in self._sites:
                names = [item]
            elif item == "resid":  # the whole residual stream: embeddings + every block's output
                names = [n for st in self.n_layers for n in self.select(stack=st, layer=0, kind="resid_pre")
                         + self.select(stack=st, kind="resid_post")]
            elif item in KIND_SUFFIXES or item in {s.kind for s in self._sites.values()}:
                names = self.select(kind=item)
            else:
                self.site(item)  # raises with suggestions
            out.extend(n for n in names if n not in out)
        return out
