"""Evidence beyond the study: calibration and decision curves against hand-computed numbers,
Holm, fusion/clinical/combined models fitted without test patients, a missing phase, the
multi-phase network, radiomics on real CT (checked against pyradiomics itself) and on a cohort,
and the realistic phantom's difficulty."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from conftest import read_rows, run_cli, survey, write_rows
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.evidence.calibration import (calibration_intercept_slope, expected_calibration_error, net_benefit,
                                              treat_all)
from ccrcc_grade.evidence.comparison import compare_models, holm
from ccrcc_grade.evidence.fusion import fuse_logistic, fuse_mean
from ccrcc_grade.evidence.scores import ModelScores

# --- calibration and decision curves: small examples computed by hand ------------------------

Y = np.array([1, 1, 0, 0, 1])
P = np.array([0.9, 0.4, 0.3, 0.6, 0.8])


def test_net_benefit_matches_hand_computation():
    # pt = 0.5: treated = {0.9, 0.6, 0.8}: TP 2, FP 1 of n 5 -> 2/5 - 1/5 * 0.5/0.5 = 0.2
    # pt = 0.25: all 5 treated: TP 3, FP 2 -> 3/5 - 2/5 * (1/3) = 0.4667
    # pt = 0.85: only 0.9 treated: TP 1 -> 1/5 = 0.2
    nb = net_benefit(Y, P, np.array([0.25, 0.5, 0.85]))
    assert nb == pytest.approx([0.6 - 0.4 / 3, 0.2, 0.2])
    # treat all: prevalence 3/5 - 2/5 * pt/(1-pt)
    assert treat_all(Y, np.array([0.25, 0.5])) == pytest.approx([0.6 - 0.4 / 3, 0.2])
    # a perfect model's net benefit is the prevalence at every threshold
    assert net_benefit(Y, Y.astype(float), np.array([0.1, 0.6])) == pytest.approx([0.6, 0.6])


def test_brier_and_ece_match_hand_computation():
    from ccrcc_grade.stats.metrics import point_metrics   # the Brier score every model's table entry reports

    # Brier: ((.1)^2 + (.6)^2 + (.3)^2 + (.6)^2 + (.2)^2) / 5 = (0.01+0.36+0.09+0.36+0.04)/5
    assert point_metrics(Y, P)["brier"] == pytest.approx(0.86 / 5)
    # 10 equal-width bins: 0.3 -> bin 3 (y 0), 0.4 -> 4 (y 1), 0.6 -> 6 (y 0), 0.8 -> 8 (y 1), 0.9 -> 9 (y 1)
    # ECE = (|.3-0| + |.4-1| + |.6-0| + |.8-1| + |.9-1|) / 5
    assert expected_calibration_error(Y, P) == pytest.approx((0.3 + 0.6 + 0.6 + 0.2 + 0.1) / 5)


def test_calibration_slope_and_intercept():
    from scipy.optimize import minimize_scalar
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    lp = rng.normal(0, 1.5, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-lp))).astype(int)
    p_true = 1 / (1 + np.exp(-lp))
    a, b = calibration_intercept_slope(y, p_true)
    assert abs(b - 1) < 0.1 and abs(a) < 0.1                   # well calibrated: slope ~1, intercept ~0
    over = 1 / (1 + np.exp(-2 * lp))                            # overconfident model: slope ~0.5
    a2, b2 = calibration_intercept_slope(y, over)
    ref = LogisticRegression(C=np.inf).fit(np.log(over / (1 - over))[:, None], y)   # independent fit
    assert b2 == pytest.approx(ref.coef_[0, 0], rel=1e-4) and 0.4 < b2 < 0.6
    # intercept with the slope fixed at 1: maximise the likelihood of a + logit(p) by scipy
    off = np.log(over / (1 - over))
    nll = lambda c: -np.sum(y * (c + off) - np.log1p(np.exp(c + off)))          # noqa: E731
    assert a2 == pytest.approx(minimize_scalar(nll).x, abs=1e-5)
    # perfect separation: not estimable, never a huge number
    assert calibration_intercept_slope(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))[1] is None


def test_holm_adjustment():
    # sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, then max(0.06, 0.04*1) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    got = holm([0.5, float("nan"), 0.9])
    assert got[0] == pytest.approx(1.0) and math.isnan(got[1]) and got[2] == pytest.approx(1.0)


# --- fusion, clinical and combined models: never fitted on test patients ---------------------

def _phase_scores(rng, val_ids, test_ids, labels, missing=()):
    out = {}
    for k, ph in enumerate(("plain", "corticomedullary", "parenchymal", "excretory")):
        signal = 0.3 + 0.4 * k / 3

        def score(pid):
            return float(np.clip(0.5 + signal * (labels[pid] - 0.5) + rng.normal(0, 0.2), 0.01, 0.99))

        out[ph] = ModelScores(f"resnet34-{ph}", "phase", {i: score(i) for i in test_ids if (i, ph) not in missing},
                              {i: score(i) for i in val_ids})
    return out


@pytest.fixture
def toy():
    rng = np.random.default_rng(1)
    val = [f"V{i:02d}" for i in range(20)]
    test = [f"T{i:02d}" for i in range(20)]
    labels = {i: int(k % 3 == 0) for k, i in enumerate(val + test)}
    return rng, val, test, labels


def test_fusion_fits_on_validation_only(toy):
    rng, val, test, labels = toy
    phases = _phase_scores(rng, val, test, labels)
    val_labels = {i: labels[i] for i in val}          # the test patients' grades are not even given
    fused = fuse_logistic(phases, val_labels)
    assert set(fused.test) == set(test) and set(fused.val) == set(val)
    # a test patient's score does not depend on the other test patients' scores (no transduction)
    phases2 = {ph: ModelScores(m.name, m.kind, {i: (0.99 if i != "T01" else p) for i, p in m.test.items()}, m.val)
               for ph, m in phases.items()}
    assert fuse_logistic(phases2, val_labels).test["T01"] == pytest.approx(fused.test["T01"])
    # the mean needs no fitting at all
    mean = fuse_mean(phases)
    assert mean.test["T00"] == pytest.approx(np.mean([m.test["T00"] for m in phases.values()]))


def test_fusion_with_a_missing_phase(toy):
    rng, val, test, labels = toy
    phases = _phase_scores(rng, val, test, labels, missing={("T03", "excretory"), ("T04", "plain")})
    fused = fuse_logistic(phases, labels)
    mean = fuse_mean(phases)
    assert {"T03", "T04"} <= set(fused.test) and all(0 <= p <= 1 for p in fused.test.values())
    assert mean.test["T03"] == pytest.approx(np.mean([phases[ph].test["T03"] for ph in
                                                      ("plain", "corticomedullary", "parenchymal")]))


@pytest.mark.parametrize("val_labels, message", [
    ({f"V{i:02d}": 0 for i in range(20)}, "0 low- and 0 high-grade|20 low- and 0 high-grade"),
    ({**{f"V{i:02d}": 0 for i in range(19)}, "V19": 1}, "19 low- and 1 high-grade"),
])
def test_fusion_refuses_a_validation_set_without_both_grades(toy, val_labels, message):
    import re

    rng, val, test, labels = toy
    with pytest.raises(CcrccError, match=re.compile(message)):
        fuse_logistic(_phase_scores(rng, val, test, labels), val_labels)


def test_clinical_and_combined_models_never_fit_on_test_patients(tmp_path):
    from ccrcc_grade.io.clinical import read_clinical
    from ccrcc_grade.evidence.clinical_model import clinical_model, combined_model

    rng = np.random.default_rng(2)
    ids = [f"P{i:03d}" for i in range(90)]
    grade = {i: int(rng.choice([1, 2, 3, 4], p=[0.2, 0.45, 0.25, 0.1])) for i in ids}
    rows = [{"patient_id": i, "who_isup_grade": grade[i], "tumor_size_cm": round(3 + 2 * (grade[i] >= 3) + rng.normal(0, 1.2), 1),
             "sex": rng.choice(["M", "F"]), "bmi": round(rng.normal(24, 3), 1)} for i in ids]
    rows[5]["tumor_size_cm"] = ""                      # a missing value is imputed, not a crash
    splits = {"train": ids[:50], "val": ids[50:70], "test": ids[70:]}
    write_rows(tmp_path / "clinical.csv", rows)
    table = read_clinical(tmp_path / "clinical.csv")
    clin, info = clinical_model(table, splits)
    assert info["predictors"][0] == "tumor_size_cm" and info["fitted_on"] == "training patients"
    # changing the test patients' grades must not change anything the model says about them
    flipped = [{**r, "who_isup_grade": 1 if int(r["who_isup_grade"]) >= 3 else 4} if r["patient_id"] in splits["test"]
               else r for r in rows]
    write_rows(tmp_path / "flipped.csv", flipped)
    clin2, _ = clinical_model(read_clinical(tmp_path / "flipped.csv"), splits)
    assert clin2.test == pytest.approx(clin.test)
    labels = table.labels
    dl = ModelScores("resnet34-parenchymal", "phase",
                     {i: float(np.clip(0.3 + 0.4 * labels[i] + rng.normal(0, 0.15), 0.01, 0.99)) for i in splits["test"]},
                     {i: float(np.clip(0.3 + 0.4 * labels[i] + rng.normal(0, 0.15), 0.01, 0.99)) for i in splits["val"]})
    comb, cinfo = combined_model(table, dl, info, splits)
    comb2, _ = combined_model(read_clinical(tmp_path / "flipped.csv"), dl, info, splits)
    assert cinfo["fitted_on"] == "validation patients" and comb2.test == pytest.approx(comb.test)
    assert set(comb.test) == set(splits["test"])
    # and the comparison table: one entry per model, the reference without a test against itself
    entries = compare_models([dl, clin, comb], labels, "resnet34-parenchymal", n_boot=200)
    assert [e["name"] for e in entries] == ["resnet34-parenchymal", "clinical", "nomogram (DL + clinical)"]
    assert entries[0]["delong_p_vs_best_phase"] is None
    for e in entries[1:]:
        assert 0 <= e["delong_p_vs_best_phase"] <= e["delong_p_holm"] <= 1
        assert -1 <= e["auc_diff_vs_best_phase"]["ci95"][0] <= e["auc_diff_vs_best_phase"]["ci95"][1] <= 1
    for e in entries:
        b = e["patient"]["brier"]
        assert b["ci95"][0] <= b["value"] <= b["ci95"][1] and 0 <= e["patient"]["ece"] <= 1


def test_clinical_model_needs_tumour_size(tmp_path):
    from ccrcc_grade.io.clinical import read_clinical
    from ccrcc_grade.evidence.clinical_model import clinical_model

    write_rows(tmp_path / "clinical.csv", [{"patient_id": f"P{i}", "who_isup_grade": 1 + i % 4, "age": 50 + i}
                                           for i in range(12)])
    with pytest.raises(CcrccError, match="no tumour size column"):
        clinical_model(read_clinical(tmp_path / "clinical.csv"), {"train": [f"P{i}" for i in range(8)]})


@pytest.mark.parametrize("scores, message", [
    ({"A": 1.5}, "P\\(high\\) of patient A"),
    ({"A": float("nan")}, "P\\(high\\) of patient A"),
])
def test_model_scores_refuse_bad_probabilities(scores, message):
    with pytest.raises(CcrccError, match=message):
        ModelScores("m", "fusion", scores)


def test_model_scores_refuse_an_unknown_kind():
    with pytest.raises(CcrccError, match="kind 'deep'"):
        ModelScores("m", "deep", {"A": 0.5})


# --- the multi-phase network ---------------------------------------------------------------

def test_multiphase_network_trains_and_grades_a_patient_missing_a_phase(work, tmp_path):
    from ccrcc_grade.evidence.multiphase import MultiPhaseConfig, train_multiphase

    w = tmp_path / "w"
    shutil.copytree(work, w)
    rows = read_rows(w / "manifest.csv")
    splits = json.loads((w / "splits.json").read_text())
    gone = splits["test"][0]
    write_rows(w / "manifest.csv", [r for r in rows if not (r["patient_id"] == gone and r["phase"] == "excretory")])
    cfg = MultiPhaseConfig(work=str(w), out=str(tmp_path / "run"), epochs=1, image_size=32, repeats=1,
                           weights="none", lr=1e-2, progress=False)
    s = train_multiphase(cfg, splits)
    assert set(s.test) == set(splits["test"]) and gone in s.test and 0 <= s.test[gone] <= 1
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "eval-test" / "predictions_patient.csv").is_file()
    again = train_multiphase(cfg, splits)                    # a finished run is reused, with the same scores
    assert again.test == pytest.approx(s.test, abs=1e-6)


def test_multiphase_forward_masks_absent_phases():
    import torch

    from ccrcc_grade.evidence.multiphase import MultiPhaseNet

    torch.manual_seed(0)
    net = MultiPhaseNet().eval()
    x = torch.rand(2, 4, 3, 32, 32)
    present = torch.tensor([[True, True, True, False], [True, True, True, False]])
    with torch.no_grad():
        a = net(x, present)
        x2 = x.clone()
        x2[:, 3] = torch.rand(2, 3, 32, 32)                  # what an absent phase holds is ignored
        assert torch.allclose(a, net(x2, present))


# --- radiomics ---------------------------------------------------------------------------

def test_radiomics_on_a_real_ct_volume_matches_pyradiomics_reading_the_files():
    """Our path (nibabel arrays -> features) against the library reading the NIfTI files itself,
    on the real TotalSegmentator CT and its right-kidney label; first-order values also against numpy."""
    pytest.importorskip("radiomics")
    import nibabel as nib

    from ccrcc_grade.evidence.radiomics import SETTINGS, _extractor, features

    ct, seg = survey("ct/totalsegmentator/example_ct_sm.nii.gz"), survey("ct/totalsegmentator/example_seg.nii.gz")
    img, lab = nib.load(ct), nib.load(seg)
    hu = np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0)       # (x, y, z) -> (z, y, x)
    mask = (np.asarray(lab.dataobj) == 2).transpose(2, 1, 0)
    assert mask.sum() > 100
    ours = features(hu, mask, tuple(float(z) for z in img.header.get_zooms()[:3]))
    ext = _extractor()
    ext.settings["label"] = 2
    ref = {k.removeprefix("original_"): float(v) for k, v in ext.execute(str(ct), str(seg), label=2).items()
           if k.startswith("original_")}
    assert SETTINGS["label"] == 1 and set(ours) == set(ref) and len(ours) > 80
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-8), k
    vox = hu[mask]
    assert ours["firstorder_Mean"] == pytest.approx(float(vox.mean()), rel=1e-5)
    assert ours["firstorder_Maximum"] == pytest.approx(float(vox.max()))
    assert ours["firstorder_Energy"] == pytest.approx(float(np.sum(vox.astype(np.float64) ** 2)), rel=1e-5)


def test_radiomics_on_a_real_ct_slice_with_a_box():
    """A box on the real contrast-enhanced abdominal DICOM slice (JPEG 2000): mean and range from numpy."""
    pytest.importorskip("radiomics")
    import pydicom

    from ccrcc_grade.evidence.radiomics import box_mask, features

    ds = pydicom.dcmread(survey("ct/pydicom/explicit_VR-UN_pancreasct_abdomen.dcm"))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    box = hu[230:290, 300:360]
    f = features(box, box_mask(box.shape), tuple(float(v) for v in ds.PixelSpacing))
    inner = box[1:-1, 1:-1]
    assert f["firstorder_Mean"] == pytest.approx(float(inner.mean()), rel=1e-5)
    assert f["firstorder_Range"] == pytest.approx(float(inner.max() - inner.min()), rel=1e-5)
    assert all(math.isfinite(v) for v in f.values())


@pytest.mark.parametrize("shape, mask_sum, message", [
    ((8, 8), 2, "at least 4 needed"),
    ((8, 8), None, "differ in shape"),
])
def test_radiomics_refuses_bad_rois(shape, mask_sum, message):
    pytest.importorskip("radiomics")
    from ccrcc_grade.evidence.radiomics import features

    hu = np.zeros(shape, np.float32)
    mask = np.zeros(shape if mask_sum is not None else (4, 4), np.uint8)
    if mask_sum:
        mask.flat[:mask_sum] = 1
    with pytest.raises(CcrccError, match=message):
        features(hu, mask, (1.0, 1.0))


@pytest.mark.parametrize("case, message", [("missing", "not an ingested cohort"),
                                           ("no_splits", "no splits file")])
def test_radiomics_command_refuses_what_is_not_a_split_work_folder(work, tmp_path, capsys, case, message):
    w = tmp_path / "w"
    if case == "no_splits":
        shutil.copytree(work, w)
        (w / "splits.json").unlink()
    assert run_cli("radiomics", w) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (w / "radiomics").exists()


def test_radiomics_command_on_a_cohort(work, tmp_path, capsys):
    pytest.importorskip("radiomics")
    w = tmp_path / "w"
    shutil.copytree(work, w)
    assert run_cli("radiomics", w) == 0
    out = capsys.readouterr().out
    assert "radiomics-logistic" in out and "radiomics-svm" in out
    res = json.loads((w / "radiomics" / "results.json").read_text())
    header = (w / "radiomics" / "features.csv").read_text().splitlines()[0].split(",")
    assert res["n_features"] == len(header) - 1 and res["phases"] == ["plain", "corticomedullary", "parenchymal", "excretory"]
    splits = json.loads((w / "splits.json").read_text())
    for m in res["models"].values():
        assert set(m["test"]) == set(splits["test"]) and m["fitted_on"].startswith("training patients")
        assert set(m["selected_features"]) <= set(header)


# --- the realistic phantom -----------------------------------------------------------------

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
    assert len({p.noise_sd for p in pats}) == 3                # three simulated centres
    assert any(p.necrosis > 0 for p, y in zip(pats, labels) if y == 0)   # necrosis in low grade too
    easy = [synthetic_patient(rng, f"E{i}", int(y), 256, "easy") for i, y in enumerate(labels)]
    assert roc_auc_score(labels, [p.texture for p in easy]) == 1.0


def test_synth_difficulty_option(tmp_path):
    assert run_cli("synth", tmp_path / "r", "--patients", "2", "--matrix", "64") == 0
    assert "difficulty=realistic" in (tmp_path / "r" / "README.txt").read_text()
    rows = read_rows(tmp_path / "r" / "clinical.csv")
    assert {r["center"] for r in rows} <= {"SYNTH-1", "SYNTH-2", "SYNTH-3"}
    assert run_cli("synth", tmp_path / "e", "--patients", "2", "--matrix", "64", "--difficulty", "easy") == 0
    with pytest.raises(SystemExit) as exc:                     # argparse: invalid choice, exit status 2
        run_cli("synth", tmp_path / "x", "--difficulty", "hard")
    assert exc.value.code == 2 and not (tmp_path / "x").exists()
