"""Relevancy maps: the rules against a plain per-step reference (one gradient pass per step, the rules written out as
loops), the perturbation check on trained zoo models, and errors."""

import pytest
import torch

import trilens
from trilens import TokenScore
from trilens.attention import RelevancyResult, relevancy_maps, rollout
from trilens.attention.perturbation import area, perturbation_curve
from trilens.capture.steps_input import step_inputs
from trilens.errors import InputError


def _weighted(result, names):
    """Per layer: mean over heads of (grad * A)+, [Q, K], for the single objective of ``result``."""
    return [(result.grad(n)[0, 0] * result.activation(n)[0]).clamp_min(0).mean(0) for n in names]


def _self_rule(weighted):
    r = torch.eye(weighted[0].shape[-1])
    for a in weighted:
        r = r + a @ r
    return r


def _bar(r):
    hat = r - torch.eye(r.shape[0])
    out = torch.zeros_like(hat)
    for i in range(hat.shape[0]):
        if hat[i].sum() > 0:
            out[i] = hat[i] / hat[i].sum()
    return out + torch.eye(r.shape[0])


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_decoder_only_relevancy_equals_a_per_step_reference(tiny, name):
    model = tiny(name)
    steps = step_inputs(model, ["the cat sat on"], ["the mat and"])
    result = relevancy_maps(model, steps, methods=("relevancy",))
    ids = steps.rows[0]
    n = int(steps.source_lengths[0])
    names = model.sites(kind="attn_pattern")
    for t in range(int(steps.valid[0].sum())):
        p = n - 1 + t
        one = model.gradients([ids[: p + 1]], TokenScore(token=ids[p + 1], position=p), sites=names, embeddings=False)
        row = _self_rule(_weighted(one, names))[p] - torch.eye(p + 1)[p]  # without the starting identity
        assert torch.allclose(result.map("relevancy", 0)[t], row[:n], atol=1e-5)
        assert torch.allclose(result.map("relevancy", 0, "prefix")[t, :t], row[n : p + 1], atol=1e-5)  # steps 1..t
        assert float(result.map("relevancy", 0, "prefix")[t, t:].abs().sum()) == 0  # later tokens are not its prefix


def test_encoder_decoder_relevancy_equals_a_per_step_reference(tiny):
    model = tiny("t5")
    steps = step_inputs(model, [("the cat sat on the mat", "a dog was here")])
    result = relevancy_maps(model, steps, methods=("relevancy",))
    src, tgt = steps.rows[0]
    enc, dec = model.sites(stack="encoder", kind="attn_pattern"), model.sites(stack="decoder", kind="attn_pattern")
    cross = model.sites(kind="cross_attn_pattern")
    for t in range(len(tgt)):
        one = model.gradients([(src, tgt)], TokenScore(token=tgt[t], position=t), sites=enc + dec + cross, embeddings=False)
        r_ii = _self_rule(_weighted(one, enc))
        r_qq, r_qi = torch.eye(len(tgt)), torch.zeros(len(tgt), len(src))
        for a_self, a_cross in zip(_weighted(one, dec), _weighted(one, cross)):
            r_qq = r_qq + a_self @ r_qq
            r_qi = r_qi + a_self @ r_qi
            r_qi = r_qi + _bar(r_qq).T @ a_cross @ _bar(r_ii)
        assert torch.allclose(result.map("relevancy", 0)[t], r_qi[t], atol=1e-5)
        prefix = (r_qq - torch.eye(len(tgt)))[t, : t + 1]  # without the starting identity
        assert torch.allclose(result.map("relevancy", 0, "prefix")[t, : t + 1], prefix, atol=1e-5)


def test_encoder_relevancy_reads_the_mask_row(tiny):
    model = tiny("bert")
    result = relevancy_maps(model, ["the cat [MASK] on the mat"], methods=("relevancy", "rollout", "flow"))
    names = model.sites(kind="attn_pattern")
    one = model.gradients(["the cat [MASK] on the mat"], TokenScore(), sites=names, embeddings=False)
    mask_at = int(one.scored["positions"][0, 0])
    reference = _self_rule(_weighted(one, names))[mask_at]
    assert torch.allclose(result.map("relevancy")[0], reference - torch.eye(8)[mask_at], atol=1e-5)
    kept = relevancy_maps(model, ["the cat [MASK] on the mat"], methods=("relevancy",), self_relevance=True)
    assert torch.allclose(kept.map("relevancy")[0], reference, atol=1e-5)
    assert result.valid.shape == (1, 1) and result.map("flow").shape == (1, 8)
    assert torch.allclose(result.map("flow").sum(), torch.tensor(1.0), atol=1e-5)
    assert result.step_tokens[0] == [model.tokenizer.convert_ids_to_tokens(int(one.scored["tokens"][0, 0]))]
    cls = relevancy_maps(model, ["the cat sat on the mat"], methods=("rollout",), position=0)  # no mask: read [CLS]
    trace = model.trace(["the cat sat on the mat"], sites="attn_pattern")
    assert torch.allclose(cls.map("rollout")[0], rollout(trace.stack("attn_pattern", "encoder"))[0, 0], atol=1e-5)


def test_result_round_trip_figure_and_top_tokens(tiny, tmp_path):
    model = tiny("gpt2")
    result = relevancy_maps(model, ["the cat sat", "a dog"], max_new_tokens=3, methods=("relevancy", "rollout", "flow"))
    back = trilens.load_result(result.save(tmp_path / "maps", figure=True))
    assert isinstance(back, RelevancyResult) and back.methods == ["relevancy", "rollout", "flow"]
    for method in back.methods:
        assert torch.equal(back.map(method, 1), result.map(method, 1))
    assert torch.allclose(result.map("rollout", 0).sum(-1) + result.map("rollout", 0, "prefix").sum(-1),
                          torch.ones(int(result.valid[0].sum())), atol=1e-5)  # rollout rows sum to 1 over what they see
    top = result.top_source("relevancy", k=2)
    assert len(top) == 2 and all(len(step) == 2 for step in top[0])
    fig = result.figure("relevancy", sequence=1)
    assert list(fig.data[0].x) == [f"{i}:{t}" for i, t in enumerate(result.source_tokens[1])]
    assert list(fig.data[0].y) == [f"{i}:{t}" for i, t in enumerate(result.step_tokens[1])]
    frame = result.to_frame()
    assert set(frame["method"]) == {"relevancy", "rollout", "flow"} and set(frame["part"]) == {"source", "prefix"}


def test_bad_inputs_give_clear_errors(tiny):
    with pytest.raises(InputError, match="unknown map method 'saliency'"):
        relevancy_maps(tiny("gpt2"), ["the cat"], methods=("saliency",))
    with pytest.raises(InputError, match="flow runs on one stack"):
        relevancy_maps(tiny("t5"), [("the cat", "a dog")], methods=("flow",))
    with pytest.raises(InputError, match="no trained LM head, so relevancy"):
        relevancy_maps(tiny("bert_headless"), ["the cat [MASK]"])
    assert relevancy_maps(tiny("bert_headless"), ["the cat [MASK]"], methods=("rollout",)).methods == ["rollout"]
    with pytest.raises(InputError, match="position= is for encoder-only models"):
        relevancy_maps(tiny("gpt2"), ["the cat"], ["sat"], position=0)
    with pytest.raises(InputError, match="no mask token"):
        relevancy_maps(tiny("bert"), ["the cat sat"])
    with pytest.raises(InputError, match="capped at 4 tokens"):
        relevancy_maps(tiny("gpt2"), ["the cat sat on the mat"], ["and"], methods=("flow",), flow_max_tokens=4)
    steps = step_inputs(tiny("gpt2"), ["the cat"], ["sat on"])
    result = relevancy_maps(tiny("gpt2"), steps)
    with pytest.raises(InputError, match=r"maps for \(1, 3\) \(inputs, steps\) do not fit these \(1, 2\)"):
        perturbation_curve(tiny("gpt2"), steps, torch.zeros(1, 3, 2))  # steps beyond the target
    with pytest.raises(InputError, match="order must be one of"):
        perturbation_curve(tiny("gpt2"), steps, result.maps["relevancy"]["source"], order="best")
    with pytest.raises(InputError, match="sequence 3 does not exist"):
        result.map("relevancy", 3)
    with pytest.raises(InputError, match="no 'flow' maps"):
        result.map("flow")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zoo:t5", "zoo:gpt"])
def test_removing_the_most_relevant_source_tokens_first_lowers_the_target_faster(name):
    """Chefer et al.'s perturbation check on 100 reversal examples: the positive order's area lies below random
    order's, the negative order's above."""
    from trilens.zoo.formats import lm_item, seq2seq_item
    from trilens.zoo.tasks import reverse

    model = trilens.load(name)
    examples = reverse(100, split="test", lengths=(4, 8))
    items = [lm_item(e) for e in examples] if model.family == "decoder" else None
    if items:
        steps = step_inputs(model, [i.prompt for i in items], [i.answer for i in items])
    else:
        steps = step_inputs(model, [seq2seq_item(e) for e in examples])
    maps = relevancy_maps(model, steps, methods=("relevancy",)).maps["relevancy"]["source"]
    auc = {order: area(perturbation_curve(model, steps, maps, order=order)) for order in ("positive", "random", "negative")}
    assert auc["positive"] < auc["random"] - 0.03 < auc["negative"] - 0.03, auc
