"""Architecture differences as data: which HF classes trilens wraps and how.

Everything TransformerLens's ``TransformerBridge`` supports can be loaded; the families below
are the ones trilens tests on every commit (tiny random configs, parity against HF).
"""

from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("encoder", "decoder", "encoder-decoder")


@dataclass(frozen=True)
class Architecture:
    """How one HF model class maps onto trilens."""

    hf_class: str
    family: str
    # A headless checkpoint (e.g. ``BertModel``) is wrapped in this class so the bridge has the
    # layout it expects; the added head is untrained and flagged so on the ``Model``.
    wrap_as: str | None = None


TESTED_ARCHITECTURES: dict[str, Architecture] = {
    a.hf_class: a
    for a in (
        Architecture("GPT2LMHeadModel", "decoder"),
        Architecture("GPTNeoXForCausalLM", "decoder"),
        Architecture("LlamaForCausalLM", "decoder"),
        Architecture("Qwen2ForCausalLM", "decoder"),
        Architecture("BertForMaskedLM", "encoder"),
        Architecture("RobertaForMaskedLM", "encoder"),
        Architecture("BertModel", "encoder", wrap_as="BertForMaskedLM"),
        Architecture("RobertaModel", "encoder", wrap_as="RobertaForMaskedLM"),
        Architecture("T5ForConditionalGeneration", "encoder-decoder"),
        Architecture("BartForConditionalGeneration", "encoder-decoder"),
        Architecture("MarianMTModel", "encoder-decoder"),
        Architecture("PegasusForConditionalGeneration", "encoder-decoder"),
    )
}

# The hook-name prefix of each stack, per family.
STACK_PREFIXES: dict[str, dict[str, str]] = {
    "encoder": {"encoder": "blocks"},
    "decoder": {"decoder": "blocks"},
    "encoder-decoder": {"encoder": "encoder_blocks", "decoder": "decoder_blocks"},
}


def bridge_supported() -> set[str]:
    """HF class names TransformerLens's bridge has an adapter for."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    return set(SUPPORTED_ARCHITECTURES)


def resolve(hf_class: str, is_encoder_decoder: bool = False) -> Architecture | None:
    """The ``Architecture`` for an HF class name, or None if the bridge cannot wrap it."""
    if hf_class in TESTED_ARCHITECTURES:
        return TESTED_ARCHITECTURES[hf_class]
    if hf_class not in bridge_supported():
        return None
    if is_encoder_decoder:
        family = "encoder-decoder"
    elif "MaskedLM" in hf_class or hf_class.endswith("Model") and "Bert" in hf_class:
        family = "encoder"
    else:
        family = "decoder"
    return Architecture(hf_class, family)


def supported_summary() -> str:
    """A human-readable list of the tested families, for error messages."""
    by_family: dict[str, list[str]] = {f: [] for f in FAMILIES}
    for arch in TESTED_ARCHITECTURES.values():
        by_family[arch.family].append(arch.hf_class)
    lines = [f"  {fam}: {', '.join(names)}" for fam, names in by_family.items()]
    return "\n".join(lines) + f"\n  (plus {len(bridge_supported())} classes TransformerLens's bridge wraps, untested by trilens)"
