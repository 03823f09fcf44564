"""Edge attribution (EAP, EAP-IG): edge scores add up to attribution patching's node scores, each equals the first-order
change of its own patched edge, circuits of every edge and of none give the clean and corrupted runs, and bad input is
refused."""

import pytest
import torch

import trilens
from trilens import Hook, Patch, TokenScore
from trilens.capture.objectives import token_scores
from trilens.errors import InputError
from trilens.patching import CircuitResult, attribution_patching, circuit_faithfulness, edge_attribution

METRIC = TokenScore(token="sat", foil="is", score="logit")
PAIRS = {
    "gpt2": (["the cat sat on the mat", "a dog sat on a big"], ["the dog sat on the mat", "a cat sat on a big"]),
    "llama": (["the cat sat on the mat", "a dog sat on a big"], ["the dog sat on the mat", "a cat sat on a big"]),
    "t5": ([("the cat sat", "on the mat"), ("a dog", "is here")], [("the dog sat", "on the mat"), ("a cat", "is here")]),
    "bert": (["the cat [MASK] on the mat", "a dog [MASK] here"], ["the dog [MASK] on the mat", "a cat [MASK] here"]),
    "bart": ([("the cat sat", "on the mat"), ("a dog", "is here")], [("the dog sat", "on the mat"), ("a cat", "is here")]),
}


def _metric(model, text, interventions=()):
    logits = model.run([text], interventions=interventions)
    return float(token_scores(logits, METRIC.resolve(model, model.encode([text]), None), "logit")[0, 0])


def _tag(model, stack):
    return {"encoder": "enc.", "decoder": "dec."}[stack] if model.family == "encoder-decoder" else ""


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5", "bert", "bart"])
def test_edges_out_of_a_node_sum_to_its_attribution_patching_score(tiny, arch):
    model = tiny(arch)
    clean, corrupted = PAIRS[arch]
    result = edge_attribution(model, clean, corrupted, METRIC, method="eap", faithfulness=False, progress=False)
    atp = attribution_patching(model, clean, corrupted, METRIC, sites="mlp_out", heads=["z"], positions="all")
    checked = 0
    for key in atp.keys:
        stack, kind = key.split(".")
        effect = atp.effect(key)  # [pair, layer(, head)]
        for layer in range(effect.shape[1]):
            names = [f"{_tag(model, stack)}m{layer}"] if kind == "mlp_out" else \
                [f"{_tag(model, stack)}{'c' if kind == 'cross_z' else 'a'}{layer}.h{h}" for h in range(effect.shape[2])]
            for i, name in enumerate(names):
                got = result.scores[:, result.senders.index(name)].nansum(-1)
                want = effect[:, layer] if kind == "mlp_out" else effect[:, layer, i]
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
                checked += 1
    assert checked >= 2 * model.n_layers[model.stacks[-1]]


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_edges_into_a_node_sum_to_attribution_patching_at_its_input(tiny, arch):
    """The logits read the last residual stream: the edges into them sum to AtP of that whole layer's resid_post."""
    model = tiny(arch)
    clean, corrupted = PAIRS[arch]
    result = edge_attribution(model, clean, corrupted, METRIC, method="eap", faithfulness=False, progress=False)
    stack = model.stacks[-1]
    atp = attribution_patching(model, clean, corrupted, METRIC, sites="resid_post", positions="all", stacks=stack)
    want = atp.effect(f"{stack}.resid_post")[:, -1]  # [pair]: the last layer
    got = result.scores[:, :, result.receivers.index("logits")].nansum(-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_an_edge_score_is_the_first_order_change_of_patching_that_edge(tiny_path):
    model = trilens.load(tiny_path("gpt2"), dtype=torch.float64)
    clean, corrupted = PAIRS["gpt2"]
    result = edge_attribution(model, clean[:1], corrupted[:1], METRIC, method="eap", faithfulness=False, progress=False)
    z = model.site("z", 0)
    c, k = model.trace(clean[:1], sites=[z, model.site("mlp_out", 0)]), model.trace(corrupted[:1], sites=[z, model.site("mlp_out", 0)])
    o = model.bridge.get_submodule("blocks.0.attn.o").original_component
    base = float(result.m_corrupted[0])
    eps = 1e-4
    cases = [("m0", "a1", c[model.site("mlp_out", 0)] - k[model.site("mlp_out", 0)], "blocks.1.ln1.hook_in"),
             ("a0.h2", "m1", None, "blocks.1.ln2.hook_in"), ("m0", "logits", None, model.site("resid_post", 1))]
    for sender, receiver, diff, site in cases:
        if sender == "a0.h2":
            dz = torch.zeros_like(c[z])
            dz[..., 2, :] = c[z][..., 2, :] - k[z][..., 2, :]
            diff = o(dz.flatten(-2)) - o(torch.zeros_like(dz.flatten(-2)))
        elif diff is None:
            diff = c[model.site("mlp_out", 0)] - k[model.site("mlp_out", 0)]
        moved = _metric(model, corrupted[0], [Hook(site, lambda x, d=diff: x + eps * d)])
        score = float(result.scores[0, result.senders.index(sender), result.receivers.index(receiver)])
        assert abs((moved - base) / eps - score) < 1e-6 * max(1.0, abs(score)) + 1e-8, (sender, receiver)


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_eap_ig_with_one_step_reads_the_gradient_at_the_clean_run(tiny, arch):
    model = tiny(arch)
    clean, corrupted = PAIRS[arch]
    result = edge_attribution(model, clean, corrupted, METRIC, method="eap-ig", steps=1, faithfulness=False,
                              progress=False)
    noise = attribution_patching(model, clean, corrupted, METRIC, sites="mlp_out", positions="all", direction="noise")
    for key in noise.keys:
        stack = key.split(".")[0]
        for layer in range(noise.effect(key).shape[1]):
            got = result.scores[:, result.senders.index(f"{_tag(model, stack)}m{layer}")].nansum(-1)
            torch.testing.assert_close(got, -noise.effect(key)[:, layer], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5", "bert", "bart"])
def test_the_full_circuit_is_the_clean_run_and_the_empty_one_the_corrupted_run(tiny, arch):
    model = tiny(arch)
    clean, corrupted = PAIRS[arch]
    result = edge_attribution(model, clean, corrupted, METRIC, steps=3, faithfulness=[7, 0, 5],
                              progress=False)
    assert result.sizes == [0, 5, 7]
    full = edge_attribution(model, clean, corrupted, METRIC, steps=2, faithfulness=[result.n_edges], progress=False)
    torch.testing.assert_close(result.faithful[:, 0], result.m_corrupted, atol=1e-5, rtol=0)
    torch.testing.assert_close(full.faithful[:, 0], full.m_clean, atol=1e-5, rtol=0)
    assert abs(float(full.recovered()[0]) - 1) < 1e-4 and abs(float(result.recovered()[0])) < 1e-4


@pytest.mark.parametrize("arch,site", [("gpt2", "blocks.0.hook_attn_out"), ("bert", "blocks.0.attn.o.hook_out")])
def test_dropping_the_edges_into_a_layer_patches_that_layer_alone(tiny, arch, site):
    """Layer 0's attention reads only the input: its edge given the corrupted value = its output patched (the
    residual stream, and on post-norm BERT the skip around the attention, keep the clean input)."""
    model = tiny(arch)
    clean, corrupted = PAIRS[arch]
    result = edge_attribution(model, clean, corrupted, METRIC, method="eap", faithfulness=False, progress=False)
    keep = result.adjacency.clone()
    keep[result.senders.index("input"), result.receivers.index("a0")] = False
    got = circuit_faithfulness(model, clean, corrupted, [keep], METRIC, progress=False)[:, 0]
    patched = model.trace(corrupted, sites=[site])[site]
    want = []
    for p in range(2):
        n = len(result.tokens[model.stacks[0]][p])
        want.append(_metric(model, clean[p], [Patch(site, value=patched[p:p + 1, :n])]))
    want = (torch.tensor(want, dtype=torch.float64) - result.m_corrupted) / (result.m_clean - result.m_corrupted)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_encoder_output_edges_into_cross_attention_on_the_zoo():
    model = trilens.load("zoo:t5")
    clean = [("a b c d e f >", "f e d c b a")]
    corrupted = [("a b c g e f >", "f e d c b a")]
    result = edge_attribution(model, clean, corrupted, trilens.StepScores(), step=3, steps=3, faithfulness=True,
                              progress=False)
    kv = [r for r in result.receivers if r.endswith(".kv")]
    assert len(kv) == model.n_layers["decoder"]
    scores = torch.stack([result.mean_scores()[result.senders.index("encoder"), result.receivers.index(r)] for r in kv])
    assert float(scores.abs().max()) > 0.1 * float(result.mean_scores().nan_to_num(0).abs().max())
    assert any("kv" in e["receiver"] or e["sender"].startswith("dec.c") for e in result.top_edges(5))
    n = result.edges_to_recover(0.9)
    assert n is not None and n < result.n_edges / 2 and result.recovered()[-1] == pytest.approx(1.0, abs=1e-3)
    edges = result.circuit(n)
    assert edges and all(e["receiver"] in result.receivers for e in edges)


def test_circuit_result_contract(tiny, tmp_path):
    model = tiny("gpt2")
    clean, corrupted = PAIRS["gpt2"]
    result = edge_attribution(model, clean, corrupted, METRIC, steps=2, progress=False)
    again = trilens.load_result(result.save(tmp_path / "circuit", figure=True))
    assert isinstance(again, CircuitResult) and (tmp_path / "circuit" / "figure.html").exists()
    torch.testing.assert_close(again.scores, result.scores, equal_nan=True)
    assert again.top_edges(3) == result.top_edges(3) and again.sizes == result.sizes
    frame = result.to_frame()
    assert len(frame) == 2 * result.n_edges and set(frame.columns) >= {"pair", "sender", "receiver", "score", "rank"}
    mask = result.circuit_mask(4)
    assert int(mask.sum()) == 4 and len(result.circuit(4)) <= 4
    assert len(result.figure(5).data) >= 2 and "EAP-IG" in result.figure().layout.title.text


def test_bad_input_is_refused(tiny):
    model = tiny("gpt2")
    clean, corrupted = PAIRS["gpt2"]
    with pytest.raises(InputError, match="token length"):
        edge_attribution(model, ["the cat sat on the mat"], ["the cat sat"], METRIC, progress=False)
    with pytest.raises(InputError, match="method"):
        edge_attribution(model, clean, corrupted, METRIC, method="acdc", progress=False)
    with pytest.raises(InputError, match="steps"):
        edge_attribution(model, clean, corrupted, METRIC, steps=0, progress=False)
    result = edge_attribution(model, clean, corrupted, METRIC, method="eap", faithfulness=False, progress=False)
    with pytest.raises(InputError, match="edges"):
        result.circuit_mask(result.n_edges + 1)
    with pytest.raises(InputError, match="faithfulness"):
        result.recovered()
    with pytest.raises(InputError, match="not an edge"):
        circuit_faithfulness(model, clean, corrupted, [[("m1", "a0")]], METRIC, progress=False)


def test_post_norm_models_get_a_node_per_norm(tiny):
    """BERT: input -> a0 (q, k, v) and n0.1 (the skip); heads -> n0.1; n0.1 -> m0 and n0.2; m0 -> n0.2; n1.2 -> logits:
    per layer 1 + 1 + 4 heads + 1 + 1 + 1 edges."""
    result = edge_attribution(tiny("bert"), *PAIRS["bert"], METRIC, method="eap", faithfulness=False, progress=False)
    edges = {(result.senders[s], result.receivers[r]) for s, r in result.adjacency.nonzero().tolist()}
    assert {("input", "a0"), ("input", "n0.1"), ("a0.h3", "n0.1"), ("n0.1", "m0"), ("n0.1", "n0.2"), ("m0", "n0.2"),
            ("n0.2", "a1"), ("n1.2", "logits")} <= edges
    assert ("input", "m0") not in edges and ("a0.h0", "m0") not in edges and len(edges) == 2 * (1 + 1 + 4 + 1 + 1 + 1) + 1
    assert "n1.2" in {e["sender"] for e in result.circuit(result.n_edges)}
