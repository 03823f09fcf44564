"""``trilens patch``: the printed top cells and the saved result are what the library gives, attribution patching is
written as such, and bad input is one line with exit code 2."""

import pytest
import torch

import trilens
from trilens import TokenScore
from trilens.cli import main
from trilens.patching import PatchingResult, attribution_patching, patching_sweep

NAMES = (["ela said that"], ["udor said that"])  # zoo:gpt's names task: she vs he
GPT_PAIRS = (["the cat sat on the mat", "a dog sat on a big"], ["the dog sat on the mat", "a cat sat on a big"])


@pytest.fixture(scope="module")
def gpt():
    return trilens.load("zoo:gpt")


def _table_rows(out: str) -> list[list[str]]:
    """The printed top-cells table's rows, split on whitespace (the header line is left out)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["panel", "layer"])
    return [line.split() for line in lines[start + 1:] if line.strip() and not line.startswith("saved to")]


def _argv(model, clean, corrupted, *extra):
    return ["patch", str(model), "--clean", *clean, "--corrupted", *corrupted, "--no-progress", *extra]


def test_the_printed_top_cells_and_the_saved_result_are_the_sweeps(gpt, tmp_path, capsys):
    out = tmp_path / "names"
    assert main(_argv("zoo:gpt", *NAMES, "--heads", "--top", "4", "--out", str(out))) == 0
    printed = capsys.readouterr().out
    direct = patching_sweep(gpt, *NAMES, heads=True, progress=False)
    rows = _table_rows(printed)
    assert len(rows) == 4
    for row, cell in zip(rows, direct.top(4)):
        assert row[:3] == [cell["panel"], str(cell["layer"]), f"{cell['position']}:{cell['token']}"]
        assert row[-1] == f"{cell['value']:.3f}"
        assert (row[3] == str(cell["head"])) if "head" in cell else len(row) == 4
    assert rows[0][:3] == ["decoder.resid_pre", "0", "0:ela"]  # the (clean) name carries the pronoun
    assert f"clean {float(direct.m_clean[0]):.4g}" in printed and "saved to" in printed
    saved = trilens.load_result(out)
    assert isinstance(saved, PatchingResult) and saved.method == "exact" and saved.keys == direct.keys
    for key in direct.keys:
        torch.testing.assert_close(saved.raw(key), direct.raw(key), equal_nan=True, atol=1e-6, rtol=0)
    torch.testing.assert_close(saved.m_clean, direct.m_clean)
    assert (out / "figure.html").stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing half-written left beside it


def test_attribution_patching_writes_an_atp_result(gpt, tmp_path, capsys):
    out = tmp_path / "atp"
    assert main(_argv("zoo:gpt", *NAMES, "--method", "atp", "--sites", "resid_pre", "--out", str(out))) == 0
    assert "attribution patching (AtP)" in capsys.readouterr().out
    saved = trilens.load_result(out)
    assert saved.method == "atp" and saved.info["method"] == "attribution_patching" and saved.keys == ["decoder.resid_pre"]
    direct = attribution_patching(gpt, *NAMES, sites="resid_pre")
    torch.testing.assert_close(saved.raw("resid_pre"), direct.raw("resid_pre"), equal_nan=True, atol=1e-6, rtol=0)


def test_several_pairs_a_token_and_foil_and_the_options_reach_the_sweep(tiny_path, tiny, tmp_path, capsys):
    out = tmp_path / "noise"
    assert main(_argv(tiny_path("gpt2"), *GPT_PAIRS, "--token", "sat", "--foil", "is", "--score", "logprob",
                      "--sites", "resid_pre", "mlp_out", "--direction", "noise", "--batch-size", "5", "--out", str(out))) == 0
    capsys.readouterr()
    saved = trilens.load_result(out)
    direct = patching_sweep(tiny("gpt2"), *GPT_PAIRS, TokenScore(token="sat", foil="is", score="logprob"),
                            sites=["resid_pre", "mlp_out"], direction="noise", progress=False)
    assert saved.n_pairs == 2 and saved.direction == "noise" and saved.keys == direct.keys
    assert saved.info["params"]["metric"] == "TokenScore" and saved.info["params"]["score"] == "logprob"
    torch.testing.assert_close(saved.raw("mlp_out"), direct.raw("mlp_out"), equal_nan=True, atol=1e-6, rtol=0)
    # an encoder-decoder: both runs teacher-forced on --target; a cell per whole layer
    assert main(_argv(tiny_path("t5"), ["the cat sat"], ["the dog sat"], "--target", "on the mat", "--positions", "all",
                      "--metric", "steps", "--step", "0", "--sites", "resid_pre", "--out", str(tmp_path / "t5"))) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert {r[2] for r in rows} == {"all"} and {r[0] for r in rows} == {"encoder.resid_pre", "decoder.resid_pre"}
    t5 = trilens.load_result(tmp_path / "t5")
    assert t5.info["params"]["step"] == 0 and t5.tokens["decoder"][0][:3] == ["[PAD]", "on", "the"]


def test_errors_are_one_line_with_exit_code_2(tiny_path, capsys):
    gpt2, t5 = str(tiny_path("gpt2")), str(tiny_path("t5"))
    bad = [
        (_argv(gpt2, ["the cat sat on the mat"], ["the dog sat on mat"], "--token", "sat"), "6 and 5 tokens"),
        (_argv(gpt2, GPT_PAIRS[0], GPT_PAIRS[1][:1], "--token", "sat"), "2 --clean inputs but 1 --corrupted"),
        (_argv(gpt2, *GPT_PAIRS, "--target", "x"), "--target is for encoder-decoder"),
        (_argv(gpt2, *GPT_PAIRS, "--metric", "kl", "--token", "sat"), "leave out --token"),
        (_argv(gpt2, *GPT_PAIRS, "--score", "prob"), "--score says how --token"),
        (_argv(gpt2, *GPT_PAIRS, "--token", "sat", "is", "x"), "--token was given 3 times for 2"),
        (_argv(gpt2, *GPT_PAIRS, "--token", "sat", "--sites", "cross_attn_out"), "no 'cross_attn_out' sites"),
        (_argv(t5, ["the cat sat"], ["a dog"], "--target", "on the mat", "--token", "mat"), "4 and 3 tokens"),
    ]
    for argv, message in bad:
        assert main(argv) == 2, argv
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("trilens: error:") and message in err[0], (argv, err)


def test_circuit_prints_the_top_edges_and_the_circuit_and_saves_the_result(tmp_path, capsys):
    from trilens.patching import CircuitResult, edge_attribution

    model = trilens.load("zoo:t5")
    clean, corrupted, target = "a b c d e f >", "a b c g e f >", "f e d c b a"
    out = tmp_path / "circuit"
    argv = ["circuit", "zoo:t5", "--clean", clean, "--corrupted", corrupted, "--target", target, "--metric", "steps",
            "--step", "2", "--steps", "3", "--top", "3", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    direct = edge_attribution(model, [(clean, target)], [(corrupted, target)], trilens.StepScores(), step=2, steps=3,
                              progress=False)
    for edge in direct.top_edges(3):
        assert f"{edge['sender']} {edge['receiver']} {edge['score']:+.4g}" in " ".join(printed.split())
    n = direct.edges_to_recover(0.9)
    assert f"{n} edges recover 90% of the metric" in printed
    saved = trilens.load_result(out)
    assert isinstance(saved, CircuitResult) and saved.sizes == direct.sizes
    torch.testing.assert_close(saved.scores, direct.scores, equal_nan=True, atol=1e-6, rtol=1e-6)
    assert (out / "figure.html").exists()
    assert main(["circuit", "zoo:gpt", "--clean", "a b c", "--corrupted", "a b", "--no-progress"]) == 2
    assert "token length" in capsys.readouterr().err
