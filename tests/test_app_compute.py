"""The app's compute layer (no Streamlit): arrays, labels and the trained zoo models' known answers."""

import json

import numpy as np
import pytest

import trilens
from trilens.app.attention_data import (
    CROSS,
    STATISTICS,
    AttentionMaps,
    attention_maps,
    difference,
)
from trilens.app.inputs import MAX_TOKENS, AppInput, prepare
from trilens.app.lens_data import lens_difference, lens_result, load_tuned, statistics
from trilens.app.prediction import predict
from trilens.app.probe_data import load_probe, run_probe
from trilens.errors import InputError

INPUTS = {"gpt": AppInput("not ( T and F ) ="), "bert": AppInput("not ( T and F ) = [MASK]"),
          "t5": AppInput("f c e h b a >", "a b h e c f")}


@pytest.mark.parametrize("name", ["gpt", "bert", "t5"])
def test_attention_maps_hold_every_head_with_token_labels(name, zoo):
    model = zoo(name)
    prep = prepare(model, INPUTS[name])
    maps = attention_maps(model, prep)
    batch = model.encode(prep.model_input)
    lengths = {s: int(m[0].sum()) for s, m in batch.masks.items()}
    expected = list(model.stacks) + ([CROSS] if model.family == "encoder-decoder" else [])
    assert maps.views == expected
    for view in maps.views:
        q_stack = "decoder" if view == CROSS else view
        k_stack = "encoder" if view == CROSS else view
        shape = (model.n_layers[q_stack], model.n_heads[q_stack], lengths[q_stack], lengths[k_stack])
        assert maps.shape(view) == shape  # cross-attention: target x source
        assert maps.patterns[view].dtype == np.float32
        np.testing.assert_allclose(maps.patterns[view].sum(-1), 1.0, atol=1e-5)
        assert len(maps.query_tokens[view]) == shape[2] and len(maps.key_tokens[view]) == shape[3]
    cache = model.trace(prep.model_input, sites="attn_pattern")
    first = model.sites(kind="attn_pattern", stack=model.stacks[0])[1]
    np.testing.assert_array_equal(maps.patterns[model.stacks[0]][1], cache[first][0].numpy())
    assert maps.query_tokens[model.stacks[0]] == cache.tokens(model.stacks[0])[0][:lengths[model.stacks[0]]]


def test_head_statistics_and_focus_rows_match_closed_forms():
    n = 5
    causal = np.tril(np.ones((n, n), dtype=np.float32))
    uniform = causal / causal.sum(-1, keepdims=True)  # query i attends uniformly to tokens 0..i
    previous = np.eye(n, k=-1, dtype=np.float32)
    previous[0, 0] = 1.0
    patterns = np.stack([np.stack([uniform, previous])])  # 1 layer x 2 heads
    maps = AttentionMaps(None, {}, {"decoder": patterns}, {"decoder": list("abcde")}, {"decoder": list("abcde")})
    entropy = maps.summary("decoder", "entropy")
    np.testing.assert_allclose(entropy[0, 0], np.mean(np.log(np.arange(1, n + 1))), rtol=1e-6)
    assert entropy[0, 1] == pytest.approx(0.0)
    first = maps.summary("decoder", "mass on the first token")
    np.testing.assert_allclose(first[0], [np.mean(1 / np.arange(1, n + 1)), 2 / n], rtol=1e-6)
    prev = maps.summary("decoder", "mass on the previous token")
    np.testing.assert_allclose(prev[0], [np.mean(1 / np.arange(2, n + 1)), 1.0], rtol=1e-6)
    np.testing.assert_array_equal(maps.focus("decoder", 0, 3), patterns[0, :, 3])
    delta, q, k = difference(maps, maps, "decoder", 0, 1)
    assert (q, k) == (n, n) and not delta.any()
    with pytest.raises(InputError, match="do not exist"):
        maps.head("decoder", 1, 0)  # an old index from a deeper model
    with pytest.raises(InputError, match="pick one of"):
        maps.summary("decoder", "median")
    with pytest.raises(InputError, match="no 'cross' attention"):
        maps.summary(CROSS, "entropy")
    assert set(STATISTICS) == {"entropy", "mass on the first token", "mass on the previous token"}


@pytest.mark.parametrize("name", ["gpt", "bert", "t5"])
def test_the_lens_last_layer_is_the_models_own_prediction(name, zoo):
    model = zoo(name)
    prep = prepare(model, INPUTS[name])
    res = lens_result(model, prep)
    n = len(res.tokens())
    logits = model.run(prep.model_input)[0, :n].float()
    final = logits.softmax(-1)
    top = final.topk(5)
    fig = res.figure()  # what the tab shows: the result's own figure
    assert list(fig.data[0].text[-1]) == model.tokenizer.convert_ids_to_tokens(top.indices[:, 0].tolist())
    np.testing.assert_allclose(np.asarray(fig.data[0].z[-1], dtype=float), top.values[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(res.values("kl")[-1].numpy(), 0.0, atol=1e-5)
    assert res.n_layers == model.n_layers[res.info["stack"]] + 1
    for statistic in statistics(res):
        assert res.figure(metric={"top-1 probability": None, "entropy": "entropy", "KL to final": "kl",
                                  "target rank": "target_rank"}[statistic]).data[0].z is not None
    hover = fig.data[0].customdata
    assert len(hover) == res.n_layers and hover[-1][0].count("<br>") == 4  # top 5 per cell
    if model.family != "encoder":  # next-token (or teacher-forced) targets: their rank at the last layer
        assert "target rank" in statistics(res)
        ranks = res.values("target_rank")[-1].numpy()
        scored = [p for p, t in enumerate(res.target_tokens()) if t]
        assert np.isnan(ranks[[p for p in range(len(ranks)) if p not in scored]]).all()
        for p in scored:
            target_id = model.tokenizer.convert_tokens_to_ids(res.target_tokens()[p])
            assert ranks[p] == int((logits[p] > logits[p, target_id]).sum())
    diff, n_both = lens_difference(res, res, "entropy")
    assert n_both == n and not diff.any()


@pytest.mark.parametrize("name,slot,answer,tokens", [
    ("gpt", "=", "T", ["not", "(", "T", "and", "F", ")", "="]),
    ("bert", "[MASK]", "T", ["[CLS]", "not", "(", "T", "and", "F", ")", "=", "[MASK]", "[SEP]"]),
])
def test_predictions_give_the_trained_answer(name, slot, answer, tokens, zoo):
    model = zoo(name)
    pred = predict(model, prepare(model, INPUTS[name]))
    assert len(pred.rows) == 1 and pred.rows[0]["token"] == slot
    assert pred.rows[0]["top 1"].startswith(f"{answer} (")
    assert [t for _, t, _ in pred.tokens[model.stacks[0]]] == tokens


def test_encoder_decoder_predicts_each_target_token_and_reverses_the_source(zoo):
    model = zoo("t5")
    pred = predict(model, prepare(model, INPUTS["t5"]))
    assert pred.generated == "a b h e c f"  # the zoo's reverse task
    assert [r["target"] for r in pred.rows][:6] == ["a", "b", "h", "e", "c", "f"]
    assert all(r["top 1"].split(" (")[0] == r["target"] for r in pred.rows)


def test_an_encoder_decoder_without_a_target_reads_its_own_output(zoo):
    model = zoo("t5")
    prep = prepare(model, AppInput("f c e h b a >"))
    assert prep.target_generated and prep.target == "a b h e c f"
    assert prep.model_input == ("f c e h b a >", "a b h e c f")


def test_bad_inputs_say_what_to_do(zoo, tmp_path):
    gpt, t5 = zoo("gpt"), zoo("t5")
    with pytest.raises(InputError, match="empty"):
        prepare(gpt, AppInput("   "))
    long_text = " ".join(["T"] * (MAX_TOKENS + 1))
    with pytest.raises(InputError, match=f"at most {MAX_TOKENS}"):
        prepare(t5, AppInput(long_text, "a"))
    with pytest.raises(InputError, match="the target has"):
        prepare(t5, AppInput("a b >", long_text))
    with pytest.raises(InputError, match="not a folder"):
        load_tuned(gpt, str(tmp_path / "nothing"))
    with pytest.raises(InputError, match="not a folder"):
        load_probe(str(tmp_path / "nothing"))


def test_probe_results_load_and_small_files_are_probed(zoo, tmp_path):
    model = zoo("gpt")
    rows = [{"text": f"the {n} {verb} here", "label": "pl" if n.endswith("s") else "sg"}
            for n in ("cat", "cats", "dog", "dogs", "box", "boxes", "key", "keys", "lamp", "lamps", "map", "maps")
            for verb in ("is", "sat")]
    data = "\n".join(json.dumps(r) for r in rows).encode()
    result = run_probe(model, data, "label")
    frame = result.table()
    assert len(frame) == model.n_layers["decoder"] + 1
    result.save(tmp_path / "probe")
    again = load_probe(str(tmp_path / "probe"))
    assert again.table().equals(frame)
    with pytest.raises(InputError, match="no field"):
        run_probe(model, data, "number")
    with pytest.raises(InputError, match="two classes"):
        run_probe(model, "\n".join(json.dumps({"text": "x", "label": 1}) for _ in range(4)).encode(), "label")
    trilens.lens.logit_lens(model, ["the cat"]).save(tmp_path / "lens")
    with pytest.raises(InputError, match="not a probe result"):
        load_probe(str(tmp_path / "lens"))
