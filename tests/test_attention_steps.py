"""Attention over generation steps: metrics against a closed form and against patterns read by hand; source sensitivity
against finite differences and the backward-mode Jacobian; the random-projection estimate against the exact value."""

import math

import pytest
import torch

import trilens
from trilens.attention import AttentionStepsResult, attention_steps
from trilens.attention.sensitivity import source_sensitivity, view_sites
from trilens.capture.steps_input import step_inputs
from trilens.capture.grad_hooks import frozen_weights, input_embeddings, keep_hook
from trilens.errors import InputError


@pytest.fixture(scope="module")
def uniform_gpt2(tiny_path):
    """Tiny GPT-2 whose queries are zero: every position attends uniformly to itself and all before it."""
    model = trilens.load(tiny_path("gpt2"))
    with torch.no_grad():
        for block in model.hf_model.transformer.h:
            conv = block.attn.original_component.c_attn if hasattr(block.attn, "original_component") else block.attn.c_attn
            d = conv.weight.shape[0]
            conv.weight[:, :d] = 0
            conv.bias[:d] = 0
    return model


def test_source_mass_under_uniform_attention_is_n_over_n_plus_t_minus_1(uniform_gpt2):
    prompts, targets = ["the cat sat on", "a dog"], ["the mat and it was here", "sat on the mat"]
    result = attention_steps(uniform_gpt2, prompts, targets, sensitivity=None)
    n = torch.tensor([4.0, 2.0])
    t = torch.arange(1, result.n_steps + 1, dtype=torch.float)
    expected = n[:, None] / (n[:, None] + t - 1)
    valid = result.valid
    mass = result.values("source_mass")  # [L, B, H, T]
    assert valid.sum(1).tolist() == [6, 4]
    for layer in range(mass.shape[0]):
        for head in range(mass.shape[2]):
            assert torch.allclose(mass[layer, :, head][valid], expected[valid], atol=1e-5)
    assert torch.allclose(result.baseline[valid], expected[valid])
    no_sink = result.values("source_mass_no_sink")[0, :, 0]
    assert torch.allclose(no_sink[valid], ((n[:, None] - 1) / (n[:, None] + t - 2))[valid], atol=1e-5)
    entropy = result.values("entropy")[0, :, 0]
    assert torch.allclose(entropy[valid], torch.log(n[:, None] + t - 1)[valid], atol=1e-5)
    assert torch.isnan(mass[:, 1, :, 4:]).all()  # the shorter target has no steps 5 and 6


def test_decoder_only_metrics_equal_the_generated_patterns_read_by_hand(tiny):
    model = tiny("gpt2")
    result = attention_steps(model, "the cat sat", max_new_tokens=5, sensitivity=None)
    gen = model.generate("the cat sat", capture="attn_pattern", max_new_tokens=5)
    assert result.step_tokens[0] == model.tokenizer.convert_ids_to_tokens(gen.generated_ids[0][gen.live[0]].tolist())
    n = 3
    for layer in range(2):
        pattern = gen.cache["attn_pattern", layer][0]  # [H, Q, K] over the fed sequence
        for t in range(1, result.valid[0].sum() + 1):
            row = pattern[:, n + t - 2, : n + t - 1]
            assert torch.allclose(result.values("source_mass")[layer, 0, :, t - 1], row[:, :n].sum(-1), atol=1e-5)
            assert torch.allclose(result.values("sink")[layer, 0, :, t - 1], row[:, 0], atol=1e-6)
            assert torch.allclose(result.values("previous")[layer, 0, :, t - 1], row[:, -2], atol=1e-6)
            entropy = -(row * row.log()).sum(-1)
            assert torch.allclose(result.values("entropy")[layer, 0, :, t - 1], entropy, atol=1e-5)


def test_cross_attention_metrics_equal_the_generated_patterns_read_by_hand(tiny):
    model = tiny("bart")
    result = attention_steps(model, ["the cat sat on the mat", "a dog"], max_new_tokens=4, sensitivity=None)
    gen = model.generate(["the cat sat on the mat", "a dog"], capture="cross_attn_pattern", max_new_tokens=4)
    lengths = [7, 3]  # with the end-of-sequence token
    for b, n in enumerate(lengths):
        steps = int(result.valid[b].sum())
        for layer in range(2):
            rows = gen.cache["cross_attn_pattern", layer][b, :, :steps, :n]  # [H, T, N]
            entropy = -(rows * rows.log()).sum(-1)
            assert torch.allclose(result.values("cross_entropy")[layer, b, :, :steps], entropy, atol=1e-5)
            covered = rows.cumsum(1).clamp_max(1).sum(-1) / n
            assert torch.allclose(result.values("cross_coverage")[layer, b, :, :steps], covered, atol=1e-5)
            assert torch.allclose(result.values("cross_spread")[layer, b, :, :steps], entropy.exp() / n, atol=1e-5)
    assert "source_mass" not in result.names  # cross-attention sums to 1 over the source: no mass to report


def _backward_jacobian_norms(model, steps, b, names):
    """||J||_F per (site, step) by plain reverse mode: one backward per output coordinate."""
    batch = model.encode([steps.rows[b]])
    store = {}
    with frozen_weights(model.hf_model), torch.enable_grad(), input_embeddings(model) as embeds, \
            model.hooks([(n, keep_hook(store, n)) for n in names]):
        model.hf_model(**batch.forward_kwargs())
    src, n_src = embeds[steps.source_stack], int(steps.source_lengths[b])
    out = torch.zeros(len(names), int(steps.valid[b].sum()))
    for i, name in enumerate(names):
        act = store[name]
        for t in range(out.shape[1]):
            p = int(steps.positions[b, t])
            seeds = torch.zeros(act.shape[-1], *act.shape)
            seeds[:, 0, p] = torch.eye(act.shape[-1])
            (jac,) = torch.autograd.grad(act, src, seeds, retain_graph=True, is_grads_batched=True)
            out[i, t] = jac[:, 0, :n_src].norm()
    return out


@pytest.mark.parametrize("name", ["gpt2", "t5"])
def test_exact_sensitivity_equals_the_backward_jacobian(tiny, name):
    model = tiny(name)
    inputs = ["the cat sat on"] if name == "gpt2" else [("the cat sat on", "a dog was here")]
    targets = ["the mat"] if name == "gpt2" else None
    steps = step_inputs(model, inputs, targets)
    sens = source_sensitivity(model, steps, method="exact")
    sites = view_sites(model)
    reference = _backward_jacobian_norms(model, steps, 0, sites["attention"] + sites["residual"])
    L = len(sites["attention"])
    n_steps = int(steps.valid[0].sum())
    assert torch.allclose(sens["attention"][:, 0, :n_steps], reference[:L], rtol=1e-4, atol=1e-6)
    assert torch.allclose(sens["residual"][:, 0, :n_steps], reference[L:], rtol=1e-4, atol=1e-6)
    assert bool(sens["exact"].all()) and float(sens["attention_se"][:, 0, :n_steps].abs().max()) == 0


def test_sensitivity_agrees_with_finite_differences(tiny_path):
    """||J u|| along a few random source directions, by central differences of the attention output."""
    from trilens.capture.jvp import (
        _embeddings,
        directional_derivatives,
        replaced_embeddings,
    )

    # a model of its own, not the session's: .double() copies every tensor on its own, so the bridge's split q/k/v
    # stop being views of GPT-2's c_attn (what trilens.features reads and writes by HF's names)
    model = trilens.load(tiny_path("gpt2"))
    steps = step_inputs(model, ["the cat sat on"], ["the mat"])
    batch = model.encode([steps.rows[0]])
    site = view_sites(model)["attention"][1]
    gen = torch.Generator().manual_seed(1)
    u = torch.zeros(3, batch.input_ids.shape[1], model.d_model, dtype=torch.float64)
    u[:, :4] = torch.randn(3, 4, model.d_model, generator=gen, dtype=torch.float64)
    model.hf_model.double()
    try:
        ju = directional_derivatives(model, batch, "decoder", lambda a, b: u[a:b], 3, [site], lambda _, x: x)[site]
        base = _embeddings(model, batch, "decoder")
        eps = 1e-5
        outs = []
        for sign in (1, -1):
            store = {}
            with torch.no_grad(), replaced_embeddings(model, {"decoder": base + sign * eps * u[:1]}), \
                    model.hooks([(site, keep_hook(store, site))]):
                model.hf_model(**batch.forward_kwargs())
            outs.append(store[site])
        fd = (outs[0] - outs[1]) / (2 * eps)
        assert torch.allclose(ju[0], fd[0], atol=1e-7, rtol=1e-5)
    finally:
        model.hf_model.float()


def test_random_projection_estimate_lies_within_three_standard_errors(tiny):
    model = tiny("bart")
    steps = step_inputs(model, [("the cat sat on the mat", "a dog was here")])
    exact = source_sensitivity(model, steps, method="exact")
    est = source_sensitivity(model, steps, method="estimate", probes=200, seed=3)
    n = int(steps.valid[0].sum())
    for view in ("attention", "residual"):
        diff = (est[view] - exact[view])[:, 0, :n].abs()
        se = est[f"{view}_se"][:, 0, :n]
        assert bool((se > 0).all())
        assert float((diff / se).max()) < 3.5  # 3 standard errors, with a little room for the many comparisons
        assert float((se / exact[view][:, 0, :n]).max()) < 0.2  # and the estimate is informative
    assert not bool(est["exact"].any())


def test_result_round_trip_frame_and_figures(tiny, tmp_path):
    model = tiny("t5")
    result = attention_steps(model, [("the cat sat", "a dog"), ("one two three four", "five six")], sensitivity="exact")
    assert {"sensitivity", "residual_sensitivity", "cross_entropy", "entropy"} <= set(result.names)
    first = result.values("sensitivity")[:, :, 0, 0]
    assert torch.allclose(first, torch.ones_like(first))  # normalised by step 1
    frame = result.to_frame()
    assert set(frame["metric"]) == set(result.names)
    assert int((frame["metric"] == "cross_entropy").sum()) == 2 * 4 * int(result.valid.sum())  # layers x heads x steps
    saved = trilens.load_result(result.save(tmp_path / "steps"))
    assert isinstance(saved, AttentionStepsResult)
    for name in result.names:
        assert torch.equal(saved.values(name).isnan(), result.values(name).isnan())
        assert torch.allclose(saved.values(name).nan_to_num(), result.values(name).nan_to_num())
    fig = result.figure("cross_entropy", by="head", layer=1)
    assert len([t for t in fig.data if t.mode == "lines+markers"]) == 4
    assert result.grid("cross_entropy").shape == (2, 4)
    assert "cross-attention entropy" in result.grid_figure("cross_entropy").layout.title.text


def test_bad_inputs_give_clear_errors(tiny):
    with pytest.raises(InputError, match="encoder-only models do not generate"):
        attention_steps(tiny("bert"), "the cat [MASK]")
    gpt = tiny("gpt2")
    with pytest.raises(InputError, match="2 inputs but 1 targets"):
        attention_steps(gpt, ["the cat", "a dog"], ["sat"])
    with pytest.raises(InputError, match="target is empty"):
        attention_steps(gpt, ["the cat"], [" "])
    with pytest.raises(InputError, match="pairs are for encoder-decoder"):
        attention_steps(gpt, [("the cat", "sat")])
    with pytest.raises(InputError, match="unknown sensitivity method"):
        attention_steps(gpt, ["the cat"], ["sat"], sensitivity="fast")
    with pytest.raises(InputError, match="probes must be at least 2"):
        attention_steps(gpt, ["the cat"], ["sat"], sensitivity="estimate", probes=1)
    with pytest.raises(InputError, match="input text is empty"):
        attention_steps(gpt, [""], ["sat"])  # no source
    result = attention_steps(gpt, ["the cat"], ["sat on"], sensitivity=None)
    with pytest.raises(InputError, match="no metric 'sensitivity'.*sensitivity= other than None"):
        result.values("sensitivity")
    with pytest.raises(InputError, match="layer 7 does not exist"):
        result.curve("entropy", layer=7, by="head")
    assert math.isclose(float(result.values("source_mass")[0, 0, 0, 0]), 1.0, abs_tol=1e-6)  # step 1 reads only the prompt
