"""The README's tour runs as written (with a small corpus and labels where it names the user's own)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


@pytest.mark.slow
def test_the_tour_runs(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trilens.zoo import tasks
    from trilens.zoo.formats import mlm_item

    code = re.search(r"## A tour\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert 'trilens.load("path/to/llama", device_map="auto", dtype="bfloat16")' in code
    code = code.replace('trilens.load("path/to/llama", device_map="auto", dtype="bfloat16")', "None")  # no such folder
    monkeypatch.chdir(tmp_path)
    pq.write_table(pa.table({"text": ["a b c", "x y z"]}), "corpus.parquet")
    examples = tasks.logic(30, seed=1, depths=(1, 2), split="test")
    scope = {"texts": [mlm_item(e).text for e in examples], "labels": [e.target for e in examples]}
    exec(compile(code, "README tour", "exec"), scope)
    assert scope["store"].n_texts == 2 and scope["g"].evaluation["abs_r"] > 0.5
