"""The documentation site builds with ``mkdocs build --strict`` (no broken link, no missing reference, no docstring
griffe cannot read), with an API reference from the docstrings and a CLI reference from the parsers."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

pytestmark = pytest.mark.skipif(subprocess.run([sys.executable, "-c", "import mkdocs, mkdocstrings, mkdocs_jupyter"],
                                               capture_output=True).returncode != 0,
                                reason="the docs extra is not installed (pip install -e '.[docs]'; make test does)")


@pytest.mark.slow
def test_the_site_builds_strictly_with_both_references(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1", "TRILENS_DOCS_EXECUTE": "false"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    site = tmp_path / "site"
    cli = (site / "reference" / "cli.html").read_text()
    from trilens.cli.main import SUBCOMMANDS

    for module in SUBCOMMANDS:  # one module per subcommand, named as it
        assert f"trilens {module.__name__.rsplit('.', 1)[-1]}" in cli, module.__name__
    assert "--offload-folder" in cli and "trilens lens shortcut" in cli
    api = (site / "reference" / "api.html").read_text()
    assert "capture_dataset" in api and "probe_layers" in api and "edge_attribution" in api and "StudyContext" in api
    for page in ("01_three_families", "02_attention_and_attribution", "03_feature_neurons", "04_your_own_study"):
        assert (site / "tutorials" / f"{page}.html").exists(), page
    assert (site / "index.html").exists() and (site / "images" / "app-attention-t5.png").exists()
