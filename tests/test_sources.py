"""Inputs as users keep them: a datasets.Dataset, a DatasetDict, a save_to_disk folder, Parquet, JSON lines and CSV give
the same rows as a list of texts, and the same activation store; a missing column or split is refused with what there
is."""

import json

import datasets
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from trilens.capture.dataset import capture_dataset
from trilens.cli import main
from trilens.errors import InputError
from trilens.sources import read_rows

TEXTS = ["the cat sat on the mat", "a dog", "the big red cat was here", "she sat", "they were there", "one two three"]
LABELS = [0, 1, 0, 1, 1, 0]


@pytest.fixture()
def sources(tmp_path):
    """The same rows in every form a user keeps them."""
    table = pa.table({"text": TEXTS, "label": LABELS, "target": [t.upper() for t in TEXTS]})
    pq.write_table(table, tmp_path / "rows.parquet")
    pcsv.write_csv(table, tmp_path / "rows.csv")
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    (tmp_path / "rows.json").write_text(json.dumps(table.to_pylist()))
    dataset = datasets.Dataset.from_dict(table.to_pydict())
    dataset.save_to_disk(str(tmp_path / "folder"))
    splits = datasets.DatasetDict({"train": dataset, "test": dataset.select([0, 1])})
    splits.save_to_disk(str(tmp_path / "dict"))
    return {"parquet": tmp_path / "rows.parquet", "csv": tmp_path / "rows.csv", "jsonl": tmp_path / "rows.jsonl",
            "json": tmp_path / "rows.json", "folder": tmp_path / "folder", "dataset": dataset,
            "dict": splits, "dict folder": tmp_path / "dict"}


def test_every_form_gives_the_same_rows(sources):
    for name, source in sources.items():
        split = "train" if "dict" in name else None
        rows = read_rows(source, split=split, label_column="label")
        assert rows.inputs == TEXTS and rows.labels == LABELS, name
        assert set(rows.columns) == {"text", "label", "target"}
    pairs = read_rows(sources["parquet"], target_column="target").inputs
    assert pairs[1] == ("a dog", "A DOG")
    assert read_rows(sources["dict"], split="test").inputs == TEXTS[:2]


def test_missing_columns_splits_and_files_are_refused(sources, tmp_path):
    with pytest.raises(InputError, match="no column 'sentence'; its columns are text, label, target"):
        read_rows(sources["parquet"], text_column="sentence")
    with pytest.raises(InputError, match="no column 'gold'"):
        read_rows(sources["dataset"], label_column="gold")
    with pytest.raises(InputError, match="splits train, test: choose one"):
        read_rows(sources["dict folder"])
    with pytest.raises(InputError, match="holds int values"):
        read_rows(sources["jsonl"], text_column="label")
    with pytest.raises(InputError, match="does not exist"):
        read_rows(tmp_path / "nothing.parquet")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not a data file"):
        read_rows(tmp_path / "notes.txt")


def test_a_dataset_gives_the_same_store_as_its_texts(tiny, sources, tmp_path):
    model = tiny("gpt2")
    want = capture_dataset(model, TEXTS, "resid_post", tmp_path / "list", texts_per_shard=4, progress=False)
    for name in ("dataset", "parquet", "folder"):
        got = capture_dataset(model, sources[name], "resid_post", tmp_path / f"store-{name}", texts_per_shard=4,
                              progress=False)
        assert got.manifest["texts_sha256"] == want.manifest["texts_sha256"]
        shards = sorted((tmp_path / "list").glob("shard-*.safetensors"))
        assert len(shards) == 2
        for shard in shards:
            a, b = load_file(shard), load_file(tmp_path / f"store-{name}" / shard.name)
            assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), (name, shard.name)


def test_a_source_streams_into_the_store_a_shard_at_a_time(tiny, tmp_path):
    import pickle

    from trilens.source_stream import StreamedRows

    many = [f"{TEXTS[i % len(TEXTS)]} {i % 7}" for i in range(50)]
    pq.write_table(pa.table({"text": many}), tmp_path / "many.parquet", row_group_size=8)
    (tmp_path / "many.jsonl").write_text("".join(json.dumps({"text": t}) + "\n\n" for t in many))  # blank lines too
    datasets.Dataset.from_dict({"text": many}).save_to_disk(str(tmp_path / "many"))
    for name in ("many.parquet", "many.jsonl", "many"):
        rows = StreamedRows(tmp_path / name)
        assert len(rows) == 50 and rows.rows_read == 0  # nothing read yet: the length comes from the index
        assert rows[17:23] == many[17:23] and rows[-1] == many[-1] and rows[::10] == many[::10], name
        assert list(rows) == many and pickle.loads(pickle.dumps(rows))[30:33] == many[30:33], name
    model = tiny("gpt2")
    want = capture_dataset(model, many, "resid_post", tmp_path / "list", texts_per_shard=16, progress=False)
    for name in ("many.parquet", "many.jsonl"):
        got = capture_dataset(model, tmp_path / name, "resid_post", tmp_path / f"s-{name}", texts_per_shard=16,
                              progress=False)
        assert got.manifest["texts_sha256"] == want.manifest["texts_sha256"]
        for shard in sorted((tmp_path / "list").glob("shard-*.safetensors")):
            a, b = load_file(shard), load_file(tmp_path / f"s-{name}" / shard.name)
            assert all((a[k] == b[k]).all() for k in a), (name, shard.name)
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": 3}\n{"other": 1}\n')
    bad = StreamedRows(tmp_path / "bad.jsonl")
    with pytest.raises(InputError, match=r"row 1 \(from 0\): column .text. holds a int"):
        bad[1:2]
    with pytest.raises(InputError, match="row 3 has no 'text' field"):
        bad[2]
    with pytest.raises(InputError, match="no column 'sentence'; its columns are text"):
        StreamedRows(tmp_path / "many.parquet", text_column="sentence")


def test_capture_command_reads_a_dataset(sources, tmp_path, tiny_path, capsys):
    out = tmp_path / "store"
    assert main(["capture", str(tiny_path("gpt2")), "--dataset", str(sources["dict folder"]), "--split", "test",
                 "--sites", "resid_post", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "manifest.json").read_text())["n_texts"] == 2
    assert main(["capture", str(tiny_path("gpt2")), "--dataset", str(sources["csv"]), "--text-column", "sentence",
                 "--sites", "resid_post", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "its columns are text, label, target" in capsys.readouterr().err


def test_probes_read_texts_and_labels_from_a_dataset(tiny, sources):
    from trilens.probes import probe_layers

    model = tiny("bert")
    want = probe_layers(model, TEXTS, LABELS, cv=2, control=False, progress=False)
    for name in ("parquet", "dataset"):
        got = probe_layers(model, sources[name], cv=2, control=False, progress=False)
        assert got.to_frame().equals(want.to_frame()), name
    with pytest.raises(InputError, match="no column 'gold'"):
        probe_layers(model, sources["jsonl"], label_column="gold", cv=2, progress=False)


def test_probes_on_disk_read_a_store_with_its_source(tiny, sources, tmp_path):
    from trilens.probes import probe_layers

    model = tiny("bert")
    store = capture_dataset(model, TEXTS, "resid", tmp_path / "store", texts_per_shard=4, progress=False)
    want = probe_layers(store, TEXTS, LABELS, cv=2, control=False, on_disk=True, progress=False)
    for name in ("parquet", "jsonl", "folder"):  # texts streamed (checked against the store), labels read
        got = probe_layers(store, sources[name], cv=2, control=False, on_disk=True, progress=False)
        assert got.to_frame().equals(want.to_frame()), name
    with pytest.raises(InputError, match="not the ones the store"):
        probe_layers(store, sources["parquet"], text_column="target", cv=2, on_disk=True, progress=False)


def test_probe_command_reads_parquet_as_it_reads_json_lines(sources, tiny_path, capsys):
    model = str(tiny_path("bert"))
    common = ["--label", "label", "--cv", "2", "--no-control", "--no-progress"]
    assert main(["probe", model, "--data", str(sources["jsonl"]), *common]) == 0
    from_jsonl = capsys.readouterr().out
    assert main(["probe", model, "--data", str(sources["parquet"]), *common]) == 0
    assert capsys.readouterr().out == from_jsonl and "6 examples" in from_jsonl
    assert main(["probe", model, "--data", str(sources["dict folder"]), *common]) == 2
    assert "choose one" in capsys.readouterr().err


def test_attribution_attention_steps_and_patching_read_data_sources(tiny, tmp_path):
    import torch

    from trilens.attention import attention_steps
    from trilens.attribution import attribute
    from trilens.patching import attribution_patching, patching_sweep
    from trilens.sources import read_pairs

    gpt, t5 = tiny("gpt2"), tiny("t5")
    prompts, targets = ["the cat sat on the", "a dog was"], ["mat", "here"]
    pq.write_table(pa.table({"sentence": prompts, "continuation": targets}), tmp_path / "p.parquet")
    data = tmp_path / "p.parquet"
    a = attribute(gpt, data, text_column="sentence", target_column="continuation", method="saliency")
    assert a.to_frame().equals(attribute(gpt, prompts, targets, method="saliency").to_frame())
    pairs = datasets.Dataset.from_dict({"text": prompts, "target": targets})
    b = attention_steps(t5, pairs, target_column="target", sensitivity=None)
    ref = attention_steps(t5, list(zip(prompts, targets)), sensitivity=None)
    assert torch.equal(b.valid, ref.valid)
    assert all(torch.allclose(b.metrics[k], ref.metrics[k], rtol=0, atol=0, equal_nan=True) for k in ref.metrics)
    clean, corrupted = ["the cat sat on the mat", "a dog was big"], ["the dog sat on the mat", "a cat was big"]
    swap = datasets.Dataset.from_dict({"clean": clean, "corrupted": corrupted})
    s = patching_sweep(gpt, swap, None, "kl", progress=False)
    assert s.to_frame().equals(patching_sweep(gpt, clean, corrupted, "kl", progress=False).to_frame())
    atp = attribution_patching(gpt, swap, None, "kl")
    assert atp.to_frame().equals(attribution_patching(gpt, clean, corrupted, "kl").to_frame())
    named = datasets.Dataset.from_dict({"a": clean, "b": corrupted})
    assert read_pairs(named, clean_column="a", corrupted_column="b") == (clean, corrupted)
    with pytest.raises(InputError, match="no column 'clean'; its columns are a, b"):
        patching_sweep(gpt, named, None, "kl", progress=False)
    with pytest.raises(InputError, match="pass corrupted=None"):
        patching_sweep(gpt, swap, corrupted, "kl", progress=False)
