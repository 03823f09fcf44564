"""The "Patching" tab: its compute layer (the parts of the exact sweep are the sweep; the zoo inputs' corrupted copies),
and the page in AppTest: AtP at once, the exact sweep on Compute, the head grid, and bad input as a message."""

import base64

import numpy as np
import plotly.io as pio
import pytest
import torch
from streamlit.testing.v1 import AppTest

from trilens import TokenScore
from trilens.app import APP_SCRIPT
from trilens.app.patching_data import PatchSettings, atp, corrupt, exact_part, merge, pair, parts
from trilens.errors import InputError
from trilens.patching import attribution_patching, patching_sweep

TIMEOUT = 180
T5_INPUT = ("f c e h b a >", "a b h e c f")  # the app's example for zoo:t5 (the reverse task)


@pytest.mark.parametrize("text,want", [
    ("not ( T and F ) =", "not ( T and T ) ="),  # logic: the first flip that changes the answer
    ("( F or T ) = [MASK]", "( F or F ) = [MASK]"),
    ("( T or T ) =", ""),  # no single flip changes it: the user types one
    ("f c e h b a >", "a c e h b a >"),  # reverse: the first source symbol
    ("ela said that", "udor said that"),  # names: the other class's name
    ("the keys near the door", "the key near the door"),  # agreement: the subject's other number
    ("The quick brown fox", ""),
])
def test_zoo_inputs_get_a_corrupted_copy(text, want):
    assert corrupt(text) == want


def test_the_parts_of_the_exact_sweep_are_the_sweep(zoo):
    model = zoo("t5")
    settings = PatchSettings(T5_INPUT[0], corrupt(T5_INPUT[0]), T5_INPUT[1], heads=True)
    merged = merge([exact_part(model, settings, part) for part in parts(model.family, True)])
    clean, corrupted = [T5_INPUT], [(settings.corrupted, T5_INPUT[1])]
    whole = patching_sweep(model, clean, corrupted, heads=True, progress=False)
    assert merged.keys == whole.keys and merged.info["cells"] == whole.info["cells"]
    assert merged.info["params"]["sites"] == whole.info["params"]["sites"]
    for key in whole.keys:  # other cells share the forward passes: float32 sums in another order
        torch.testing.assert_close(merged.raw(key), whole.raw(key), equal_nan=True, atol=1e-4, rtol=1e-5)
    estimate = atp(model, settings)
    direct = attribution_patching(model, clean, corrupted, heads=True)
    torch.testing.assert_close(estimate.raw("decoder.cross_z"), direct.raw("decoder.cross_z"), equal_nan=True)


def test_token_foil_and_bad_inputs(zoo):
    gpt = zoo("gpt")
    settings = PatchSettings("ela said that", "udor said that", token="she", foil="he")
    result = exact_part(gpt, settings, "resid_pre")
    direct = patching_sweep(gpt, ["ela said that"], ["udor said that"], TokenScore(token="she", foil="he", score="logit"),
                            sites="resid_pre", progress=False)
    torch.testing.assert_close(result.raw("resid_pre"), direct.raw("resid_pre"), equal_nan=True)
    with pytest.raises(InputError, match="type a corrupted input"):
        pair(gpt, PatchSettings("ela said that", "  "))
    with pytest.raises(InputError, match="3 and 4 tokens"):
        exact_part(gpt, PatchSettings("ela said that", "udor said that she"), "resid_pre")
    with pytest.raises(InputError, match="KL compares"):
        atp(gpt, PatchSettings("ela said that", "udor said that", token="she", metric="kl"))
    kl = atp(gpt, PatchSettings("ela said that", "udor said that", metric="kl"))
    assert kl.info["params"]["metric"] == "KLDivergence" and float(kl.m_clean[0]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(InputError, match="no target steps"):
        atp(zoo("bert"), PatchSettings("not ( T and F ) = [MASK]", "not ( T and T ) = [MASK]", metric="steps"))


# -- the page ------------------------------------------------------------------------------------
def start(monkeypatch, model: str) -> AppTest:
    monkeypatch.setenv("TRILENS_APP_MODEL", model)
    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=TIMEOUT)
    at.session_state["tab"] = "Patching"
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def chart(at: AppTest, key: str):
    for el in at.get("plotly_chart"):
        if el.proto.id.endswith(key):
            return pio.from_json(el.proto.spec)
    raise AssertionError(f"no chart {key}; the page has {[e.proto.id for e in at.get('plotly_chart')]}")


def array(values) -> np.ndarray:
    if isinstance(values, dict) and "bdata" in values:
        shape = [int(n) for n in str(values.get("shape", "-1")).split(",")]
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=np.dtype(values["dtype"])).reshape(shape)
    return np.asarray(values, dtype=np.float64)


def same_heatmaps(page, figure) -> None:
    assert [t.name for t in page.data] == [t.name for t in figure.data] and len(page.data) == len(figure.data)
    for got, want in zip(page.data, figure.data):
        np.testing.assert_allclose(array(got.z), np.asarray(want.z, dtype=np.float64), atol=1e-4, equal_nan=True)
        assert list(got.x) == list(want.x) and list(got.y) == list(want.y)


def messages(at: AppTest) -> str:
    return " ".join(e.value for e in [*at.warning, *at.error, *at.info])


@pytest.mark.parametrize("name", ["gpt", "t5"])
def test_the_tab_shows_atp_at_once_and_the_exact_sweep_on_compute(monkeypatch, zoo, name):
    at = start(monkeypatch, f"zoo:{name}")
    model = zoo(name)
    clean_text = at.text_input(key="patch_clean").value
    corrupted_text = at.text_input(key="patch_corrupted").value
    assert corrupted_text == corrupt(clean_text) != ""
    clean, corrupted = ([T5_INPUT], [(corrupted_text, T5_INPUT[1])]) if name == "t5" else ([clean_text], [corrupted_text])
    same_heatmaps(chart(at, "patch-atp"), attribution_patching(model, clean, corrupted).figure())
    assert "press Compute" in messages(at)
    at.button(key="patch_compute").click().run()
    assert not at.exception and not at.warning, messages(at)
    exact = patching_sweep(model, clean, corrupted, progress=False)
    same_heatmaps(chart(at, "patch-exact"), exact.figure())
    top = at.dataframe[-1].value
    assert list(top["panel"][:3]) == [c["panel"] for c in exact.top(3)]
    np.testing.assert_allclose(top["value"][:3], [c["value"] for c in exact.top(3)], atol=1e-5)
    assert any("AtP vs exact" in c.value for c in at.caption)


def test_heads_token_and_foil_and_a_kept_corrupted_input(monkeypatch, zoo):
    at = start(monkeypatch, "zoo:gpt")
    at.text_input(key="patch_clean").input("ela said that")
    at.text_input(key="patch_corrupted").input("udor said that")
    at.text_input(key="patch_token").input("she")
    at.text_input(key="patch_foil").input("he")
    at.checkbox(key="patch_heads").check()
    at.button(key="FormSubmitter:patch-form-Apply").click().run()
    assert not at.exception and not at.warning, messages(at)
    metric = TokenScore(token="she", foil="he", score="logit")
    estimate = attribution_patching(zoo("gpt"), ["ela said that"], ["udor said that"], metric, heads=True)
    same_heatmaps(chart(at, "patch-atp"), estimate.figure())
    grid = chart(at, "patch-heads")  # the head grid at the position whose heads matter most
    position = at.selectbox(key="patch_head_position").value
    want = estimate.mean("z")[:, position, :].numpy()
    np.testing.assert_allclose(array(grid.data[0].z), want, atol=1e-5)
    at.selectbox(key="patch_head_position").set_value(0).run()
    np.testing.assert_allclose(array(chart(at, "patch-heads").data[0].z), estimate.mean("z")[:, 0, :].numpy(), atol=1e-5)
    at.session_state["tab"] = "Tokens & prediction"  # another tab, then back: the typed inputs are still there
    at.run()
    at.session_state["tab"] = "Patching"
    at.run()
    assert at.text_input(key="patch_corrupted").value == "udor said that" and at.checkbox(key="patch_heads").value


def test_bad_input_is_a_message_not_a_traceback(monkeypatch):
    at = start(monkeypatch, "zoo:gpt")
    at.text_input(key="patch_corrupted").input("not ( T and T ) = T")
    at.button(key="FormSubmitter:patch-form-Apply").click().run()
    assert not at.exception and "7 and 8 tokens" in messages(at)
    at.text_input(key="patch_corrupted").input("")
    at.button(key="FormSubmitter:patch-form-Apply").click().run()
    assert not at.exception and "Type a corrupted input" in messages(at)
    at.text_input(key="patch_corrupted").input("not ( T and F ) =")  # the clean input again: both predict the same
    at.button(key="FormSubmitter:patch-form-Apply").click().run()
    assert not at.exception and "both predict" in messages(at)
