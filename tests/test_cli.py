"""The command line: readable output, working capture, and one-line errors with a non-zero exit."""

import json
import subprocess
import sys

import pytest

from trilens import ActivationStore
from trilens.cli import main


def test_info_table_and_json(tiny_path, capsys):
    assert main(["info", str(tiny_path("t5"))]) == 0
    out = capsys.readouterr().out
    assert "encoder-decoder" in out and "cross_attn_pattern" in out and "decoder_blocks.0.cross_attn.hook_pattern" in out
    assert main(["info", str(tiny_path("bert")), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "encoder" and info["stacks"] == {"encoder": {"layers": 2, "heads": 4}}


def test_capture_end_to_end(tiny_path, tmp_path, capsys):
    texts = tmp_path / "t.jsonl"
    texts.write_text('{"source": "x y z", "target": "z y x"}\n{"source": "the cat", "target": "cat the"}\n')
    code = main(["capture", str(tiny_path("bart")), "--texts", str(texts), "--sites", "resid_post", "mlp_out",
                 "--out", str(tmp_path / "s"), "--dtype", "float16", "--no-progress"])
    assert code == 0 and "ActivationStore" in capsys.readouterr().out
    store = ActivationStore(tmp_path / "s")
    assert store.n_texts == 2 and store.manifest["dtype"] == "float16" and len(store.sites) == 8


def test_errors_are_one_line_with_exit_code_2(tiny_path, tmp_path, capsys):
    assert main(["capture", str(tiny_path("gpt2")), "--texts", str(tmp_path / "missing.txt"), "--sites", "resid_post",
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # earlier lines: HF's own progress bars
    assert err.startswith("trilens: error:") and "does not exist" in err and "Traceback" not in err
    texts = tmp_path / "t.txt"
    texts.write_text("x y\n")
    assert main(["capture", str(tiny_path("gpt2")), "--texts", str(texts), "--sites", "resid_psot", "--out", str(tmp_path / "s")]) == 2
    assert "Did you mean" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "trilens.cli", "info", str(tmp_path / "nothing-here")],
                          capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "HF_HUB_OFFLINE" in proc.stderr


def test_lens_commands(tiny_path, tmp_path, capsys):
    assert main(["lens", "logit", str(tiny_path("gpt2")), "the cat sat on the mat"]) == 0
    out = capsys.readouterr().out
    assert "layer | the" in out and "cross_entropy" in out
    assert main(["lens", "logit", str(tiny_path("t5")), "x y z"]) == 2
    assert "--target" in capsys.readouterr().err
    assert main(["lens", "decoder", str(tiny_path("bart")), "x y z", "--reference", "z y x", "--max-new-tokens", "3",
                 "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "layer  0:" in out and "layer  2:" in out and (tmp_path / "d" / "result.json").exists()
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(["the cat sat on the mat", "x y z one two", "she was here and there"] * 4))
    assert main(["lens", "tuned", "train", str(tiny_path("gpt2")), "--texts", str(texts), "--out", str(tmp_path / "tl"),
                 "--steps", "5", "--no-progress"]) == 0
    assert main(["lens", "tuned", "eval", str(tiny_path("gpt2")), "--texts", str(texts), "--lens", str(tmp_path / "tl")]) == 0
    assert "tuned_kl" in capsys.readouterr().out
    assert main(["lens", "tuned", "eval", str(tiny_path("llama")), "--texts", str(texts), "--lens", str(tmp_path / "tl")]) == 2
    assert "does not fit" in capsys.readouterr().err


def test_help_lists_every_subcommand(capsys):
    from trilens.cli.main import SUBCOMMANDS

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    names = [m.__name__.rsplit(".", 1)[-1] for m in SUBCOMMANDS]
    assert names == ["info", "capture", "lens", "probe", "attention", "attribute", "patch", "circuit", "gradiend", "study", "app"]
    for name in names:
        assert f"    {name} " in out


def test_every_subcommand_answers_bad_input_with_one_line_and_exit_2(tiny_path, tmp_path, capsys):
    gpt, t5 = str(tiny_path("gpt2")), str(tiny_path("t5"))
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "x y", "y": 1}\n')
    bad = {
        "info": ["info", str(tmp_path / "no-model")],
        "capture": ["capture", gpt, "--texts", str(tmp_path / "none.txt"), "--sites", "resid_post", "--out", str(tmp_path / "s")],
        "lens": ["lens", "decoder", gpt, "x y"],
        "probe": ["probe", gpt, "--data", str(data), "--label", "truth"],
        "study": ["study", "run", "no_such_study", "--out", str(tmp_path / "o")],
        "attention": ["attention", "steps", str(tiny_path("bert")), "--texts", str(data), "--out", str(tmp_path / "a")],
        "app": ["app", str(tmp_path / "no-model")],
    }
    expected = {"info": "does not exist|not a local directory", "capture": "does not exist", "lens": "encoder-decoder",
                "probe": "no field 'truth'", "study": "no study named",
                "attention": "encoder-only models do not generate", "app": "does not exist"}
    import re

    for name, argv in bad.items():
        assert main(argv) == 2, name
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trilens: error:")]
        assert len(err) == 1 and re.search(expected[name], err[0]), (name, err)
    assert main(["lens", "logit", t5, "x y"]) == 2
    capsys.readouterr()
    for argv, message in ((["app", "zoo:nothing"], "there is no zoo:nothing"), (["app", str(data)], "is a file"),
                          (["app", gpt, "--port", "0"], "--port must be")):
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def test_attention_steps_command(tiny_path, tmp_path, capsys):
    from trilens import load_result

    texts = tmp_path / "t.jsonl"
    texts.write_text('{"source": "the cat sat", "target": "on the mat"}\n{"source": "a dog", "target": "was here"}\n')
    out = tmp_path / "steps"
    assert main(["attention", "steps", str(tiny_path("gpt2")), "--texts", str(texts), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "given targets" in printed and "uniform baseline" in printed and "residual_sensitivity" in printed
    result = load_result(out)
    assert result.valid.sum(1).tolist() == [3, 2]
    assert {p.name for p in out.iterdir()} >= {"figure.html", "grid.html", "sensitivity.html"}
    mixed = tmp_path / "m.jsonl"
    mixed.write_text('{"text": "the cat"}\n{"source": "a dog", "target": "was here"}\n')
    assert main(["attention", "steps", str(tiny_path("gpt2")), "--texts", str(mixed), "--out", str(tmp_path / "x")]) == 2
    assert "mixes plain texts and source/target pairs" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["the cat sat", "a dog"], "continuation": ["on the mat", "was here"]}),
                   tmp_path / "t.parquet")
    assert main(["attention", "steps", str(tiny_path("gpt2")), "--dataset", str(tmp_path / "t.parquet"), "--text-column",
                 "prompt", "--target-column", "continuation", "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    from_data = load_result(tmp_path / "d")
    assert from_data.to_frame().equals(result.to_frame())
    assert main(["attention", "steps", str(tiny_path("gpt2")), "--out", str(tmp_path / "y")]) == 2
    assert "pass one of --texts FILE" in capsys.readouterr().err


def test_attention_relevancy_command(tiny_path, tmp_path, capsys):
    from trilens import load_result

    out = tmp_path / "maps"
    assert main(["attention", "relevancy", str(tiny_path("gpt2")), "the cat sat", "--target", "on the mat", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "step 1: on" in printed and "step 3: mat" in printed and printed.count("relevancy ") == 3
    assert load_result(out).methods == ["relevancy", "rollout", "flow"]
    assert {p.name for p in out.iterdir()} >= {"figure.html", "rollout.html", "flow.html"}
    assert main(["attention", "relevancy", str(tiny_path("t5")), "the cat", "--methods", "flow"]) == 2
    assert "flow runs on one stack" in capsys.readouterr().err


def test_attribute_command(tiny_path, tmp_path, capsys):
    from trilens import load_result

    out = tmp_path / "attr"
    assert main(["attribute", str(tiny_path("gpt2")), "the cat sat", "--target", "on the mat", "--method", "ig",
                 "--n-steps", "8", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "integrated_gradients attributions" in printed and "1:on" in printed and "3:mat" in printed
    assert "src 0:the" in printed and "tgt 1:the" in printed and "[convergence delta]" in printed
    result = load_result(out)
    assert result.method == "integrated_gradients" and result.step_tokens == [["on", "the", "mat"]]
    assert {p.name for p in out.iterdir()} >= {"figure.html", "result.json"}
    assert main(["attribute", str(tiny_path("t5")), "the cat", "--target", "sat on", "--contrast", "a dog",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "contrastive" in printed and "[contrast_prob_diff]" in printed
    assert main(["attribute", str(tiny_path("t5")), "the cat", "--target", "sat on", "--contrast", "a dog ran",
                 "--no-progress"]) == 2
    assert "needs one foil per step" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["attribute", str(tiny_path("gpt2")), "the cat", "--method", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def _concept_rows(path):
    """A tiny two-class concept in the tiny models' words: the slot takes she (A) or he (B); two neutral rows."""
    rows = []
    for i, start in enumerate(["the cat", "a dog", "the big cat", "a small dog", "the red cat", "a blue dog"]):
        for cls, (fact, cf) in {"A": ("she", "he"), "B": ("he", "she")}.items():
            rows.append({"text": f"{start} sat and [MASK] was here", "factual": fact, "counterfactual": cf,
                         "class": cls, "split": "test" if i >= 4 else "train"})
    rows += [{"text": "the cat sat on the [MASK]", "factual": "mat", "class": None},
             {"text": "a dog was [MASK]", "factual": "here", "class": None}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gradiend_commands(tiny_path, tmp_path, capsys):
    import trilens
    from trilens import load_result

    data = _concept_rows(tmp_path / "rows.jsonl")
    model = str(tiny_path("bert"))
    out = tmp_path / "feature"
    assert main(["gradiend", "train", model, "--data", str(data), "--out", str(out), "--batch-size", "2", "--steps", "4",
                 "--eval-every", "2", "--seeds", "0", "--grid", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "held-out |r|" in printed and "RewriteGrid(54 rewrites" in printed
    assert {p.name for p in out.iterdir()} == {"gradiend", "encodings", "rewrite_grid", "data.jsonl"}
    gradiend = load_result(out / "gradiend")
    assert list(gradiend.to_frame()["step"]) == [0, 2, 4] and (out / "gradiend" / "figure.html").exists()
    assert main(["gradiend", "encode", model, str(out), "the cat sat and [MASK] was here", "--token", "she"]) == 0
    assert "the cat sat and [MASK] was here" in capsys.readouterr().out
    assert main(["gradiend", "rewrite", model, str(out), "--toward", "A", "--alpha", "0.5", "--out",
                 str(tmp_path / "rw"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "rewritten: P(A)" in printed and f"h={gradiend.h_toward('A'):+g}, α=0.5" in printed
    assert trilens.load(tmp_path / "rw").family == "encoder"
    assert main(["gradiend", "rewrite", model, str(out), "--metric", "bpi", "--out", str(tmp_path / "rw2"),
                 "--no-progress"]) == 0
    assert "chosen for bpi" in capsys.readouterr().out
    assert main(["gradiend", "rewrite", model, str(out), "--out", str(tmp_path / "rw3")]) == 2
    assert "give --alpha" in capsys.readouterr().err
    assert main(["gradiend", "train", model, "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x")]) == 2
    assert "is not a file" in capsys.readouterr().err
