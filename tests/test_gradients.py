"""Gradients at any site: equal to plain autograd on the HF model, per-step gradients batched = looped = re-run per
prefix, contrastive = difference, and the model left exactly as it was (weights, flags, hooks), also after errors."""

import pytest
import torch
from conftest import ARCHS
from hook_state import model_state
from tiny import reference

import trilens
from trilens import LogitFunction, StepScores, TokenScore
from trilens.errors import InputError, SiteError

TEXTS = ["the cat sat on the mat and the dog", "x y z", "she was here"]
MASKED = ["the cat [MASK] on the mat", "x [MASK] z"]
PAIRS = [("the cat sat on the mat", "mat the on sat cat"), ("x y z", "z y x one two"), ("she", "he was")]


def inputs_for(model):
    return {"decoder": TEXTS, "encoder": MASKED, "encoder-decoder": PAIRS}[model.family]


def _objective(logits, result):
    """The objective ``result`` took, recomputed on HF's logits: sum over inputs of log p(token at position)."""
    logp = logits.float().log_softmax(-1)
    pos, tok = result.scored["positions"][:, 0], result.scored["tokens"][:, 0]
    return logp[torch.arange(len(pos)), pos, tok].sum()


@pytest.mark.parametrize("name", ["gpt2", "bert", "t5"])  # one architecture of each family
def test_input_embedding_gradients_equal_autograd_on_hf(name, tiny, tiny_path):
    model = tiny(name)
    inputs = inputs_for(model)
    result = model.gradients(inputs)
    ref = reference(tiny_path(name))
    batch = model.encode(inputs)
    embed = ref.get_input_embeddings()
    with torch.enable_grad():
        source = embed(batch.input_ids).detach().requires_grad_()
        if model.family == "encoder-decoder":
            target = embed(batch.decoder_input_ids).detach().requires_grad_()
            out = ref(inputs_embeds=source, attention_mask=batch.attention_mask, decoder_inputs_embeds=target,
                      decoder_attention_mask=batch.decoder_attention_mask)
            leaves = {"encoder": source, "decoder": target}
        else:
            out = ref(inputs_embeds=source, attention_mask=batch.attention_mask)
            leaves = {model.stacks[0]: source}
        expected = torch.autograd.grad(_objective(out.logits, result), list(leaves.values()))
    torch.testing.assert_close(result.values[:, 0].sum(), _objective(out.logits, result).detach(), atol=1e-5, rtol=0)
    for (stack, leaf), grad in zip(leaves.items(), expected):
        torch.testing.assert_close(result.grad("embed", stack=stack)[:, 0], grad, atol=1e-5, rtol=0)
        torch.testing.assert_close(result.activation("embed", stack=stack), leaf.detach(), atol=1e-6, rtol=0)
    assert result.grad("embed", stack=model.stacks[0]).abs().sum() > 0


@pytest.mark.parametrize("name", [a for a in ARCHS if a != "bert_headless"] + ["bart_3_2"])
def test_attention_pattern_gradients_are_the_true_derivative(name, tiny, tiny_path):
    """On every architecture, including those whose pattern hook only observes (BERT, T5, BART, Marian): equal to
    the gradient at the probabilities HF's eager attention multiplies with the values."""
    model = tiny(name)
    inputs = inputs_for(model)
    kinds = ["attn_pattern"] + (["cross_attn_pattern"] if model.family == "encoder-decoder" else [])
    result = model.gradients(inputs, sites=kinds, embeddings=False)
    ref = reference(tiny_path(name))
    with torch.enable_grad():
        out = ref(**model.encode(inputs).forward_kwargs(), output_attentions=True)
        if model.family == "encoder-decoder":
            names = (model.sites(stack="encoder", kind="attn_pattern") + model.sites(stack="decoder", kind="attn_pattern")
                     + model.sites(kind="cross_attn_pattern"))
            patterns = list(out.encoder_attentions) + list(out.decoder_attentions) + list(out.cross_attentions)
        else:
            names, patterns = model.sites(kind="attn_pattern"), list(out.attentions)
        expected = torch.autograd.grad(_objective(out.logits, result), patterns)
    assert sorted(result.grads) == sorted(names)
    for site, grad, pattern in zip(names, expected, patterns):
        torch.testing.assert_close(result.grad(site)[:, 0], grad, atol=1e-5, rtol=0)
        torch.testing.assert_close(result.activation(site), pattern.detach(), atol=1e-6, rtol=0)
    assert any(float(result.grad(n).abs().sum()) > 0 for n in names)


def test_pattern_gradient_matches_finite_differences_where_the_hook_only_observes(tiny):
    """BERT's pattern hook fires after HF's attention: its tensor is still the one multiplied with the values."""
    model = tiny("bert")
    result = model.gradients(MASKED[:1], TokenScore(token="cat", score="logit"), sites="blocks.1.attn.hook_pattern",
                             embeddings=False)
    grad = result.grad("blocks.1.attn.hook_pattern")[0, 0]
    head, q, k = (int(i) for i in torch.unravel_index(grad.abs().argmax(), grad.shape))
    eps = 1e-2

    def objective(delta):
        def bump(x):
            x = x.clone()
            x[0, head, q, k] += delta
            return x

        # patch HF's attention probabilities themselves (the bridge's pattern hook cannot change the run)
        module = model.hf_model.bert.encoder.layer[1].attention.self

        def pre(mod, args, kwargs):
            import torch.nn.functional as F

            orig = F.dropout

            def patched(x, *a, **kw):
                return bump(orig(x, *a, **kw))

            F.dropout, mod._trilens_orig = patched, orig

        def post(mod, args, out):
            import torch.nn.functional as F

            F.dropout = mod._trilens_orig

        h1 = module.register_forward_pre_hook(pre, with_kwargs=True)
        h2 = module.register_forward_hook(post)
        try:
            logits = model.run(MASKED[:1])
        finally:
            h1.remove()
            h2.remove()
        pos = result.scored["positions"][0, 0]
        return float(logits[0, pos, model.tokenizer.convert_tokens_to_ids("cat")])

    numeric = (objective(eps) - objective(-eps)) / (2 * eps)
    assert abs(numeric - float(grad[head, q, k])) < 0.02 * abs(numeric) + 2e-5
    assert abs(float(grad[head, q, k])) > 5e-4  # a real, non-zero derivative was checked


@pytest.mark.parametrize("name", ["gpt2", "t5", "bart"])
def test_per_step_gradients_batched_equal_a_loop_and_single_objectives(name, tiny):
    model = tiny(name)
    inputs = PAIRS if model.family == "encoder-decoder" else TEXTS
    sites = ["resid_post", "attn_pattern"]
    batched = model.gradients(inputs, StepScores(), sites=sites)
    looped = model.gradients(inputs, StepScores(), sites=sites, step_batch=1)
    chunked = model.gradients(inputs, StepScores(), sites=sites, step_batch=2)
    assert batched.per_step and batched.n_steps == batched.values.shape[1] > 2
    for key in batched.grads:
        torch.testing.assert_close(batched.grads[key], looped.grads[key], atol=1e-5, rtol=0)
        torch.testing.assert_close(batched.grads[key], chunked.grads[key], atol=1e-5, rtol=0)
    checked = 0
    for row in range(len(inputs)):
        for step in batched.valid[row].nonzero().flatten().tolist():
            pos, tok = int(batched.scored["positions"][row, step]), int(batched.scored["tokens"][row, step])
            single = model.gradients(inputs, TokenScore(token=[tok] * len(inputs),
                                                        position=[pos if r == row else 0 for r in range(len(inputs))]),
                                     sites=sites)
            for key in batched.grads:
                torch.testing.assert_close(batched.grads[key][row, step], single.grads[key][row, 0], atol=1e-5, rtol=0)
            torch.testing.assert_close(batched.values[row, step], single.values[row, 0], atol=1e-5, rtol=0)
            checked += 1
    assert checked == int(batched.valid.sum()) and not bool(batched.values[~batched.valid].any())


@pytest.mark.parametrize("name", ["gpt2", "gpt_neox", "llama", "bart", "marian"])
def test_linearized_activations_give_the_same_per_step_gradients(name, tiny, monkeypatch):
    """Per-step runs backpropagate through GELU/SiLU by one multiplication with the derivative saved in the forward
    (grad_hooks.linearized_activations); gradients at the embeddings and around the activation stay the same."""
    from trilens.capture import gradients as gradients_module
    from trilens.capture.grad_hooks import linearized_activations

    model = tiny(name)
    with linearized_activations(model) as changed:
        assert changed >= 2  # one activation per layer at least
    with linearized_activations(model, False) as changed:
        assert changed == 0
    inputs = PAIRS if model.family == "encoder-decoder" else TEXTS
    sites = ["mlp_pre", "mlp_post", "resid_post"]
    fast = model.gradients(inputs, StepScores(), sites=sites)
    monkeypatch.setattr(gradients_module, "linearized_activations", lambda m, active=True: linearized_activations(m, False))
    plain = model.gradients(inputs, StepScores(), sites=sites)
    assert set(fast.grads) == set(plain.grads) and len(fast.grads) > len(sites)
    for key in plain.grads:
        assert plain.grads[key].abs().max() > 0
        torch.testing.assert_close(fast.grads[key], plain.grads[key], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(fast.acts[key], plain.acts[key], atol=0, rtol=0)
    torch.testing.assert_close(fast.values, plain.values, atol=0, rtol=0)


def test_per_step_gradients_equal_rerunning_each_prefix(tiny):
    """What Inseq does (one forward and backward per step on the growing prefix) gives the same gradients."""
    model = tiny("gpt2")
    text = TEXTS[0]
    start = 3
    result = model.gradients([text], StepScores(start=start))
    ids = model.encode([text]).input_ids[0].tolist()
    assert result.n_steps == len(ids) - start
    for step in range(result.n_steps):
        prefix = ids[: start + step]  # predicts ids[start + step] at its last position
        single = model.gradients([prefix], TokenScore(token=ids[start + step], position=-1))
        torch.testing.assert_close(result.grad("embed")[0, step, : len(prefix)], single.grad("embed")[0, 0], atol=1e-5, rtol=0)
        assert not result.grad("embed")[0, step, len(prefix):].any()  # later tokens cannot reach a causal prediction


@pytest.mark.parametrize("name", ["gpt2", "t5"])
def test_contrastive_objective_is_the_difference_of_the_two_gradients(name, tiny):
    model = tiny(name)
    inputs = inputs_for(model)
    sites = "resid_post"
    both = model.gradients(inputs, TokenScore(token="cat", foil="dog"), sites=sites)
    cat = model.gradients(inputs, TokenScore(token="cat"), sites=sites)
    dog = model.gradients(inputs, TokenScore(token="dog"), sites=sites)
    for key in both.grads:
        torch.testing.assert_close(both.grads[key], cat.grads[key] - dog.grads[key], atol=1e-5, rtol=0)
    torch.testing.assert_close(both.values, cat.values - dog.values, atol=1e-5, rtol=0)
    steps = model.gradients(inputs, StepScores(foil="dog", score="prob"))
    plain = model.gradients(inputs, StepScores(score="prob"))
    assert not torch.allclose(steps.grad("embed", stack=model.stacks[0]), plain.grad("embed", stack=model.stacks[0]))


def test_score_kinds_and_logit_functions_agree(tiny):
    model = tiny("llama")
    logit = model.gradients(TEXTS, TokenScore(token="cat", position=2, score="logit"), sites="resid_post")
    fn = model.gradients(TEXTS, LogitFunction(lambda logits: logits[:, 2, model.tokenizer.convert_tokens_to_ids("cat")]),
                         sites="resid_post")
    for key in logit.grads:
        torch.testing.assert_close(logit.grads[key], fn.grads[key], atol=1e-6, rtol=0)
    logprob = model.gradients(TEXTS, TokenScore(token="cat", position=2), embeddings=False, sites="resid_post")
    prob = model.gradients(TEXTS, TokenScore(token="cat", position=2, score="prob"), embeddings=False, sites="resid_post")
    torch.testing.assert_close(prob.values, logprob.values.exp())
    # d p / d x = p * d log p / d x, row by row
    key = "blocks.0.hook_resid_post"
    torch.testing.assert_close(prob.grads[key], logprob.grads[key] * prob.values[:, :, None, None], atol=1e-6, rtol=1e-4)


def test_default_target_is_the_next_token_or_the_top_prediction(tiny):
    gpt = tiny("gpt2")
    result = gpt.gradients(TEXTS, TokenScore(position=1))  # the text's own next token
    batch = gpt.encode(TEXTS)
    assert result.scored["tokens"][:, 0].tolist() == batch.input_ids[:, 2].tolist()
    last = gpt.gradients(TEXTS)  # the last token has no next one: the model's top prediction
    top = gpt.run(TEXTS)[torch.arange(3), batch.attention_mask.sum(1) - 1].argmax(-1)
    assert last.scored["tokens"][:, 0].tolist() == top.tolist()
    bert = tiny("bert")
    masked = bert.gradients(MASKED)
    assert masked.scored["positions"][:, 0].tolist() == [3, 2]  # the [MASK] after [CLS]


def test_chunked_inputs_equal_one_pass(tiny):
    model = tiny("t5")
    whole = model.gradients(PAIRS, StepScores(), sites="attn_pattern")
    parts = model.gradients(PAIRS, StepScores(), sites="attn_pattern", batch_size=2)
    for key in whole.grads:
        torch.testing.assert_close(whole.grads[key], parts.grads[key], atol=1e-5, rtol=0)
    assert torch.equal(whole.valid, parts.valid)


@pytest.mark.parametrize("name", ["gpt2", "bert", "t5", "bart"])
def test_model_is_left_as_it_was_also_after_errors(name, tiny):
    model = tiny(name)
    inputs = inputs_for(model)
    model.run(inputs)  # the bridge wires some hooks of its own on the first forward
    before = model_state(model)
    model.gradients(inputs, sites=["attn_pattern", "resid_post"])
    assert model_state(model) == before

    def boom(x):
        raise RuntimeError("inside a hook")

    with pytest.raises(RuntimeError, match="inside a hook"):
        model.gradients(inputs, sites="resid_post", interventions=[trilens.Hook(model.sites(kind="resid_post")[0], boom)])
    assert model_state(model) == before
    if model.family != "encoder":  # per-step runs also linearize the activations for the forward pass
        model.gradients(inputs, StepScores(), sites="mlp_post")
        assert model_state(model) == before
        with pytest.raises(RuntimeError, match="inside a hook"):
            model.gradients(inputs, StepScores(), interventions=[trilens.Hook(model.sites(kind="resid_post")[-1], boom)])
        assert model_state(model) == before
    with pytest.raises(RuntimeError, match="objective"):
        model.gradients(inputs, LogitFunction(lambda logits: (_ for _ in ()).throw(RuntimeError("in the objective"))))
    assert model_state(model) == before
    with pytest.raises(RuntimeError, match="inside a hook"):
        model.trace(inputs, sites="resid_post", interventions=[trilens.Hook(model.sites(kind="resid_post")[-1], boom)])
    assert model_state(model) == before
    if model.family != "encoder":
        sources = TEXTS if model.family == "decoder" else [p[0] for p in PAIRS]
        model.generate(sources, capture="attn_pattern", max_new_tokens=2)
        with pytest.raises(RuntimeError, match="inside a hook"):
            model.generate(sources, max_new_tokens=2, interventions=[trilens.Hook(model.sites(kind="resid_post")[-1], boom)])
        assert model_state(model) == before
    assert all(p.grad is None for p in model.hf_model.parameters())
    assert all(p.requires_grad for p in model.hf_model.parameters())


def test_gated_sites_get_their_setting_for_the_run_only(tiny):
    gpt = tiny("gpt2")
    before = model_state(gpt)
    cache = gpt.trace(TEXTS, sites=["blocks.0.attn.hook_result", "blocks.1.hook_q_input"])
    assert cache["blocks.0.attn.hook_result"].shape == (3, 9, 4, 32)
    # the per-head results sum (with the output bias) to the attention output
    full = gpt.trace(TEXTS, sites=["blocks.0.attn.hook_result", "blocks.0.hook_attn_out"])
    bias = gpt.hf_model.transformer.h[0].attn.c_proj.bias
    torch.testing.assert_close(full["blocks.0.attn.hook_result"].sum(2) + bias, full["blocks.0.hook_attn_out"], atol=1e-5, rtol=0)
    grads = gpt.gradients(TEXTS, sites="blocks.1.attn.hook_result")
    assert grads.grad("blocks.1.attn.hook_result").shape == (3, 1, 9, 4, 32)
    assert model_state(gpt) == before
    with pytest.raises(SiteError, match="exclude each other"):
        gpt.trace(TEXTS, sites=["blocks.0.hook_q_input", "blocks.0.hook_attn_in"])
    assert model_state(gpt) == before
    bert = tiny("bert")
    assert "blocks.0.attn.hook_result" not in bert.sites()
    with pytest.raises(SiteError, match="use_attn_result"):
        bert.trace(MASKED, sites="blocks.0.attn.hook_result")
    with pytest.raises(SiteError, match="never calls it"):
        tiny("t5").trace(PAIRS, sites="hook_embed")


def test_bad_requests_say_what_to_do(tiny):
    t5, gpt, bert = tiny("t5"), tiny("gpt2"), tiny("bert")
    with pytest.raises(InputError, match="pairs"):
        t5.gradients(["x y z"])
    with pytest.raises(InputError, match="teacher-forced"):
        bert.gradients(MASKED, StepScores())
    with pytest.raises(InputError, match="no mask token"):
        bert.gradients(["x y z"])
    with pytest.raises(InputError, match="single token"):
        gpt.gradients(TEXTS, TokenScore(token="cat dog"))
    with pytest.raises(InputError, match="cannot encode 'zqxwv': it becomes '\\[UNK\\]'"):
        gpt.gradients(TEXTS, TokenScore(token="zqxwv"))  # one token for the tokenizer, but its unknown token
    with pytest.raises(InputError, match="does not exist in input 1"):
        gpt.gradients(TEXTS, TokenScore(position=5))
    with pytest.raises(InputError, match="start"):
        gpt.gradients(TEXTS, StepScores(start=0))
    with pytest.raises(InputError, match="score must be"):
        TokenScore(score="loss")
    with pytest.raises(InputError, match="nothing to differentiate"):
        gpt.gradients(TEXTS, embeddings=False)
    with pytest.raises(InputError, match="one value per input"):
        gpt.gradients(TEXTS, LogitFunction(lambda logits: logits[:, :2, 0]))
    with pytest.raises(InputError, match="step_batch"):
        gpt.gradients(TEXTS, StepScores(), step_batch=0)
    with pytest.raises(SiteError, match="Did you mean"):
        gpt.gradients(TEXTS, sites="blocks.0.hook_resid_psot")
    with pytest.raises(InputError, match="2 tokens for 3 inputs|2 tokens"):
        gpt.gradients(TEXTS, TokenScore(token=["cat", "dog"]))


def test_per_input_settings_and_interventions_follow_batch_size_chunks(tiny):
    gpt = tiny("gpt2")
    tokens = ["cat", "dog", "a"]
    whole = gpt.gradients(TEXTS, TokenScore(token=tokens, position=[1, 0, 2]), sites="resid_post")
    parts = gpt.gradients(TEXTS, TokenScore(token=tokens, position=[1, 0, 2]), sites="resid_post", batch_size=1)
    steps = gpt.gradients(TEXTS, StepScores(start=[2, 1, 1], foil=[["the"] * 7, ["a", "dog"], "cat"]), batch_size=2)
    steps_whole = gpt.gradients(TEXTS, StepScores(start=[2, 1, 1], foil=[["the"] * 7, ["a", "dog"], "cat"]))
    for a, b in ((whole, parts), (steps_whole, steps)):
        for key in a.grads:
            torch.testing.assert_close(a.grads[key], b.grads[key], atol=1e-5, rtol=0)
        torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=0)
    source = gpt.trace(TEXTS, sites="blocks.0.hook_resid_post")
    patch = trilens.Patch("blocks.0.hook_resid_post", source=source, positions=[0])
    patched = [gpt.gradients(TEXTS, interventions=[patch], batch_size=b) for b in (None, 1)]
    torch.testing.assert_close(patched[0].grad("embed"), patched[1].grad("embed"), atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="2 scored steps but 3 per-step foils"):
        gpt.gradients(TEXTS, StepScores(start=[2, 1, 1], foil=["the", ["a", "b", "c"], "cat"]))


def test_mean_ablation_keeps_inputs_independent(tiny):
    """The mean an ablation writes is a constant: no gradient flows from one input's objective to another input."""
    gpt = tiny("gpt2")
    ablate = trilens.AblateNeurons(layer=0, units=list(range(20)), mode="mean")
    only_first = LogitFunction(lambda logits: logits[:, 1, 7] * torch.tensor([1.0, 0.0, 0.0]))
    result = gpt.gradients(TEXTS, only_first, interventions=[ablate])
    assert result.grad("embed")[0].abs().sum() > 0
    assert not result.grad("embed")[1:].any()


def test_sites_at_the_logits_and_embedding_hooks_take_gradients(tiny):
    gpt = tiny("gpt2")
    per_step = gpt.gradients(TEXTS, StepScores(), sites=["hook_unembed", "blocks.1.hook_resid_post"])
    batched_x = gpt.gradients(TEXTS, StepScores(), sites=["blocks.1.hook_resid_post"])
    torch.testing.assert_close(per_step.grads["blocks.1.hook_resid_post"], batched_x.grads["blocks.1.hook_resid_post"],
                               atol=1e-5, rtol=0)
    logits_grad = per_step.grad("hook_unembed")  # d log p(y_t) / d logits: onehot - softmax at the step's position only
    row, step = 0, 2
    pos, tok = int(per_step.scored["positions"][row, step]), int(per_step.scored["tokens"][row, step])
    expected = -per_step.activation("hook_unembed")[row, pos].softmax(-1)
    expected[tok] += 1
    torch.testing.assert_close(logits_grad[row, step, pos], expected, atol=1e-6, rtol=0)
    assert not logits_grad[row, step, pos + 1:].any()
    embed = gpt.gradients(TEXTS, sites=["hook_embed", "embed.hook_out"])
    torch.testing.assert_close(embed.grad("hook_embed"), embed.grad("embed"))
    torch.testing.assert_close(embed.grad("embed.hook_out"), embed.grad("embed"))


def test_sites_a_setting_silences_are_refused_together_with_it(tiny):
    gpt = tiny("gpt2")
    assert gpt.trace(TEXTS, sites="blocks.0.attn.q.hook_in")["blocks.0.attn.q.hook_in"].shape[0] == 3
    with pytest.raises(SiteError, match="does not fire while TransformerLens's use_split_qkv_input is on"):
        gpt.trace(TEXTS, sites=["blocks.0.attn.q.hook_in", "blocks.0.hook_q_input"])


def test_objective_values_and_number_types(tiny):
    import numpy as np

    gpt = tiny("gpt2")
    with pytest.raises(InputError, match="one value per input"):
        gpt.gradients(TEXTS, LogitFunction(lambda logits: logits[:, -1, 0].sum()))

    def two(logits, batch):
        return logits[torch.arange(3), batch.attention_mask.sum(1) - 1, 7]

    by_batch = gpt.gradients(TEXTS, LogitFunction(two))
    by_ids = gpt.gradients(TEXTS, TokenScore(token=np.int64(7), position=np.int64(-1), score="logit"))
    by_tensor = gpt.gradients(TEXTS, TokenScore(token=torch.tensor(7), score="logit"))
    torch.testing.assert_close(by_batch.grad("embed"), by_ids.grad("embed"))
    torch.testing.assert_close(by_batch.grad("embed"), by_tensor.grad("embed"))
    assert "TokenScore" in repr(by_ids) and "LogitFunction" in repr(by_batch)
