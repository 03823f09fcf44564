"""The activation store: round trip, resume after a kill, sharded parts, corruption and refusals."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trilens import ActivationStore, capture_dataset
from trilens.capture import shards as shards_module
from trilens.errors import InputError, StoreError, TrilensError

TEXTS = ["the cat sat on the mat", "x y z", "she was here", "a b", "one two three four five six",
         "the dog sat", "it was big and red", "we", "they are here", "two three"] * 2
PAIRS = [("x y z one", "one z y x"), ("the cat sat", "sat"), ("a b", "b a"), ("she was here", "here was she"), ("it", "it")]


class Crash(Exception):
    pass


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.suffix == ".safetensors"}


def test_round_trip_equals_trace_without_padding(tiny, tmp_path):
    model = tiny("gpt2")
    store = capture_dataset(model, TEXTS, ["resid_post", "mlp_post"], tmp_path / "s", batch_size=3,
                            texts_per_shard=7, progress=False)
    assert len(store.to_frame()) == 3 and store.n_texts == len(TEXTS)
    umask = os.umask(0)
    os.umask(umask)  # written through temporary files, with the modes open() gives (not tempfile's private 0600)
    for f in (tmp_path / "s").iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f.name
    cache = model.trace(TEXTS, sites=["resid_post", "mlp_post"])
    mask = cache.mask()
    assert store.n_tokens() == int(mask.sum())  # padding is not stored
    for name in cache:
        torch.testing.assert_close(store.read(name), cache[name][mask], atol=1e-5, rtol=0)
    by_kind = store.read("mlp_post", layer=1, as_="numpy")
    assert isinstance(by_kind, np.ndarray) and by_kind.shape == (int(mask.sum()), 128)
    third = store.text(3, "blocks.0.hook_resid_post")
    torch.testing.assert_close(third, cache["resid_post", 0][3, : int(mask[3].sum())], atol=1e-5, rtol=0)
    offsets = store.offsets()
    assert offsets[3 + 1] - offsets[3] == third.shape[0]
    assert store.ids().tolist() == cache.ids["decoder"][mask].tolist()
    shards = list(store.iter_shards("blocks.1.hook_resid_post", as_="numpy"))
    assert isinstance(shards[0], np.memmap) and sum(s.shape[0] for s in shards) == store.n_tokens()
    store.verify()
    assert not [p for p in (tmp_path / "s").iterdir() if p.name.startswith(".")]  # no temp files left


def test_encoder_decoder_pairs_and_dtype(tiny, tmp_path):
    model = tiny("t5")
    store = capture_dataset(model, PAIRS, "resid_post", tmp_path / "s", batch_size=2, texts_per_shard=2,
                            dtype="float16", progress=False)
    cache = model.trace(PAIRS, sites="resid_post")
    for stack in ("encoder", "decoder"):
        name = model.site("resid_post", 1, stack)
        got = store.read(name)
        assert got.dtype == torch.float16 and store.n_tokens(stack) == int(cache.mask(stack).sum())
        torch.testing.assert_close(got.float(), cache[name][cache.mask(stack)], atol=2e-2, rtol=1e-2)
    with pytest.raises(InputError, match="needs a target"):
        capture_dataset(model, ["x y z"], "resid_post", tmp_path / "t", progress=False)


def test_resume_after_interruption_skips_finished_shards(tiny, tmp_path, monkeypatch):
    model = tiny("gpt2")
    whole = capture_dataset(model, TEXTS, "resid_post", tmp_path / "whole", texts_per_shard=4, progress=False)
    real_write = shards_module._write_shard
    calls = []

    def flaky(out, k, *args):
        calls.append(k)
        if calls == [0, 1, 2]:
            raise Crash("stopped while writing the third shard")
        return real_write(out, k, *args)

    monkeypatch.setattr(shards_module, "_write_shard", flaky)
    with pytest.raises(Crash):
        capture_dataset(model, TEXTS, "resid_post", tmp_path / "cut", texts_per_shard=4, progress=False)
    assert sorted(p.name for p in (tmp_path / "cut").glob("*.safetensors")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore(tmp_path / "cut")
    with pytest.raises(StoreError, match="resume=True"):
        capture_dataset(model, TEXTS, "resid_post", tmp_path / "cut", texts_per_shard=4, progress=False)
    first = (tmp_path / "cut" / "shard-00000.safetensors").stat().st_mtime_ns
    calls.clear()
    resumed = capture_dataset(model, TEXTS, "resid_post", tmp_path / "cut", texts_per_shard=4, resume=True, progress=False)
    assert calls == [2, 3, 4]  # finished shards were not redone
    assert (tmp_path / "cut" / "shard-00000.safetensors").stat().st_mtime_ns == first
    assert _files(tmp_path / "cut") == _files(tmp_path / "whole")
    assert resumed.manifest["offsets"] == whole.manifest["offsets"]


@pytest.mark.slow
def test_killed_process_resumes_to_the_same_store(tiny_path, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS * 10))
    cmd = [sys.executable, "-m", "trilens.cli", "capture", str(tiny_path("llama")), "--texts", str(texts),
           "--sites", "resid_post", "--texts-per-shard", "2", "--batch-size", "2", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "killed")], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "shard-00001.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((tmp_path / "killed").glob("shard-*.json")))
    assert 2 <= done < 100, "the run should have been killed part-way"
    assert subprocess.run(cmd + ["--out", str(tmp_path / "killed"), "--resume"], env=env, capture_output=True).returncode == 0
    assert subprocess.run(cmd + ["--out", str(tmp_path / "once")], env=env, capture_output=True).returncode == 0
    assert _files(tmp_path / "killed") == _files(tmp_path / "once")
    ActivationStore(tmp_path / "killed").verify()


def test_sharded_parts_merge_into_the_same_store(tiny, tmp_path):
    model = tiny("bert")
    one = capture_dataset(model, TEXTS, "resid_post", tmp_path / "one", texts_per_shard=3, progress=False)
    assert capture_dataset(model, TEXTS, "resid_post", tmp_path / "two", texts_per_shard=3, shard="1/2", progress=False) is None
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore(tmp_path / "two")
    merged = capture_dataset(model, TEXTS, "resid_post", tmp_path / "two", texts_per_shard=3, shard=(0, 2), progress=False)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    assert merged.manifest["offsets"] == one.manifest["offsets"]
    with pytest.raises(InputError, match="shard 2/2 does not exist"):
        capture_dataset(model, TEXTS, "resid_post", tmp_path / "x", shard="2/2", progress=False)


def test_corrupted_and_truncated_shards_are_named(tiny, tmp_path):
    model = tiny("gpt2")
    capture_dataset(model, TEXTS, "resid_post", tmp_path / "s", texts_per_shard=5, progress=False)
    victim = tmp_path / "s" / "shard-00002.safetensors"
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF
    victim.write_bytes(bytes(data))
    store = ActivationStore(tmp_path / "s")  # same size: opens, but verify catches it
    with pytest.raises(StoreError, match="shard-00002.safetensors .* corrupted"):
        store.verify()
    victim.write_bytes(bytes(data[:-100]))
    with pytest.raises(StoreError, match="shard-00002.safetensors .* truncated"):
        ActivationStore(tmp_path / "s")
    # resume rewrites only the damaged shard
    before = (tmp_path / "s" / "shard-00000.safetensors").stat().st_mtime_ns
    capture_dataset(model, TEXTS, "resid_post", tmp_path / "s", texts_per_shard=5, resume=True, progress=False).verify()
    assert (tmp_path / "s" / "shard-00000.safetensors").stat().st_mtime_ns == before


def test_refusals(tiny, tmp_path):
    model = tiny("gpt2")
    capture_dataset(model, TEXTS, "resid_post", tmp_path / "s", progress=False)
    with pytest.raises(StoreError, match="different capture .*sites"):
        capture_dataset(model, TEXTS, "mlp_out", tmp_path / "s", progress=False)
    with pytest.raises(StoreError, match="different capture .*model"):
        capture_dataset(tiny("llama"), TEXTS, "resid_post", tmp_path / "s", progress=False)
    replaced = capture_dataset(model, TEXTS, "mlp_out", tmp_path / "s", overwrite=True, progress=False)
    assert list(replaced.sites) == model.sites(kind="mlp_out")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="holds no trilens capture"):
        capture_dataset(model, TEXTS, "resid_post", tmp_path / "other", progress=False)
    with pytest.raises(InputError, match="attention pattern"):
        capture_dataset(model, TEXTS, "attn_pattern", tmp_path / "p", progress=False)
    with pytest.raises(TrilensError, match="unknown dtype"):
        capture_dataset(model, TEXTS, "resid_post", tmp_path / "d", dtype="float8", progress=False)
    with pytest.raises(InputError):
        capture_dataset(model, [], "resid_post", tmp_path / "e", progress=False)
    with pytest.raises(StoreError, match="no capture.json"):
        ActivationStore(tmp_path / "other")
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["n_texts"] == len(TEXTS)
