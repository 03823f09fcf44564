"""Figure builders: the figure's data are the input arrays (shape, values, labels); bad shapes are refused."""

import numpy as np
import pytest
import torch

import trilens
from trilens import viz
from trilens.errors import InputError


def _z(fig, trace=0):
    return np.asarray(fig.data[trace].z)


def test_layer_heatmap_holds_the_values_tokens_and_cell_text():
    values = torch.arange(12, dtype=torch.float64).reshape(3, 4) / 10
    text = [[f"t{r}{c}" for c in range(4)] for r in range(3)]
    fig = viz.layer_heatmap(values, ["the", "cat", "the", "mat"], text=text, title="lens")
    np.testing.assert_allclose(_z(fig), values.numpy(), rtol=1e-6)
    assert _z(fig).dtype == np.float32  # sizes stay bounded: float32, sent as a typed array
    assert list(fig.data[0].x) == ["0:the", "1:cat", "2:the", "3:mat"]  # repeated tokens stay separate columns
    assert list(fig.data[0].y) == [0, 1, 2] and fig.data[0].text[2][3] == "t23"
    with pytest.raises(InputError, match="3 position labels for 4"):
        viz.layer_heatmap(values, ["a", "b", "c"])
    with pytest.raises(InputError, match="2-D"):
        viz.layer_heatmap(values[0], ["a", "b", "c", "d"])


def test_curves_draw_each_series_with_its_band():
    fig = viz.curves([0, 1, 2], {"task": [0.5, 0.7, 0.9], "control": [0.5, 0.5, 0.6]},
                     bands={"task": [0.1, 0.0, 0.05]}, dash={"control": "dot"}, hline=(0.5, "chance"))
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["task", "control"]
    np.testing.assert_allclose(lines[0].y, [0.5, 0.7, 0.9], rtol=1e-6)
    band = fig.data[0]
    np.testing.assert_allclose(band.y, [0.6, 0.7, 0.95, 0.85, 0.7, 0.4], rtol=1e-6)  # upper, then lower reversed
    assert lines[1].line.dash == "dot" and fig.layout.shapes[0].y0 == 0.5
    with pytest.raises(InputError, match="2 values for 3"):
        viz.curves([0, 1, 2], {"task": [1, 2]})


def test_attention_pattern_head_grid_and_token_heatmap_hold_their_arrays():
    pattern = torch.softmax(torch.randn(3, 5), -1)
    fig = viz.attention_pattern(pattern, ["a", "b", "c"], ["w", "x", "y", "z", "a"])
    np.testing.assert_allclose(_z(fig), pattern.numpy(), rtol=1e-6)
    assert list(fig.data[0].y) == ["0:a", "1:b", "2:c"] and list(fig.data[0].x)[-1] == "4:a"
    grid = viz.head_grid(torch.rand(6, 4), colorbar="entropy")
    assert _z(grid).shape == (6, 4) and list(grid.data[0].x) == [0, 1, 2, 3]
    scores = torch.randn(2, 5)
    heat = viz.token_heatmap(scores, list("abcde"), ["T", "F"])
    np.testing.assert_allclose(_z(heat), scores.numpy(), rtol=1e-6)
    assert heat.data[0].zmid == 0.0  # signed scores get a diverging scale around 0
    assert viz.token_heatmap(scores.abs(), list("abcde"), ["T", "F"]).data[0].zmin == 0.0
    with pytest.raises(InputError, match="3 step labels for 2 steps"):
        viz.token_heatmap(scores, list("abcde"), ["T", "F", "G"])


def test_one_line_attention_views_from_a_trace(tiny):
    gpt = tiny("gpt2")
    texts = ["the cat sat on the mat", "x y z"]
    cache = gpt.trace(texts, sites="attn_pattern")
    fig = cache.figure("blocks.1.attn.hook_pattern", head=2, sequence=1)
    np.testing.assert_allclose(_z(fig), cache["blocks.1.attn.hook_pattern"][1, 2, :3, :3].numpy(), rtol=1e-6)
    assert list(fig.data[0].x) == ["0:x", "1:y", "2:z"]  # padding cut from both axes
    mean = viz.attention(cache, layer=-1, sequence=0)  # mean over heads, last layer
    np.testing.assert_allclose(_z(mean), cache["attn_pattern", 1][0].mean(0).numpy(), rtol=1e-5)
    t5 = tiny("t5")
    pairs = [("the cat sat on the mat", "mat the"), ("x y", "y x one")]
    cross = t5.trace(pairs, sites=["cross_attn_pattern", "resid_post"])
    fig = viz.attention(cross, layer=0, head=1, cross=True, sequence=1)
    assert _z(fig).shape == (4, 3)  # decoder queries (start + 3 target tokens) x source keys (2 tokens + EOS)
    np.testing.assert_allclose(_z(fig), cross["cross_attn_pattern", 0][1, 1, :4, :3].numpy(), rtol=1e-6)
    assert list(fig.data[0].x) == ["0:x", "1:y", "2:[EOS]"]
    norms = cross.figure("resid_post", stack="encoder")  # a kind that is not a pattern: layers x positions of the norm
    first = cross.site_name("resid_post", 0, "encoder")
    np.testing.assert_allclose(_z(norms)[0], cross[first][0, :7].norm(dim=-1).numpy(), rtol=1e-5)
    with pytest.raises(InputError, match="head 7"):
        cache.figure("blocks.0.attn.hook_pattern", head=7)
    with pytest.raises(trilens.SiteError):
        viz.attention(cache, layer=0, cross=True)


def test_write_html_is_offline_and_atomic(tmp_path):
    fig = viz.curves([0, 1], {"a": [1.0, 2.0]})
    path = viz.write_html(fig, tmp_path / "f.html")
    text = path.read_text()
    assert '<script src="http' not in text and len(text) > 1_000_000  # plotly.js is inlined, no network needed
    assert [p.name for p in tmp_path.iterdir()] == ["f.html"]


def test_only_viz_and_studies_import_plotly():
    from pathlib import Path

    import re

    root = Path(trilens.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if re.search(r"^\s*(import plotly|from plotly)", p.read_text(), re.M) and p.parts[len(root.parts)] != "viz"]
    assert offenders == []
