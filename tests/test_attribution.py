"""Attribution for generation: per-step saliency against a re-run on each prefix (the Inseq way) on all three families,
integrated-gradients completeness, batching, contrast, aggregation, every method, save/load and errors."""

import pytest
import torch
from tiny import WORDS

import trilens
from trilens.attribution import AttributionResult, attribute, list_attribution_methods
from trilens.attribution.aggregate import word_groups
from trilens.attribution.targets import attribution_steps
from trilens.capture.grad_hooks import embedding_modules
from trilens.capture.gradients import prefix_blocks
from trilens.errors import InputError

CASES = {"gpt2": (["the cat sat on", "a dog"], ["the mat and", "was here on the"]),
         "t5": ([("the cat sat on", "the mat and"), ("a dog", "was here on the")], None),
         "bart": ([("the cat sat on", "the mat and"), ("a dog", "was here")], None)}


def _embed(model, stack, ids):
    return embedding_modules(model)[stack](torch.tensor([ids])).detach().requires_grad_()


def _prefix_gradients(model, result, b, t):
    """The gradient of step t's log-probability from a forward pass on the prefix alone: (source, target) grads."""
    hf = model.hf_model
    src_tokens, tgt_tokens = result.source_tokens[b], result.target_tokens[b]
    tok = model.tokenizer
    src_ids = tok.convert_tokens_to_ids(src_tokens)
    step_id = tok.convert_tokens_to_ids(result.step_tokens[b][t])
    if model.family == "decoder":
        ids = src_ids + tok.convert_tokens_to_ids(tgt_tokens)[:t]
        e = _embed(model, "decoder", ids)
        logits = hf(inputs_embeds=e).logits[0, -1]
        (g,) = torch.autograd.grad(torch.log_softmax(logits, -1)[step_id], [e])  # no .grad left on the weights
        return g[0, : len(src_ids)], g[0, len(src_ids):]
    dec_ids = tok.convert_tokens_to_ids(tgt_tokens)[: t + 1]
    es, ed = _embed(model, "encoder", src_ids), _embed(model, "decoder", dec_ids)
    logits = hf(inputs_embeds=es, decoder_inputs_embeds=ed).logits[0, -1]
    gs, gd = torch.autograd.grad(torch.log_softmax(logits, -1)[step_id], [es, ed])
    return gs[0], gd[0]


def _assert_equals_prefix_reruns(model, result):
    """Every valid step of every input: saliency equals the gradient of a re-run on its prefix, to 1e-5."""
    for b in range(len(result.step_tokens)):
        for t in range(int(result.valid[b].sum())):
            src, tgt = _prefix_gradients(model, result, b, t)
            assert torch.allclose(result.raw["source"][b, t, : src.shape[0]], src, atol=1e-5)
            width = tgt.shape[0]
            assert torch.allclose(result.raw["target"][b, t, :width], tgt, atol=1e-5)
            assert result.raw["target"][b, t, width:].abs().sum() == 0  # no later token reaches step t


@pytest.mark.parametrize("name", ["gpt2", "t5", "bart"])
def test_saliency_per_step_equals_the_gradient_of_a_rerun_on_each_prefix(tiny, name):
    model = tiny(name)
    inputs, targets = CASES[name]
    result = attribute(model, inputs, targets, method="saliency", batch_size=2)
    assert result.valid.sum(1).tolist() == [len(s) for s in result.step_tokens]
    _assert_equals_prefix_reruns(model, result)


@pytest.mark.parametrize("name", ["gpt2", "t5"])
def test_long_targets_run_in_prefix_blocks_and_still_equal_a_rerun_on_each_prefix(tiny, name):
    model = tiny(name)
    long, short = " ".join(WORDS[i % len(WORDS)] for i in range(3, 39)), "was here on the"  # 36 and 4 words
    if name == "gpt2":
        inputs, targets = ["the cat sat on", "a dog"], [long, short]
    else:
        inputs, targets = [("the cat sat on", long), ("a dog", short)], None
    result = attribute(model, inputs, targets, method="saliency", batch_size=2)
    steps = attribution_steps(model, inputs, targets)
    blocks = prefix_blocks(model, model.encode(steps.rows), steps.scored)
    assert len(blocks) >= 2 and blocks[0][1] < blocks[-1][1]  # the first steps ran on a shorter prefix
    _assert_equals_prefix_reruns(model, result)


def test_encoder_saliency_at_each_mask_equals_a_single_objective(tiny):
    model = tiny("bert")
    text = "the [MASK] sat on the [MASK]"
    result = attribute(model, text, method="saliency")
    assert result.valid.shape == (1, 2)
    for t, p in enumerate(_mask_positions(model, text)):
        g = model.gradients(text, trilens.TokenScore(token=result.step_tokens[0][t], position=p))
        assert torch.allclose(result.raw["source"][0, t], g.grad("embed")[0, 0], atol=1e-5)


def _mask_positions(model, text):
    ids = model.encode([text]).input_ids[0]
    return (ids == model.tokenizer.mask_token_id).nonzero().flatten().tolist()


@pytest.mark.parametrize("name", ["gpt2", "t5"])
def test_integrated_gradients_are_complete_within_the_convergence_delta(tiny, name):
    """Attributions sum to f(x) - f(baseline) up to captum's convergence delta, which is small."""
    from trilens.attribution.forward import step_values
    from trilens.attribution.targets import attribution_steps

    model = tiny(name)
    inputs, targets = CASES[name]
    # a pad-token baseline: from zero embeddings T5's RMS norm jumps at the path's start (x / ||x|| is constant for
    # any x != 0), which no quadrature of 64 points resolves
    result = attribute(model, inputs[:1], None if targets is None else targets[:1], method="ig", n_steps=64,
                       step_scores=("logprob",), baseline="pad")
    steps = attribution_steps(model, inputs[:1], None if targets is None else targets[:1])
    batch = model.encode(steps.rows)
    with torch.no_grad():
        pad = {s: embedding_modules(model)[s](torch.full_like(batch.ids[s], model.tokenizer.pad_token_id))
               for s in model.stacks}
        f0 = step_values(model, batch, steps.scored, "logprob", pad)[0]
    n = int(result.valid[0].sum())
    gap = (result.step_scores["logprob"][0] - f0)[:n]
    total = (result.raw["source"].sum((2, 3)) + result.raw["target"].sum((2, 3)))[0, :n]
    assert torch.allclose((total - gap).abs(), result.deltas[0, :n], atol=1e-4)
    assert (result.deltas[0, :n] <= 0.02 * gap.abs() + 1e-3).all(), (result.deltas, gap)


def test_batched_inputs_equal_one_at_a_time(tiny):
    model = tiny("gpt2")
    inputs, targets = CASES["gpt2"]
    both = attribute(model, inputs, targets, method="input_x_gradient")
    assert both.info["rows_run"] == 2  # one forward row per input: every step shares it
    for b in range(2):
        one = attribute(model, inputs[b], [targets[b]], method="input_x_gradient")
        steps, n, m = one.raw["source"].shape[1], one.raw["source"].shape[2], one.raw["target"].shape[2]
        assert both.raw["source"][b, steps:].abs().sum() == 0 and both.raw["target"][b, steps:].abs().sum() == 0
        assert torch.allclose(both.raw["source"][b, :steps, :n], one.raw["source"][0], atol=1e-5)
        assert torch.allclose(both.raw["target"][b, :steps, :m], one.raw["target"][0], atol=1e-5)
        assert torch.allclose(both.step_scores["probability"][b, :steps], one.step_scores["probability"][0], atol=1e-6)


def test_contrast_equals_the_difference_of_two_single_target_attributions(tiny):
    model = tiny("t5")
    pairs = [("the cat sat on", "the mat and")]
    contrast = "a dog sat"
    both = attribute(model, pairs, method="saliency", contrast=contrast, score="logit")
    a = attribute(model, pairs, method="saliency", score="logit")
    foils = model.encode([(pairs[0][0], contrast)]).labels[0]
    for t, f in enumerate(foils.tolist()):  # the foil's logit at step t, under the target's own prefix
        g = model.gradients(pairs, trilens.TokenScore(token=f, position=t, score="logit"))
        for part, stack in (("source", "encoder"), ("target", "decoder")):
            width = both.raw[part].shape[2]
            assert torch.allclose(both.raw[part][0, t], a.raw[part][0, t] - g.grad("embed", stack)[0, 0, :width],
                                  atol=1e-5)
    per_step = attribute(model, pairs, method="saliency", contrast=[[model.tokenizer.convert_ids_to_tokens(i) for i in
                                                                    model.tokenizer(contrast)["input_ids"]]],
                         score="logit")
    assert torch.allclose(per_step.raw["source"], both.raw["source"], atol=1e-6)
    scores = attribute(model, pairs, method="saliency", contrast=contrast, step_scores=("contrast_prob_diff", "probability"))
    diff = scores.step_scores["contrast_prob_diff"]
    p_foil = torch.softmax(model.run(pairs)[0, :4], -1)[torch.arange(4), foils]
    assert diff.shape == (1, 4)
    assert torch.allclose(diff[0], scores.step_scores["probability"][0] - p_foil, atol=1e-6)


def test_contrast_on_a_decoder_only_model_is_linear_in_the_target(tiny):
    model = tiny("gpt2")
    tok = model.tokenizer
    target = tok("the mat", add_special_tokens=False)["input_ids"]
    foil = tok(" a dog", add_special_tokens=False)["input_ids"][: len(target)]
    both = attribute(model, "the cat sat on", [target], contrast=[foil], method="saliency", score="logit")
    a = attribute(model, "the cat sat on", [target], method="saliency", score="logit")
    ids = model.encode("the cat sat on").input_ids[0].tolist()
    n = len(ids)
    for t, f in enumerate(foil):
        g = model.gradients([ids + target], trilens.TokenScore(token=f, position=n - 1 + t, score="logit"))
        assert torch.allclose(both.raw["source"][0, t], a.raw["source"][0, t] - g.grad("embed")[0, 0, :n], atol=1e-5)


def test_word_aggregation_sums_the_sub_words_exactly():
    tokens = ["[CLS]", "un", "##believ", "##able", "[MASK]", "cat", "[SEP]"]
    g = torch.Generator().manual_seed(0)
    result = AttributionResult(raw={"source": torch.randn(1, 2, 7, 4, generator=g), "target": torch.zeros(1, 2, 0, 4)},
                               has_hidden=True, valid=torch.ones(1, 2, dtype=torch.bool), source_tokens=[tokens],
                               target_tokens=[[]], step_tokens=[["a", "b"]], step_scores={}, deltas=None,
                               family="encoder", info={})
    words = result.aggregate(words=True)
    assert words.tokens(0) == ["[CLS]", "unbelievable", "[MASK]", "cat", "[SEP]"]
    per_token, per_word = result.scores(0), words.scores(0)
    assert torch.equal(per_word[:, 1], per_token[:, 1] + per_token[:, 2] + per_token[:, 3])
    assert torch.equal(per_word[:, [0, 2, 3, 4]], per_token[:, [0, 4, 5, 6]])
    normed = result.aggregate("sum", normalise="l1")
    assert torch.allclose(normed.scores(0).abs().sum(1), torch.ones(2))
    assert torch.allclose(normed.scores(0), result.raw["source"][0].sum(-1) / result.raw["source"][0].sum(-1).abs().sum(1, keepdim=True))
    assert result.aggregate(normalise="l1").aggregate(normalise=None).normalise is None


def test_word_groups_follow_the_tokenizer_marks():
    assert word_groups(["[CLS]", "un", "##believ", "##able", "cat", "[SEP]"]) == [[0], [1, 2, 3], [4], [5]]
    assert word_groups(["The", "Ġun", "believ", "able", "Ġcat"]) == [[0], [1, 2, 3], [4]]
    assert word_groups(["▁the", "▁un", "bel", "▁cat", "</s>"]) == [[0], [1, 2], [3], [4]]


@pytest.mark.parametrize("method", ["integrated_gradients", "layer_integrated_gradients", "deeplift", "gradient_shap",
                                    "occlusion", "feature_ablation", "input_x_gradient"])
@pytest.mark.parametrize("name", ["gpt2", "t5", "bert"])
def test_every_method_runs_on_every_family(tiny, name, method):
    model = tiny(name)
    inputs = {"gpt2": ("the cat sat", ["on the"]), "t5": ([("the cat sat", "on the")], None),
              "bert": ("the [MASK] sat", None)}[name]
    kwargs = {"baseline": "zeros"} if method == "gradient_shap" else {}
    if method in ("integrated_gradients", "layer_integrated_gradients"):
        kwargs["n_steps"] = 8
    if method == "deeplift" and name == "t5":  # captum's DeepLift cannot hook T5's bridged ReLU modules
        with pytest.raises(InputError, match="DeepLift cannot run"):
            attribute(model, inputs[0], inputs[1], method=method)
        return
    result = attribute(model, inputs[0], inputs[1], method=method, **kwargs)
    s = result.scores(0)
    assert s.shape == (int(result.valid[0].sum()), len(result.source_tokens[0]))
    assert torch.isfinite(s).all() and s.abs().sum() > 0


def test_occlusion_is_the_score_change_of_removing_each_token(tiny):
    model = tiny("gpt2")
    result = attribute(model, "the cat sat", ["on"], method="occlusion", score="logprob", step_scores=("logprob",))
    ids = model.encode("the cat sat").input_ids[0].tolist()
    target = model.tokenizer("on", add_special_tokens=False)["input_ids"]
    e = embedding_modules(model)["decoder"](torch.tensor([ids + target])).detach()
    base = result.step_scores["logprob"][0, 0]
    for j in range(len(ids)):
        cut = e.clone()
        cut[0, j] = 0
        with torch.no_grad():
            lp = torch.log_softmax(model.hf_model(inputs_embeds=cut).logits[0, len(ids) - 1], -1)[target[0]]
        assert abs(float(result.raw["source"][0, 0, j]) - float(base - lp)) < 1e-4


def test_save_load_round_trip(tiny, tmp_path):
    model = tiny("t5")
    result = attribute(model, CASES["t5"][0], method="ig", n_steps=4, step_scores=("probability", "entropy"))
    result = result.aggregate(words=True, normalise="l1")
    result.save(tmp_path / "a")
    back = trilens.load_result(tmp_path / "a")
    assert isinstance(back, AttributionResult)
    assert torch.equal(back.raw["source"], result.raw["source"]) and torch.equal(back.deltas, result.deltas)
    assert back.words and back.normalise == "l1" and back.method == "integrated_gradients"
    assert torch.equal(back.scores(1, "target"), result.scores(1, "target"))
    frame = back.to_frame()
    assert set(frame.part) == {"source", "target"} and len(back.table()) == int(back.valid.sum())
    assert back.figure(1).data


def test_generates_when_no_target_is_given(tiny):
    model = tiny("gpt2")
    result = attribute(model, "the cat", max_new_tokens=3)
    gen = model.generate("the cat", max_new_tokens=3)
    assert result.step_tokens[0] == model.tokenizer.convert_ids_to_tokens(gen.generated_ids[0][gen.live[0]].tolist())
    assert result.info["params"]["targets"] == "generated"


def test_registry_lists_methods_and_step_scores():
    listed = list_attribution_methods()
    assert {"saliency", "integrated_gradients", "layer_integrated_gradients", "deeplift", "gradient_shap", "occlusion",
            "feature_ablation", "input_x_gradient"} == set(listed["methods"])
    assert {"probability", "entropy", "cross_entropy", "contrast_prob_diff"} <= set(listed["step_scores"])


def test_bad_inputs_give_clear_errors(tiny):
    gpt, t5 = tiny("gpt2"), tiny("t5")
    with pytest.raises(InputError, match="unknown attribution method 'magic'.*saliency"):
        attribute(gpt, "the cat", ["sat"], method="magic")
    with pytest.raises(InputError, match="gradient_shap needs a baseline"):
        attribute(gpt, "the cat", ["sat"], method="gradient_shap")
    with pytest.raises(InputError, match="saliency takes no baseline"):
        attribute(gpt, "the cat", ["sat"], baseline="zeros")
    with pytest.raises(InputError, match="foil"):
        attribute(t5, [("the cat", "sat on the mat")], contrast="a dog")
    with pytest.raises(InputError, match="unknown step score"):
        attribute(gpt, "the cat", ["sat"], step_scores=("fun",))
    with pytest.raises(InputError, match="needs a contrast"):
        attribute(gpt, "the cat", ["sat"], step_scores=("contrast_prob_diff",))
    with pytest.raises(InputError, match="tokens for this tokenizer|single token"):
        attribute(gpt, "the cat", ["sat"], contrast=[["sat on"]])
    with pytest.raises(InputError, match="no mask token"):
        attribute(tiny("bert"), "the cat sat")
    with pytest.raises(InputError, match="empty"):
        attribute(gpt, "the cat", [""])
    with pytest.raises(InputError, match="cannot encode target token 2 of input 0: it becomes '\\[UNK\\]'"):
        attribute(gpt, "the cat", ["sat zqxwv"])
    with pytest.raises(InputError, match="cannot encode contrast token 1"):
        attribute(t5, [("the cat", "sat on")], contrast="zqxwv on")
    with pytest.raises(InputError, match="outside this model's vocabulary"):
        attribute(gpt, "the cat", [[10**9]])
