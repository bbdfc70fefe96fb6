"""ccrcc_grade.study.report: the report."""

from __future__ import annotations

import json
import os


def test_study_report_reads_correctly(study_out):
    """Issue #16: summary and contents first, the tie said, one sign convention, n beside intervals,
    files readable by others."""
    out, first_output = study_out
    res = json.loads((out / "results.json").read_text())
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert html.index("Summary") < html.index("Dataset") and "<a href='#table-3'>" in html
    assert "[study] model 1 of 6: resnet34-plain" in first_output and "min left)" in first_output
    assert res["comparison"]["a"].startswith("se_resnet34-") and res["comparison"]["b"].startswith("resnet34-")
    d = res["comparison"]["patient"]["auc_diff"]
    assert f"patient AUC difference {d + 0.0:+.3f}" in res["limitations"] and "-0.000" not in md
    assert f"| {d + 0.0:+.3f} (" in md  # Table 4 prints the same number
    tie = res["best_phase_tie"]
    if len(tie["tied"]) > 1:
        assert f"{len(tie['tied'])} phases tie at validation patient AUC" in md and tie["text"] in md
    assert "Decision thresholds" in md and "study default" in md
    table3 = md.split("## Table 3")[1].split("## Decision")[0]
    rows = [ln for ln in table3.splitlines() if ln.startswith("| resnet34 |") or ln.startswith("| se_resnet34 |")]
    assert len(rows) == 12  # 6 models x (patient, image): once each
    assert all("n=" in cell for ln in rows for cell in ln.strip("|").split("|")[2:] if cell.strip() != "n/a")
    umask = os.umask(0o022)
    os.umask(umask)
    for f in (
        out / "report.html",
        out / "results.json",
        out / "work" / "manifest.csv",
        out / "runs" / "resnet34-plain" / "best.pt",
    ):
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f
    assert (out / "work").stat().st_mode & 0o777 == 0o777 & ~umask
    assert not list((out / "runs").glob("*/last.pt"))  # finished runs keep best.pt only
