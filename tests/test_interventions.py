"""Interventions change runs exactly as specified, on trace, run and generate, and leave no hooks behind."""

import pytest
import torch

from trilens import AblateHeads, AblateNeurons, Hook, Patch, Steer
from trilens.errors import InputError

ATOL = dict(atol=1e-5, rtol=0)
CLEAN, CORRUPT = "the cat sat on the mat", "the dog sat on the mat"


def _no_hooks_left(model):
    for hp in model.bridge.hook_dict.values():
        assert not hp._forward_hooks, hp.name


def test_patching_the_last_residual_reproduces_the_source_run(tiny):
    model = tiny("gpt2")
    last = model.site("resid_post", -1)
    clean = model.trace(CLEAN, sites=last)
    patched = model.run(CORRUPT, interventions=[Patch(last, source=clean)])
    torch.testing.assert_close(patched, model.run(CLEAN), **ATOL)
    _no_hooks_left(model)


def test_patching_positions_changes_only_later_positions(tiny):
    model = tiny("llama")
    site = model.site("resid_post", 0)
    clean = model.trace(CLEAN, sites=site)
    base = model.run(CORRUPT)
    patched = model.run(CORRUPT, interventions=[Patch(site, source=clean, positions=[1])])
    torch.testing.assert_close(patched[:, :1], base[:, :1], **ATOL)  # causal: position 0 cannot see the patch
    assert (patched[:, 1:] - base[:, 1:]).abs().max() > 1e-4
    seen = model.trace(CORRUPT, sites=site, interventions=[Patch(site, source=clean, positions=[3])])
    torch.testing.assert_close(seen[site][0, 3], clean[site][0, 3], **ATOL)  # position 3 gets the source's position 3
    value = torch.full((32,), 0.5)
    traced = model.trace(CORRUPT, sites=site, interventions=[Patch(site, value=value, positions=[2, 3])])
    torch.testing.assert_close(traced[site][0, 2:4], value.expand(2, 32), **ATOL)


def test_steering_shifts_the_next_layer_input_exactly(tiny):
    model = tiny("gpt2")
    vec = torch.randn(32)
    post0, pre1 = model.site("resid_post", 0), model.site("resid_pre", 1)
    base = model.trace([CLEAN, "x y"], sites=pre1)
    steered = model.trace([CLEAN, "x y"], sites=pre1, interventions=[Steer(post0, vec, scale=3.0)])
    torch.testing.assert_close(steered[pre1] - base[pre1], (3.0 * vec).expand_as(base[pre1]), atol=1e-4, rtol=0)
    only = model.trace(CLEAN, sites=pre1, interventions=[Steer(post0, vec, scale=2.0, positions=[4])])
    diff = (only[pre1] - model.trace(CLEAN, sites=pre1)[pre1])[0]
    torch.testing.assert_close(diff[4], 2.0 * vec, atol=1e-4, rtol=0)
    assert diff[torch.arange(6) != 4].abs().max() < 1e-6


def test_zero_ablating_heads_matches_a_manual_projection(tiny):
    model = tiny("gpt2")
    z, out = model.site("z", 1), model.site("attn_out", 1)
    cache = model.trace(CLEAN, sites=[z, out])
    ablated = model.trace(CLEAN, sites=[z, out], interventions=[AblateHeads(layer=1, units=[0, 2])])
    assert ablated[z][:, :, [0, 2]].abs().max() == 0
    torch.testing.assert_close(ablated[z][:, :, [1, 3]], cache[z][:, :, [1, 3]], **ATOL)
    c_proj = model.hf_model.transformer.h[1].attn.c_proj  # Conv1D: x @ W + b
    manual = ablated[z].flatten(2) @ c_proj.weight + c_proj.bias
    torch.testing.assert_close(ablated[out], manual, **ATOL)


def test_mean_ablation_uses_the_batch_mean_or_the_given_mean(tiny):
    model = tiny("t5")
    pairs = [("x y z", "z y x"), ("the cat sat on the mat", "sat cat")]  # different lengths: padding
    z = model.site("z", 0, "encoder")
    cache = model.trace(pairs, sites=z)
    real = cache.mask("encoder")
    assert not real.all()
    mean = cache[z][real].mean(dim=0)  # over real tokens only: padding must not pull the mean
    ablated = model.trace(pairs, sites=z, interventions=[AblateHeads(layer=0, units=[1], stack="encoder", mode="mean")])
    torch.testing.assert_close(ablated[z][:, :, 1], mean[1].expand_as(ablated[z][:, :, 1]), **ATOL)
    given = torch.ones(4, 8)
    fixed = model.trace(pairs, sites=z, interventions=[AblateHeads(0, [3], stack="encoder", mode="mean", mean=given)])
    torch.testing.assert_close(fixed[z][:, :, 3], torch.ones_like(fixed[z][:, :, 3]), **ATOL)
    cross = model.site("cross_z", 1, "decoder")
    crossed = model.trace(pairs, sites=cross, interventions=[AblateHeads(1, [0], stack="decoder", cross=True)])
    assert crossed[cross][:, :, 0].abs().max() == 0


def test_neuron_ablation_and_custom_hooks(tiny):
    model = tiny("bert")
    post = model.site("mlp_post", 0)
    ablated = model.trace(CLEAN, sites=post, interventions=[AblateNeurons(layer=0, units=[5, 7])])
    assert ablated[post][..., [5, 7]].abs().max() == 0 and ablated[post][..., 6].abs().max() > 0
    doubled = model.trace(CLEAN, sites=post, interventions=[Hook(post, lambda x: 2 * x)])
    torch.testing.assert_close(doubled[post], 2 * model.trace(CLEAN, sites=post)[post], **ATOL)


def test_interventions_during_generation(tiny):
    model = tiny("gpt2")
    post = model.site("resid_post", 1)
    base = model.generate("the cat", capture=post, max_new_tokens=4)
    vec = torch.randn(32) * 5
    steered = model.generate("the cat", capture=post, max_new_tokens=4, interventions=[Steer(post, vec, positions=[3])])
    # position 3 is the second generated token fed back: steps before it are untouched
    torch.testing.assert_close(steered.cache[post][:, :3], base.cache[post][:, :3], **ATOL)
    torch.testing.assert_close(steered.cache[post][0, 3], base.cache[post][0, 3] + vec, atol=1e-4, rtol=0)
    zeroed = model.generate("the cat", capture=model.site("z", 0), max_new_tokens=3, interventions=[AblateHeads(0, [1])])
    assert zeroed.cache[model.site("z", 0)][:, :, 1].abs().max() == 0
    _no_hooks_left(model)


def test_bad_interventions_raise_and_remove_hooks(tiny):
    model = tiny("gpt2")
    post = model.site("resid_post", 0)
    with pytest.raises(InputError, match="steering vector has size 3"):
        model.run(CLEAN, interventions=[Steer(post, torch.ones(3))])
    with pytest.raises(InputError, match="units on the ablated axis"):
        model.run(CLEAN, interventions=[AblateHeads(0, [9])])
    with pytest.raises(InputError, match="exactly one of value= or source="):
        model.run(CLEAN, interventions=[Patch(post)])
    with pytest.raises(InputError, match="'zero' or 'mean'"):
        model.run(CLEAN, interventions=[AblateNeurons(0, [1], mode="random")])

    def boom(x):
        raise RuntimeError("inside a hook")

    with pytest.raises(RuntimeError, match="inside a hook"):
        model.run(CLEAN, interventions=[Hook(post, boom)])
    _no_hooks_left(model)
    torch.testing.assert_close(model.run(CLEAN), model.run(CLEAN))


def test_patch_from_a_source_in_a_chunked_trace_takes_each_chunks_own_rows(tiny):
    model = tiny("gpt2")
    texts = ["the cat sat on the mat", "a dog ran", "the key to the cabinets is"]
    site = model.site("resid_post", 0)
    source = model.trace(["a b c d e f", "f e d c b a", "c c c c c c"], sites=site)
    last = model.site("resid_post", -1)
    whole = model.trace(texts, sites=last, interventions=[Patch(site, source=source, positions=[0, 1])])
    chunked = model.trace(texts, sites=last, interventions=[Patch(site, source=source, positions=[0, 1])], batch_size=1)
    torch.testing.assert_close(chunked[last], whole[last], **ATOL)
