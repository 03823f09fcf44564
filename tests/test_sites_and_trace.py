"""Sites are enumerated and validated; trace captures only what was asked, where it was asked."""

import pytest
import torch

import trilens
from trilens.errors import InputError, SiteError, TrilensError

TEXTS = ["the cat sat on the mat", "x y z", "she was here and there"]


def test_sites_filter_by_stack_layer_and_kind(tiny):
    t5 = tiny("t5")
    assert t5.stacks == ("encoder", "decoder") and t5.n_layers == {"encoder": 2, "decoder": 2}
    assert t5.sites(stack="encoder", kind="resid_post") == ["encoder_blocks.0.hook_resid_post", "encoder_blocks.1.hook_resid_post"]
    assert t5.sites(kind="cross_attn_pattern", layer=-1) == ["decoder_blocks.1.cross_attn.hook_pattern"]
    assert t5.site("attn_pattern", 0, "decoder") == "decoder_blocks.0.self_attn.hook_pattern"
    gpt = tiny("gpt2")
    assert gpt.stacks == ("decoder",)
    assert gpt.sites(layer=1, kind=["attn_out", "mlp_out"]) == ["blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"]
    assert "cross_attn_pattern" not in gpt.site_index.kinds
    assert tiny("bert").sites(kind="resid_pre", layer=0) == ["blocks.0.hook_resid_pre"]


@pytest.mark.parametrize("name", ["t5", "bart", "marian", "pegasus"])
def test_cross_attention_output_is_a_kind_on_every_encoder_decoder(tiny, name):
    """T5's bridge has a block-level hook for it; BART-like bridges only the cross-attention module's own output hook,
    which is then the kind (on T5 the two are the same tensor)."""
    model = tiny(name)
    names = model.sites(kind="cross_attn_out")
    assert len(names) == 2 and all(model.site_index.site(n).stack == "decoder" for n in names)
    cache = model.trace([("the cat", "a dog")], sites=["cross_attn_out", "cross_attn.hook_out"] if name == "t5"
                        else "cross_attn_out")
    if name == "t5":
        assert torch.equal(cache["decoder_blocks.1.hook_cross_attn_out"], cache["decoder_blocks.1.cross_attn.hook_out"])
    else:
        assert names == ["decoder_blocks.0.cross_attn.hook_out", "decoder_blocks.1.cross_attn.hook_out"]
        assert cache["cross_attn_out", 1].shape == (1, 3, 32)


def test_misspelt_site_suggests_the_closest(tiny):
    model = tiny("gpt2")
    with pytest.raises(SiteError, match="blocks.1.hook_resid_post"):
        model.trace("x y", sites="blocks.1.hook_resid_pots")
    with pytest.raises(SiteError, match="resid_post"):
        model.sites(kind="resid_psot")
    with pytest.raises(SiteError, match="stacks are"):
        model.sites(stack="encoder")
    with pytest.raises(SiteError, match="ambiguous"):
        tiny("t5").site("resid_post", 0)


def test_trace_captures_only_requested_sites(tiny):
    model = tiny("gpt2")
    cache = model.trace(TEXTS, sites=["blocks.0.hook_resid_post", "attn_pattern"])
    assert sorted(cache) == ["blocks.0.attn.hook_pattern", "blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern"]
    assert cache.stack("attn_pattern").shape == (2, 3, 4, 6, 6)
    assert cache.mask().tolist()[1] == [True, True, True, False, False, False]
    assert cache.tokens()[1][:3] == ["x", "y", "z"]
    with pytest.raises(SiteError, match="not captured"):
        cache["blocks.1.hook_resid_post"]


def test_positions_pick_real_tokens_under_padding(tiny):
    model = tiny("llama")
    full = model.trace(TEXTS, sites=["resid_post", "attn_pattern"])
    last = model.trace(TEXTS, sites="resid_post", positions="last")
    lengths = full.mask().sum(1)
    for row, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(last["resid_post", 1][row, 0], full["resid_post", 1][row, n - 1])
    two = model.trace(TEXTS, sites=["resid_post", "attn_pattern"], positions=[0, -2])
    assert two["resid_post", 0].shape == (3, 2, 32)
    torch.testing.assert_close(two["attn_pattern", 0][:, :, 1], full["attn_pattern", 0][torch.arange(3), :, lengths - 2])
    torch.testing.assert_close(two.logits[:, 0], full.logits[:, 0])
    with pytest.raises(InputError, match="does not exist in sequence 1"):
        model.trace(TEXTS, sites="resid_post", positions=[4])


def test_dtype_device_and_batching(tiny):
    model = tiny("bert")
    whole = model.trace(TEXTS, sites="resid_post")
    half = model.trace(TEXTS, sites="resid_post", dtype="float16", device="cpu", batch_size=2)
    assert half["resid_post", 0].dtype == torch.float16
    torch.testing.assert_close(half["resid_post", 1].float(), whole["resid_post", 1], atol=1e-2, rtol=1e-2)
    with pytest.raises(TrilensError, match="unknown dtype"):
        model.trace(TEXTS, sites="resid_post", dtype="float17")
    with pytest.raises(TrilensError, match="not a floating-point"):
        model.trace(TEXTS, sites="resid_post", dtype=torch.int8)
    if not torch.cuda.is_available():
        with pytest.raises(TrilensError, match="CUDA is not available"):
            model.trace(TEXTS, sites="resid_post", device="cuda")
    with pytest.raises(TrilensError, match="not a device"):
        model.trace(TEXTS, sites="resid_post", device="gpu-please")


def test_encoder_decoder_needs_a_target_for_decoder_sites(tiny):
    model = tiny("bart")
    with pytest.raises(InputError, match="needs a target"):
        model.trace(["x y z", "the cat"], sites="resid_post")  # the kind spans both stacks
    enc = model.trace(["x y z", "the cat"], sites=model.sites(stack="encoder", kind="resid_post"))
    assert enc.stack("resid_post").shape == (2, 2, 4, 32) and enc.logits is None
    pair = model.trace([("x y z", "one two"), ("the cat", "cat")], sites="resid_post")
    torch.testing.assert_close(pair.stack("resid_post", "encoder"), enc.stack("resid_post"))
    assert pair.tokens("decoder")[0][1:] == ["one", "two"]  # the start token, then the target
    assert pair.mask("decoder").tolist() == [[True, True, True], [True, True, False]]


def test_cache_save_load_and_frame(tiny, tmp_path):
    model = tiny("t5")
    cache = model.trace([("x y", "y x")], sites=["resid", "cross_attn_pattern"], positions="last")
    path = cache.save(tmp_path / "c")
    back = trilens.ActivationCache.load(path)
    assert sorted(back) == sorted(cache) and back.stacks == cache.stacks
    for name in cache:
        torch.testing.assert_close(back[name], cache[name])
    torch.testing.assert_close(back.logits, cache.logits)
    assert back.tokens("decoder") == cache.tokens("decoder")
    frame = back.to_frame()
    assert set(frame["kind"]) == {"resid_pre", "resid_post", "cross_attn_pattern"} and len(frame) == len(cache)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dir left behind
