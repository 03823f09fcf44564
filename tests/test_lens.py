"""Lenses: the logit lens's last layer is the model, it agrees with TransformerLens, the decoder lens's
last layer is the model's own generation, the tuned lens beats the logit lens, bad input is refused."""

import random

import pytest
import torch

from conftest import ARCHS
from tiny import WORDS
from trilens.errors import InputError, StoreError, TrilensError
from trilens.lens import DecoderLensResult, LensResult, LogitLens, TunedLens, decoder_lens, logit_lens, run_lens
from trilens.lens.metrics import chrf, exact_match

TEXTS = ["the cat sat on the mat", "x y z one"]
PAIRS = [("x y z one two", "two one z y x"), ("the cat sat", "sat cat the")]


def _inputs(model):
    return PAIRS if model.family == "encoder-decoder" else TEXTS


@pytest.mark.parametrize("name", [a for a in ARCHS if a != "bert_headless"])
def test_last_layer_of_the_logit_lens_is_the_model(name, tiny):
    model = tiny(name)
    stack = "decoder" if model.family != "encoder" else "encoder"
    cache = model.trace(_inputs(model), sites="resid")
    lens = LogitLens.from_model(model)
    states = cache.accumulated_resid(stack)
    with torch.no_grad():
        last = lens(states[-1], states.shape[0] - 1)
    assert (last - cache.logits).abs().max() <= 1e-4
    result = logit_lens(model, _inputs(model))
    frame = result.table()
    assert len(frame) == model.n_layers[stack] + 1
    assert frame["kl"].iloc[-1] < 1e-6 and frame["agrees"].iloc[-1] == 1.0


def test_logit_lens_agrees_with_transformerlens_accumulated_resid(tiny):
    model = tiny("gpt2")
    batch = model.encode(TEXTS[0])
    _, tl_cache = model.bridge.run_with_cache(batch.input_ids)
    tl = tl_cache.accumulated_resid(apply_ln=True) @ model.bridge.W_U + model.bridge.b_U
    cache = model.trace(TEXTS[0], sites="resid")
    lens = LogitLens.from_model(model)
    with torch.no_grad():
        mine = torch.stack([lens(h, i) for i, h in enumerate(cache.accumulated_resid())])
    torch.testing.assert_close(mine, tl, atol=1e-4, rtol=0)


def test_lens_metrics_equal_their_definitions_across_block_edges(tiny):
    from trilens.lens.logit import lens_states

    model = tiny("gpt2")
    cache = model.trace(TEXTS, sites="resid")
    states = cache.accumulated_resid()
    n, b, p, _ = states.shape
    targets = torch.randint(0, model.vocab_size, (b, p), generator=torch.Generator().manual_seed(0))
    targets[1, -2:] = -1
    lens = LogitLens.from_model(model)
    got = lens_states(lens, states, k=4, final=cache.logits, targets=targets, rows=5, block=2)  # ragged blocks
    with torch.no_grad():
        logits = torch.stack([lens(states[i], i) for i in range(n)]).float()
    logp, final = logits.log_softmax(-1), cache.logits.float().log_softmax(-1)
    torch.testing.assert_close(got["kl"], (final.exp() * (final - logp)).sum(-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got["entropy"], -(logp.exp() * logp).sum(-1), atol=1e-5, rtol=1e-4)
    top = logits.topk(4, dim=-1)
    assert torch.equal(got["top_ids"], top.indices)
    torch.testing.assert_close(got["top_probs"], logp.gather(-1, top.indices).exp())
    scored = targets >= 0
    t_logit = logits.gather(-1, targets.clamp_min(0)[None, ..., None].expand(n, -1, -1, 1))
    assert torch.equal(got["target_rank"][:, scored], (logits > t_logit).sum(-1)[:, scored])  # exact on raw logits
    assert (got["target_rank"][:, ~scored] == -1).all() and got["cross_entropy"][:, ~scored].isnan().all()
    ce = -logp.gather(-1, targets.clamp_min(0)[None, ..., None].expand(n, -1, -1, 1))[..., 0]
    torch.testing.assert_close(got["cross_entropy"][:, scored], ce[:, scored])
    assert torch.equal(got["agrees"], top.indices[..., 0] == cache.logits.argmax(-1))


def test_targets_ranks_and_result_round_trip(tiny, tmp_path):
    model = tiny("llama")
    result = logit_lens(model, TEXTS, k=3)
    ids = result.input_ids
    assert result.targets[0, 0] == ids[0, 1] and result.targets[1, 3] == -1  # next token; none after the end
    top_is_target = result.top_ids[..., 0] == result.targets
    assert (result.metrics["target_rank"][top_is_target] == 0).all()
    ranks = result.metrics["target_rank"][:, result.targets >= 0]
    assert (ranks >= 0).all() and (ranks < model.vocab_size).all()
    back = LensResult.load(result.save(tmp_path / "r"))
    torch.testing.assert_close(back.metrics["kl"], result.metrics["kl"])
    assert back.to_frame().equals(result.to_frame())
    fig = result.figure(sequence=1)
    assert len(fig.data[0].z) == result.n_layers and len(fig.data[0].x) == int(result.mask[1].sum())
    assert len(result.curve_figure().data) == 3
    curve = result.curve(("kl", "entropy"))
    assert list(curve.columns) == ["series", "layer", "mean"] and len(curve) == 2 * result.n_layers
    assert curve.query("series == 'kl'")["mean"].tolist() == result.table()["kl"].tolist()
    masked = [[-1] * ids.shape[1] for _ in range(2)]
    with pytest.raises(InputError, match="targets must have shape"):
        logit_lens(model, TEXTS, targets=masked[:1])


@pytest.mark.parametrize("name", ["t5", "bart", "marian"])
def test_decoder_lens_at_the_last_layer_is_the_models_generation(name, tiny):
    model = tiny(name)
    sources = [s for s, _ in PAIRS]
    result = decoder_lens(model, sources, references=[t for _, t in PAIRS], max_new_tokens=6, batch_size=1)
    batch = model.encode(sources)
    ref = model.hf_model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=6,
                                  do_sample=False)
    assert result.outputs[-1] == model.tokenizer.batch_decode(ref, skip_special_tokens=True)
    assert result.n_layers == model.n_layers["encoder"] + 1 and set(result.scores) == {"exact_match", "chrf"}
    teacher = decoder_lens(model, sources, references=[t for _, t in PAIRS], mode="teacher")
    forced = model.run(PAIRS).float().log_softmax(-1)
    labels = model.encode(PAIRS).labels
    want = forced.gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1).masked_fill(labels < 0, 0).sum(1)
    torch.testing.assert_close(torch.tensor(teacher.scores["target_logprob"][-1]), want, atol=1e-4, rtol=0)


def test_decoder_lens_result_and_errors(tiny, tmp_path):
    model = tiny("t5")
    result = decoder_lens(model, ["x y z"], references=["z y x"], max_new_tokens=4)
    back = DecoderLensResult.load(result.save(tmp_path / "d"))
    assert back.outputs == result.outputs and "layer  2" in back.text()
    assert len(result.figure("chrf").data) == 1
    with pytest.raises(TrilensError, match="needs an encoder-decoder"):
        decoder_lens(tiny("gpt2"), ["x y"])
    with pytest.raises(InputError, match="teacher mode needs references"):
        decoder_lens(model, ["x y"], mode="teacher")
    with pytest.raises(InputError, match="one reference per source"):
        decoder_lens(model, ["x y", "z"], references=["y x"])
    with pytest.raises(TrilensError, match="decoder lens"):
        LogitLens.from_model(model, "encoder")
    with pytest.raises(TrilensError, match="no LM head"):
        from trilens.lens import Unembed

        class Headless:  # a model whose mapping has no unembedding
            family = "encoder"
            hf_model = torch.nn.Module()
            bridge = type("B", (), {"adapter": type("A", (), {"component_mapping": {}})()})()
            architecture, d_model, vocab_size = "X", 1, 1

        Unembed(Headless())


def test_tuned_lens_beats_the_logit_lens_on_held_out_text(tiny, tmp_path):
    model = tiny("gpt2")
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) for _ in range(120)]
    flags = {name: p.requires_grad for name, p in model.hf_model.named_parameters()}
    lens = TunedLens.from_model(model)
    losses = lens.fit(model, texts[:100], steps=60, batch_size=16, progress=False)
    assert losses[-1] < losses[0]
    # the model is left as it was: no weight stops requiring gradients, none holds a gradient from the lens's training
    assert {name: p.requires_grad for name, p in model.hf_model.named_parameters()} == flags
    assert all(p.grad is None for p in model.hf_model.parameters())
    logit = logit_lens(model, texts[100:]).table()["kl"]
    tuned = run_lens(model, texts[100:], lens).table()["kl"]
    assert (tuned.values <= logit.values + 1e-9).all() and tuned.iloc[0] < logit.iloc[0]
    back = TunedLens.load(lens.save(tmp_path / "lens"), model)
    h = torch.randn(2, 3, 32)
    torch.testing.assert_close(back(h, 0), lens(h, 0))
    with pytest.raises(StoreError, match="does not fit"):
        TunedLens.load(tmp_path / "lens", tiny("llama"))


def test_tuned_lens_gradient_equals_that_of_the_mean_kl_over_real_tokens(tiny):
    """The closed-form gradient (softmax - p_final), one layer at a time, padding dropped, equals autograd
    through the textbook loss: mean over layers of the mean over real tokens of KL(p_final || p_lens)."""
    model = tiny("gpt2")
    stack = "decoder"
    cache = model.trace(["the cat sat on the mat today", "x y"], sites="resid")  # the second row is padded
    states, mask = cache.accumulated_resid(stack), cache.mask(stack)
    assert not mask.all()
    lens = TunedLens.from_model(model)
    torch.manual_seed(0)
    for t in lens.translators:
        torch.nn.init.normal_(t.weight, std=0.05)
        torch.nn.init.normal_(t.bias, std=0.05)
    loss = lens._backward_kl(states, cache.logits, mask)
    fast = [p.grad.clone() for p in lens.translator_parameters()]
    lens.zero_grad()
    final_logp = cache.logits.float().log_softmax(-1)
    kls = [(final_logp.exp() * (final_logp - lens(states[l], l).float().log_softmax(-1))).sum(-1)[mask].mean()
           for l in range(len(lens.translators))]
    reference = torch.stack(kls).mean()
    reference.backward()
    assert loss == pytest.approx(float(reference), abs=2e-6)  # float32: the closed form sums terms of size ~log(vocab)
    for g, p in zip(fast, lens.translator_parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-7)


def test_text_metrics():
    assert chrf("abc def", "abc def") == 100 and chrf("xyz", "abc") == 0
    assert 0 < chrf("abc dxf", "abc def") < 100
    assert exact_match(" T ", "T") and not exact_match("T F", "T")


@pytest.mark.slow
def test_decoder_lens_on_the_trained_t5_rises_with_depth():
    from trilens.zoo import MODELS_DIR
    from trilens.zoo import tasks as T

    if not (MODELS_DIR / "t5" / "config.json").exists():
        pytest.skip("zoo:t5 is not trained in this checkout")
    import trilens

    model = trilens.load("zoo:t5")
    exs = T.logic(20, depths=(1, 2, 3), split="test", seed=11)
    sources, refs = [f"{e.text} =" for e in exs], [e.target for e in exs]
    result = decoder_lens(model, sources, references=refs, max_new_tokens=3)
    batch = model.encode(sources)
    own = model.tokenizer.batch_decode(model.hf_model.generate(**batch.forward_kwargs(), max_new_tokens=3, do_sample=False),
                                       skip_special_tokens=True)
    acc = result.table()["exact_match"]
    assert result.outputs[-1] == own
    assert acc.iloc[-1] == pytest.approx(sum(o == r for o, r in zip(own, refs)) / len(refs))
    assert acc.iloc[0] < acc.iloc[-1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt", "bert"])
def test_tuned_lens_beats_the_logit_lens_on_held_out_zoo_text(name):
    from trilens.zoo import MODELS_DIR

    if not (MODELS_DIR / name / "config.json").exists():
        pytest.skip(f"zoo:{name} is not trained in this checkout")
    import trilens
    from trilens.zoo import tasks as T
    from trilens.zoo.formats import lm_item, mlm_item

    model = trilens.load(f"zoo:{name}")

    def texts(split):
        exs = T.logic(40, seed=3, depths=(1, 2, 3), split=split) + T.agreement(60, seed=3, split=split)
        if model.family == "decoder":
            return [f"{lm_item(ex).prompt} {lm_item(ex).answer}" for ex in exs]
        return [mlm_item(ex).text for ex in exs]

    lens = TunedLens.from_model(model)
    lens.fit(model, texts("train"), steps=120, batch_size=16, progress=False)
    held = texts("test")
    logit = logit_lens(model, held).table()["kl"].values
    tuned = run_lens(model, held, lens).table()["kl"].values
    assert (tuned <= logit + 1e-6).all(), (tuned, logit)
    assert tuned[1:-1].mean() < 0.7 * logit[1:-1].mean()  # a real gain in the middle layers, not a tie
    assert abs(logit[-1]) < 1e-5 and abs(tuned[-1]) < 1e-5  # the last layer of either lens is the model itself


def test_lens_at_answers_reads_the_answer_slot(tiny):
    from trilens.lens import lens_at_answers

    model = tiny("bert")
    texts = ["the cat [MASK] on the mat", "a [MASK] ran"]
    at = lens_at_answers(model, texts, ["sat", "dog"])
    full = logit_lens(model, texts, targets=torch.tensor([[-1, -1, -1, model.tokenizer.convert_tokens_to_ids("sat")] + [-1] * 4,
                                                          [-1, -1, model.tokenizer.convert_tokens_to_ids("dog")] + [-1] * 5]))
    ce = full.metrics["cross_entropy"]
    torch.testing.assert_close(at["cross_entropy"], torch.stack([ce[:, 0, 3], ce[:, 1, 2]], dim=1))
    with pytest.raises(InputError, match="text 1 has no \\[MASK\\]"):
        lens_at_answers(model, ["the [MASK] sat", "no slot here"], ["cat", "dog"])
    with pytest.raises(InputError, match="1 answers for 2 texts"):
        lens_at_answers(model, texts, ["sat"])
