"""One result contract: every result class round-trips through save / load_result with equal frames, carries its
provenance, draws a figure, and results saved by trilens 0.1.0 still load."""

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import trilens
from trilens import StepScores, load_result
from trilens.attention import attention_steps, relevancy_maps
from trilens.attribution import attribute
from trilens.errors import StoreError
from trilens.features import (
    FeatureData,
    FeatureRow,
    knowledge_neurons,
    rewrite_grid,
    train_gradiend,
)
from trilens.lens import (
    DecoderLensResult,
    LensResult,
    LinearShortcut,
    TunedLens,
    decoder_lens,
    language_lens,
    logit_lens,
    shortcut_sweep,
)
from trilens.patching import edge_attribution, patching_sweep
from trilens.probes import ProbeResult, probe_layers

LEGACY = Path(__file__).parent / "data" / "saved-0.1.0"
PROVENANCE = {"trilens", "method", "params", "n_inputs", "date"}


@pytest.fixture(scope="module")
def results(tiny):
    gpt, bart, bert = tiny("gpt2"), tiny("bart"), tiny("bert")
    texts = ["the cat sat", "a dog was here", "she sat on the mat", "he was big", "it was red", "they are small"] * 2
    return {
        "LensResult": logit_lens(gpt, ["the cat sat on the mat", "x y z"]),
        "DecoderLensResult": decoder_lens(bart, ["x y z", "the cat"], references=["z y x", "cat the"], max_new_tokens=3),
        "ProbeResult": probe_layers(bert, texts, [0, 1] * 6, cv=2, progress=False),
        "ActivationCache": gpt.trace(["the cat sat", "x y"], sites=["resid_post", "attn_pattern"]),
        "Generation": gpt.generate(["the cat", "x y z"], capture="blocks.0.hook_resid_post", max_new_tokens=3),
        "GradientResult": gpt.gradients(["the cat sat on the mat", "x y z"], StepScores(), sites="attn_pattern"),
        "AttentionStepsResult": attention_steps(bart, ["x y z", "the cat"], max_new_tokens=3, sensitivity="estimate", probes=4),
        "RelevancyResult": relevancy_maps(gpt, ["the cat sat", "x y"], max_new_tokens=2, methods=("relevancy", "flow")),
        "AttributionResult": attribute(bart, [("x y z", "z y"), ("the cat", "cat the a")], method="ig", n_steps=4,
                                       step_scores=("probability", "rank")).aggregate(words=True),
        **_feature_results(bert),
        "PatchingResult": patching_sweep(gpt, ["the cat sat on the mat"], ["the dog sat on the mat"], "kl",
                                         heads=True, progress=False),
        "CircuitResult": edge_attribution(gpt, ["the cat sat on the mat"], ["the dog sat on the mat"], "kl", steps=2,
                                          progress=False),
        **_language_results(gpt),
    }


def _language_results(gpt):
    prompts, langs = ["the cat sat on the", "a dog was", "she sat on the", "he was"], ["a", "b", "a", "b"]
    answers = [{"a": "mat", "b": "big"}, {"a": "red", "b": "big"}, {"a": "mat", "b": "small"}, {"a": "it", "b": "here"}]
    word_language = {"mat": "a", "red": "a", "it": "a", "big": "b", "small": "b", "here": "b"}
    return {"LanguageLensResult": language_lens(gpt, prompts, answers, langs, language_map=word_language, k=4),
            "LinearShortcut": LinearShortcut.fit(gpt, prompts, layer=1, progress=False),
            "ShortcutSweepResult": shortcut_sweep(gpt, prompts, prompts, ["mat", "big", "mat", "here"], langs,
                                                  groups=["x", "y", "x", "y"])}


def _feature_results(bert):
    rows = [FeatureRow(f"{w} sat and [MASK] was here", f, c, lab, split="test" if w == "the big cat" else "train")
            for w in ("the cat", "a dog", "the big cat") for (f, c, lab) in (("she", "he", "A"), ("he", "she", "B"))]
    data = FeatureData(rows + [FeatureRow("the cat sat on the [MASK]", "mat", split="test")], ("A", "B"))
    g = train_gradiend(bert, data, batch_size=1, steps=2, eval_every=1, seeds=(0,), keep_fraction=0.05)
    return {"Gradiend": g, "EncodingResult": g.encode(bert, data.test + data.neutral),
            "RewriteGrid": rewrite_grid(bert, g, data, alphas=(1.0, 0.1), hs=(-1.0, 1.0)),
            "KnowledgeNeurons": knowledge_neurons(bert, data, n_prompts=2, n_steps=4, gradiend=g)}


def test_every_result_round_trips_with_equal_frames(results, tmp_path):
    assert set(results) == set(trilens.list_results())
    for name, result in results.items():
        assert isinstance(result, trilens.Result) and type(result).__name__ == name
        path = result.save(tmp_path / name, figure=True)
        assert sorted(p.name for p in path.iterdir()) == sorted(
            ["result.json", "figure.html"] + (["tensors.safetensors"] if result._state()[1] else []))
        back = load_result(path)
        assert type(back) is type(result)
        pd.testing.assert_frame_equal(back.to_frame(), result.to_frame())
        assert back.info == json.loads(json.dumps(result.info))
        assert type(result).load(path).to_frame().shape == result.to_frame().shape
        assert "<b>" in result._repr_html_() and "plotly" in result._repr_html_().lower()


def test_a_fresh_process_loads_results_by_their_recorded_module_and_without_it(results, tmp_path):
    import subprocess
    import sys

    probe = results["ProbeResult"].save(tmp_path / "probe")
    doc = json.loads((probe / "result.json").read_text())
    assert doc["module"] == "trilens.probes.result"
    old = results["LensResult"].save(tmp_path / "old")  # as trilens 0.2.0 saved it: no module recorded
    doc = json.loads((old / "result.json").read_text())
    del doc["module"]
    (old / "result.json").write_text(json.dumps(doc))
    code = ("import sys, trilens; r = trilens.load_result(sys.argv[1]); s = trilens.load_result(sys.argv[2]); "
            "print(type(r).__name__, type(s).__name__, 'trilens.lens.result' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(probe), str(old)], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["ProbeResult", "LensResult", "True"], done.stderr[-2000:]


def test_one_name_for_the_summary_and_the_table_and_the_old_names_still_answer(results):
    for name, result in results.items():
        assert result.summary() == repr(result) and repr(result).startswith(name.split("Result")[0][:4]), name
    renamed = {"LensResult": "layer_metrics", "DecoderLensResult": "layer_metrics", "ProbeResult": "layer_metrics",
               "AttentionStepsResult": "step_table", "AttributionResult": "step_frame", "KnowledgeNeurons": "effects_frame"}
    for name, old in renamed.items():
        with pytest.warns(DeprecationWarning, match=rf"{name}.{old}\(\) is now .table\(\)"):
            before = getattr(results[name], old)()
        pd.testing.assert_frame_equal(before, results[name].table())
    with pytest.raises(trilens.TrilensError, match="has no aggregate table"):
        results["ActivationCache"].table()
    steps = results["AttentionStepsResult"]
    curves = {"LensResult": results["LensResult"].curve(), "ProbeResult": results["ProbeResult"].curve(),
              "AttentionStepsResult": steps.curve(steps.names[0])}  # one return type: pandas, a row per point
    for name, frame in curves.items():
        assert isinstance(frame, pd.DataFrame) and {"series", "mean"} <= set(frame.columns) and len(frame), name
    labels = set(curves["AttentionStepsResult"]["series"])
    drawn = {t.name: list(t.y) for t in steps.figure(steps.names[0]).data if t.name in labels}
    assert drawn.keys() == labels
    for label, ys in drawn.items():  # the figure draws exactly the curve's numbers
        np.testing.assert_allclose(ys, curves["AttentionStepsResult"].query("series == @label")["mean"], equal_nan=True)


def test_results_carry_their_provenance(results, tiny):
    from trilens.provenance import model_fingerprint

    for name, result in results.items():
        assert PROVENANCE <= set(result.info), name
        assert result.info["trilens"] == trilens.__version__
    lens = results["LensResult"].info
    assert lens["method"] == "logit lens" and lens["n_inputs"] == 2 and lens["model"].endswith("gpt2")
    assert lens["fingerprint"] == model_fingerprint(tiny("gpt2")) and lens["params"]["k"] == 5
    assert results["ProbeResult"].info["fingerprint"] == model_fingerprint(tiny("bert"))
    assert results["GradientResult"].info["params"]["objective"] == "StepScores"


def test_the_weights_fingerprint_follows_the_weights(tiny_path):
    import torch

    from trilens.provenance import model_fingerprint

    model = trilens.load(tiny_path("gpt2"))
    first = model_fingerprint(model)
    assert model_fingerprint(model) == first
    weight = model.hf_model.transformer.h[0].attn.c_attn.weight
    old = float(weight.detach().view(-1)[0])
    with torch.no_grad():
        weight.view(-1)[0] = old + 1.0  # an in-place edit, as an optimizer step makes
    assert model_fingerprint(model) != first
    with torch.no_grad():
        weight.view(-1)[0] = old
    assert model_fingerprint(model) == first


def test_results_saved_by_trilens_0_1_0_still_load():
    kinds = {"lens": LensResult, "decoder_lens": DecoderLensResult, "probe": ProbeResult,
             "cache": trilens.ActivationCache, "generation": trilens.Generation}
    for folder, cls in kinds.items():
        result = load_result(LEGACY / folder)
        assert type(result) is cls
        expected = pd.read_csv(LEGACY / f"{folder}.frame.csv")
        got = pd.read_csv(io.StringIO(result.to_frame().to_csv(index=False)))  # through CSV as the expected frame was
        if "site" in got:  # 0.1.0 read a cache's sites back in alphabetical order; now they keep the capture order
            got, expected = (f.sort_values("site", ignore_index=True) for f in (got, expected))
        pd.testing.assert_frame_equal(got, expected, check_dtype=False, atol=1e-6)
        assert cls.load(LEGACY / folder).to_frame().shape == expected.shape


def test_loading_what_is_not_a_result_says_so(results, tmp_path, tiny):
    with pytest.raises(StoreError, match="does not exist"):
        load_result(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no saved trilens result"):
        load_result(tmp_path / "empty")
    path = results["LensResult"].save(tmp_path / "lens")
    with pytest.raises(StoreError, match="not a ProbeResult"):
        ProbeResult.load(path)
    doc = json.loads((path / "result.json").read_text())
    (path / "result.json").write_text(json.dumps({**doc, "version": 99}))
    with pytest.raises(StoreError, match="upgrade trilens"):
        load_result(path)
    (path / "result.json").write_text("{not json")
    with pytest.raises(StoreError, match="not a trilens result file"):
        load_result(path)
    lens = TunedLens.from_model(tiny("gpt2")).save(tmp_path / "tuned")
    with pytest.raises(StoreError, match="TunedLens.load"):
        load_result(lens)


def test_a_failed_save_leaves_nothing(results, tmp_path):
    result = results["ProbeResult"]
    result.info["unserialisable"] = object()
    try:
        with pytest.raises(TypeError):
            result.save(tmp_path / "p")
    finally:
        del result.info["unserialisable"]
    assert not (tmp_path / "p").exists() and not list(tmp_path.iterdir())


def test_saving_keeps_other_folders_and_shared_tensors(tiny, tmp_path):
    gpt, t5 = tiny("gpt2"), tiny("t5")
    keep = tmp_path / "my-notes"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="holds no trilens result"):
        gpt.trace(["x y"], sites="resid").save(keep)
    assert (keep / "notes.txt").read_text() == "mine"
    # a tensor and a view of it under two names (sequences / ids, resid_pre / resid_post of consecutive layers)
    for name, result in {"one": gpt.generate(["the cat"], capture="resid_post", max_new_tokens=2),
                         "enc-dec": t5.generate(["x y z"], capture=["resid_post"], max_new_tokens=2),
                         "resid": gpt.trace(["x y"], sites="resid")}.items():
        back = load_result(result.save(tmp_path / name))
        pd.testing.assert_frame_equal(back.to_frame(), result.to_frame())
    cache = t5.trace([("x y", "y x")], sites="resid_post")
    assert cache.figure().data[0].z.shape[0] == 2  # no patterns: the first captured kind of its own stack
