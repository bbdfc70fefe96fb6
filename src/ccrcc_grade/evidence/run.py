"""Every model beyond the study's networks, on the study's split, in one call from `study`:
late fusion, the multi-phase network, radiomics, clinical and combined models; then one
comparison table, calibration, decision curves and a nomogram."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ccrcc_grade.core.config import StudyProtocol
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.paths import RunDir, WorkDir
from ccrcc_grade.core.phases import COMBINED, PHASES
from ccrcc_grade.core.threshold import ThresholdPolicy, fit_policy, parse_spec
from ccrcc_grade.evidence.calibration import DCA_THRESHOLDS, net_benefit, treat_all
from ccrcc_grade.evidence.clinical_model import clinical_model, combined_model
from ccrcc_grade.evidence.comparison import compare_models
from ccrcc_grade.evidence.fusion import fuse_logistic, fuse_mean
from ccrcc_grade.evidence.multiphase import MultiPhaseConfig, train_multiphase
from ccrcc_grade.evidence.radiomics import radiomics_study
from ccrcc_grade.evidence.scores import ModelScores
from ccrcc_grade.ingest.cache import CropCache
from ccrcc_grade.io.clinical import ClinicalTable, read_clinical
from ccrcc_grade.model.evaluate import run_predictions
from ccrcc_grade.stats.calibration import logit
from ccrcc_grade.stats.figures import decision_curve_figure, nomogram_figure, reliability_figure
from ccrcc_grade.stats.predictions import PATIENT_COLUMNS, patient_level, read_predictions, write_csv


def run_scores(run: Path, name: str, device: str) -> ModelScores:
    """A trained run's patient scores: test from its study evaluation (eval-test: its patient
    predictions, threshold policy and patient aggregation), validation computed once with the same
    aggregation and kept in RUN/eval-val/predictions_patient.csv."""
    run = Path(run)
    metrics = RunDir(run).read_metrics("test")
    test = {r["patient_id"]: r["prob_high"] for r in read_predictions(RunDir(run).patient_predictions("test"))}
    vf = RunDir(run).patient_predictions("val")
    if vf.is_file():
        rows = read_predictions(vf)
    else:
        rows = patient_level(run_predictions(run, "val", device=device), metrics.get("aggregate", "mean"))
        write_csv(vf, rows, PATIENT_COLUMNS)
    policy = ThresholdPolicy.from_dict(metrics["threshold_policy"])
    phase = name.split("-", 1)[1]
    return ModelScores(
        name,
        "phase",
        test,
        {r["patient_id"]: r["prob_high"] for r in rows},
        ("ResNet34" if name.startswith("resnet34") else "SE-ResNet34")
        + f" on {phase} crops"
        + (" (all phases pooled, as in the study)" if phase == COMBINED else ""),
        policy.threshold,
        policy.source,
    )


def _threshold(m: ModelScores, spec: str, labels: dict[str, int], seed: int) -> None:
    """The study's threshold policy applied to a fitted model, on its validation scores."""
    s = parse_spec(spec)
    if s == "default":
        return
    ids = sorted(m.val)
    try:
        pol = fit_policy(s, [labels[i] for i in ids], [m.val[i] for i in ids], seed=seed)
        m.threshold, m.threshold_source = pol.threshold, pol.source
    except CcrccError as exc:
        m.threshold_source = f"study default (validation fit refused: {exc})"


def evaluate_models(
    work: Path,
    out: Path,
    runs: dict[str, Path],
    best: str,
    protocol: StudyProtocol,
    splits: dict,
    threshold: str = "default",
    device: str = "auto",
    seed: int = 0,
    skip: tuple[str, ...] = (),
) -> dict:
    """results.json's ``models`` list plus what was fitted (``evidence``) and the figures."""
    cache = CropCache.load(work)
    labels = cache.patient_labels()
    models: list[ModelScores] = []
    skipped: dict[str, str] = {}
    details: dict = {}
    for name, run in runs.items():
        models.append(run_scores(run, name, device))
    phase_models = {
        m.name.split("-", 1)[1]: m
        for m in models
        if m.name.startswith("resnet34-") and m.name.split("-", 1)[1] in PHASES
    }

    def attempt(name: str, make: Callable) -> object:
        if name in skip:
            skipped[name] = "left out (--skip)"
            return None
        try:
            m = make()
        except CcrccError as exc:
            skipped[name] = str(exc)
            print(f"[study] {name}: not fitted - {exc}", flush=True)
            return None
        if m is not None:
            _threshold(m, threshold, labels, seed)
            models.append(m)
        return m

    if len(phase_models) >= 2:
        attempt("fusion-mean", lambda: fuse_mean(phase_models))
        attempt("fusion-logistic", lambda: fuse_logistic(phase_models, labels))
        epochs = protocol.epochs_for(COMBINED)
        print(f"[study] multi-phase network ({epochs} epochs)", flush=True)
        attempt(
            "multiphase-resnet34",
            lambda: train_multiphase(
                MultiPhaseConfig(
                    work=str(work),
                    out=str(out / "runs" / "multiphase-resnet34"),
                    epochs=epochs,
                    lr=protocol.lr,
                    image_size=protocol.image_size,
                    repeats=protocol.repeats,
                    weights=protocol.weights,
                    device=device,
                    seed=seed,
                ),
                splits,
            ),
        )
    else:
        skipped["fusion"] = "one phase only"
    if "radiomics-logistic" not in skip:
        print("[study] radiomics features (pyradiomics)", flush=True)
        try:
            rad = radiomics_study(work, splits, seed)
            for s in rad["scores"].values():
                _threshold(s, threshold, labels, seed)
                models.append(s)
            details["radiomics"] = {
                k: {kk: vv for kk, vv in v.items() if kk not in ("val", "test")}
                for k, v in rad["result"]["models"].items()
            }
        except CcrccError as exc:
            skipped["radiomics"] = str(exc)
            print(f"[study] radiomics: not fitted - {exc}", flush=True)
    table = read_clinical(WorkDir(work).clinical)
    info: dict = {}

    def make_clinical():
        m, i = clinical_model(table, splits)
        info.update(i)
        return m

    clin = attempt("clinical", make_clinical)
    if clin is not None:
        details["clinical"] = {k: v for k, v in info.items() if k not in ("model", "medians", "predictor_objects")}
        ref_dl = phase_models.get(best) or next(iter(phase_models.values()), None)
        holder: dict = {}

        def make_combined():
            m, cinfo = combined_model(table, ref_dl, info, splits)
            holder.update(cinfo)
            return m

        if ref_dl is not None and attempt("nomogram (DL + clinical)", make_combined) is not None:
            details["combined"] = {k: v for k, v in holder.items() if k not in ("model", "medians")}
            _nomogram(holder, table, info, ref_dl, splits, out / "figures" / "nomogram.png")
    reference = f"resnet34-{best}"
    entries = compare_models(models, labels, reference, protocol.n_boot, seed)
    figs = _figures(models, entries, labels, out, reference)
    return {
        "models": entries,
        "evidence": {
            "skipped": skipped,
            "details": details,
            "reference": reference,
            "figures": {k: str(v) for k, v in figs.items()},
        },
    }


def _figures(
    models: list[ModelScores], entries: list[dict], labels: dict[str, int], out: Path, reference: str
) -> dict[str, Path]:
    """Decision curves and reliability diagrams; the calibration numbers printed in each panel are
    the model's entry of the comparison table (``entries``, in the order of ``models``)."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    curves, panels = {}, {}
    y_all = None
    for m, e in zip(models, entries):
        ids, y, p = m.arrays(labels)
        curves[m.name] = net_benefit(y, p)
        c = e["patient"]
        slope = c["calibration_slope"]
        panels[m.name] = (
            y,
            p,
            f"Brier {c['brier']['value']:.3f}\nECE {c['ece']:.3f}\nslope "
            + ("n/a" if slope is None else f"{slope:.2f}"),
        )
        if y_all is None or len(y) > len(y_all):
            y_all = y
    dca, rel = out / "figures" / "decision_curves.png", out / "figures" / "reliability.png"
    dca_panels = {
        "networks per phase (the study's models)": {m.name: curves[m.name] for m in models if m.kind == "phase"},
        "fusion, radiomics, clinical, combined": {
            **({f"{reference} (best phase)": curves[reference]} if reference in curves else {}),
            **{m.name: curves[m.name] for m in models if m.kind != "phase"},
        },
    }
    dca_panels = {k: v for k, v in dca_panels.items() if v}
    decision_curve_figure(
        dca_panels,
        DCA_THRESHOLDS,
        treat_all(y_all),
        dca,
        f"Decision curves, test patients (n={len(y_all)}, {int(np.sum(y_all))} high grade)",
    )
    reliability_figure(panels, rel)
    return {"decision_curves": dca, "reliability": rel}


def _nomogram(info: dict, table: ClinicalTable, clin_info: dict, dl: ModelScores, splits: dict, path: Path) -> None:
    model = info["model"]
    scaler, lr = model[0], model[-1]
    k = lr.coef_[0] / scaler.scale_
    b0 = float(lr.intercept_[0] - np.sum(lr.coef_[0] * scaler.mean_ / scaler.scale_))
    preds = clin_info["predictor_objects"]

    lg = logit(np.array(list(dl.val.values()) + list(dl.test.values())))
    ranges = [(float(np.floor(lg.min())), float(np.ceil(lg.max())))]
    for pr in preds:
        vals = [pr.value(table.rows[i]) for i in table.rows]
        vals = [v for v in vals if math.isfinite(v)]
        ranges.append((min(vals), max(vals)) if vals else (0.0, 1.0))
    nomogram_figure(
        info["predictors"],
        ranges,
        list(map(float, k)),
        b0,
        path,
        f"Nomogram: {dl.name} score (logit of P(high)) and clinical predictors; fitted on validation patients",
    )
