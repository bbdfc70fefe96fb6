"""ccrcc_grade.tools.synth: the phantom cohort generator."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from ccrcc_grade.core.errors import CcrccError


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_synth_cli_and_its_errors(run_cli, tmp_path, capsys):
    assert run_cli("synth", tmp_path / "c", "--patients", "3", "--matrix", "64", "--layout", "dicom") == 0
    assert (tmp_path / "c" / "boxes.csv").is_file()
    assert run_cli("synth", tmp_path / "d", "--high-fraction", "1.5") == 2
    assert "--high-fraction" in capsys.readouterr().err
    assert run_cli("ingest", tmp_path / "nowhere", "--out", tmp_path / "w") == 2
    assert "cohort folder not found" in capsys.readouterr().err
    assert run_cli("split", tmp_path / "c") == 2
    assert "not an ingested cohort" in capsys.readouterr().err


def test_realistic_phantom_overlaps_between_grades_and_easy_does_not():
    """Patient parameters only (no rendering): the grade signal of the corticomedullary
    enhancement is strong but overlapping in the realistic phantom; label noise exists."""
    from sklearn.metrics import roc_auc_score

    from ccrcc_grade.tools.synth import synthetic_patient

    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 150)
    pats = [synthetic_patient(rng, f"P{i}", int(y), 256, "realistic") for i, y in enumerate(labels)]
    cmp = [p.tumour_hu["corticomedullary"] for p in pats]
    auc = roc_auc_score(labels, -np.array(cmp))
    assert 0.6 < auc < 0.92, auc
    size_auc = roc_auc_score(labels, [p.diameter_mm for p in pats])
    assert 0.55 < size_auc < 0.85, size_auc
    assert len({p.noise_sd for p in pats}) == 3  # three simulated centres
    assert any(p.necrosis > 0 for p, y in zip(pats, labels) if y == 0)  # necrosis in low grade too
    easy = [synthetic_patient(rng, f"E{i}", int(y), 256, "easy") for i, y in enumerate(labels)]
    assert roc_auc_score(labels, [p.texture for p in easy]) == 1.0


def test_synth_difficulty_option(read_rows, run_cli, tmp_path):
    assert run_cli("synth", tmp_path / "r", "--patients", "2", "--matrix", "64") == 0
    assert "difficulty=realistic" in (tmp_path / "r" / "README.txt").read_text()
    rows = read_rows(tmp_path / "r" / "clinical.csv")
    assert {r["center"] for r in rows} <= {"SYNTH-1", "SYNTH-2", "SYNTH-3"}
    assert run_cli("synth", tmp_path / "e", "--patients", "2", "--matrix", "64", "--difficulty", "easy") == 0
    with pytest.raises(SystemExit) as exc:  # argparse: invalid choice, exit status 2
        run_cli("synth", tmp_path / "x", "--difficulty", "hard")
    assert exc.value.code == 2 and not (tmp_path / "x").exists()


def test_synth_is_deterministic_and_marked_synthetic(tmp_path):
    from ccrcc_grade.tools.synth import make_cohort

    a = make_cohort(tmp_path / "a", patients=3, seed=5, matrix=64)
    b = make_cohort(tmp_path / "b", patients=3, seed=5, matrix=64)
    c = make_cohort(tmp_path / "c", patients=3, seed=6, matrix=64)
    assert _digest(a) == _digest(b) != _digest(c)
    assert (a / "README.txt").read_text().startswith("SYNTHETIC")
    with pytest.raises(CcrccError, match="not empty"):
        make_cohort(a, patients=3)


def test_synth_physiology(dicom_cohort):
    """Low-grade tumours enhance more than high-grade ones in contrast phases; in the plain phase
    the difference is small (weak grade signal), and high grade is larger on average."""
    import csv

    from ccrcc_grade.io.boxes import Box
    from ccrcc_grade.io.dicom import read_hu

    grades = {r["patient_id"]: int(r["who_isup_grade"]) for r in csv.DictReader(open(dicom_cohort / "clinical.csv"))}
    mean_hu: dict = {}
    for r in csv.DictReader(open(dicom_cohort / "boxes.csv")):
        hu, _ = read_hu(dicom_cohort / r["file"])
        b = Box(*(float(r[k]) for k in ("x_min", "y_min", "x_max", "y_max")))
        cx, cy = int((b.x_min + b.x_max) / 2), int((b.y_min + b.y_max) / 2)
        if b.width < 8:
            continue
        core = hu[cy - 2 : cy + 3, cx - 2 : cx + 3]
        mean_hu.setdefault((r["phase"], grades[r["patient_id"]] >= 3), []).append(float(np.median(core)))
    m = {k: np.mean(v) for k, v in mean_hu.items()}
    for phase in ("corticomedullary", "parenchymal"):
        assert m[(phase, False)] - m[(phase, True)] > 25
    assert (
        abs(m[("plain", False)] - m[("plain", True)])
        < abs(m[("corticomedullary", False)] - m[("corticomedullary", True)]) / 2
    )
    sizes = {}
    for r in csv.DictReader(open(dicom_cohort / "clinical.csv")):
        sizes.setdefault(int(r["who_isup_grade"]) >= 3, []).append(float(r["tumor_size_cm"]))
    assert np.mean(sizes[True]) > np.mean(sizes[False])


def test_second_reader_leaves_out_only_end_slices_in_anatomical_order(tmp_path, read_rows):
    """DICOM file names are shuffled: the second reader's missing slices are the tumour's first or
    last by ImagePositionPatient, not by file name."""
    import pydicom

    from ccrcc_grade.tools.synth import make_cohort

    out = make_cohort(tmp_path / "c", patients=6, matrix=64, layout="dicom", seed=2, readers=2, difficulty="easy")
    first = read_rows(out / "boxes.csv")
    second = {(r["patient_id"], r["phase"], r["file"]) for r in read_rows(out / "reader2_boxes.csv")}
    series: dict = {}
    for r in first:
        z = float(pydicom.dcmread(out / r["file"], stop_before_pixels=True).ImagePositionPatient[2])
        series.setdefault((r["patient_id"], r["phase"]), []).append((z, r["file"]))
    dropped = 0
    for (pid, ph), files in series.items():
        ordered = [f for _, f in sorted(files)]
        missing = [f for f in ordered if (pid, ph, f) not in second]
        assert set(missing) <= {ordered[0], ordered[-1]}, (pid, ph, missing)
        dropped += len(missing)
    assert dropped > 0  # the reader did leave some end slices out


@pytest.mark.parametrize("readers", ["0", "6", "-1"])
def test_synth_refuses_a_bad_number_of_readers(refused, capsys, tmp_path, readers):
    refused(capsys, ["synth", tmp_path / "c", "--patients", "3", "--readers", readers], "--readers must be 1-5")
    assert not (tmp_path / "c").exists()


def test_synth_dicom_passes_dciodvfy(dicom_cohort, validate_dicom):
    """Every phase's DICOM as a validator reads it: dicom3tools' dciodvfy (installed by `make
    system-deps`) finds no error in the CT Image IOD synth writes."""
    pid = sorted(p.name for p in dicom_cohort.iterdir() if p.is_dir())[0]
    for phase in ("plain", "corticomedullary", "parenchymal", "excretory"):
        f = sorted((dicom_cohort / pid / phase).glob("*.dcm"))[0]
        errors = validate_dicom(f)
        assert errors == [], (phase, errors)


def test_nifti_layout_writes_the_true_tumour_and_its_boxes_follow_ingests_rule(nifti_cohort, read_rows):
    """Layout C: <patient>/<phase>.nii.gz + <phase>_mask.nii.gz; true_boxes.csv is the mask's box
    grown by --mask-margin-mm, exactly what ingest derives from the mask."""
    from ccrcc_grade.ingest.layouts import read_cohort

    cohort = read_cohort(nifti_cohort)
    assert cohort.layout == "nifti" and len({r.patient_id for r in cohort.rois}) == 12
    truth = {(r["patient_id"], r["file"]): r for r in read_rows(nifti_cohort / "true_boxes.csv")}
    assert len(truth) == len(cohort.rois)
    for roi in cohort.rois:
        t = truth[(roi.patient_id, roi.source)]
        assert roi.box.as_tuple() == pytest.approx(
            [float(t[c]) for c in ("x_min", "y_min", "x_max", "y_max")], abs=0.01
        )


def test_motion_moves_each_phase_by_the_recorded_shift(nifti_cohort):
    import json

    from ccrcc_grade.roi.volume import read_nifti_mask, read_nifti_volume

    meta = json.loads((nifti_cohort / "synth.json").read_text())
    assert meta["motion_mm"] == 12.0 and meta["layout"] == "nifti"
    errors = []
    for pid in sorted(meta["motion"])[:4]:
        centre = {}
        for ph in ("plain", "parenchymal"):
            v = read_nifti_volume(nifti_cohort / pid / f"{ph}.nii.gz")
            m = read_nifti_mask(nifti_cohort / pid / f"{ph}_mask.nii.gz", v)
            ks, ys, xs = np.nonzero(m)
            centre[ph] = np.mean([v.to_patient(k, x + 0.5, y + 0.5) for k, y, x in zip(ks, ys, xs)], axis=0)
        shift = np.subtract(meta["motion"][pid]["plain"], meta["motion"][pid]["parenchymal"])
        assert np.linalg.norm(meta["motion"][pid]["plain"]) <= 12.0
        errors.append(np.linalg.norm((centre["plain"] - centre["parenchymal"] - shift)[:2]))
    # in-plane: the recorded shift plus the kidney's own breathing (N(0, 1.5 mm) per phase and axis)
    assert np.median(errors) < 4.0


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--layout", "nifti", "--motion-mm", "-1"], "--motion-mm"),
        (["--layout", "nifti", "--motion-mm", "nan"], "--motion-mm"),
        (["--layout", "nifti", "--mask-margin-mm", "30"], "--mask-margin-mm"),
    ],
)
def test_synth_refuses_bad_motion_and_margin(refused, capsys, tmp_path, args, needle):
    refused(capsys, ["synth", tmp_path / "c", "--patients", "2", "--matrix", "64", *args], needle)
