"""``make demo`` keeps working: the demo runs end to end on the zoo and shows what each model's layers believe."""

import io

import pytest
from page_parser import read

from trilens.zoo import MODELS_DIR


@pytest.mark.skipif(not all((MODELS_DIR / n / "config.json").exists() for n in ("gpt", "bert", "t5")),
                    reason="the zoo is not fully trained in this checkout")
def test_demo_shows_each_zoo_model_and_its_answer_per_layer(tmp_path):
    from trilens.demo import _held_out_formula, main

    out = io.StringIO()
    assert main(out=out, report=tmp_path / "demo.html") == 0
    text = out.getvalue()
    assert text.rstrip().endswith(f"report: {tmp_path / 'demo.html'}")
    parsed = read(tmp_path / "demo.html")
    assert parsed.figures == 3 and parsed.sections == ["gpt", "bert", "t5"] and not parsed.external  # offline
    formula, answer = _held_out_formula()
    for name, arch in (("gpt", "GPT2LMHeadModel"), ("bert", "BertForMaskedLM"), ("t5", "T5ForConditionalGeneration")):
        assert f"zoo:{name} — {arch}" in text
    # the logit lens's last layer is the model itself: both models answer this held-out formula correctly
    assert text.count("is top-1 from layer") == 2
    probs = [line.split()[1:] for line in text.splitlines() if line.strip().startswith(f"p({answer})")]
    assert len(probs) == 2 and all(float(p[-1]) > 0.5 for p in probs)
    # the decoder lens reading the last encoder layer reproduces the model's answer and the reversal
    assert f"layer 6: {answer}" in text and "layer 6: h g f e d c b a" in text
    assert text.count("d log p(") == 2  # gradients: the most salient input tokens of the answer
    assert "Done in" in text


def test_demo_says_how_to_train_a_missing_zoo_model(monkeypatch, tmp_path):
    import trilens.zoo as zoo
    from trilens.demo import main

    monkeypatch.setattr(zoo, "MODELS_DIR", tmp_path)
    out = io.StringIO()
    assert main(out=out, report=tmp_path / "demo.html") == 1
    assert "python -m trilens.zoo.train gpt" in out.getvalue()
