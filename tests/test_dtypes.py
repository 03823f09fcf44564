"""16-bit weights (issue 26): every analysis runs on a model loaded in bfloat16 or float16, and its results stay within
a stated tolerance of the same analysis in float32, on the trained zoo models (random weights would make the
tolerances meaningless: their sublayer outputs sit below bfloat16's rounding of the residual stream). The tolerances
are bfloat16's (8 bits of mantissa); float16 (11 bits) must meet them too: its narrow exponent is covered by the
loss scaling of trilens's backward passes (edge scores of 1e-5 nats)."""

import numpy as np
import pytest
import torch

import trilens
from trilens import StepScores
from trilens.attention import attention_steps
from trilens.attribution import attribute
from trilens.lens import LinearShortcut, logit_lens
from trilens.patching import attribution_patching, edge_attribution, patching_sweep

INPUTS = {"zoo:gpt": ["not ( T and F ) =", "( T or F ) and T =", "the key to the cabinets"],
          "zoo:t5": [("( T and F ) =", "F"), ("a b c d >", "d c b a"), ("not ( F or F ) =", "T")]}
PAIRS = {"zoo:gpt": (["not ( T and F ) ="], ["not ( T and T ) ="]),
         "zoo:t5": ([("( T and F ) =", "F")], [("( T and T ) =", "F")])}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference, relative to the float32 values' largest size."""
    a, b = a.float().nan_to_num(), b.float().nan_to_num()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module", params=[(m, d) for d in ("bfloat16", "float16") for m in ("zoo:gpt", "zoo:t5")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def both(request):
    name, dtype = request.param
    return name, trilens.load(name), trilens.load(name, dtype=dtype)


def test_forward_trace_and_generation(both):
    name, f32, b16 = both
    assert b16.dtype in (torch.bfloat16, torch.float16)
    inputs = INPUTS[name]
    logits, ref = b16.run(inputs), f32.run(inputs)
    assert relative(logits, ref) < 0.03
    assert float((logits.argmax(-1) == ref.argmax(-1)).float().mean()) > 0.9
    a, b = b16.trace(inputs, sites="resid"), f32.trace(inputs, sites="resid")
    assert max(relative(a[k], b[k]) for k in b.keys()) < 0.03
    sources = [x[0] if isinstance(x, tuple) else x for x in inputs]
    ga, gb = b16.generate(sources, max_new_tokens=4), f32.generate(sources, max_new_tokens=4)
    assert float((ga.sequences == gb.sequences).float().mean()) > 0.8


def test_gradients_lens_and_attribution(both):
    name, f32, b16 = both
    inputs = INPUTS[name]
    ra, rb = b16.gradients(inputs, StepScores(), sites="resid_post"), f32.gradients(inputs, StepScores(), sites="resid_post")
    assert max(relative(ra.grads[k], rb.grads[k]) for k in rb.grads) < 0.15
    la, lb = logit_lens(b16, inputs), logit_lens(f32, inputs)
    kl_a, kl_b = la.metrics["kl"].nan_to_num(), lb.metrics["kl"].nan_to_num()  # nats, computed in float32
    assert bool(((kl_a - kl_b).abs() <= 0.15 * kl_b + 0.05).all())
    assert la.metrics["kl"].dtype == torch.float32
    aa = attribute(b16, inputs, method="ig", n_steps=8).to_frame()["value"].to_numpy()
    ab = attribute(f32, inputs, method="ig", n_steps=8).to_frame()["value"].to_numpy()
    assert np.abs(aa - ab).max() / np.abs(ab).max() < 0.2 and np.corrcoef(aa, ab)[0, 1] > 0.99


def test_attention_patching_edges_and_the_shortcut(both):
    name, f32, b16 = both
    sources = [x[0] if isinstance(x, tuple) else x for x in INPUTS[name]]
    sa = attention_steps(b16, sources, max_new_tokens=4, sensitivity=None)
    sb = attention_steps(f32, sources, max_new_tokens=4, sensitivity=None)
    assert torch.equal(sa.valid, sb.valid) and max(relative(sa.metrics[k], sb.metrics[k]) for k in sb.metrics) < 0.1
    clean, corrupted = PAIRS[name]
    pa = patching_sweep(b16, clean, corrupted, "kl", progress=False).to_frame()["value"].to_numpy()
    pb = patching_sweep(f32, clean, corrupted, "kl", progress=False).to_frame()["value"].to_numpy()
    assert np.abs(pa - pb).max() / np.abs(pb).max() < 0.1
    atp_a = attribution_patching(b16, clean, corrupted, "kl").to_frame()["value"].to_numpy()
    atp_b = attribution_patching(f32, clean, corrupted, "kl").to_frame()["value"].to_numpy()
    assert np.corrcoef(atp_a, atp_b)[0, 1] > 0.99
    ea = edge_attribution(b16, clean, corrupted, "kl", steps=2, progress=False).to_frame()
    eb = edge_attribution(f32, clean, corrupted, "kl", steps=2, progress=False).to_frame()
    merged = eb.merge(ea, on=["sender", "receiver"], suffixes=("", "_bf16"))
    assert len(merged) == len(ea) == len(eb)  # the same graph: every sum holds to bfloat16's rounding
    # these scores (~1e-5 nats) lie in float16's subnormal range: without the loss scaling of trilens's gradients
    # (trilens.capture.grad_scale) float16's correlation fell to 0.9986 on zoo:t5; with it, 0.99999
    assert np.corrcoef(merged["score"], merged["score_bf16"])[0, 1] > 0.999
    wa = LinearShortcut.fit(b16, sources, layer=1, progress=False).W
    wb = LinearShortcut.fit(f32, sources, layer=1, progress=False).W
    assert wa.dtype == torch.float32 and relative(wa, wb) < 0.05


def test_float16_gradients_are_loss_scaled_and_come_back_whole():
    from trilens.capture.grad_scale import HALF_SCALE, grad

    x = torch.full((4,), 1e-3, dtype=torch.float16, requires_grad=True)
    small = (x * 1e-5).sum()  # d/dx = 1e-5: subnormal in float16, kept by the scaling
    (g,) = grad(small, [x])
    assert g.dtype == torch.float32 and torch.allclose(g, torch.full((4,), 1e-5), rtol=1e-2)
    (plain,) = torch.autograd.grad((x * 1e-5).sum(), [x])
    assert float((plain.float() - 1e-5).abs().max()) > float((g - 1e-5).abs().max())  # what float16 alone loses
    big = (x * 1e3).sum()  # d/dx * HALF_SCALE overflows float16: the pass runs again with a smaller scale
    (g,) = grad(big, [x])
    assert torch.isfinite(g).all() and torch.allclose(g, torch.full((4,), 1e3), rtol=1e-3) and HALF_SCALE * 1e3 > 65504
    y = torch.ones(3, requires_grad=True)
    assert grad((y * 2).sum(), [y])[0].dtype == torch.float32  # other dtypes: plain autograd
