"""``trilens lens language`` and ``trilens lens shortcut``: what they print and save equals the library's results."""

import json

import pytest
import torch

import trilens
from trilens.cli.main import main as cli
from trilens.lens import LinearShortcut, language_lens
from trilens.zoo import tasks as T


def _zoo_queries(n):
    exs = T.facts(0, split="test")[:n]
    return exs, [e.meta["fact"] for e in exs]


def test_language_lens_command_on_the_zoo_facts(zoo, tmp_path, capsys):
    assert cli(["lens", "language", "zoo:gpt-bi", "--limit", "40", "--k", "5", "--out", str(tmp_path / "ll")]) == 0
    printed = capsys.readouterr().out
    exs, facts = _zoo_queries(40)
    ref = language_lens(zoo("gpt-bi"), [e.text for e in exs], [e.meta["answers"] for e in exs],
                        [e.meta["language"] for e in exs], facts=facts, k=5)
    saved = trilens.load_result(tmp_path / "ll")
    assert torch.equal(saved.rank, ref.rank) and torch.equal(saved.top_ids, ref.top_ids)
    acc = ref.accuracy()
    assert f"model accuracy: en {acc['en']:.3f}, vo {acc['vo']:.3f}" in printed
    assert (tmp_path / "ll" / "figure.html").exists()


def test_language_lens_command_reads_a_data_file_and_a_language_map(tiny_path, tmp_path, capsys):
    rows = [{"prompt": "the key to the", "language": "en", "answer_en": "cabinet", "answer_xx": "T", "fact": "a"},
            {"prompt": "a cat sat on", "language": "xx", "answer_en": "mat", "answer_xx": "T", "fact": "a"}]
    data = tmp_path / "q.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    lang_map = tmp_path / "map.json"
    lang_map.write_text(json.dumps({"cabinet": "en", "mat": "en", "T": "xx", "F": "xx"}))
    model = trilens.load(tiny_path("gpt2"))
    assert cli(["lens", "language", str(tiny_path("gpt2")), "--data", str(data), "--language-map", str(lang_map),
                "--out", str(tmp_path / "r")]) == 0
    ref = language_lens(model, [r["prompt"] for r in rows], [{"en": "cabinet", "xx": "T"}, {"xx": "T", "en": "mat"}],
                        ["en", "xx"], facts=["a", "a"], language_map=json.loads(lang_map.read_text()))
    assert torch.equal(trilens.load_result(tmp_path / "r").rank, ref.rank)
    assert cli(["lens", "language", str(tiny_path("gpt2")), "--data", str(data)]) == 2  # no map: said how to give one
    assert "no language map: pass language_map=" in capsys.readouterr().err
    assert cli(["lens", "language", str(tiny_path("gpt2"))]) == 2
    assert "pass --data FILE" in capsys.readouterr().err
    assert cli(["lens", "language", str(tiny_path("gpt2")), "--data", str(data), "--prompt-column", "text"]) == 2
    assert "no column 'text'; its columns are" in capsys.readouterr().err


def test_shortcut_commands_fit_eval_and_sweep(zoo, tmp_path, capsys):
    assert cli(["lens", "shortcut", "fit", "zoo:gpt-bi", "--layer", "4", "--fit", "10", "--out", str(tmp_path / "sc")]) == 0
    exs = [e for e in T.facts(0, split="test") if e.meta["split"] == "both"][:10]
    ref = LinearShortcut.fit(zoo("gpt-bi"), [e.text for e in exs], layer=4)
    sc = LinearShortcut.load(tmp_path / "sc")
    assert torch.allclose(sc.W, ref.W, atol=1e-6) and sc.beta == 2.25 and sc.layer == 4
    capsys.readouterr()
    assert cli(["lens", "shortcut", "eval", "zoo:gpt-bi", "--shortcut", str(tmp_path / "sc"), "--limit", "60",
                "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    ev = trilens.load_result(tmp_path / "ev")
    assert ev.layers == [4] and "model" in printed and "consistency per layer" in printed
    exs60, _ = _zoo_queries(60)
    logits = sc.logits(zoo("gpt-bi"), [e.text for e in exs60])
    got = zoo("gpt-bi").tokenizer.convert_ids_to_tokens(logits.argmax(-1))
    assert ev.correct()[0].tolist() == [g == e.target for g, e in zip(got, exs60)]
    assert cli(["lens", "shortcut", "sweep", "zoo:gpt-bi", "--layers", "2", "6", "--beta", "1", "--limit", "40",
                "--fit", "8"]) == 0
    assert cli(["lens", "shortcut", "fit", "zoo:gpt-bi", "--out", str(tmp_path / "x")]) == 2
    assert "--layer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["lens", "shortcut", "sweep", "zoo:gpt-bi", "--beta", "large"])
