"""The residual graph that edge attribution scores: who writes into the residual stream (senders) and who reads it
(receivers), found on the model itself.

Senders: each stack's token input (its embeddings), every attention head (its share ``z_h W_O^h`` of the attention
output), every cross-attention head, every MLP, and an encoder-decoder's encoder output (what cross-attention's keys and
values read). Receivers read a sum of senders' outputs: each layer's attention (its input before the norm), cross-
attention's query side and key/value side, each MLP, the encoder's output norm and the logits (the last residual
stream). Heads send one by one; a layer's heads receive together (their query, key and value inputs are one tensor).

Which senders a receiver reads is not assumed but checked on a traced run: its input must equal the sum of their
outputs. On pre-norm blocks (GPT-2, GPT-NeoX, Llama, Qwen, T5, Pegasus) the residual stream is a sum of every sender
before. Post-norm blocks (BERT, RoBERTa, BART, Marian) normalise the sum after every sublayer, so there each norm is a
node (``n{layer}.{k}``): a sublayer reads the last norm's output (its heads through their q, k and v inputs), and the
next norm reads that output plus the sublayer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from ..errors import InputError

if TYPE_CHECKING:
    from ..capture.cache import ActivationCache
    from ..model import Model

MATCH_TOLERANCE = 1e-4  # relative: a receiver's input against the sum of its senders' outputs


@dataclass(frozen=True)
class SenderGroup:
    """Senders whose outputs come from one site: a stack's input, one layer's heads (``z`` times ``W_O``), its
    cross-attention heads, its MLP, or the encoder output."""

    kind: str  # input | heads | cross_heads | mlp | encoder
    stack: str
    layer: int
    site: str
    names: tuple[str, ...]
    first: int  # index of the first sender in the graph's flat list
    w_out: torch.Tensor | None = None  # heads: [head, d_head, d_model]
    check_site: str | None = None  # the layer-level output the group's outputs sum to (attn_out, ...)

    @property
    def indices(self) -> range:
        return range(self.first, self.first + len(self.names))


@dataclass(frozen=True)
class Receiver:
    """A reader of the residual stream: its input sites (the tensors an edge patch edits) and the senders it reads."""

    name: str
    kind: str  # attn | cross | cross_kv | mlp | encoder | logits
    stack: str
    layer: int
    sites: tuple[str, ...]
    groups: tuple[int, ...]  # indices into Graph.groups
    feeds: tuple[str, ...] = ()  # the senders this receiver's computation produces (for connectivity)


@dataclass
class Graph:
    """Senders, receivers and which sender feeds which receiver."""

    groups: list[SenderGroup]
    receivers: list[Receiver]
    senders: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.senders = [n for g in self.groups for n in g.names]

    def adjacency(self) -> torch.Tensor:
        """``[sender, receiver]`` bool: the edges that exist."""
        adj = torch.zeros(len(self.senders), len(self.receivers), dtype=torch.bool)
        for r, rec in enumerate(self.receivers):
            for g in rec.groups:
                adj[list(self.groups[g].indices), r] = True
        return adj

    @property
    def sites(self) -> list[str]:
        """Every site the graph reads: sender sites, their layer-level checks and receiver inputs."""
        names = [g.site for g in self.groups] + [g.check_site for g in self.groups if g.check_site]
        names += [s for r in self.receivers for s in r.sites]
        return list(dict.fromkeys(names))

    def outputs(self, group: SenderGroup, x: torch.Tensor) -> torch.Tensor:
        """The group's outputs ``[batch, sender, position, d_model]`` from its site's activation ``x``."""
        if group.w_out is None:
            return x[:, None]
        return torch.einsum("bphe,hed->bhpd", x, group.w_out.to(x.device, x.dtype))


def _o_weights(model: Model, z_site: str) -> torch.Tensor:
    """``W_O`` ``[n_heads * d_head, d_model]`` of the output projection that reads the heads at ``z_site``, read off
    the module itself (HF's Linear or Conv1D): its affine map at the identity less its map at zero."""
    module = model.bridge.get_submodule(z_site.rsplit(".", 1)[0] + ".o")
    module = getattr(module, "original_component", None) or module
    weight = module.weight
    eye = torch.eye(weight.numel() // model.d_model, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        return (module(eye) - module(torch.zeros_like(eye[:1]))).detach().double()


def _prefix(model: Model, stack: str, layer: int) -> str:
    return model.site("resid_pre", layer, stack).rsplit(".", 1)[0]


def build_graph(model: Model, post_norm: bool = False) -> Graph:
    """The graph's nodes and candidate edges; ``check_graph`` keeps the edges the model really has.

    Pre-norm blocks: every receiver reads the sum of every earlier sender of its stack (the residual stream), through
    the norm in front of it. Post-norm blocks (``post_norm``) normalise the sum after every sublayer, so each norm is a
    node of its own: a sublayer reads the last norm's output alone, and a norm reads the last norm's output plus the
    sublayer between them (BERT: input -> attention, norm; norm -> MLP, norm; ...)."""
    groups: list[SenderGroup] = []
    receivers: list[Receiver] = []
    both = model.family == "encoder-decoder"
    first = [0]

    def add(kind: str, stack: str, layer: int, site: str, names: list[str], **kw) -> int:
        groups.append(SenderGroup(kind, stack, layer, site, tuple(names), first[0], **kw))
        first[0] += len(names)
        return len(groups) - 1

    def heads(kind: str, stack: str, layer: int, z: str, names: list[str], check: str) -> int:
        return add(kind, stack, layer, z, names, w_out=_o_weights(model, z).view(len(names), -1, model.d_model),
                   check_site=check)

    for stack in model.stacks:
        tag = {"encoder": "enc.", "decoder": "dec."}[stack] if both else ""
        written = [add("input", stack, -1, model.site("resid_pre", 0, stack), [f"{tag}input"])]
        if stack == "decoder" and both:
            enc = add("encoder", stack, -1, _prefix(model, "decoder", 0) + ".cross_attn.k.hook_in", ["encoder"])

        def norm_after(layer: int, ln: str, k: int, sublayer: int) -> None:
            """Post-norm: the norm ``ln`` reads the stream so far plus ``sublayer``, and becomes the stream."""
            p = _prefix(model, stack, layer)
            n = add("norm", stack, layer, f"{p}.{ln}.hook_out", [f"{tag}n{layer}.{k}"])
            receivers.append(Receiver(f"{tag}n{layer}.{k}", "norm", stack, layer, (f"{p}.{ln}.hook_in",),
                                      (written[-1], sublayer), groups[n].names))
            written[:] = [n]

        for layer in range(model.n_layers[stack]):
            p = _prefix(model, stack, layer)
            cross = both and stack == "decoder"
            z = model.site("z", layer, stack)
            attn = z.rsplit(".", 1)[0]
            h = heads("heads", stack, layer, z, [f"{tag}a{layer}.h{i}" for i in range(model.n_heads[stack])],
                      f"{attn}.o.hook_out" if post_norm else model.site("attn_out", layer, stack))
            sites = tuple(f"{attn}.{x}.hook_in" for x in "qkv") if post_norm else (f"{p}.ln1.hook_in",)
            receivers.append(Receiver(f"{tag}a{layer}", "attn", stack, layer, sites, tuple(written), groups[h].names))
            if post_norm:
                norm_after(layer, "ln1", 1, h)
            layer_writes = [] if post_norm else [h]
            if cross:
                cz = model.site("cross_z", layer, stack)
                ch = heads("cross_heads", stack, layer, cz, [f"{tag}c{layer}.h{i}" for i in range(model.n_heads[stack])],
                           f"{p}.cross_attn.o.hook_out" if post_norm else model.site("cross_attn_out", layer, stack))
                q_site = f"{p}.cross_attn.q.hook_in" if post_norm else f"{p}.ln2.hook_in"
                receivers.append(Receiver(f"{tag}c{layer}", "cross", stack, layer, (q_site,),
                                          tuple(written + layer_writes), groups[ch].names))
                receivers.append(Receiver(f"{tag}c{layer}.kv", "cross_kv", stack, layer,
                                          (f"{p}.cross_attn.k.hook_in", f"{p}.cross_attn.v.hook_in"), (enc,),
                                          groups[ch].names))
                if post_norm:
                    norm_after(layer, "ln2", 2, ch)
                else:
                    layer_writes.append(ch)
            mlp = add("mlp", stack, layer, model.site("mlp_out", layer, stack), [f"{tag}m{layer}"])
            ln = "ln3" if cross else "ln2"
            m_site = f"{p}.mlp.in.hook_in" if post_norm else f"{p}.{ln}.hook_in"
            receivers.append(Receiver(f"{tag}m{layer}", "mlp", stack, layer, (m_site,), tuple(written + layer_writes),
                                      groups[mlp].names))
            if post_norm:
                norm_after(layer, ln, 3 if cross else 2, mlp)
            else:
                written += layer_writes + [mlp]
        last = model.site("resid_post", model.n_layers[stack] - 1, stack)
        if both and stack == "encoder":
            receivers.append(Receiver("encoder", "encoder", stack, model.n_layers[stack], (last,), tuple(written),
                                      ("encoder",)))
        else:
            receivers.append(Receiver("logits", "logits", stack, model.n_layers[stack], (last,), tuple(written)))
    return Graph(groups, receivers)


def check_graph(model: Model, graph: Graph, run: ActivationCache) -> tuple[Graph, float]:
    """The graph with each receiver's senders as the model has them, checked on ``run`` (a trace at ``graph.sites``):
    a receiver reads the earlier senders whose outputs sum to its input (a block's MLP reads the attention heads of
    its own layer, or, in parallel blocks such as GPT-NeoX's, does not). Refuses a model whose residual stream is not a
    sum of its senders' outputs. Also returns the largest relative error of the sums (rounding, in float16/bfloat16)."""
    acts = {s: run[s].double() for s in graph.sites if s in run.keys()}
    # sums of float16/bfloat16 outputs differ from the input they make by rounding, a few of the dtype's eps
    tolerance = max(MATCH_TOLERANCE, 4 * torch.finfo(model.dtype).eps)
    missing = [s for s in graph.sites if s not in acts]
    if missing:
        raise InputError(f"edge attribution needs the site {missing[0]}, which this {model.architecture} does not have.")
    layer_out = {}
    worst = 0.0

    def close(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> bool:
        nonlocal worst
        error = _error(a, b, scale)
        worst = max(worst, error)
        return error <= tolerance

    for i, g in enumerate(graph.groups):
        layer_out[i] = acts[g.check_site] if g.check_site else acts[g.site]
        if g.w_out is not None:  # the heads' outputs sum to the attention output, up to the projection's bias
            summed = graph.outputs(g, acts[g.site]).sum(1)
            bias = layer_out[i] - summed
            if not close(bias, bias[:1, :1].expand_as(bias), layer_out[i]):
                raise _not_additive(model, f"the heads at {g.site} times W_O do not sum to {g.check_site}")
    fixed = []
    for rec in graph.receivers:
        if rec.kind == "cross_kv":
            for s in rec.sites:
                if not close(acts[s], acts[graph.groups[rec.groups[0]].site], acts[s]):
                    raise _not_additive(model, f"{s} is not the encoder output")
            fixed.append(rec)
            continue
        same_layer = [g for g in rec.groups if graph.groups[g].layer == rec.layer and graph.groups[g].stack == rec.stack]
        before = [g for g in rec.groups if g not in same_layer]
        # the writes of this layer (parallel blocks: none) whose sum with the earlier ones is closest to the input:
        # exact in float32; in float16/bfloat16 the right sum is off by rounding, a missing write by its own size
        errors = []
        for j in range(len(same_layer) + 1):
            total = sum(layer_out[g] for g in before + same_layer[:j])
            errors.append(max(_error(total, acts[s], acts[s], bias_free=True) for s in rec.sites))  # q, k, v alike
        exact = [j for j, e in enumerate(errors) if e <= MATCH_TOLERANCE]  # float32: the fewest writes that sum up
        best = exact[0] if exact else min(range(len(errors)), key=errors.__getitem__)
        if errors[best] > tolerance:
            raise _not_additive(model, f"the input of {rec.name} ({rec.sites[0]}) is not a sum of the outputs before it")
        chosen = before + same_layer[:best]
        worst = max(worst, errors[best])
        fixed.append(replace(rec, groups=tuple(chosen)))
    return Graph(graph.groups, fixed), worst


def _error(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, bias_free: bool = False) -> float:
    """How far ``a`` is from ``b``, relative to ``scale``'s size; ``bias_free``: up to a constant vector (the
    projections' biases, the same at every position and row)."""
    diff = a - b
    if bias_free:
        diff = diff - diff[:1, :1]
    return float(diff.abs().max()) / max(float(scale.abs().max()), 1.0)



def _not_additive(model: Model, what: str) -> InputError:
    return InputError(f"edge attribution needs every reader of the residual stream to read a sum of senders' outputs, "
                      f"as pre-norm blocks (GPT-2, Llama, T5) and post-norm blocks (BERT, BART) have; on this "
                      f"{model.architecture} {what}. Use attribution_patching (node scores at every site) or "
                      "patching_sweep there.")
