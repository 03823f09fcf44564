"""The app in Streamlit's own test harness (AppTest): every tab for a model of each family, widget changes, the
plotted arrays, and bad inputs shown as messages, never as exceptions."""

import base64
import json

import numpy as np
import plotly.io as pio
import pytest
import torch
from streamlit.testing.v1 import AppTest

import trilens
from trilens.app import APP_SCRIPT
from trilens.app.attention_data import attention_maps
from trilens.app.inputs import prepare
from trilens.app.state import DEFAULT_INPUTS, LOCAL

from trilens.app.tabs import TITLES as TABS  # noqa: E402 - the registry the page draws its tabs from
TIMEOUT = 180


def start(monkeypatch, first_model: str, **state) -> AppTest:
    monkeypatch.setenv("TRILENS_APP_MODEL", first_model)
    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def array(values) -> np.ndarray:
    """A plotly array from a chart's JSON: a plain list, or a typed array (``{"dtype", "bdata", "shape"}``)."""
    if isinstance(values, dict) and "bdata" in values:
        shape = [int(n) for n in str(values.get("shape", "-1")).split(",")]
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=np.dtype(values["dtype"])).reshape(shape)
    return np.asarray(values, dtype=np.float64)


def chart(at: AppTest, key: str):
    for el in at.get("plotly_chart"):
        if key in el.proto.id:
            return pio.from_json(el.proto.spec)
    raise AssertionError(f"no chart {key}; the page has {[e.proto.id for e in at.get('plotly_chart')]}")


def messages(at: AppTest) -> str:
    return " ".join(e.value for e in [*at.warning, *at.error, *at.info])


@pytest.mark.parametrize("model", ["zoo:gpt", "zoo:bert", "zoo:t5"])
@pytest.mark.parametrize("tab", TABS)
def test_every_tab_renders_for_each_family(monkeypatch, model, tab):
    at = start(monkeypatch, model, tab=tab)
    family = {"zoo:gpt": "decoder", "zoo:bert": "encoder", "zoo:t5": "encoder-decoder"}[model]
    assert not at.error, messages(at)
    if tab == "Tokens & prediction":
        table = " ".join(h.proto.body for h in at.get("html"))
        assert "<table" in table and "top 1</th>" in table and "prediction" in " ".join(m.value for m in at.markdown)
    elif tab == "Attention":
        assert {"attention-grid", "attention-pattern", "attention-focus"} <= {k for k in _chart_ids(at)}
    elif tab == "Attention over steps":
        assert "steps-map" in _chart_ids(at)
        if family == "encoder":
            assert "does not generate" in messages(at)
        else:
            assert "steps-curves" in _chart_ids(at)
    elif tab == "Attribution":
        assert "attr-map" in _chart_ids(at) and at.dataframe
    elif tab == "Patching":
        assert "patch-atp" in _chart_ids(at) and "press Compute" in messages(at)
    elif tab == "Feature neurons":
        assert "Train a feature neuron" in messages(at)
    elif tab == "Lens":
        assert "lens-heatmap" in _chart_ids(at)
    elif tab == "Decoder lens":
        if family == "encoder-decoder":
            assert "decoder-lens-curves" in _chart_ids(at) and at.dataframe
        else:
            assert "decoder lens runs an encoder-decoder" in messages(at)
    elif tab == "Probes":
        assert "saved probe result" in messages(at)
    else:
        assert "second input" in messages(at)


CHART_KEYS = ("attention-grid", "attention-pattern", "attention-focus", "steps-curves", "steps-map", "attr-map", "feat-curve", "feat-values", "feat-grid", "lens-heatmap", "lens-rank",
              "decoder-lens-curves", "probe-curves", "compare-lens", "compare-attention", "patch-atp")


def _chart_ids(at: AppTest) -> set[str]:
    """The widget keys of the charts on the page."""
    return {key for el in at.get("plotly_chart") for key in CHART_KEYS if key in el.proto.id}


@pytest.mark.parametrize("model", ["zoo:gpt", "zoo:t5"])
def test_attention_views_layers_and_heads_plot_the_models_patterns(monkeypatch, model):
    at = start(monkeypatch, model, tab="Attention")
    assert any(t.value.startswith("attention: ") for t in at.text)  # the sidebar's timings of this run
    loaded = trilens.load(model)
    maps = attention_maps(loaded, prepare(loaded, DEFAULT_INPUTS[model]))
    for view in maps.views:
        at.radio(key="view").set_value(view).run()
        at.selectbox(key="layer").set_value(1).run()
        at.selectbox(key="head").set_value(2).run()
        assert not at.exception
        pattern = chart(at, "attention-pattern")
        np.testing.assert_allclose(array(pattern.data[0].z), maps.patterns[view][1, 2], atol=1e-6)
        assert [y.split(":", 1)[1] for y in pattern.data[0].y] == maps.query_tokens[view]
        assert [x.split(":", 1)[1] for x in pattern.data[0].x] == maps.key_tokens[view]
        statistic = at.selectbox(key="statistic")
        for option in statistic.options:
            statistic.set_value(option).run()
            grid = array(chart(at, "attention-grid").data[0].z)
            np.testing.assert_allclose(grid, maps.summary(view, option), atol=1e-6)
        at.selectbox(key="focus").set_value(len(maps.query_tokens[view]) - 1).run()
        rows = array(chart(at, "attention-focus").data[0].z)
        np.testing.assert_allclose(rows, maps.patterns[view][1, :, -1], atol=1e-6)
    assert [r for r in at.radio(key="view").options] == [
        {"encoder": "encoder self-attention", "decoder": "decoder self-attention", "cross": "cross-attention"}[v]
        for v in maps.views]


def test_lens_statistics_switch_and_the_heatmap_holds_the_top_tokens(monkeypatch):
    at = start(monkeypatch, "zoo:gpt", tab="Lens")
    heat = chart(at, "lens-heatmap")
    assert heat.data[0].text[-1][-1] == "T"  # the last layer's top-1 at "=" is the answer
    for option in at.selectbox(key="lens_statistic").options:
        at.selectbox(key="lens_statistic").set_value(option).run()
        assert not at.exception
    assert "lens-rank" in _chart_ids(at)
    at.radio(key="lens").set_value("tuned").run()
    assert "Give the folder of a tuned lens" in messages(at)
    at.text_input(key="tuned").input("/no/such/lens").run()
    assert "not a folder" in messages(at) and not at.exception


def test_a_new_shorter_input_resets_indices_that_no_longer_exist(monkeypatch):
    at = start(monkeypatch, "zoo:gpt", tab="Attention")
    at.selectbox(key="focus").set_value(6).run()
    at.text_area(key="text").input("not T =")
    at.button[0].click().run()  # the sidebar form's submit button
    assert not at.exception
    assert at.selectbox(key="focus").value == 0


def test_bad_inputs_give_messages_not_exceptions(monkeypatch, tmp_path):
    at = start(monkeypatch, "zoo:gpt", tab="Attention")
    at.text_area(key="text").input("   ")
    at.button[0].click().run()
    assert not at.exception and "empty" in messages(at)
    at.text_area(key="text").input(" ".join(["T"] * 300))
    at.button[0].click().run()
    assert not at.exception and "longer than this model's context of 64" in messages(at)
    for folder, expected in ((tmp_path / "missing", "cannot be loaded"), (tmp_path, "cannot be loaded")):
        at = start(monkeypatch, "zoo:gpt", model=LOCAL, folder=str(folder))
        assert not at.exception and expected in messages(at), messages(at)
    (tmp_path / "weights.bin").write_bytes(b"not a model")
    at = start(monkeypatch, "zoo:gpt", model=LOCAL, folder=str(tmp_path / "weights.bin"))
    assert not at.exception and "cannot be loaded" in messages(at)


def test_compare_shows_differences_of_two_inputs(monkeypatch):
    at = start(monkeypatch, "zoo:gpt", tab="Compare")
    at.text_input(key="compare_text").input("not ( F and F ) =")
    at.button(key="FormSubmitter:compare-form-Compare").click().run()
    assert not at.exception, [e.message for e in at.exception]
    lens = chart(at, "compare-lens")
    delta = array(lens.data[0].z)
    assert delta.shape[1] == 7
    assert np.abs(delta[0, :2]).max() == 0  # "not (" is shared: same embeddings
    assert "compare-attention" in _chart_ids(at)


def test_switching_model_loads_its_example(monkeypatch):
    at = start(monkeypatch, "zoo:gpt")
    at.selectbox(key="model").set_value("zoo:t5").run()
    assert not at.exception
    assert at.text_area(key="text").value == DEFAULT_INPUTS["zoo:t5"].text
    assert at.text_area(key="target").value == DEFAULT_INPUTS["zoo:t5"].target


def test_a_saved_tuned_lens_and_a_saved_probe_result_are_shown(monkeypatch, tmp_path):
    from trilens.lens import TunedLens
    from trilens.probes import probe_layers

    gpt = trilens.load("zoo:gpt")
    texts = ["not ( T and F ) =", "( T or F ) =", "not T =", "( F and F ) ="] * 2
    tuned = TunedLens.from_model(gpt)
    tuned.fit(gpt, texts, steps=3, batch_size=4, progress=False)
    tuned.save(tmp_path / "tuned")
    probe_layers(gpt, texts, [t.startswith("not") for t in texts], cv=2, progress=False).save(tmp_path / "probe")

    at = start(monkeypatch, "zoo:gpt", tab="Lens", lens="tuned", tuned=str(tmp_path / "tuned"))
    assert not at.warning, messages(at)
    assert chart(at, "lens-heatmap").layout.title.text.startswith("tuned lens")
    at = start(monkeypatch, "zoo:gpt", tab="Probes", probe_path=str(tmp_path / "probe"))
    assert not at.warning, messages(at)
    curves = chart(at, "probe-curves")
    assert {trace.name for trace in curves.data} >= {"task", "control"}
    assert len(at.dataframe[0].value) == gpt.n_layers["decoder"] + 1

    rows = [{"text": t, "label": t.startswith("not")} for t in texts] * 2
    data = "\n".join(json.dumps(r) for r in rows).encode()
    at = start(monkeypatch, "zoo:gpt", tab="Probes", probe_mode="probe a JSON-lines file")
    at.file_uploader(key="probe_upload").set_value(("rows.jsonl", data, "application/jsonl")).run()
    assert not at.exception and not at.warning, messages(at)
    uploaded = at.dataframe[0].value
    assert len(uploaded) == gpt.n_layers["decoder"] + 1 and {"task_mean", "control_mean"} <= set(uploaded.columns)


@pytest.mark.parametrize("model", ["zoo:gpt", "zoo:t5"])
def test_attention_over_steps_plots_the_results_of_the_library(monkeypatch, model):
    from trilens.attention import attention_steps, relevancy_maps
    from trilens.capture.steps_input import step_inputs

    at = start(monkeypatch, model, tab="Attention over steps")
    m = trilens.load(model)
    inp = DEFAULT_INPUTS[model]
    steps = step_inputs(m, [inp.text if m.family == "decoder" else (inp.text, inp.target)], max_new_tokens=32)
    expected = attention_steps(m, steps, sensitivity=None)
    default = "source_mass" if m.family == "decoder" else "sensitivity"
    assert at.selectbox(key="steps_metric").value == default
    at.selectbox(key="steps_metric").set_value("entropy").run()
    assert not at.exception
    curves = chart(at, "steps-curves")
    layer0 = next(t for t in curves.data if t.name == "layer 0")
    assert np.allclose(array(layer0.y), expected.curve("entropy").query("series == 'layer 0'")["mean"].to_numpy(), atol=1e-5, equal_nan=True)
    maps = relevancy_maps(m, steps, methods=("relevancy",))
    heat = chart(at, "steps-map")
    assert np.allclose(array(heat.data[0].z), maps.map("relevancy", 0).numpy(), atol=1e-5)
    at.selectbox(key="map_method").set_value("rollout").run()
    at.radio(key="map_part").set_value("prefix").run()
    assert not at.exception and "rollout" in chart(at, "steps-map").layout.title.text


def test_attention_over_steps_without_a_trained_head_shows_rollout_and_flow(monkeypatch, tiny_path):
    at = start(monkeypatch, str(tiny_path("bert_headless")), tab="Attention over steps")
    assert not at.error and "does not generate" in messages(at)
    assert at.selectbox(key="map_method").options == ["rollout", "flow"]
    assert "rollout" in chart(at, "steps-map").layout.title.text


@pytest.mark.parametrize("model", ["zoo:gpt", "zoo:t5"])
def test_attribution_plots_the_results_of_the_library_and_slow_methods_wait_for_compute(monkeypatch, model):
    from trilens.attribution import attribute

    at = start(monkeypatch, model, tab="Attribution")
    m = trilens.load(model)
    inp = DEFAULT_INPUTS[model]
    if m.family == "decoder":
        expected = attribute(m, [inp.text], max_new_tokens=16)
    else:
        expected = attribute(m, [(inp.text, inp.target)])
    heat = chart(at, "attr-map")
    want = torch.cat([expected.scores(0, "source"), expected.scores(0, "target")], 1).T
    assert np.allclose(array(heat.data[0].z), want.numpy(), atol=1e-5)
    assert at.dataframe[0].value.probability.tolist() == pytest.approx(expected.step_scores["probability"][0].tolist(), abs=1e-5)
    at.selectbox(key="attr_method").set_value("integrated_gradients").run()
    assert not at.exception and "press Compute" in messages(at) and "attr-map" not in _chart_ids(at)
    at.button(key="attr_compute").click().run()
    assert not at.exception and "attr-map" in _chart_ids(at)
    assert "integrated_gradients" in chart(at, "attr-map").layout.title.text
    at.checkbox(key="attr_normalise").check().run()
    z = array(chart(at, "attr-map").data[0].z)
    assert np.allclose(np.abs(z).sum(0), 1, atol=1e-4)


def test_attribution_without_a_trained_head_says_so(monkeypatch, tiny_path):
    at = start(monkeypatch, str(tiny_path("bert_headless")), tab="Attribution")
    assert not at.exception and "no trained LM head" in messages(at)


def test_feature_neurons_read_the_input_and_draw_the_rewrite_grid(monkeypatch, tiny_path, tmp_path):
    from test_cli import _concept_rows

    from trilens.cli import main
    from trilens.features import FeatureRow, Gradiend

    model = str(tiny_path("bert"))
    folder = tmp_path / "feature"
    assert main(["gradiend", "train", model, "--data", str(_concept_rows(tmp_path / "rows.jsonl")), "--out", str(folder),
                 "--batch-size", "2", "--steps", "4", "--eval-every", "2", "--seeds", "0", "--no-progress"]) == 0
    text = "the cat sat and [MASK] was here"
    at = start(monkeypatch, model, tab="Feature neurons", text=text, feat_path=str(folder))
    assert not at.error and not at.warning, messages(at)
    m = trilens.load(model)
    expected = Gradiend.load(folder / "gradiend").encode(m, [FeatureRow(text, None)])
    assert at.metric[0].value == f"{float(expected.values[0, 0]):+.3f}"
    assert {"feat-curve", "feat-values"} <= _chart_ids(at) and "feat-grid" not in _chart_ids(at)
    assert [int(x) for x in chart(at, "feat-curve").data[0].x] == [0, 2, 4]
    at.button(key="feat_grid_compute").click().run()
    assert not at.exception and "feat-grid" in _chart_ids(at)
    at.selectbox(key="feat_metric").set_value("p_a").run()
    assert "P(A)" in chart(at, "feat-grid").layout.yaxis.title.text
    at.text_input(key="feat_path").set_value(str(tmp_path / "nowhere")).run()
    assert not at.exception and "is not a folder" in messages(at)
    at.text_input(key="feat_path").set_value(str(folder)).run()
    at.session_state["text"] = "the cat sat and was here"
    at.run()
    assert not at.exception and "put one [MASK]" in messages(at)


@pytest.mark.parametrize("model", ["zoo:gpt-bi", "zoo:t5-bi"])
def test_lens_by_language_shows_the_language_lens_of_the_zoo_facts(monkeypatch, model):
    from trilens.app.language_data import parse_queries, zoo_fact_lines
    from trilens.lens import language_lens

    at = start(monkeypatch, model, tab="Lens", lens="by language")
    assert not at.error and not at.warning, messages(at)
    prompts, answers, languages = parse_queries(zoo_fact_lines())
    ref = language_lens(trilens.load(model), prompts, answers, languages)
    shown = [m.value for m in at.metric]
    assert shown[:2] == [f"{ref.accuracy()['en']:.2f}", f"{ref.accuracy()['vo']:.2f}"]
    fig = chart(at, "language-figure")
    own = next(t for t in fig.data if t.name == "en prompts, en answer")
    frame = ref.layer_frame()
    assert np.allclose(array(own.y), frame[frame.language == "en"]["rank_en"].to_numpy() + 1)
    at.radio(key="language_figure").set_value("language of the top tokens").run()
    assert any(t.name == "vo prompts: vo" for t in chart(at, "language-figure").data)
    at.text_area(key="language_prompts").set_value("en | the colour of terb is")
    next(b for b in at.button if b.label == "Read by language").click().run()
    assert "should read `language | prompt | answer`" in messages(at)


def test_lens_offers_by_language_only_with_a_language_map(monkeypatch):
    at = start(monkeypatch, "zoo:gpt", tab="Lens")
    assert at.radio(key="lens").options == ["logit", "tuned"]
