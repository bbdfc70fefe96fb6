"""ccrcc_grade.study.report: the report."""

from __future__ import annotations

import json
import os
import re


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
    assert f"patient AUC difference {d + 0.0:+.3f}" in res["limitations"]
    assert re.search(r"(?<![\d.])-0\.0+(?![\d])", md) is None  # no negative zero (a range "0.000-0.000" is fine)
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


def test_report_statistics_a_reviewer_signs_off(study_out):
    """No printed P value is 0, no NaN, the methods stated, the clustered image-level tests named,
    the readers' agreement and the robustness to the box shown."""
    import re

    out, _ = study_out
    md = (out / "report.md").read_text()
    res = json.loads((out / "results.json").read_text())
    assert not re.search(r"P\s*=?\s*0\.0+(?!\d*[1-9])\b", md), "a P value printed as zero"
    assert "0.0000" not in md and "nan" not in md.lower().replace("nanmean", "")
    for section in ("## Statistical methods", "## Reader agreement", "## Robustness to the box"):
        assert section in md
    methods = md.split("## Statistical methods")[1].split("##")[0]
    assert "C = 1" in methods and "in-sample" in methods and "10 equal-width bins" in methods
    m = sum(1 for x in res.get("models", []) if x.get("delong_p_vs_best_phase") is not None)
    assert (f"Holm's correction over m = {m} tests" if m else "No model comparison with estimable tests") in methods
    assert f"{res['study']['protocol']['n_boot']} resamples" in methods
    table4 = md.split("## Table 4")[1].split("##")[0]
    assert "Obuchowski" in table4 and "Durkalski" in table4 and "slices of" in table4
    a = res["agreement"]
    assert a["icc"]["width"]["ICC2"]["value"] > 0.9 and a["prediction"]["n_patients"] > 0
    b = res["box_robustness"]
    assert b["k"] == 20 and b["n_patients"] == len(b["patients"]) > 0
    assert "readers' observed" in b["method"]  # shifts resampled from the two readers
    assert all(p["p_min"] <= p["p_max"] for p in b["patients"])
    assert b["range"]["ci95"][0] <= b["range"]["mean"] <= b["range"]["ci95"][1]
    assert (out / "figures" / "box_robustness.png").stat().st_size > 5000 and "figures/box_robustness.png" in md
    robust = md.split("## Robustness to the box")[1].split("##")[0]
    assert robust.count("| SYN") == b["n_patients"]
    val = md.split("Validation patient AUC of ResNet34 per phase")[1].split("\n")[0]
    assert "n=" in val


def test_report_has_subgroups_sample_size_and_both_checklists(study_out):
    """Issue 24: results per centre / scanner / size band, Riley's sample size, TRIPOD+AI (27 items)
    and CLAIM 2024, every link pointing at a section of the page."""
    out, _ = study_out
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    sub = md.split("## Results by centre, scanner and tumour size")[1].split("## Sample size")[0]
    for title in ("| Centre |", "| Scanner manufacturer |", "| Slice thickness |", "| Tumour size |"):
        assert title in sub
    assert "| SYNTH |" in sub  # the phantom's one centre
    size = md.split("## Sample size")[1].split("##")[0]
    assert "Riley et al." in size and "patients" in size
    checks = md.split("## Checklists")[1]
    tripod = [ln for ln in checks.splitlines() if re.match(r"\| \d+ \|", ln)]
    assert [int(ln.split("|")[1]) for ln in tripod] == list(range(1, 28))
    assert "CLAIM 2024" in checks and "| Methods: ground truth |" in checks
    anchors = set(re.findall(r"id='([\w-]+)'", html))
    for target in set(re.findall(r"href='#([\w-]+)'", html)):
        assert target in anchors, target


def test_names_from_the_data_never_become_markup():
    from pathlib import Path

    from ccrcc_grade.study.report import markdown_to_html, subgroups_md

    hostile = "<img src=x onerror=alert(1)>|B"
    m = {
        "subgroups": {"center": {hostile: {"estimable": False, "reason": "too small", "n_patients": 2, "n_high": 1}}},
        "subgroup_heterogeneity": {
            "center": {"estimable": False, "reason": "1 group", "groups_left_out": {hostile: "x"}}
        },
    }
    page = markdown_to_html(
        "\n".join(["## Results by centre, scanner and tumour size", *subgroups_md(m, "t")]), Path(".")
    )
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;/B" in page


def test_table_2_levels_keep_their_indent_and_their_text_is_escaped(study_out):
    out, _ = study_out
    html = (out / "report.html").read_text()
    assert "&amp;nbsp;" not in html and "<td>\u00a0\u00a0F</td>" in html  # sex levels, indented
