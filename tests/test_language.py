"""The language lens, the linear shortcut and cross-lingual consistency (Lost in Multilinguality)."""

import pytest
import torch

import trilens
from trilens.capture import SiteMap
from trilens.errors import InputError
from trilens.lens import LanguageLensResult, LinearShortcut, ShortcutSweepResult, consistency, language_lens, shortcut_sweep
from trilens.lens.shortcut import slot_batches, slot_site
from trilens.lens.unembed import Unembed

PROMPTS = ["the key to the cabinets is", "she was here and", "a cat sat on the", "the dog was big and"]
MAP = {"red": "en", "blue": "en", "big": "en", "dog": "en", "seven": "es", "T": "xx", "F": "xx", "cat": "xx", "mat": "xx"}


@pytest.mark.parametrize("arch", ["gpt2", "bart"])
def test_site_map_jacobian_equals_finite_differences_in_float64(tiny_path, arch):
    model = trilens.load(tiny_path(arch))
    model.hf_model.double()
    n = model.n_layers[model.stacks[-1]]
    batch, pos = next(slot_batches(model, PROMPTS, 8))
    site_map = SiteMap(model, batch, slot_site(model, 1), slot_site(model, n), pos)
    J = site_map.jacobian(chunk=7)  # chunks that do not divide d: every column still lands in its place
    assert J.shape == (len(PROMPTS), model.d_model, model.d_model) and J.dtype == torch.float64
    x0, eps = site_map.x0.detach(), 1e-6
    fd = torch.stack([(site_map(x0 + eps * e) - site_map(x0 - eps * e)) / (2 * eps)
                      for e in torch.eye(model.d_model, dtype=torch.float64)[:, None, :].expand(-1, len(PROMPTS), -1)], -1)
    assert torch.allclose(J, fd.detach(), atol=1e-8)
    assert torch.equal(site_map(x0), site_map.y0)  # the map at the run's own value is the run


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_shortcut_from_the_last_layer_is_the_identity(tiny, arch):
    model = tiny(arch)
    n = model.n_layers[model.stacks[-1]]
    sc = LinearShortcut.fit(model, PROMPTS, layer=n, beta=1.0)
    assert torch.equal(sc.W, torch.eye(model.d_model)) and torch.equal(sc.b, torch.zeros(model.d_model))
    h = torch.randn(3, model.d_model)
    assert torch.equal(sc.hidden(h), h)
    # decoded, it is the model's own output at the answer slot
    inputs = PROMPTS if arch == "gpt2" else [(p, [3]) for p in PROMPTS]
    logits = model.run(inputs)
    slot = model.encode(inputs).masks[model.stacks[-1]].sum(1) - 1
    assert torch.allclose(sc.logits(model, PROMPTS), logits[torch.arange(len(PROMPTS)), slot], atol=1e-5)


def test_shortcut_is_exact_when_the_last_layers_are_linear(tiny_path):
    model = trilens.load(tiny_path("gpt2"))
    with torch.no_grad():  # blocks 1.. add only their biases: an affine map of the residual stream
        for block in model.hf_model.transformer.h[1:]:
            block.attn.c_proj.weight.zero_()
            block.mlp.c_proj.weight.zero_()
    sc = LinearShortcut.fit(model, PROMPTS[:2], layer=1, beta=1.0)
    assert torch.allclose(sc.W, torch.eye(model.d_model), atol=1e-6)
    assert float(sc.fit_error.max()) < 1e-5
    others = ["the cat sat on the mat", "it was red", "two three four"]  # not fitted on: still exact
    logits = model.run(others)
    slot = model.encode(others).attention_mask.sum(1) - 1
    assert torch.allclose(sc.logits(model, others), logits[torch.arange(3), slot], atol=1e-4)


def test_language_lens_ranks_equal_ranks_read_by_hand_from_trace(tiny):
    model = tiny("gpt2")
    answers = [{"en": "red", "es": "seven"}, {"en": "blue", "es": "seven"}, {"en": "big", "es": "seven"}, {"en": "dog"}]
    langs = ["en", "es", "en", "es"]
    res = language_lens(model, PROMPTS, answers, langs, language_map=MAP, k=5)
    cache = model.trace(PROMPTS, sites="resid")
    states = cache.accumulated_resid()
    last = cache.mask().sum(1) - 1
    unembed = Unembed(model)
    tok = model.tokenizer
    for layer in range(states.shape[0]):
        logits = unembed(states[layer, torch.arange(4), last])
        for i, ans in enumerate(answers):
            for j, lang in enumerate(res.answer_languages):
                if lang not in ans:
                    assert res.rank[layer, i, j] == -1
                    continue
                a = tok.convert_tokens_to_ids(ans[lang])
                assert int(res.rank[layer, i, j]) == int((logits[i] > logits[i, a]).sum())
                assert torch.isclose(res.prob[layer, i, j], logits[i].softmax(-1)[a], atol=1e-6)
        top = logits.topk(5).indices
        assert torch.equal(res.top_ids[layer], top)
        names, share = res.share()
        for i in range(4):
            got = [MAP.get(t, "other") for t in tok.convert_ids_to_tokens(top[i])]
            assert [share[layer, i, names.index(n)] * 5 for n in names] == [got.count(n) for n in names]
    # parallel prompts: the i-th prompt of each language; cosine per layer, baseline over other facts
    assert res.pairs == [(0, 1), (2, 3)]
    unit = torch.nn.functional.normalize(states[:, torch.arange(4), last], dim=-1)
    assert torch.allclose(res.cosine[:, 0], (unit[:, 0] * unit[:, 1]).sum(-1), atol=1e-6)
    assert torch.allclose(res.baseline[("en", "es")], ((unit[:, 0] * unit[:, 3]).sum(-1) + (unit[:, 2] * unit[:, 1]).sum(-1)) / 2, atol=1e-6)


def test_language_lens_result_contract(tiny, tmp_path):
    res = language_lens(tiny("gpt2"), PROMPTS, ["red", "seven", "big", "seven"], ["en", "es", "en", "es"], language_map=MAP)
    back = trilens.load_result(res.save(tmp_path / "ll"))
    assert isinstance(back, LanguageLensResult) and torch.equal(back.rank, res.rank)
    assert back.baseline.keys() == res.baseline.keys() and back.layer_frame().equals(res.layer_frame())
    frame = res.to_frame()
    assert len(frame) == res.n_layers * 4 and frame["own_language"].all()  # one answer each, in its own language
    for kind in ("rank", "share", "cosine"):
        assert len(res.figure(kind).data) > 0
    with pytest.raises(InputError, match="unknown figure kind"):
        res.figure("pie")


def test_language_lens_on_an_encoder_decoder_reads_the_decoder_first_step(tiny):
    model = tiny("t5")
    res = language_lens(model, PROMPTS[:2], ["red", "seven"], ["en", "es"], language_map=MAP)
    assert res.rank.shape == (model.n_layers["decoder"] + 1, 2, 2)
    logits = model.run([(p, [3]) for p in PROMPTS[:2]])[:, 0]
    own = res.own_rank()[-1]
    ids = model.tokenizer.convert_tokens_to_ids(["red", "seven"])
    assert [int((logits[i] > logits[i, ids[i]]).sum()) for i in range(2)] == own.tolist()


def test_consistency_is_the_overlap_of_correct_facts():
    facts, langs = [1, 2, 3, 1, 2, 3], ["a", "a", "a", "b", "b", "b"]
    assert consistency([1, 1, 0, 1, 1, 0], facts, langs) == {("a", "b"): 1.0}  # a model agreeing with itself
    assert consistency([1, 1, 0, 0, 1, 1], facts, langs) == {("a", "b"): pytest.approx(1 / 3)}  # {2} of {1, 2, 3}
    assert consistency([0, 0, 0, 0, 0, 0], facts, langs) == {("a", "b"): 1.0}
    with pytest.raises(InputError, match="one of each"):
        consistency([1], facts, langs)


def test_errors_say_what_to_do(tiny):
    model = tiny("gpt2")
    with pytest.raises(InputError, match="2 tokens.*first token"):
        language_lens(model, PROMPTS[:1], ["red blue"], ["en"], language_map=MAP)
    with pytest.raises(InputError, match="'rojo' is not in this model's vocabulary"):
        language_lens(model, PROMPTS[:1], ["rojo"], ["en"], language_map=MAP)
    with pytest.raises(InputError, match="layer 9 is out of range.*0 \\(the embeddings\\) to 2"):
        LinearShortcut.fit(model, PROMPTS, layer=9)
    with pytest.raises(InputError, match="2 answers for 1 prompts"):
        language_lens(model, PROMPTS[:1], ["red", "blue"], ["en"], language_map=MAP)
    with pytest.raises(InputError, match="has no answer"):
        language_lens(model, PROMPTS[:1], [{}], ["en"], language_map=MAP)
    with pytest.raises(InputError, match="no language map: pass language_map="):
        language_lens(model, PROMPTS[:1], ["red"], ["en"])
    with pytest.raises(InputError, match="no fitting prompts"):
        LinearShortcut.fit(model, [], layer=1)
    with pytest.raises(InputError, match="prompts per language differ"):
        language_lens(model, PROMPTS[:3], ["red"] * 3, ["en", "es", "en"], language_map=MAP)
    with pytest.raises(InputError, match="encoder"):
        language_lens(tiny("bert"), PROMPTS[:1], ["red"], ["en"], language_map=MAP)


def test_shortcut_sweep_at_the_last_layer_matches_the_model(tiny, tmp_path):
    model = tiny("gpt2")
    langs = ["en", "es", "en", "es"]
    top = model.run(PROMPTS)[torch.arange(4), model.encode(PROMPTS).attention_mask.sum(1) - 1].argmax(-1)
    answers = model.tokenizer.convert_ids_to_tokens(top)  # the model's own answers: it gets all right
    answers[3] = "red" if answers[3] != "red" else "blue"  # and one wrong
    res = shortcut_sweep(model, PROMPTS, PROMPTS, answers, langs, groups=["x", "x", "y", "y"], beta=1.0)
    assert res.layers == [0, 1, 2]
    assert res.model_correct().tolist() == [True, True, True, False]
    assert torch.equal(res.correct()[-1], res.model_correct())  # from layer L the shortcut is the model
    frame = res.to_frame()
    assert set(frame.group) == {"x", "y"} and len(frame) == 3 * 4
    cons = res.consistency_frame()
    assert float(cons[cons.layer == "model"].consistency.iloc[0]) == pytest.approx(0.5)  # facts {0, 1} vs {0}
    back = trilens.load_result(res.save(tmp_path / "sweep"))
    assert isinstance(back, ShortcutSweepResult) and torch.equal(back.rank, res.rank) and back.groups == res.groups
    sc = LinearShortcut.fit(model, PROMPTS, layer=1, beta="fit", answers=answers)
    assert sc.beta in [x / 4 for x in range(2, 21)]
    again = LinearShortcut.load(sc.save(tmp_path / "sc"))
    assert torch.equal(again.W, sc.W) and again.beta == sc.beta and again.layer == 1
