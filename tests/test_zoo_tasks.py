"""The zoo's task generators: deterministic, balanced, labelled right; the tokenizer covers every task."""

import pytest

from trilens.zoo import tasks as T
from trilens.zoo.formats import lm_item, mlm_item, seq2seq_item
from trilens.zoo.vocab import build_tokenizer


@pytest.mark.parametrize("task", sorted(T.TASKS))
def test_generators_are_deterministic_for_a_seed(task):
    a, b, c = T.TASKS[task](60, seed=3), T.TASKS[task](60, seed=3), T.TASKS[task](60, seed=4)
    assert [e.text for e in a] == [e.text for e in b] and [e.text for e in a] != [e.text for e in c]


def test_logic_labels_equal_the_formula_value_and_subformulas_are_right():
    exs = T.logic(200, depths=(1, 2, 3, 4))
    for ex in exs:
        assert T.evaluate_formula(ex.text) == ex.label and ex.target == ("T" if ex.label else "F")
        toks = ex.text.split()
        for sub in ex.meta["subformulas"]:
            assert T.evaluate_formula(" ".join(toks[sub["start"]:sub["end"]])) == sub["value"]
        assert max(s["depth"] for s in ex.meta["subformulas"]) == ex.meta["depth"]
    for depth in (1, 2, 3, 4):
        labels = [ex.label for ex in exs if ex.meta["depth"] == depth]
        assert len(labels) == 200 and sum(labels) == 100  # balanced T/F within each depth
    with pytest.raises(ValueError):
        T.evaluate_formula("( T and F")


def test_test_formulas_from_depth_3_never_occur_in_training():
    train = {e.text for e in T.logic(3000, depths=(3,))}
    test = {e.text for e in T.logic(500, depths=(3,), split="test")}
    assert test and not train & test


def test_reverse_names_and_agreement_labels():
    for ex in T.reverse(50, lengths=(4, 24)):
        assert ex.target.split() == ex.text.split()[::-1] and 4 <= ex.meta["length"] <= 24
    for ex in T.names(200):
        if ex.label is None:
            assert ex.meta["class"] is None and not set(ex.text.split()) & {"she", "he"}
        else:
            names = T.NAMES_A if ex.label == "A" else T.NAMES_B
            assert ex.meta["name"] in names and ex.target == ("she" if ex.label == "A" else "he")
    train = {(e.meta["name"], e.meta["template"]) for e in T.names(2000) if e.label}
    test = {(e.meta["name"], e.meta["template"]) for e in T.names(500, split="test") if e.label}
    assert test and not train & test
    for ex in T.agreement(200):
        words = ex.text.split()
        assert len(ex.meta["number"]) == len(words) and set(ex.meta["number"]) == {ex.label}
        subject = words[1]
        assert (subject in [p for _, p in T.NOUNS]) == (ex.label == "pl")
        assert ex.target in [v[ex.label == "pl"] for v in T.VERBS]
    assert any(ex.meta["attractor"] for ex in T.agreement(200))


@pytest.mark.parametrize("family", ["decoder", "encoder", "encoder-decoder"])
def test_tokenizer_round_trips_every_task(family):
    tok = build_tokenizer(family)
    exs = T.logic(20, depths=(1, 2, 3, 4)) + T.reverse(20) + T.names(40) + T.agreement(20)
    for ex in exs:
        if family == "decoder":
            item = lm_item(ex)
            texts = [item.prompt, item.answer]
        elif family == "encoder":
            if ex.task == "reverse":
                continue
            texts = [mlm_item(ex).text]
        else:
            if ex.task not in ("logic", "reverse"):
                continue
            texts = list(seq2seq_item(ex))
        for text in texts:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids, text
            assert tok.decode(ids) == text


@pytest.mark.parametrize("name", ["gpt", "bert", "t5"])
def test_length_grouped_micro_batches_give_the_whole_batch_gradient(name):
    """Training splits each batch by length to skip padding; the summed, token-weighted gradient is the same."""
    import torch

    from trilens.zoo.batches import Pools, target_count
    from trilens.zoo.recipes import RECIPES, Recipe
    from trilens.zoo.train import build_model
    from trilens.zoo.vocab import build_tokenizer

    small = {"gpt": dict(n_layer=2, n_embd=32, n_head=2, n_inner=64),
             "bert": dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64),
             "t5": dict(num_layers=2, num_decoder_layers=1, d_model=32, d_kv=16, num_heads=2, d_ff=64)}[name]
    base = RECIPES[name]
    recipe = Recipe(**{**base.to_dict(), "config": {**base.config, **small}, "pool": 200, "length_groups": 3})
    tok = build_tokenizer(recipe.family)
    model = build_model(recipe, tok)
    pools = Pools(recipe, tok)
    batch = pools.batch()
    model.zero_grad()
    model(**batch).loss.backward()
    whole = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    parts = pools.micro_batches(batch)
    assert 1 < len(parts) <= 3 and sum(len(p["input_ids"]) for p in parts) == len(batch["input_ids"])
    assert sum(p["input_ids"].numel() for p in parts) < batch["input_ids"].numel()  # padding was skipped
    counts = [target_count(p, recipe.family) for p in parts]
    model.zero_grad()
    for part, count in zip(parts, counts):
        (model(**part).loss * count / sum(counts)).backward()
    for n, p in model.named_parameters():
        if n in whole and "attention.self.key.bias" not in n:  # key biases have no gradient (softmax shift), only noise
            torch.testing.assert_close(p.grad, whole[n], atol=1e-6, rtol=1e-4, msg=n)


def test_training_is_deterministic_for_a_seed():
    """Same recipe + seed -> the same weights, bit for bit (the basis of 'the card is reproducible')."""
    import torch

    from trilens.zoo.recipes import RECIPES, Recipe
    from trilens.zoo.train import train

    small = dict(n_layer=1, n_embd=16, n_head=2, n_inner=32)
    recipe = Recipe(**{**RECIPES["gpt"].to_dict(), "config": {**RECIPES["gpt"].config, **small}, "pool": 60,
                       "steps": 6, "warmup": 2, "batch_size": 8})
    first, _, h1 = train(recipe, progress=False)
    second, _, h2 = train(recipe, progress=False)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    other, _, _ = train(Recipe(**{**recipe.to_dict(), "seed": 1}), progress=False)
    assert not torch.equal(other.state_dict()["transformer.wte.weight"], first.state_dict()["transformer.wte.weight"])


def test_bilingual_facts_splits_are_disjoint_as_documented():
    kb = T.knowledge_base(0)
    assert len(kb) == len(T.ENTITIES) * len(T.RELATIONS) == 360
    shares = {s: sum(f["seen"] == s for f in kb) / len(kb) for s in T.FACT_SHARES}
    assert all(abs(shares[s] - T.FACT_SHARES[s]) < 0.06 for s in T.FACT_SHARES)
    train = T.facts(20000, seed=0)
    stated = {(ex.meta["entity"], ex.meta["relation"], ex.meta["language"]) for ex in train}
    # every training statement is in a language that states the fact, and every such statement is drawn
    assert all(ex.meta["seen"] in ("both", ex.meta["language"]) for ex in train)
    assert len(stated) == sum(2 if f["seen"] == "both" else 1 for f in kb)
    translations = T.translate(5000, seed=0)
    assert all(ex.meta["seen"] == "both" for ex in translations)
    test = T.facts(0, seed=0, split="test")
    assert len(test) == 2 * len(kb)
    train_texts = {ex.text for ex in train} | {ex.text for ex in translations}
    for ex in test:
        key = (ex.meta["entity"], ex.meta["relation"], ex.meta["language"])
        if ex.meta["split"] == "other":  # the transfer test: this language never stated this fact
            assert key not in stated and ex.text not in train_texts and ex.meta["seen"] != "both"
        else:
            assert key in stated
        assert ex.target == ex.meta["answers"][ex.meta["language"]]
    # the languages share no word but the separator; entity names are transliterated
    langs = T.word_languages()
    en = {w for w, lang in langs.items() if lang == "en"}
    vo = {w for w, lang in langs.items() if lang == "vo"}
    assert not en & vo and "terb" in en and "terbo" in vo
    tok = build_tokenizer("decoder", "bilingual")
    for ex in test[:40] + translations[:40]:
        for text in (lm_item(ex).prompt, lm_item(ex).answer):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids and tok.decode(ids) == text
