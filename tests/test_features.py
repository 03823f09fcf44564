"""Feature neurons: GRADIEND's weight gradients, training, encoding, rewriting and knowledge neurons."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import reference

import trilens
from trilens.errors import InputError
from trilens.features import (
    FeatureData,
    FeatureRow,
    Gradiend,
    read_jsonl,
    rewrite,
    rewrite_grid,
    save_model,
    select_parameters,
    train_gradiend,
    zoo_feature_data,
)
from trilens.features.gradients import (
    GradientReader,
    slot_batch,
    slot_logprobs,
    top_coordinates,
)
from trilens.features.knowledge_neurons import neuron_attributions
from trilens.features.training import class_batches

# One class slot per family, with words of the tiny models' vocabulary; the encoder-decoder row has a target prefix.
TINY_ROWS = {
    "bert": [FeatureRow("the cat sat on [MASK] mat", "the", "a", "A"),
             FeatureRow("[MASK] dog was here", "she", "he", "A"),
             FeatureRow("a big red cat sat [MASK]", "on", "to", "A")],
    "gpt2": [FeatureRow("the cat sat on", "the", "a", "A"), FeatureRow("she was", "here", "there", "A"),
             FeatureRow("a big red dog sat on the", "mat", "cat", "A")],
    "t5": [FeatureRow("the cat sat on", "the", "a", "A"), FeatureRow("she was here", "it", "they", "A", prefix="x y"),
           FeatureRow("a big dog", "sat", "was", "A", prefix="one")],
}


def _reference_gradient(path, layout, rows, token_of):
    """The batch-mean cross-entropy at the slot of a plain HF model (no trilens, no bridge), differentiated by
    autograd with respect to HF's own parameters, flattened in the layout's order."""
    hf = reference(path)
    tok = hf_tok = trilens.load(path).tokenizer
    logits = []
    for r in rows:
        if hf.config.is_encoder_decoder:
            prefix = tok(r.prefix, add_special_tokens=False)["input_ids"] if r.prefix else []
            ids = torch.tensor([tok(r.text)["input_ids"]])
            dec = torch.tensor([[hf.config.decoder_start_token_id, *prefix]])
            logits.append(hf(input_ids=ids, decoder_input_ids=dec).logits[0, len(prefix)])
        else:
            ids = torch.tensor([hf_tok(r.text.replace("[MASK]", tok.mask_token or ""))["input_ids"]])
            out = hf(input_ids=ids).logits[0]
            pos = int((ids[0] == tok.mask_token_id).nonzero()[0]) if "[MASK]" in r.text else ids.shape[1] - 1
            logits.append(out[pos])
    logp = torch.stack(logits).log_softmax(-1)
    params = [hf.get_parameter(n) for n in layout.names]
    out = []
    for which in ("factual", "counterfactual"):
        ids = torch.tensor([token_of(getattr(r, which)) for r in rows])
        loss = -logp[torch.arange(len(rows)), ids].mean()
        out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)]))
    return out


@pytest.mark.parametrize("name", ["bert", "gpt2", "t5"])
def test_weight_gradients_equal_autograd_on_the_hf_model(tiny, tiny_path, name):
    model = tiny(name)
    layout = select_parameters(model)
    rows = TINY_ROWS[name]
    g_f, g_c = GradientReader(model, layout).pair(rows)
    ref_f, ref_c = _reference_gradient(tiny_path(name), layout, rows, model.tokenizer.convert_tokens_to_ids)
    assert g_f.shape == ref_f.shape == (layout.size,)
    torch.testing.assert_close(g_f, ref_f, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_c, ref_c, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.hf_model.parameters())


def test_the_prediction_head_is_never_a_feature_parameter(tiny):
    names = select_parameters(tiny("bert")).names
    assert names and all(n.startswith("bert.") for n in names)
    assert not any(n.startswith("cls.") for n in names)
    gpt = select_parameters(tiny("gpt2")).names
    assert "transformer.wte.weight" in gpt and not any(n.startswith("lm_head") for n in gpt)  # tied: kept once
    assert select_parameters(tiny("bert"), "*.layer.1.*").names == [n for n in names if ".layer.1." in n]
    with pytest.raises(InputError, match="no base-model parameter matches"):
        select_parameters(tiny("bert"), "nothing.*")


def test_pre_pruning_keeps_exactly_the_top_k_coordinates(tiny):
    model = tiny("gpt2")
    layout = select_parameters(model)
    reader = GradientReader(model, layout)
    batches = [TINY_ROWS["gpt2"][:2], TINY_ROWS["gpt2"][2:]]
    total = sum((f - c).abs() for f, c in (reader.pair(b) for b in batches))
    kept = top_coordinates(reader, batches, 0.01)
    k = -(-layout.size // 100)
    assert kept.numel() == k and bool((kept[1:] > kept[:-1]).all())
    assert set(kept.tolist()) == set(torch.topk(total, k).indices.tolist())
    assert float(total[kept].min()) >= float(total.sort(descending=True).values[k - 1])
    pruned_f, _ = GradientReader(model, layout, kept).pair(batches[0])
    full_f, _ = reader.pair(batches[0])
    torch.testing.assert_close(pruned_f, full_f[kept])


@pytest.fixture(scope="module")
def bert():
    return trilens.load("zoo:bert")


@pytest.fixture(scope="module")
def bert_data():
    return zoo_feature_data("encoder", n_train=256, n_test=64, n_neutral=32)


@pytest.fixture(scope="module")
def bert_gradiend(bert, bert_data):
    return train_gradiend(bert, bert_data, steps=150, eval_every=50, seeds=(0,), n_eval=32)


def test_gradiend_separates_the_classes_on_held_out_rows_of_zoo_bert(bert, bert_data, bert_gradiend):
    assert bert_gradiend.evaluation["abs_r"] >= 0.9
    enc = bert_gradiend.encode(bert, bert_data.test[32:64] + bert_data.neutral[:16])  # rows not used in training's eval
    assert enc.correlation() >= 0.9
    means = enc.class_means()
    assert means["A"] > 0.5 and means["B"] < -0.5  # class A is +1 after sign normalisation
    assert abs(means["neutral"]) < 0.2
    curve = bert_gradiend.to_frame()
    assert list(curve["step"]) == [0, 50, 100, 150] and curve["abs_r"].between(0, 1).all()


def test_training_is_deterministic_for_a_seed(bert, bert_data):
    runs = [train_gradiend(bert, bert_data, steps=6, eval_every=3, seeds=(1,), n_eval=8, keep_fraction=0.01,
                           batch_size=16) for _ in range(2)]
    for a, b in zip(runs[0].module.state_dict().values(), runs[1].module.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(runs[0].keep, runs[1].keep)


def test_rewrite_with_alpha_zero_is_identical_and_the_original_never_changes(bert, bert_data, bert_gradiend):
    sb = slot_batch(bert, bert_data.test[:8])
    before = {n: p.detach().clone() for n, p in bert.hf_model.named_parameters()}
    with torch.no_grad():
        base = slot_logprobs(bert, sb)
        same = rewrite(bert, bert_gradiend, h=1.0, alpha=0.0)
        assert torch.equal(slot_logprobs(same, slot_batch(same, bert_data.test[:8])), base)
        moved = rewrite(bert, bert_gradiend, h=1.0, alpha=2.0)
        assert not torch.equal(slot_logprobs(moved, slot_batch(moved, bert_data.test[:8])), base)
        assert torch.equal(slot_logprobs(bert, sb), base)
    assert all(torch.equal(p, before[n]) for n, p in bert.hf_model.named_parameters())


def _class_gap(model, rows, classes):
    sb = slot_batch(model, rows)
    a, b = (model.tokenizer.convert_tokens_to_ids(t) for t in classes)
    with torch.no_grad():
        p = slot_logprobs(model, sb).exp()
    return float((p[:, a] - p[:, b]).mean())


def test_a_rewrite_toward_class_a_raises_its_probability_on_held_out_templates(bert, bert_data, bert_gradiend, tmp_path):
    rows = bert_data.test
    base = _class_gap(bert, rows, ("she", "he"))
    toward_a = rewrite(bert, bert_gradiend, h=bert_gradiend.h_toward("A"), alpha=1.0)
    toward_b = rewrite(bert, bert_gradiend, h=bert_gradiend.h_toward("B"), alpha=1.0)
    assert _class_gap(toward_a, rows, ("she", "he")) > base + 0.1
    assert _class_gap(toward_b, rows, ("she", "he")) < base - 0.1
    saved = trilens.load(save_model(toward_a, tmp_path / "rewritten"))  # an HF folder trilens reads back
    assert _class_gap(saved, rows, ("she", "he")) == pytest.approx(_class_gap(toward_a, rows, ("she", "he")), abs=1e-6)


def test_the_rewrite_grid_scores_every_rewrite_and_keeps_the_lm_score(bert, bert_data, bert_gradiend, tmp_path):
    grid = rewrite_grid(bert, bert_gradiend, bert_data, alphas=(2.0, 1.0, 0.01), hs=(-1.0, 0.0, 1.0), n_texts=32)
    frame = grid.to_frame()
    assert len(frame) == 1 + 9 and frame.iloc[0]["alpha"] == 0.0
    # the base row, read by hand: per held-out text P(she), P(he) at the slot, then the metrics' definitions
    sb = slot_batch(bert, bert_data.test[:32])
    with torch.no_grad():
        p = slot_logprobs(bert, sb).exp()
    p_a, p_b = (p[:, bert.tokenizer.convert_tokens_to_ids(t)] for t in ("she", "he"))
    apd = (p_a - p_b).abs()
    assert grid.base["p_a"] == pytest.approx(float(p_a.mean()), abs=1e-6)
    assert grid.base["p_b"] == pytest.approx(float(p_b.mean()), abs=1e-6)
    assert grid.base["bpi"] == pytest.approx(float(((1 - apd) * (p_a + p_b)).mean()), abs=1e-6)
    assert grid.base["a_directed"] == pytest.approx(float(((1 - p_b) * p_a).mean()), abs=1e-6)
    tiny_step = frame[(frame.alpha == 0.01) & (frame.h == 1.0)].iloc[0]
    assert tiny_step["p_a"] == pytest.approx(grid.base["p_a"], abs=0.02)  # a tiny α barely moves the model
    for metric in ("bpi", "a_directed", "b_directed"):
        best = grid.best(metric)
        assert best is not None and best["lms"] >= 0.99 * grid.base["lms"]
        assert best[f"{metric}_lms"] >= grid.base[f"{metric}_lms"]
    assert grid.best("a_directed")["h"] == bert_gradiend.h_toward("A")
    again = trilens.load_result(grid.save(tmp_path / "grid"))
    assert again.rows == grid.rows and again.selected == grid.selected
    assert len(again.figure().data) == 3


def test_gradiend_and_encodings_round_trip(bert, bert_data, bert_gradiend, tmp_path):
    loaded = Gradiend.load(bert_gradiend.save(tmp_path / "g"))
    x = torch.randn(3, bert_gradiend.n_coordinates)
    torch.testing.assert_close(loaded.encode_gradients(x), bert_gradiend.encode_gradients(x))
    assert loaded.classes == ("A", "B") and loaded.curve == bert_gradiend.curve
    enc = loaded.encode(bert, bert_data.test[:4])
    again = trilens.load_result(enc.save(tmp_path / "enc"))
    torch.testing.assert_close(again.values, enc.values)
    assert again.labels == enc.labels and len(again.figure().data) == 2


def test_knowledge_neuron_attributions_are_complete_within_captums_delta(tiny):
    model = tiny("bert")
    rows = TINY_ROWS["bert"]
    attr, delta, layers = neuron_attributions(model, rows, n_steps=20)
    assert attr.shape == (3, 2, 64) and layers == [0, 1]
    # completeness: sum of attributions = P(y | w̄) - P(y | 0 at the layer's slot), up to the delta captum reports
    sb = slot_batch(model, rows)
    with torch.no_grad():
        p_full = slot_logprobs(model, sb).exp()[torch.arange(3), sb.factual]
        for li, layer in enumerate(layers):
            site = model.site("mlp_post", layer)

            def zero(x, hook=None):
                x = x.clone()
                x[torch.arange(3), sb.positions] = 0
                return x

            with model.hooks([(site, zero)]):
                p_zero = slot_logprobs(model, sb).exp()[torch.arange(3), sb.factual]
            gap = attr[:, li].sum(-1) - (p_full - p_zero)
            torch.testing.assert_close(gap.abs(), delta[:, li].abs(), atol=1e-6, rtol=1e-3)


def test_knowledge_neurons_and_their_interventions_on_zoo_bert(bert, bert_data, bert_gradiend, tmp_path):
    from trilens.features import knowledge_neurons

    kn = knowledge_neurons(bert, bert_data, n_prompts=8, layers=[4, 5], gradiend=bert_gradiend)
    assert set(kn.neurons) == {"A", "B"} and all(layer in (4, 5) for units in kn.neurons.values() for layer, _ in units)
    effects = kn.table()
    own = effects[(effects.neurons_of == effects.evaluated_on) & (effects.intervention == "suppress")]
    assert (own["change"] <= 0).all()  # suppressing a class's own neurons never raises its probability
    assert kn.overlap["n_neurons"] == 2 * 512 and 0 <= kn.overlap["overlap"] <= kn.overlap["k"]
    again = trilens.load_result(kn.save(tmp_path / "kn"))
    assert again.neurons == kn.neurons and torch.equal(again.kept_share["A"], kn.kept_share["A"])


def test_bad_feature_data_gives_clear_errors(tiny, tmp_path):
    with pytest.raises(InputError, match="exactly two"):
        FeatureData([FeatureRow("[MASK] sat", "she", "he", "A", split="train")], ("A",))
    with pytest.raises(InputError, match="class 'B' has no train rows"):
        FeatureData([FeatureRow("[MASK] sat", "she", "he", "A"), FeatureRow("[MASK] sat", "she", "he", "A", split="test")],
                    ("A", "B"))
    with pytest.raises(InputError, match="needs both a factual and a counterfactual"):
        FeatureData([FeatureRow("[MASK] sat", "she", None, "A")], ("A", "B"))
    model = tiny("bert")
    with pytest.raises(InputError, match="exactly one"):
        slot_batch(model, [FeatureRow("the cat sat", "she", "he", "A")])  # no class slot
    with pytest.raises(InputError, match="2 tokens"):
        slot_batch(model, [FeatureRow("[MASK] sat", "she he", "he", "A")])  # a class token the tokenizer splits
    with pytest.raises(InputError, match="cannot encode"):
        slot_batch(model, [FeatureRow("[MASK] sat", "zebra", "he", "A")])
    one_class = tmp_path / "one.jsonl"
    one_class.write_text(json.dumps({"text": "[MASK] sat", "factual": "she", "counterfactual": "he", "class": "A"}) + "\n")
    with pytest.raises(InputError, match="1 class"):
        read_jsonl(one_class)
    with pytest.raises(InputError, match="no trained prediction head"):
        select_parameters(tiny("bert_headless"))


def test_feature_data_reads_and_writes_json_lines(tmp_path):
    data = zoo_feature_data("decoder", n_train=64, n_test=16, n_neutral=4)
    assert {r.label for r in data.train} == {"A", "B"} and all(r.text.split()[-1] not in ("she", "he") for r in data.train)
    path = data.write_jsonl(tmp_path / "rows.jsonl")
    again = read_jsonl(path, classes=data.classes)
    assert again.rows == data.rows and again.classes == data.classes
    assert set(read_jsonl(path).classes) == {"A", "B"}  # without ``classes``: in order of first appearance
    batches = class_batches(data, 16, 0)
    assert all(len(b) == 16 and len({r.label for r in b}) == 1 for b in batches)
    assert len(batches) == sum(len(data.select("train", c)) // 16 for c in data.classes)
    with pytest.raises(InputError, match="fewer than one batch"):
        class_batches(data, 64, 0)


def test_held_out_gradients_that_would_not_fit_are_refused_before_training(tiny, monkeypatch):
    from trilens.features import training

    rows = [FeatureRow(f"{w} sat and [MASK] was here", f, c, lab, split=s)
            for w in ("the cat", "a dog", "the big cat") for (f, c, lab) in (("she", "he", "A"), ("he", "she", "B"))
            for s in (["test"] if w == "the big cat" else ["train"])]
    data = FeatureData(rows, ("A", "B"))
    monkeypatch.setattr(training, "MAX_EVAL_GIB", 1e-6)
    with pytest.raises(InputError, match="pre-prune"):
        train_gradiend(tiny("bert"), data, batch_size=1, steps=1, seeds=(0,))
    monkeypatch.setattr(training, "MAX_EVAL_GIB", 8.0)
    g = train_gradiend(tiny("bert"), data, batch_size=1, steps=2, eval_every=1, seeds=(0,), keep_fraction=0.05)
    assert g.n_coordinates == -(-select_parameters(tiny("bert")).size // 20) and len(g.curve) == 3


def test_a_bridge_whose_weights_no_longer_share_memory_with_hf_is_refused_and_model_to_keeps_them(tiny_path):
    model = trilens.load(tiny_path("gpt2"))
    layout = select_parameters(model)
    GradientReader(model, layout)  # as loaded: the bridge's q/k/v are views of c_attn
    model.hf_model.double().float()  # copies every tensor on its own
    with pytest.raises(InputError, match="load the model again"):
        GradientReader(model, layout)
    # what Model.to does around nn.Module.to: the views are made views of the new memory again
    from trilens.devices import views_kept

    fresh = trilens.load(tiny_path("gpt2"))
    with views_kept(fresh.hf_model):
        fresh.hf_model.double().float()
    rows = TINY_ROWS["gpt2"]
    g_f, _ = GradientReader(fresh, layout).pair(rows)
    ref_f, _ = _reference_gradient(tiny_path("gpt2"), layout, rows, fresh.tokenizer.convert_tokens_to_ids)
    torch.testing.assert_close(g_f, ref_f, rtol=1e-4, atol=1e-6)
    assert fresh.to("cpu") is fresh and GradientReader(fresh, layout).size == layout.size


def test_a_bridge_that_computes_from_copies_is_refused_only_where_its_copies_are(tiny, tiny_path):
    model = tiny("gpt_neox")  # TransformerLens's NeoX bridge copies the head-interleaved query_key_value
    with pytest.raises(InputError, match=r"attention\.q\.weight.*query_key_value\.weight.*exclude="):
        GradientReader(model, select_parameters(model))
    layout = select_parameters(model, exclude="*.attention.*")
    rows = TINY_ROWS["gpt2"]
    g_f, g_c = GradientReader(model, layout).pair(rows)
    ref_f, ref_c = _reference_gradient(tiny_path("gpt_neox"), layout, rows, model.tokenizer.convert_tokens_to_ids)
    torch.testing.assert_close(g_f, ref_f, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_c, ref_c, rtol=1e-4, atol=1e-6)
