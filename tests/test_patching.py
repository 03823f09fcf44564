"""Activation patching and attribution patching: batched sweeps equal single patched runs, the closed cases hold exactly,
attribution patching equals the first-order term, and bad input is refused."""

import pytest
import torch

import trilens
from trilens import Hook, Patch, StepScores, TokenScore
from trilens.capture.interventions import PatchRows
from trilens.capture.objectives import token_scores
from trilens.errors import InputError, SiteError
from trilens.patching import KLDivergence, PatchingResult, attribution_patching, patching_sweep

METRIC = TokenScore(token="sat", foil="is", score="logit")
PAIRS = {
    "gpt2": (["the cat sat on the mat", "a dog sat on a big"], ["the dog sat on the mat", "a cat sat on a big"]),
    "llama": (["the cat sat on the mat", "a dog sat on a big"], ["the dog sat on the mat", "a cat sat on a big"]),
    "bert": (["the cat [MASK] on the mat", "a dog [MASK] here"], ["the dog [MASK] on the mat", "a cat [MASK] here"]),
    "t5": ([("the cat sat", "on the mat"), ("a dog", "is here")], [("the dog sat", "on the mat"), ("a cat", "is here")]),
    "bart": ([("the cat sat", "on the mat"), ("a dog", "is here")], [("the dog sat", "on the mat"), ("a cat", "is here")]),
}


def _single_run_metric(model, text, interventions):
    logits = model.run([text], interventions=interventions)
    rows = METRIC.resolve(model, model.encode([text]), None)
    return float(token_scores(logits, rows, "logit")[0, 0])


def _reference_intervention(panel, site, value, pos, head):
    """One cell patched the way a user writes it today: ``Patch`` at a position, or a ``Hook`` for one head."""
    if panel.n_heads is None:
        return Patch(site, value=value[None, None], positions=[pos])

    def fn(x):
        x = x.clone()
        if panel.pattern:
            x[:, head, pos] = value
        else:
            x[:, pos, head] = value
        return x

    return Hook(site, fn)


@pytest.mark.parametrize("arch", list(PAIRS))
def test_batched_sweep_equals_a_loop_of_single_patches(tiny, arch):
    model = tiny(arch)
    clean, corrupted = PAIRS[arch]
    # patterns reach the output only on GPT-2; decoder-only runs start at the chunk's first patched position
    heads = {"gpt2": ["z", "q", "k", "v", "attn_pattern"], "llama": ["z", "q", "k", "v"]}.get(arch, ["z", "q", "v"])
    result = patching_sweep(model, clean, corrupted, METRIC, heads=heads, batch_size=7, progress=False)
    source = model.trace(clean, sites=[s for p in result.panels for s in p.sites])
    checked = 0
    for panel in result.panels:
        values = result.raw(panel.key)
        stack = panel.position_stack
        for pair in range(2):
            n = len(result.tokens[stack][pair])
            for layer, site in enumerate(panel.sites):
                for pos in range(n):
                    for head in range(panel.n_heads or 1):
                        src = source[site][pair]
                        value = (src[head, pos] if panel.pattern else src[pos, head]) if panel.n_heads else src[pos]
                        if panel.pattern:  # the single run has no padding
                            value = value[: len(result.tokens[stack][pair])]
                        want = _single_run_metric(model, corrupted[pair],
                                                  [_reference_intervention(panel, site, value, pos, head)])
                        got = values[pair, layer, pos, head] if panel.n_heads else values[pair, layer, pos]
                        assert abs(float(got) - want) < 1e-5, (panel.key, pair, layer, pos, head)
                        checked += 1
            if panel.per_position:  # cells past the pair's length do not exist
                assert torch.isnan(values[pair, :, n:]).all()
    assert checked == sum(int(torch.isfinite(v).sum()) for v in result.values.values())


@pytest.mark.parametrize("arch", ["gpt2", "bert", "t5"])
def test_patching_with_the_runs_own_activations_changes_nothing(tiny, arch):
    model = tiny(arch)
    _, corrupted = PAIRS[arch]
    result = patching_sweep(model, corrupted, corrupted, METRIC, heads=True, progress=False)
    for key in result.keys:
        got = result.raw(key)
        want = result.m_corrupted.view(-1, *[1] * (got.dim() - 1)).expand_as(got)
        ok = torch.isfinite(got)
        torch.testing.assert_close(got[ok], want[ok], atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "bert", "t5", "bart"])
def test_patching_a_whole_residual_layer_gives_the_other_run(tiny, arch):
    model = tiny(arch)
    clean, corrupted = PAIRS[arch]
    stack = "decoder" if model.family == "decoder" else "encoder"  # an encoder-decoder's decoder also reads the source
    for direction, want in (("denoise", "m_clean"), ("noise", "m_corrupted")):
        result = patching_sweep(model, clean, corrupted, METRIC, sites="resid_pre", positions="all", direction=direction,
                                progress=False)
        got = result.raw(f"{stack}.resid_pre")  # [pair, layer]
        torch.testing.assert_close(got, getattr(result, want)[:, None].expand_as(got), atol=1e-5, rtol=0)
        assert torch.allclose(result.normalised(f"{stack}.resid_pre"), torch.full_like(got, 1.0 if direction == "denoise"
                                                                                     else 0.0), atol=1e-3)


def test_metrics_kl_steps_and_functions(tiny):
    model = tiny("t5")
    clean, corrupted = PAIRS["t5"]
    kl = patching_sweep(model, clean, corrupted, "kl", sites="resid_pre", positions="all", progress=False)
    assert torch.allclose(kl.m_clean, torch.zeros(2, dtype=torch.float64), atol=1e-6) and (kl.m_corrupted > 0).all()
    torch.testing.assert_close(kl.raw("encoder.resid_pre"), torch.zeros(2, 2, dtype=torch.float64), atol=1e-5, rtol=0)
    steps = patching_sweep(model, clean, corrupted, StepScores(), sites="resid_pre", positions="all", progress=False)
    step0 = patching_sweep(model, clean, corrupted, StepScores(), step=0, sites="resid_pre", positions="all", progress=False)
    lp = torch.log_softmax(model.run(corrupted), -1)
    labels = model.encode(corrupted).labels
    per_step = lp.gather(-1, labels.clamp_min(0)[..., None])[..., 0] * (labels >= 0)
    torch.testing.assert_close(steps.m_corrupted, (per_step.sum(1) / (labels >= 0).sum(1)).double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(step0.m_corrupted, per_step[:, 0].double(), atol=1e-5, rtol=0)
    sat, is_ = (model.tokenizer.convert_tokens_to_ids(t) for t in ("sat", "is"))
    fn = patching_sweep(model, clean, corrupted, lambda logits: logits[:, -1, sat] - logits[:, -1, is_], sites="resid_pre",
                        progress=False)
    assert fn.info["params"]["metric"] == "LogitFunction"
    assert fn.m_corrupted.shape == (2,) and torch.isfinite(fn.raw("decoder.resid_pre")[0, :, :3]).all()
    assert KLDivergence().describe()["metric"] == "KLDivergence"


def test_the_default_metric_is_the_clean_minus_the_corrupted_prediction_on_the_zoo():
    model = trilens.load("zoo:gpt")
    result = patching_sweep(model, ["ela said that"], ["udor said that"], sites="resid_pre", progress=False)
    params = result.info["params"]
    assert params["metric"] == "logit_diff" and result.m_clean[0] > 0 > result.m_corrupted[0]  # she vs he
    explicit = patching_sweep(model, ["ela said that"], ["udor said that"], TokenScore(token="she", foil="he", score="logit"),
                              sites="resid_pre", progress=False)
    torch.testing.assert_close(result.raw("resid_pre"), explicit.raw("resid_pre"), equal_nan=True)
    norm = result.normalised("resid_pre")[0]  # the name (position 0) carries the pronoun early; the last position late
    assert norm[0, 0] > 0.9 and norm[-1, -1] > 0.9 and norm[-1, 0] < 0.5


def test_encoder_decoder_cross_attention_cells_on_the_zoo():
    model = trilens.load("zoo:t5")
    clean = [("a b c d e f >", "f e d c b a")]
    corrupted = [("a b c d e g >", "f e d c b a")]
    result = patching_sweep(model, clean, corrupted, StepScores(), step=0, heads=True, progress=False)
    assert {"decoder.cross_attn_out", "decoder.cross_z", "encoder.resid_pre", "decoder.resid_pre"} <= set(result.keys)
    cross = result.effect("decoder.cross_attn_out")
    assert cross.shape == (1, 2, 7) and cross[0, :, 0].abs().max() > 0.1  # step 0 ("f") reads the source through it
    assert result.effect("decoder.cross_z")[0, :, 0].abs().max() > 0.05
    enc = result.normalised("encoder.resid_pre")[0, 0]  # the encoder's input: the changed symbol is the cause
    assert int(enc.nan_to_num(0).abs().argmax()) == 5


@pytest.mark.parametrize("arch", ["gpt2", "bart"])
def test_attribution_patching_equals_the_first_order_term(tiny_path, arch):
    model = trilens.load(tiny_path(arch), dtype=torch.float64)
    clean, corrupted = PAIRS[arch]
    atp = attribution_patching(model, clean, corrupted, METRIC, heads=True)
    source = model.trace(clean, sites="resid_pre")
    base = model.trace(corrupted, sites="resid_pre")
    eps = 1e-6
    stack = model.stacks[0]
    for layer in range(model.n_layers[stack]):
        site = model.site("resid_pre", layer, stack)
        for pos in range(3):
            moved = base[site][0, pos] + eps * (source[site][0, pos] - base[site][0, pos])
            patched = _single_run_metric(model, corrupted[0], [PatchRows(site, torch.tensor([0]), moved[None],
                                                                          torch.tensor([pos]))])
            finite_difference = (patched - float(atp.m_corrupted[0])) / eps
            assert abs(finite_difference - float(atp.effect(f"{stack}.resid_pre")[0, layer, pos])) < 1e-5


def test_atp_star_recomputes_the_pattern_of_a_patched_key_exactly(tiny_path):
    model = trilens.load(tiny_path("gpt2"), dtype=torch.float64)
    clean, corrupted = PAIRS["gpt2"]
    star = attribution_patching(model, clean, corrupted, METRIC, method="atp*", heads=["k", "q"], sites=[])
    layer, head, key = 1, 2, 1
    k, v, z, pattern = (model.site(kind, layer) for kind in ("k", "v", "z", "attn_pattern"))
    source = model.trace(clean, sites=[k])
    base = model.trace(corrupted, sites=[v, pattern])
    patched = model.trace(corrupted, sites=[pattern], interventions=[
        PatchRows(k, torch.tensor([0]), source[k][0, key, head][None], torch.tensor([key]), torch.tensor([head]))])
    g_z = model.gradients(corrupted, METRIC, sites=[z], embeddings=False).grad(z)[0, 0]  # [pos, head, d]
    g_pattern = torch.einsum("qd,kd->qk", g_z[:, head], base[v][0, :, head])
    want = ((patched[pattern][0, head] - base[pattern][0, head]) * g_pattern).sum()
    assert abs(float(star.effect("k")[0, layer, key, head]) - float(want)) < 1e-9
    plain = attribution_patching(model, clean, corrupted, METRIC, method="atp", heads=["k"], sites=[])
    assert star.magnitudes is not None and set(star.magnitudes) == {"decoder.k", "decoder.q"}
    assert plain.magnitudes is None
    with pytest.raises(InputError, match="QK fix"):
        attribution_patching(trilens.load(tiny_path("llama")), *PAIRS["gpt2"], METRIC, method="atp*", heads=["k"])


def test_result_contract_and_comparison(tiny, tmp_path):
    model = tiny("gpt2")
    clean, corrupted = PAIRS["gpt2"]
    exact = patching_sweep(model, clean, corrupted, METRIC, heads=True, progress=False)
    atp = attribution_patching(model, clean, corrupted, METRIC, heads=True)
    same = exact.compare(exact)
    assert same["all"]["spearman"] == pytest.approx(1.0) and same["all"]["top_k_recall"] == 1.0
    agreement = exact.compare(atp)
    assert set(agreement) == set(exact.keys) | {"all"} and -1 <= agreement["all"]["spearman"] <= 1
    heatmap_cells = sum(int(torch.isfinite(exact.effect(k).nanmean(0)).sum()) for k in exact.keys)
    assert agreement["all"]["cells"] == heatmap_cells  # the mean over pairs, as the heatmap shows
    assert exact.compare(atp, per_pair=True)["all"]["cells"] == sum(int(torch.isfinite(v).sum()) for v in exact.values.values())
    frame = exact.to_frame()
    assert len(frame) == sum(int(torch.isfinite(v).sum()) for v in exact.values.values())
    assert set(frame["token"].dropna()) <= set(sum(exact.tokens["decoder"], []))
    top = exact.top(3)
    assert len(top) == 3 and abs(top[0]["value"]) >= abs(top[-1]["value"])
    fig = exact.figure()
    assert len(fig.data) == len(exact.panels) and fig.data[0].z.shape[0] == 2  # layers x positions
    assert fig.data[-1].z.shape == (2 * 4, 6)  # per-head panel: one row per (layer, head)
    exact.save(tmp_path / "r", figure=True)
    back = trilens.load_result(tmp_path / "r")
    assert isinstance(back, PatchingResult) and back.keys == exact.keys
    torch.testing.assert_close(back.normalised("z"), exact.normalised("z"), equal_nan=True)
    assert (tmp_path / "r" / "figure.html").exists()


def test_bad_input_is_refused(tiny):
    gpt = tiny("gpt2")
    clean, corrupted = PAIRS["gpt2"]
    with pytest.raises(InputError, match="6 and 5 tokens"):
        patching_sweep(gpt, ["the cat sat on the mat"], ["the dog sat on mat"], METRIC, progress=False)
    with pytest.raises(InputError, match="tokens for this tokenizer|cannot encode"):
        patching_sweep(gpt, clean, corrupted, TokenScore(token="zqxwv", foil="is", score="logit"), progress=False)
    with pytest.raises(InputError, match="nothing to patch"):
        patching_sweep(gpt, clean, corrupted, METRIC, sites=[], progress=False)
    with pytest.raises(InputError, match="per-head kind"):
        patching_sweep(gpt, clean, corrupted, METRIC, sites=["z"], progress=False)
    with pytest.raises(SiteError, match="no 'cross_attn_out' sites"):
        patching_sweep(gpt, clean, corrupted, METRIC, sites=["cross_attn_out"], progress=False)
    with pytest.raises(InputError, match="4 heads"):
        gpt.run(corrupted[0], interventions=[PatchRows(gpt.site("z", 0), torch.tensor([0]), torch.zeros(1, 8),
                                                      torch.tensor([1]), torch.tensor([4]))])
    with pytest.raises(InputError, match="direction"):
        patching_sweep(gpt, clean, corrupted, METRIC, direction="sideways", progress=False)
    with pytest.raises(InputError, match="step 3 does not exist"):
        patching_sweep(gpt, clean, corrupted, METRIC, step=3, progress=False)
    with pytest.raises(InputError, match="both predict"):
        patching_sweep(gpt, corrupted, corrupted, progress=False)
    with pytest.raises(InputError, match="2 clean inputs but 1"):
        patching_sweep(gpt, clean, corrupted[:1], METRIC, progress=False)
    with pytest.raises(InputError, match="never reaches the output"):
        patching_sweep(tiny("bert"), *PAIRS["bert"], METRIC, heads=["attn_pattern"], progress=False)
    with pytest.raises(InputError, match="method"):
        attribution_patching(gpt, clean, corrupted, METRIC, method="atp2")
    t5 = tiny("t5")
    with pytest.raises(InputError, match="source, target"):
        patching_sweep(t5, ["the cat sat"], ["the dog sat"], METRIC, progress=False)
    # an encoder-decoder's decoder sites need only equal targets
    decoder_only = patching_sweep(t5, [("the cat sat", "on the mat")], [("a dog", "on the mat")], METRIC,
                                  sites=["resid_pre", "cross_attn_out"], stacks="decoder", progress=False)
    assert decoder_only.keys == ["decoder.resid_pre", "decoder.cross_attn_out"]
    with pytest.raises(InputError, match="4 and 3 tokens.*stacks="):
        patching_sweep(t5, [("the cat sat", "on the mat")], [("a dog", "on the mat")], METRIC, progress=False)
    with pytest.raises(InputError, match="no 'middle' stack"):
        patching_sweep(t5, *PAIRS["t5"], METRIC, stacks="middle", progress=False)


def test_graddrop_runs_on_pre_norm_models_only(tiny):
    star = attribution_patching(tiny("gpt2"), *PAIRS["gpt2"], METRIC, method="atp*")
    assert star.magnitudes is not None and "graddrop" not in star.info["params"]
    assert star.info["backward_passes"] == 1 + tiny("gpt2").n_layers["decoder"]
    bert = attribution_patching(tiny("bert"), *PAIRS["bert"], METRIC, method="atp*")  # post-norm: every path is cut
    assert bert.magnitudes is None and "post-norm" in bert.info["params"]["graddrop"]
    assert bert.info["backward_passes"] == 1
