"""Captured activations and logits equal HF's own outputs for every supported architecture."""

import pytest
import torch

import trilens
from conftest import ARCHS
from tiny import FAMILY, UNEQUAL, build, reference

# HF's last hidden state already went through the final norm for these (never norm twice).
FINAL_NORMED = {"gpt2": "ln_final", "gpt_neox": "ln_final", "llama": "ln_final", "qwen2": "ln_final",
                **{name: ("encoder_ln_final", "decoder_ln_final") for name in ["t5", "pegasus", "pegasus_3_2", "pegasus_2_3"]}}
TEXTS = ["the cat sat on the mat and the dog sat", "x y z", "she was here"]
PAIRS = [("the cat sat on the mat", "mat the on sat cat the"), ("x y z one two", "two"), ("she", "he was there")]


def _hf_outputs(path, model, inputs):
    ref = reference(path)
    batch = model.encode(inputs)
    kw = batch.forward_kwargs()
    if FAMILY_OF[path.name] == "encoder" and not model.has_trained_head:
        kw = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    with torch.no_grad():
        return ref(**kw, output_hidden_states=True, output_attentions=True), batch


FAMILY_OF = FAMILY


def _check_stack(cache, stack, hidden, attentions, final_site, atol=1e-5):
    acc = cache.accumulated_resid(stack)
    n = acc.shape[0] - 1
    assert len(hidden) == n + 1
    for layer in range(n):
        torch.testing.assert_close(acc[layer], hidden[layer], atol=atol, rtol=0)
    last = cache[final_site + ".hook_out"] if final_site else acc[n]
    torch.testing.assert_close(last, hidden[n], atol=atol, rtol=0)
    pats = cache.stack("attn_pattern", stack)
    for layer in range(n):
        torch.testing.assert_close(pats[layer], attentions[layer], atol=atol, rtol=0)


@pytest.mark.parametrize("name", ARCHS + list(UNEQUAL))
def test_resid_patterns_and_logits_equal_hf(name, tiny, tiny_path):
    model = tiny(name)
    if name in UNEQUAL:  # stacks of unequal depth load with their own layer counts
        enc, dec = (int(n) for n in name.split("_")[-2:])
        assert model.n_layers == {"encoder": enc, "decoder": dec}
        assert len(model.sites(kind="cross_attn_pattern")) == dec
    path = tiny_path(name)
    final = FINAL_NORMED.get(name)
    if model.family == "encoder-decoder":
        extra = [f + ".hook_out" for f in final] if final else []
        cache = model.trace(PAIRS, sites=["resid", "attn_pattern", "cross_attn_pattern"] + extra)
        out, _ = _hf_outputs(path, model, PAIRS)
        _check_stack(cache, "encoder", out.encoder_hidden_states, out.encoder_attentions, final[0] if final else None)
        _check_stack(cache, "decoder", out.decoder_hidden_states, out.decoder_attentions, final[1] if final else None)
        for layer, att in enumerate(out.cross_attentions):
            torch.testing.assert_close(cache["cross_attn_pattern", layer], att, atol=1e-5, rtol=0)
    else:
        extra = [final + ".hook_out"] if final else []
        cache = model.trace(TEXTS, sites=["resid", "attn_pattern"] + extra)
        out, _ = _hf_outputs(path, model, TEXTS)
        _check_stack(cache, model.stacks[0], out.hidden_states, out.attentions, final)
    if model.has_trained_head:
        torch.testing.assert_close(cache.logits, out.logits, atol=1e-5, rtol=0)
        inputs = PAIRS if model.family == "encoder-decoder" else TEXTS
        torch.testing.assert_close(model.run(inputs), out.logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "llama", "t5"])
def test_mlp_and_attn_out_sum_to_the_residual_update(name, tiny):
    """resid_post = resid_pre + attn_out (+ cross_attn_out) + mlp_out in pre-LN blocks."""
    model = tiny(name)
    stack = model.stacks[-1]
    inputs = PAIRS if model.family == "encoder-decoder" else TEXTS
    kinds = ["resid_pre", "resid_post", "attn_out", "mlp_out"] + (["cross_attn_out"] if stack == "decoder" and model.family == "encoder-decoder" else [])
    cache = model.trace(inputs, sites=[model.site(k, 1, stack) for k in kinds])
    total = cache["resid_pre", 1, stack] + cache["attn_out", 1, stack] + cache["mlp_out", 1, stack]
    if "cross_attn_out" in kinds:
        total = total + cache["cross_attn_out", 1, stack]
    torch.testing.assert_close(total, cache["resid_post", 1, stack], atol=1e-5, rtol=0)


def test_headless_bert_matches_bertmodel_hidden_states(tiny, tiny_path):
    model = tiny("bert_headless")
    assert model.family == "encoder" and not model.has_trained_head
    ref = reference(tiny_path("bert_headless"))
    batch = model.encode(TEXTS)
    with torch.no_grad():
        out = ref(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    cache = model.trace(TEXTS, sites="resid")
    torch.testing.assert_close(cache.accumulated_resid(), torch.stack(out.hidden_states), atol=1e-5, rtol=0)


def test_unequal_head_counts_are_refused_at_load_with_the_reason():
    import transformers as T

    cfg = T.BartConfig(vocab_size=100, encoder_layers=2, decoder_layers=2, d_model=32, encoder_attention_heads=4,
                       decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)
    with pytest.raises(trilens.UnsupportedArchitectureError, match="same number of heads"):
        trilens.load(T.BartForConditionalGeneration(cfg))


def test_unequal_depths_leave_transformer_lens_registry_as_it_was():
    """The adapter that accepts unequal depths is used for one build only: TransformerLens's own still refuses."""
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    hf, _ = build("bart_3_2")
    trilens.load(hf)
    with pytest.raises(ValueError, match="symmetric"):
        build_bridge_from_module(hf, type(hf).__name__, hf_config=hf.config)
