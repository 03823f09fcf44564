"""Generation capture equals a manual token-by-token loop; the assembled view equals a teacher-forced trace."""

import pytest
import torch

from trilens.capture.generation import Generation
from trilens.errors import InputError, SiteError

ATOL = dict(atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_decoder_steps_equal_a_manual_loop(name, tiny):
    model = tiny(name)
    sites = ["resid_post", "attn_out", "attn_pattern"]
    gen = model.generate("the cat sat on", capture=sites, max_new_tokens=4)
    ref = model.hf_model.generate(**{k: v for k, v in model.encode("the cat sat on").forward_kwargs().items()},
                                  max_new_tokens=4, do_sample=False, pad_token_id=model.pad_token_id)
    assert torch.equal(gen.sequences, ref)
    prompt = gen.prompt_length
    assert gen.n_steps == 4 and gen.generated_ids.shape == (1, 4)
    for t in range(gen.n_steps):
        seen = gen.sequences[:, : prompt + t]  # what the model had read when it produced token t
        manual = model.trace(seen, sites=sites)
        step = gen.step(t)
        for n in model.site_index.resolve(sites):
            if "pattern" in n:
                torch.testing.assert_close(step[n][:, :, -1], manual[n][:, :, -1], **ATOL)
            else:
                torch.testing.assert_close(step[n][:, -1], manual[n][:, -1], **ATOL)
    fed = gen.sequences[:, : prompt + gen.n_steps - 1]
    forced = model.trace(fed, sites=sites)
    for n in forced:
        torch.testing.assert_close(gen.cache[n], forced[n], **ATOL)


def test_batched_left_padded_generation_matches_single_prompts(tiny):
    model = tiny("llama")
    prompts = ["the cat sat on the mat", "x y"]
    batch = model.generate(prompts, capture="resid_post", max_new_tokens=3)
    for i, p in enumerate(prompts):
        one = model.generate(p, capture="resid_post", max_new_tokens=3)
        assert torch.equal(batch.generated_ids[i], one.generated_ids[0])
        mask = batch.cache.mask("decoder")[i]
        torch.testing.assert_close(batch.cache["resid_post", 1][i][mask], one.cache["resid_post", 1][0], atol=1e-4, rtol=0)
    assert batch.cache.mask("decoder").sum(1).tolist() == [6 + 2, 2 + 2]


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_encoder_decoder_steps_equal_a_manual_loop(name, tiny):
    model = tiny(name)
    sites = ["resid_post", "attn_pattern", "cross_attn_pattern"]
    gen = model.generate(["x y z one two"], capture=sites, max_new_tokens=4)
    src = model.encode(["x y z one two"]).input_ids[0].tolist()
    enc_names = model.sites(stack="encoder", kind="resid_post")
    for n in enc_names:
        assert n in gen.encoder and n not in gen.step(0)
    for t in range(gen.n_steps):
        dec_in = gen.sequences[0, : t + 1].tolist()  # [start, g_1 .. g_t]
        manual = model.trace([(src, dec_in[1:] + [0])], sites=sites)  # ids targets: teacher-force exactly dec_in
        step = gen.step(t)
        for n in model.sites(stack="decoder", kind=["resid_post", "attn_pattern", "cross_attn_pattern"]):
            got, want = step[n], manual[n]
            if "pattern" in n:
                torch.testing.assert_close(got[:, :, -1], want[:, :, -1], **ATOL)
            else:
                torch.testing.assert_close(got[:, -1], want[:, -1], **ATOL)
        for n in enc_names:
            torch.testing.assert_close(gen.cache[n], manual[n], **ATOL)
    cross = gen.cache.stack("cross_attn_pattern")
    assert cross.shape == (2, 1, 4, gen.n_steps, len(src))
    torch.testing.assert_close(cross.sum(-1), torch.ones_like(cross.sum(-1)), **ATOL)


def test_generation_result_save_load_and_frame(tiny, tmp_path):
    model = tiny("gpt2")
    gen = model.generate(["the cat", "x y z"], capture=["resid_post", "attn_pattern"], max_new_tokens=3)
    frame = gen.to_frame()
    assert len(frame) == 2 * 3 and set(frame.columns) >= {"sequence", "step", "token_id", "token", "prob"}
    assert ((frame["prob"] > 0) & (frame["prob"] <= 1)).all()
    back = Generation.load(gen.save(tmp_path / "g"))
    assert back.texts == gen.texts and torch.equal(back.sequences, gen.sequences) and back.n_steps == gen.n_steps
    for n in gen.cache:
        torch.testing.assert_close(back.cache[n], gen.cache[n])
    torch.testing.assert_close(back.step(2)["blocks.1.hook_resid_post"], gen.step(2)["blocks.1.hook_resid_post"])
    with pytest.raises(InputError, match="step 7 does not exist"):
        gen.step(7)


def test_generation_errors(tiny):
    with pytest.raises(InputError, match="encoder-only models do not generate"):
        tiny("bert").generate("x y", capture="resid_post")
    with pytest.raises(InputError, match="beam search"):
        tiny("gpt2").generate("x y", capture="resid_post", num_beams=2)
    with pytest.raises(SiteError, match="Did you mean"):
        tiny("gpt2").generate("x y", capture="blocks.0.hook_resid_psot")
    with pytest.raises(InputError, match="sources only"):
        tiny("t5").generate([("x y", "y x")], capture="resid_post")
    plain = tiny("gpt2").generate("x y", max_new_tokens=2)  # no capture: still a Generation
    assert plain.generated_ids.shape == (1, 2) and len(plain.cache) == 0
