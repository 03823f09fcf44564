"""Rollout and flow: against a plain matrix-product reference, closed forms, and a max-flow worked out by hand."""

import numpy as np
import pytest
import torch

from trilens.attention.flow import attention_flow
from trilens.attention.rollout import encoder_decoder_rollout, rollout
from trilens.errors import InputError


def _random_patterns(layers, heads, s, causal=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(layers, heads, s, s, generator=g)
    if causal:
        scores = scores.masked_fill(~torch.ones(s, s, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(-1)


def _reference_rollout(patterns):
    """Abnar & Zuidema's recipe with numpy, one layer at a time."""
    out = np.eye(patterns.shape[-1])
    for layer in patterns.numpy().astype(np.float64):
        mixed = 0.5 * layer.mean(0) + 0.5 * np.eye(layer.shape[-1])
        out = mixed @ out
    return out


def test_rollout_rows_sum_to_one_and_equal_the_matrix_product_reference():
    patterns = _random_patterns(4, 3, 6)
    r = rollout(patterns)
    assert torch.allclose(r.sum(-1), torch.ones(6), atol=1e-6)
    assert np.allclose(r.numpy(), _reference_rollout(patterns), atol=1e-6)
    batched = rollout(torch.stack([patterns, _random_patterns(4, 3, 6, seed=1)], 1))  # [L, B, H, S, S]
    assert torch.allclose(batched[0], r, atol=1e-6)


def test_receptive_field_normalisation_makes_uniform_causal_attention_uniform():
    s = 5
    causal = torch.ones(s, s).tril()
    uniform = (causal / causal.sum(-1, keepdim=True)).expand(3, 2, s, s)
    plain = rollout(uniform)
    assert plain[-1, 0] > plain[-1, -1]  # earlier tokens accumulate more by structure alone
    normalised = rollout(uniform, receptive_field=True)
    assert torch.allclose(normalised, causal / causal.sum(-1, keepdim=True), atol=1e-6)


def test_encoder_decoder_rollout_equals_the_reference():
    enc, dec = _random_patterns(3, 2, 5), _random_patterns(2, 2, 4, causal=True, seed=2)
    cross = torch.rand(2, 4, 5).softmax(-1)
    r = encoder_decoder_rollout(enc, dec, cross)
    ref = _reference_rollout(dec) @ cross.mean(0).double().numpy() @ _reference_rollout(enc)
    ref = ref / ref.sum(-1, keepdims=True)
    assert np.allclose(r.numpy(), ref, atol=1e-6)
    assert torch.allclose(r.sum(-1), torch.ones(4), atol=1e-6)


def test_flow_on_a_hand_made_two_layer_graph():
    a1 = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    a2 = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0.5, 0.5, 0]])
    flow = attention_flow(torch.stack([a1, a2])[:, None])  # one head
    # by hand: from the top of token 2, 0.5 reaches input 0, 0.75 input 1 and 0.5 input 2 (see the residual-mixed
    # capacities 0.5 A + 0.5 I); normalised: 2/7, 3/7, 2/7. Token 0 only ever reads itself.
    assert torch.allclose(flow[2], torch.tensor([2 / 7, 3 / 7, 2 / 7]), atol=1e-5)
    assert torch.allclose(flow[0], torch.tensor([1.0, 0, 0]), atol=1e-6)
    # rollout spreads the same mass differently: flow is a different measure, not a re-normalised rollout
    assert torch.allclose(rollout(torch.stack([a1, a2])[:, None])[2], torch.tensor([0.375, 0.375, 0.25]))
    assert torch.allclose(attention_flow(torch.stack([a1, a2])[:, None], rows=[2]), flow[2:])


def test_bad_inputs_give_clear_errors():
    with pytest.raises(InputError, match="capped at 4 tokens"):
        attention_flow(_random_patterns(2, 1, 6), max_tokens=4)
    with pytest.raises(InputError, match="rows must be positions 0..5"):
        attention_flow(_random_patterns(2, 1, 6), rows=[6])
    with pytest.raises(InputError, match="square self-attention"):
        rollout(torch.rand(2, 1, 3, 4))
    with pytest.raises(InputError, match=r"\[layer, \(batch,\) head, query, key\]"):
        rollout(torch.rand(3, 3, 3))
