"""ccrcc_grade.ingest.phase_detect: phases of unsorted DICOM series."""

from __future__ import annotations

import csv
import json
import shutil

from ccrcc_grade.ingest.cache import CropCache
from ccrcc_grade.ingest.phase_detect import detect_phases


def _series(desc, contrast, t):
    return {"uid": desc + str(t), "description": desc, "protocol": "", "contrast": contrast, "time": t}


def test_phase_detection_rules():
    s = detect_phases(
        [
            _series("Abd NC 5mm", False, 0),
            _series("Arterial 1.25", True, 60),
            _series("Venous", True, 130),
            _series("Delayed 10min", True, 600),
        ]
    )
    assert [x["phase"] for x in s] == ["plain", "corticomedullary", "parenchymal", "excretory"]
    s = detect_phases([_series("", False, 0), _series("", True, 70), _series("", True, 160), _series("", True, 400)])
    assert [x["phase"] for x in s] == ["plain", "corticomedullary", "parenchymal", "excretory"]
    s = detect_phases([_series("", True, 70), _series("", True, 80)])
    assert [x["phase"] for x in s] == [None, None] and all("ambiguous" in x["rule"] for x in s)
    s = detect_phases([_series("NP", True, 70), _series("venous", True, 90)])
    assert [x["phase"] for x in s] == [None, None] and "2 series look parenchymal" in s[0]["rule"]


def test_phase_detection_on_real_series_tags(survey):
    """The real TotalSegmentator series: contrast APPLIED, description 'CT Body 3.0', one series
    - nothing says which contrast phase it is, so it is reported as ambiguous, not guessed."""
    from ccrcc_grade.ingest.phase_detect import scan_patient

    groups = scan_patient(survey("ct/totalsegmentator/example_ct_dicom"))
    assert len(groups) == 1
    g = next(iter(groups.values()))
    assert g["contrast"] and len(g["files"]) == 20 and g["description"] == "CT Body 3.0"
    assert detect_phases([g])[0]["phase"] is None


def test_detect_phases_ingest_of_unsorted_series(run_cli, dicom_cohort, tmp_path):
    c = tmp_path / "c"
    c.mkdir()
    shutil.copy(dicom_cohort / "clinical.csv", c)
    for p in (q for q in dicom_cohort.iterdir() if q.is_dir()):
        (c / p.name / "all").mkdir(parents=True)
        for f in p.glob("*/*.dcm"):
            shutil.copy(f, c / p.name / "all" / f.name)
    rows = list(csv.DictReader(open(dicom_cohort / "boxes.csv")))
    with open(c / "boxes.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["patient_id", "file", "x_min", "y_min", "x_max", "y_max"])
        w.writeheader()
        for r in rows:
            w.writerow(
                {
                    "patient_id": r["patient_id"],
                    "file": f"{r['patient_id']}/all/{r['file'].rsplit('/', 1)[1]}",
                    **{k: r[k] for k in ("x_min", "y_min", "x_max", "y_max")},
                }
            )
    assert run_cli("ingest", c, "--detect-phases", "--out", tmp_path / "w", "--size", "32") == 0
    rep = json.loads((tmp_path / "w" / "ingest_report.json").read_text())
    assert len(rep["phase_assignment"]) == 16 * 4 and all(a["phase"] for a in rep["phase_assignment"])
    got = CropCache.load(tmp_path / "w")
    assert sorted((r["patient_id"], r["phase"]) for r in got.manifest) == sorted(
        (r["patient_id"], r["phase"]) for r in rows
    )
