"""One report for all studies: ``trilens study run all`` runs every study and writes report.html, one page that opens
offline with every figure embedded and every study's claims and verdicts; a failing study is reported, not fatal."""

import json
import os
import pytest
from page_parser import read

from trilens.cli import main
from trilens.errors import InputError
from trilens.study import VERDICTS, StudyContext, list_studies
from trilens.study_report import run_all


def test_a_claim_needs_a_known_verdict(tmp_path):
    ctx = StudyContext("x", {}, tmp_path)
    ctx.claim("c", paper="p", measured="m", verdict="reproduced")
    with pytest.raises(InputError, match="a verdict is one of reproduced, not reproduced, not comparable"):
        ctx.claim("c", paper="p", measured="m", verdict="maybe")


def test_a_failing_study_is_reported_and_the_others_still_run(tmp_path, capsys):
    studies = tmp_path / "studies"
    for name, body in (("works", "def run(ctx):\n    import plotly.graph_objects as go\n"
                                 "    ctx.metric('x', 1)\n    ctx.figure('line', go.Figure(go.Scatter(y=[1, 2])))\n"
                                 "    ctx.claim('it works', paper='me', measured='x = 1', verdict='reproduced')\n"),
                       ("breaks", "def run(ctx):\n    raise ValueError('on purpose')\n")):
        (studies / name).mkdir(parents=True)
        (studies / name / "study.py").write_text(body)
    out = tmp_path / "out"
    assert main(["study", "run", "all", "--out", str(out), "--studies-dir", str(studies), "--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert "study breaks failed: ValueError: on purpose" in printed and f"report: {out / 'report.html'}" in printed
    page = read(out / "report.html")
    assert page.sections == ["breaks", "works"] and page.verdicts == [("works", "reproduced")]
    assert page.figures == 1 and not page.external and "This study failed to run: ValueError: on purpose" in (
        out / "report.html").read_text()
    assert "Traceback" in (out / "breaks" / "error.txt").read_text()
    umask = os.umask(0)
    os.umask(umask)  # written through temporary files, yet with the modes open() and mkdir() give
    assert (out / "report.html").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (out / "works").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (out / "works" / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert main(["study", "run", "all", "--out", str(out), "--studies-dir", str(studies)]) == 2  # not empty
    assert "not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_every_study_in_one_report_that_opens_offline(tmp_path):
    out = tmp_path / "all"
    report, failed = run_all(out, quick=True, progress=False)
    assert not failed, failed
    page = read(report)
    studies = list(list_studies())
    assert page.sections == studies and not page.external
    assert page.scripts == 1 + page.figures  # plotly.js once, then one drawing script per figure
    n_figures = sum(len(list((out / name / "figures").glob("*.json"))) for name in studies)
    assert page.figures == n_figures > len(studies)
    judged = {section for section, _ in page.verdicts}
    assert judged == set(studies), f"studies without a claim: {set(studies) - judged}"
    assert all(verdict in VERDICTS for _, verdict in page.verdicts)
    for name in studies:
        saved = json.loads((out / name / "metrics.json").read_text())
        assert saved["command"] == f"trilens study run {name} --quick" and saved["versions"]["torch"]
