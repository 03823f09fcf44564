"""``trilens study run``: studies write metrics, figures and a summary atomically; bad names and settings are refused."""

import json

import pytest

from trilens.cli import main as cli
from trilens.errors import InputError
from trilens.study import list_studies, run_study, study_config
from trilens.zoo import MODELS_DIR


def _shipped(*names):
    return all((MODELS_DIR / n / "config.json").exists() for n in names)


def test_the_studies_are_listed(capsys):
    assert {"decoder_lens", "logit_lens", "attention_degeneration", "attribution_alignment", "gradiend",
            "patching"} <= set(list_studies())
    assert cli(["study", "list"]) == 0
    assert "decoder_lens" in capsys.readouterr().out


def test_unknown_study_and_setting_are_refused(tmp_path, capsys):
    with pytest.raises(InputError, match="did you mean 'decoder_lens'"):
        study_config("decoder_lense")
    with pytest.raises(InputError, match="no setting 'n_per_dept'.*n_per_depth"):
        study_config("decoder_lens", overrides={"n_per_dept": 3})
    assert cli(["study", "run", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "no study named 'nope'" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        run_study("decoder_lens", tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_a_failing_study_leaves_nothing_behind(tmp_path):
    root = tmp_path / "studies"
    (root / "broken").mkdir(parents=True)
    (root / "broken" / "config.json").write_text('{"n": 1}')
    (root / "broken" / "study.py").write_text(
        "def run(ctx):\n    ctx.metric('half', 1)\n    ctx.say('started')\n    raise RuntimeError('boom')\n")
    with pytest.raises(RuntimeError, match="boom"):
        run_study("broken", tmp_path / "out", path=root)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.slow
@pytest.mark.skipif(not _shipped("t5"), reason="zoo:t5 is not trained in this checkout")
def test_decoder_lens_study_quick_run(tmp_path, capsys):
    out = tmp_path / "dl"
    assert cli(["study", "run", "decoder_lens", "--quick", "--out", str(out), "--no-progress",
                "--set", "n_per_depth=16"]) == 0
    printed = capsys.readouterr().out
    assert "forced choice" in printed and f"written to {out}" in printed
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["config"]["n_per_depth"] == 16 and saved["quick"] is True
    m = saved["metrics"]
    # the last encoder layer is the model itself: the trained model reverses short strings and solves shallow formulas
    assert m["reverse_exact_match_by_layer"]["4-8"][-1] == 1.0
    assert m["logic_accuracy_by_layer"]["1"][-1] == 1.0
    assert m["logic_forced_choice_by_layer"]["1"][0] == pytest.approx(0.5, abs=0.2)  # embeddings: near chance
    assert set(m["logic_solved_layer"]) == {"1", "2", "3", "4"}
    for name in ("logic_accuracy_by_layer", "logic_forced_choice_by_layer", "reverse_exact_match_by_layer"):
        assert (out / "figures" / f"{name}.html").stat().st_size > 10_000
    assert (out / "summary.md").read_text().startswith("# Study decoder_lens")
    assert (out / "tables" / "logic_by_layer.csv").exists()


@pytest.mark.slow
@pytest.mark.skipif(not _shipped("gpt", "bert"), reason="zoo:gpt and zoo:bert are not trained in this checkout")
def test_logit_lens_study_quick_run(tmp_path):
    ctx = run_study("logit_lens", tmp_path / "ll", quick=True, progress=False)
    for name in ("zoo:gpt", "zoo:bert"):
        m = ctx.metrics[name]
        groups = m["answer_by_group"]
        assert groups["names"]["top1_by_layer"][-1] == 1.0 and groups["agreement"]["beats_alternative_by_layer"][-1] == 1.0
        assert groups["names"]["beats_alternative_by_layer"][0] <= 0.75  # the embeddings alone do not know the class
        kl = m["kl_by_layer"]
        assert kl["logit"][-1] == pytest.approx(0.0, abs=1e-5)  # the last layer is the model's own distribution
        assert len(kl["logit"]) == len(kl["tuned"])
        assert (tmp_path / "ll" / "figures" / f"{name[4:]}_kl_logit_vs_tuned.html").exists()


@pytest.mark.slow
@pytest.mark.skipif(not _shipped("bert"), reason="zoo:bert is not trained in this checkout")
def test_layerwise_probing_study_quick_run(tmp_path):
    ctx = run_study("layerwise_probing", tmp_path / "lp", quick=True, progress=False)
    m = ctx.metrics["zoo:bert"]
    n_layers = 6
    truth = m["truth value at [MASK]"]["accuracy_by_layer"]
    assert len(truth) == n_layers + 1
    # the trained model answers at [MASK]: its top layers carry the truth value, its lower layers barely
    # (each distinct formula once, so no copy of a training formula is scored)
    assert truth[-1] > 0.8 and truth[0] < 0.6 and max(truth[:3]) < 0.65
    assert m["truth value (CLS)"]["control_by_layer"][-1] < 0.6  # a random label per formula: chance
    assert m["subject number"]["accuracy_by_layer"][-1] > 0.85
    assert "cross: subformula values -> truth value at [MASK]" in m
    assert all(v["unconverged_probes"] == 0 for v in m.values())  # every logistic probe converged
    assert len(list((tmp_path / "lp" / "figures").glob("bert_*.html"))) == 6


@pytest.mark.slow
def test_attention_degeneration_study_quick_run(tmp_path):
    ctx = run_study("attention_degeneration", tmp_path / "ad", quick=True, progress=False)
    gpt, t5 = ctx.metrics["gpt/reverse"], ctx.metrics["t5/reverse"]
    assert gpt["exact_match"] == 1.0 and t5["exact_match"] == 1.0  # the trained models reverse these strings
    assert gpt["source_mass_by_step"]["1"] == pytest.approx(1.0)  # step 1 reads only the prompt
    assert gpt["uniform_baseline_by_step"]["1"] == 1.0 and gpt["uniform_baseline_by_step"]["8"] < 0.75
    for m in (gpt, t5):
        assert m["sensitivity_by_step"]["1"] == pytest.approx(1.0) and len(m["sensitivity_by_step"]) >= 3
    area = t5["perturbation_area"]
    assert area["relevancy/positive"] < area["random"] < area["relevancy/negative"]
    assert ctx.metrics["t5/logic"]["steps"] == 2  # the answer and the end of the sequence
    for name in ("reverse_sensitivity_gpt_vs_t5", "gpt_reverse_source_mass", "t5_reverse_perturbation"):
        assert (tmp_path / "ad" / "figures" / f"{name}.html").stat().st_size > 10_000
    assert (tmp_path / "ad" / "summary.md").read_text().startswith("# Study attention_degeneration")


@pytest.mark.slow
def test_attribution_alignment_study_quick_run(tmp_path):
    ctx = run_study("attribution_alignment", tmp_path / "aa", quick=True, progress=False)
    t5 = ctx.metrics["t5/reverse"]
    # on reversal the copied symbol is found far above chance by gradients and by attention
    assert t5["saliency"]["top1"] > 0.6 > 3 * t5["saliency"]["chance_top1"]
    assert t5["attention"]["top1"] > 0.6 and t5["saliency"]["mean_rank"] < 2
    bert = ctx.metrics["bert/agreement"]
    assert "subject_over_attractors" in bert["saliency"] and 0 < bert["saliency"]["chance_over_attractors"] <= 0.5
    assert set(ctx.metrics) == {"gpt/reverse", "t5/reverse", "bert/agreement", "gpt/agreement"}
    table = (tmp_path / "aa" / "tables" / "alignment.csv").read_text()
    assert table.startswith("run,method,top1") and "integrated_gradients" in table
    assert (tmp_path / "aa" / "summary.md").read_text().startswith("# Study attribution_alignment")
    assert (tmp_path / "aa" / "figures" / "t5_reverse_example.html").stat().st_size > 10_000


@pytest.mark.slow
def test_gradiend_study_quick_run(tmp_path):
    ctx = run_study("gradiend", tmp_path / "g", quick=True, progress=False)
    (row,) = ctx.metrics["encoders"]
    # the feature reads the class on held-out names (A +, B -) and stays near 0 on neutral text
    assert row["model"] == "zoo:bert" and row["abs_r"] > 0.9 and row["mean_A"] > 0 > row["mean_B"]
    assert abs(row["mean_neutral"]) < 0.1
    rewrites = {r["rewrite"]: r for r in ctx.metrics["rewrites"]}
    assert rewrites["best a_directed"]["p_a"] > rewrites["base"]["p_a"] > rewrites["best b_directed"]["p_a"]
    assert all(r["lms"] >= 0.99 * rewrites["base"]["lms"] for r in rewrites.values())
    (kn,) = ctx.metrics["knowledge_neurons"]
    assert 0 < kn["k"] <= kn["neurons_A"] + kn["neurons_B"] and kn["max_ig_delta"] < 1e-3
    assert {"bert-training", "bert-encodings", "bert-rewrite-pa", "bert-knowledge-neurons"} <= set(ctx.figures)
    assert (tmp_path / "g" / "tables" / "bert-rewrite-grid.csv").read_text().startswith("h,alpha,p_a")


@pytest.mark.slow
@pytest.mark.skipif(not _shipped("gpt", "bert", "t5"), reason="the zoo models are not trained in this checkout")
def test_patching_study_quick_run(tmp_path):
    from trilens import load_result
    from trilens.patching import PatchingResult

    ctx = run_study("patching", tmp_path / "p", quick=True, progress=False)
    names = ctx.metrics["gpt/names"]
    assert names["answers_right"] == 1.0
    # the name carries the pronoun in the early layers, the last position (which predicts it) in the late ones
    (peaks,) = names["mean_peaks"].values()
    assert [p["role"] for p in peaks[:3]] == ["source"] * 3 and peaks[-1]["role"] == "read"
    assert peaks[0]["value"] == pytest.approx(1.0)  # layer 0: the name is the only difference
    assert names["peak_at_known"] == 1.0 and names["handoff_layer"]["decoder"] >= 2
    agreement = ctx.metrics["gpt/agreement"]
    assert agreement["peak_at_source"] > 0.5  # the subject, not the attractor
    assert all(p["position"] != 4 for p in next(iter(agreement["mean_peaks"].values()))[:-1])
    # zoo:t5 keeps the copied symbol at its encoder position and reads it through cross-attention at step t
    t5 = ctx.metrics["t5/reverse"]
    for key, peaks in t5["mean_peaks"].items():
        expected = ["source"] * 6 if key.endswith("/ encoder") else ["none", "read"]
        assert [p["role"] for p in peaks] == expected, key
    assert max(t5["cross_attention"]["cross_attn_out_by_layer"]) > 0.5
    logic = ctx.metrics["bert/logic"]
    (peaks,) = logic["mean_peaks"].values()
    assert peaks[0]["role"] == "source" and peaks[-1]["role"] == "read" and peaks[-1]["token"] == "[MASK]"
    for case in ("gpt/names", "gpt/agreement", "t5/reverse", "bert/logic"):
        m = ctx.metrics[case]
        assert m["atp_spearman"] > 0.7 and m["atp_top_k_recall"] >= 0.5, case
    # AtP*'s QK fix brings query / key cells closer to the exact sweep than plain AtP
    assert t5["atp*_qk_pearson"] > t5["atp_qk_pearson"] and agreement["atp*_qk_pearson"] > agreement["atp_qk_pearson"]
    (circuit,) = names["circuit"]
    assert circuit["status"] == "ok" and 0 < circuit["edges"] < circuit["of_edges"]
    assert logic["circuit"][0]["status"] == "ok"  # zoo:bert is post-norm: its graph has a node per norm
    assert isinstance(load_result(tmp_path / "p" / "results" / "t5_reverse_exact"), PatchingResult)
    assert {"gpt_names_decoder_exact", "t5_reverse_cross_attn_out_exact", "bert_logic_encoder_peaks"} <= set(ctx.figures)
    assert (tmp_path / "p" / "tables" / "cases.csv").read_text().startswith("case,pairs")


def test_multilinguality_study_quick_run(tmp_path):
    ctx = run_study("multilinguality", tmp_path / "ml", quick=True, progress=False)
    errors = ctx.metrics["gpt-bi/errors"]
    # facts stated in the question's language are known; every error is a cross-lingual one (the zoo's card)
    assert errors["accuracy_both"] == 1.0 and errors["accuracy_same"] == 1.0 and errors["share_of_errors_on_other"] == 1.0
    assert 0.3 < errors["accuracy_other"] < 0.9
    shared = ctx.metrics["gpt-bi/shared_space"]
    assert shared["correct_prompts"] == 240 - errors["errors"]
    assert len(shared["own_top10_by_layer"]) == 7 and shared["own_top10_by_layer"][-1] == 1.0
    shortcut = ctx.metrics["gpt-bi/shortcut_beta_2.25"]
    # from the last layer the shortcut is the model (the final norm ignores β's scale)
    assert shortcut["accuracy_other_by_layer"][-1] == pytest.approx(shortcut["model_accuracy_other"], abs=1e-3)  # rounded
    assert shortcut["fit_error_by_layer"][-1] == 0.0 and shortcut["fit_error_by_layer"][0] > 0.5
    assert (tmp_path / "ml" / "figures" / "gpt-bi_rank.html").exists()
    assert "Shared space" in (tmp_path / "ml" / "summary.md").read_text()
