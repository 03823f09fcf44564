"""Models placed by accelerate (issue 26, first step): layers offloaded to disk and CPU give the results of the same
model loaded whole, exactly; a bridge that cannot run offloaded layers says so at load."""

import pytest
import torch
from accelerate.utils import compute_module_sizes

import trilens
from trilens import Patch, StepScores
from trilens.attribution import attribute
from trilens.errors import ModelLoadError, TrilensError
from trilens.lens import logit_lens
from trilens.provenance import model_fingerprint

PAIRS = [("the cat sat on the mat", "a dog was here"), ("x y z", "z y")]


@pytest.fixture(scope="module")
def t5_pair(tiny_path, tmp_path_factory):
    path = tiny_path("t5")
    whole = trilens.load(path)
    size = compute_module_sizes(whole.hf_model)[""]
    split = trilens.load(path, device_map="auto", max_memory={"cpu": int(size * 0.6)},
                         offload_folder=str(tmp_path_factory.mktemp("offload")))
    return whole, split


def test_offloaded_layers_are_on_disk_and_the_placement_is_shown(t5_pair):
    whole, split = t5_pair
    placement = split.placement()
    assert "disk" in placement.values() and "cpu" in placement.values()
    assert split.info()["placement"] == placement and whole.placement() is None
    assert any(p.device.type == "meta" for p in split.hf_model.parameters())  # really not in memory
    assert split.device == torch.device("cpu")
    assert model_fingerprint(split) == model_fingerprint(whole)  # the same weights, read from the offload folder
    with pytest.raises(TrilensError, match="placed by a device_map"):
        split.to("cpu")


def test_every_capture_path_equals_the_whole_model(t5_pair):
    whole, split = t5_pair
    assert torch.equal(split.run(PAIRS), whole.run(PAIRS))
    a, b = whole.trace(PAIRS, sites="resid"), split.trace(PAIRS, sites="resid")
    assert all(torch.equal(a[k], b[k]) for k in a.keys())
    sources = [s for s, _ in PAIRS]
    ga = whole.generate(sources, max_new_tokens=4, capture="resid_post")
    gb = split.generate(sources, max_new_tokens=4, capture="resid_post")
    assert torch.equal(ga.sequences, gb.sequences) and ga.texts == gb.texts
    assert all(torch.equal(ga.cache[k], gb.cache[k]) for k in ga.cache.keys())
    ra, rb = whole.gradients(PAIRS, StepScores(), sites="resid_post"), split.gradients(PAIRS, StepScores(), sites="resid_post")
    assert all(torch.equal(ra.grads[k], rb.grads[k]) for k in ra.grads)
    site = whole.sites(stack="decoder", kind="resid_post")[0]
    patch = [Patch(site, torch.ones(whole.d_model), positions=[0])]
    assert torch.equal(split.run(PAIRS, interventions=patch), whole.run(PAIRS, interventions=patch))
    la, lb = logit_lens(whole, PAIRS), logit_lens(split, PAIRS)
    assert torch.equal(la.top_ids, lb.top_ids) and torch.equal(la.metrics["kl"], lb.metrics["kl"])
    aa, ab = attribute(whole, PAIRS, method="saliency"), attribute(split, PAIRS, method="saliency")
    assert aa.to_frame().equals(ab.to_frame())


def test_forward_mode_and_weight_reading_analyses_bring_offloaded_layers_in(t5_pair):
    from trilens.attention import attention_steps
    from trilens.lens import LinearShortcut
    from trilens.patching import edge_attribution

    whole, split = t5_pair
    sources = [s for s, _ in PAIRS]
    sa = attention_steps(whole, sources, max_new_tokens=3, sensitivity="estimate", probes=4)
    sb = attention_steps(split, sources, max_new_tokens=3, sensitivity="estimate", probes=4)
    assert sa.to_frame().equals(sb.to_frame())  # torch.func's derivatives, through layers on disk
    assert torch.equal(LinearShortcut.fit(whole, sources, layer=1, progress=False).W,
                       LinearShortcut.fit(split, sources, layer=1, progress=False).W)
    ea = edge_attribution(whole, PAIRS[:1], [("the dog sat on the mat", "a dog was here")], "kl", steps=2, progress=False)
    eb = edge_attribution(split, PAIRS[:1], [("the dog sat on the mat", "a dog was here")], "kl", steps=2, progress=False)
    assert ea.to_frame().equals(eb.to_frame())  # each head's W_O read while its layer is in
    assert any(p.device.type == "meta" for p in split.hf_model.parameters())  # and back on disk afterwards


def test_a_bridge_with_its_own_weight_views_refuses_offloading(tiny_path, tmp_path):
    path = tiny_path("gpt2")
    size = compute_module_sizes(trilens.load(path).hf_model)[""]
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel cannot run with offloaded layers.*GPT2Attention.*max_memory"):
        trilens.load(path, device_map="auto", max_memory={"cpu": int(size * 0.6)}, offload_folder=str(tmp_path))
    with pytest.raises(ModelLoadError, match="either device= or device_map="):
        trilens.load(path, device="cpu", device_map="auto")


def test_gpu_check_says_there_is_no_gpu_and_stops():
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: benchmarks/gpu_check.py runs the check itself")
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "no CUDA device here" in done.stdout
