"""Shipped zoo models load offline and still meet the accuracy their model card reports."""

import json

import pytest

import trilens
from trilens.errors import ModelLoadError
from trilens.zoo import MODELS_DIR, list_zoo
from trilens.zoo.evaluate import BARS, evaluate
from trilens.zoo.recipes import RECIPES, Recipe

SHIPPED = [n for n in sorted(RECIPES) if (MODELS_DIR / n / "config.json").exists()]
MISSING = [n for n in sorted(RECIPES) if n not in SHIPPED]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_meets_its_card(name):
    card = json.loads((MODELS_DIR / name / "card.json").read_text())
    assert not card["failed_bars"], card["failed_bars"]
    assert (MODELS_DIR / name / "model.safetensors").stat().st_size <= 10 * 1024 * 1024
    model = trilens.load(f"zoo:{name}")
    assert model.family == RECIPES[name].family and model.architecture == card["architecture"]
    recipe = Recipe(**card["recipe"])
    metrics = evaluate(model.hf_model, model.tokenizer, recipe)
    for key, value in card["metrics"].items():
        assert metrics[key] == pytest.approx(value, abs=0.01), key
    for key, bar in BARS.items():
        if key in metrics:
            assert metrics[key] >= bar, key


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_untrained_zoo_model_says_how_to_train_it(name, monkeypatch, tmp_path):
    import trilens.zoo as zoo

    monkeypatch.setattr(zoo, "MODELS_DIR", tmp_path)  # an installation without this checkpoint
    with pytest.raises(ModelLoadError, match=f"python -m trilens.zoo.train {name}"):
        trilens.load(f"zoo:{name}")


def test_every_zoo_model_is_shipped():
    assert not MISSING, f"untrained zoo models: {MISSING}"


def test_zoo_lists_its_models():
    assert set(list_zoo()) == {"minilm", "gpt", "bert", "t5", "gpt-bi", "t5-bi"}
