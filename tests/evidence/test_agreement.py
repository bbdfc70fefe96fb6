"""ccrcc_grade.evidence.agreement: the `agreement` command on a two-reader phantom cohort."""

from __future__ import annotations

import json

import pytest

from ccrcc_grade.evidence.agreement import read_reader


@pytest.fixture(scope="module")
def two_readers(tmp_path_factory):
    from ccrcc_grade.tools.synth import make_cohort

    return make_cohort(
        tmp_path_factory.mktemp("readers") / "cohort",
        patients=10,
        matrix=128,
        seed=5,
        readers=2,
        difficulty="realistic",
    )


def test_two_reader_phantom_agrees_as_the_study_reports(run_cli, two_readers, tmp_path, capsys):
    out = tmp_path / "agreement.json"
    assert run_cli("agreement", two_readers, two_readers / "reader2_boxes.csv", "--json", out) == 0
    a = json.loads(out.read_text())
    assert set(a) >= {"n_patients", "n_slices", "icc", "iou", "slice_range", "prediction"}
    assert a["n_patients"] == 10 and a["n_slices"] > 100
    for m in ("width", "height", "area", "center_x", "center_y"):
        for t in ("ICC2", "ICC3"):
            e = a["icc"][m][t]
            assert e["ci95"][0] <= e["value"] <= e["ci95"][1]
    for m in ("width", "height"):  # the study: ICC > 0.9 between its two urologists
        assert a["icc"][m]["ICC2"]["value"] > 0.9
    assert 0.5 < a["iou"]["mean"] < 1.0  # the readers do differ
    assert 0 < a["slice_range"]["slices_one_reader_only"] and a["slice_range"]["jaccard"]["mean"] < 1
    printed = capsys.readouterr().out
    assert "ICC(2,1)" in printed and "IoU per slice" in printed and "no --model given" in printed


def test_grades_of_each_readers_boxes(run_cli, slices_cohort, trained_run, copy_tree, tmp_path, capsys):
    """The second reader's boxes drawn 2 px wider on every side of the first reader's, in a
    boxes.csv inside (a copy of) the cohort folder, as a second reader's file would be."""
    cohort = copy_tree(slices_cohort)
    reader = read_reader(cohort)
    rows = ["patient_id,phase,file,x_min,y_min,x_max,y_max"]
    for (pid, phase, f), b in reader.boxes.items():
        rows.append(f"{pid},{phase},{f},{b.x_min - 2},{b.y_min - 2},{b.x_max + 2},{b.y_max + 2}")
    (cohort / "reader2_boxes.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "a.json"
    assert run_cli("agreement", cohort, cohort / "reader2_boxes.csv", "--model", trained_run, "--json", out) == 0
    a = json.loads(out.read_text())
    w = a["icc"]["width"]
    assert w["ICC3"]["value"] > 0.99 > w["ICC2"]["value"]  # a constant offset: consistent, not in agreement
    c = a["icc"]["center_x"]["ICC2"]  # the same centres: no residual variance, so no interval (never NaN)
    assert c["value"] == pytest.approx(1.0) and c["ci95"] is None and "no residual variance" in c["ci_note"]
    p = a["prediction"]
    n_patients = len({k[0] for k in reader.boxes if k[1] == "parenchymal"})
    assert p["n_patients"] == len(p["per_patient"]) == n_patients and p["phase"] == "parenchymal"
    assert 0 <= p["flip_rate"] <= 1 and all(len(v) == 2 for v in p["per_patient"].values())
    assert len(set(tuple(v) for v in p["per_patient"].values())) > 1  # real, different predictions
    assert "grades (" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda c, t: [c], "at least two readers"),
        (lambda c, t: [c, t / "missing.csv"], "reader's boxes not found"),
        (lambda c, t: [c, _other_slices(t)], "share no boxed slice"),
        (lambda c, t: [c, c / "reader2_boxes.csv", "--json", c / "reader2_boxes.csv"], "it would be replaced"),
        (lambda c, t: [c, _outside(c, t)], "points outside the cohort folder"),
    ],
)
def test_agreement_refusals(refused, capsys, two_readers, tmp_path, make, needle):
    refused(capsys, ["agreement", *make(two_readers, tmp_path)], needle)


def _other_slices(tmp):
    p = tmp / "other.csv"
    p.write_text("patient_id,phase,file,x_min,y_min,x_max,y_max\nX1,plain,a.png,1,1,9,9\n")
    return p


def _outside(cohort, tmp):
    p = tmp / "sub" / "boxes.csv"
    p.parent.mkdir()
    p.write_text("patient_id,phase,file,x_min,y_min,x_max,y_max\nSYN001,plain,../../x.png,1,1,9,9\n")
    return p
