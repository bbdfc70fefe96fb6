"""Evaluation of a trained run (or any predictions file) at image and patient level.

Writes predictions.csv, predictions_patient.csv, metrics.json and the figures into the output
folder. metrics.json: {"image": M, "patient": M, "validation_threshold": {...}} where M holds
accuracy, balanced_accuracy, brier, per-class (low/high) auc, precision, sensitivity,
specificity, f1 - each {"value", "ci95"} - plus confusion_matrix, n and threshold.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ccrcc_grade.core.config import N_BOOT, PreprocessConfig, from_dict, to_dict
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_write_json, refuse_overwriting_inputs
from ccrcc_grade.core.paths import EvalFiles, RunDir
from ccrcc_grade.core.threshold import (
    DEFAULT_POLICY,
    DEFAULT_THRESHOLD,
    FITTED_METHODS,
    ThresholdPolicy,
    fit_policy,
    policy_of,
)
from ccrcc_grade.ingest.acquisition import patient_attributes
from ccrcc_grade.ingest.cache import CropCache
from ccrcc_grade.ingest.layouts import detect_layout
from ccrcc_grade.ingest.pipeline import ingest
from ccrcc_grade.model.predict import Predictor, load_predictor
from ccrcc_grade.stats.compare import compare, format_comparison
from ccrcc_grade.stats.figures import calibration_figure, confusion_figure, roc_figure
from ccrcc_grade.stats.metrics import bootstrap_metrics, calibration, metric
from ccrcc_grade.stats.predictions import (
    IMAGE_COLUMNS,
    PATIENT_COLUMNS,
    is_image_level,
    patient_level,
    read_predictions,
    write_csv,
)
from ccrcc_grade.stats.subgroups import heterogeneity, patient_groups, subgroup_metrics


def run_checkpoint(run: Path | str) -> Path:
    """RUN folder or checkpoint file -> the checkpoint path (best.pt preferred)."""
    run = Path(run)
    if run.is_file():
        return run
    for ckpt in (RunDir(run).best, RunDir(run).last):
        if ckpt.is_file():
            return ckpt
    raise CcrccError(f"{run}: no best.pt or last.pt (not a training run folder)")


def predict_rows(predictor: Predictor, rows: list[dict], cache: CropCache) -> list[dict]:
    """Run a model (``predict.load_predictor``'s result, so it is loaded and called exactly as
    `predict` does and both give the same numbers) over manifest rows of a cache; returns
    image-level prediction rows."""
    pre = predictor.meta["preprocess"]
    differ = {k: (v, pre.get(k)) for k, v in to_dict(cache.preprocess).items() if k in pre and pre[k] != v}
    if differ:
        raise CcrccError(
            f"{cache.work}: ingested with other preprocessing than the model "
            f"({', '.join(f'{k} {a} vs {b}' for k, (a, b) in differ.items())}); "
            "re-ingest with the model's settings or give the raw cohort"
        )
    probs = predictor(np.asarray(cache.crops[[r["index"] for r in rows]]))
    return [
        {
            "patient_id": r["patient_id"],
            "phase": r["phase"],
            "source": r["source"],
            "label": int(r["label"]),
            "prob_high": float(p),
            **{k: r[k] for k in ("x_min", "y_min", "x_max", "y_max")},
        }
        for r, p in zip(rows, probs)
    ]


def run_predictions(
    run: Path | str,
    split: str = "test",
    cohort: Path | str | None = None,
    out: Path | None = None,
    device: str = "auto",
    predictor: Predictor | None = None,
) -> list[dict]:
    """Image-level predictions of a run on its own split, or on an external cohort (all patients).
    Pass ``predictor`` to reuse a model already loaded for another split."""

    predictor = predictor or load_predictor(run_checkpoint(run), device)
    ckpt = predictor.meta
    phase = ckpt["phase"]
    if cohort is None:
        cache = CropCache.load(ckpt["config"]["work"])
        patients = set(ckpt["splits"][split])
    else:
        cache = external_cache(Path(cohort), ckpt, out)
        patients = None
    rows = cache.select(phase, patients)
    if not rows:
        raise CcrccError(f"no {phase} crops to evaluate ({'split ' + split if cohort is None else cohort})")
    return predict_rows(predictor, rows, cache)


def external_cache(cohort: Path, ckpt: dict, out: Path | None) -> CropCache:
    """An external cohort as a cache: an ingested WORK folder, or a raw cohort ingested now with
    the model's own preprocessing (into OUT/external_work)."""
    layout = detect_layout(cohort)
    if layout == "work":
        return CropCache.load(cohort)
    if out is None:
        raise CcrccError("an output folder is needed to ingest a raw external cohort")
    work = external_work(cohort, out)
    ingest(cohort, work, from_dict(PreprocessConfig, ckpt["preprocess"]), layout=layout, overwrite=True)
    return CropCache.load(work)


def external_work(cohort: Path, out: Path | None) -> Path:
    """Where an external cohort's crops are: the cohort itself when it is an ingested WORK folder,
    else OUT/external_work (``external_cache`` ingests it there)."""
    return Path(cohort) if detect_layout(cohort) == "work" else Path(out) / "external_work"


def compute_metrics(
    rows: list[dict], threshold: float = DEFAULT_THRESHOLD, aggregate: str = "mean", n_boot: int = N_BOOT, seed: int = 0
) -> dict:
    """{"image": M, "patient": M} (image only for image-level rows)."""
    out = {}
    if is_image_level(rows):
        out["image"] = bootstrap_metrics(
            np.array([r["label"] for r in rows]),
            np.array([r["prob_high"] for r in rows]),
            [r["patient_id"] for r in rows],
            threshold,
            n_boot,
            seed,
        )
    prow = patient_level(rows, aggregate)
    out["patient"] = bootstrap_metrics(
        np.array([r["label"] for r in prow]),
        np.array([r["prob_high"] for r in prow]),
        [r["patient_id"] for r in prow],
        threshold,
        n_boot,
        seed,
    )
    return out


def operating_points(
    rows: list[dict],
    val_rows: list[dict] | None,
    policy: ThresholdPolicy | None,
    aggregate: str,
    n_boot: int,
    seed: int,
) -> list[dict]:
    """Metrics at every threshold chosen on **validation** patients (Youden, 90% sensitivity, 90%
    specificity) and at the model's own policy when it is not the default; each entry says how
    its threshold was chosen, or why it could not be (too few validation patients). The test
    rows never choose a threshold."""
    points = []
    if policy is not None and policy.method != "default":
        points.append(
            {
                "name": "model",
                **policy.to_dict(),
                "estimable": True,
                **compute_metrics(rows, policy.threshold, aggregate, n_boot, seed),
            }
        )
    if not val_rows:
        return points
    vp = patient_level(val_rows, aggregate)
    y, p = np.array([r["label"] for r in vp]), np.array([r["prob_high"] for r in vp])
    for method in FITTED_METHODS:
        try:
            fitted = fit_policy(method, y, p, seed=seed)
        except CcrccError as exc:
            points.append({"name": method, "method": method, "estimable": False, "reason": str(exc)})
            continue
        points.append(
            {
                "name": method,
                **fitted.to_dict(),
                "estimable": True,
                **compute_metrics(rows, fitted.threshold, aggregate, n_boot, seed),
            }
        )
    return points


def evaluate_rows(
    rows: list[dict],
    out: Path,
    title: str,
    val_rows: list[dict] | None = None,
    aggregate: str = "mean",
    n_boot: int = N_BOOT,
    seed: int = 0,
    extra: dict | None = None,
    policy: ThresholdPolicy | None = None,
    attributes: dict[str, dict] | None = None,
) -> dict:
    """Predictions -> files + metrics.json in ``out`` (``extra`` keys added to it); returns the
    metrics dict. The main metrics use the study's 0.5; ``operating_points`` add the others.
    ``attributes`` (``ingest.acquisition.patient_attributes``) add the patient-level
    ``subgroups`` (centre, manufacturer, slice thickness, tumour size) and the centres'
    heterogeneity test."""
    out.mkdir(parents=True, exist_ok=True)
    if is_image_level(rows):
        write_csv(out / EvalFiles.PREDICTIONS, rows, IMAGE_COLUMNS)
    prow = patient_level(rows, aggregate)
    write_csv(out / EvalFiles.PATIENT_PREDICTIONS, prow, PATIENT_COLUMNS)
    metrics = compute_metrics(rows, DEFAULT_THRESHOLD, aggregate, n_boot, seed)
    metrics["aggregate"] = aggregate
    metrics["threshold_policy"] = (policy or DEFAULT_POLICY).to_dict()
    metrics["operating_points"] = operating_points(rows, val_rows, policy, aggregate, n_boot, seed)
    metrics["sample_size"] = validation_sample_size(
        np.array([r["label"] for r in prow]), metrics["patient"]["high"]["auc"]["value"]
    )
    if attributes is not None:
        metrics["subgroups"] = subgroup_metrics(prow, attributes, DEFAULT_THRESHOLD, n_boot, seed)
        groups = patient_groups(attributes, [r["patient_id"] for r in prow])
        metrics["subgroup_heterogeneity"] = {k: heterogeneity(prow, groups[k]) for k in ("center", "manufacturer")}
    levels = [lv for lv in ("image", "patient") if lv in metrics]
    curves = {}
    for lv in levels:
        src = rows if lv == "image" else prow
        y = np.array([r["label"] for r in src])
        p = np.array([r["prob_high"] for r in src])
        metrics[lv]["calibration"] = calibration(y, p) if len(np.unique(y)) == 2 else None
        curves[lv] = (y, p, metrics[lv])
    metrics.update(extra or {})
    roc_figure(curves, out / EvalFiles.ROC, f"{title}: ROC")
    confusion_figure(
        metrics[levels[0]]["confusion_matrix"], out / EvalFiles.CONFUSION, f"{title} ({levels[0]} level, threshold 0.5)"
    )
    calibration_figure(
        {
            lv: (metrics[lv]["calibration"]["mean_predicted"], metrics[lv]["calibration"]["fraction_positive"])
            for lv in levels
            if metrics[lv]["calibration"]
        },
        out / EvalFiles.CALIBRATION,
        f"{title}: calibration",
    )
    atomic_write_json(out / EvalFiles.METRICS, metrics)
    return metrics


AUC_RANGE = (0.51, 0.99)  # Riley's formulas are defined for 0.5 < AUC < 1


def validation_sample_size(y: np.ndarray, auc: float | None) -> dict:
    """Is this evaluation large enough? Riley et al.'s validation criteria (``stats.samplesize``)
    at the observed prevalence and AUC, against the patients evaluated."""
    from ccrcc_grade.stats.samplesize import validation

    n = int(len(y))
    prevalence = float(np.mean(y)) if n else math.nan
    used = math.nan if auc is None else min(max(float(auc), AUC_RANGE[0]), AUC_RANGE[1])
    try:
        need = validation(prevalence, used)
    except CcrccError as exc:
        return {"n_patients": n, "estimable": False, "reason": str(exc)}
    return {
        "n_patients": n,
        "prevalence": prevalence,
        "auc": auc,
        "auc_used": used,  # the formulas need 0.5 < AUC < 1: an observed 1.0 (few patients) is taken as 0.99
        "riley_validation": need,
        "large_enough": n >= need["n"],
        "reference": "Riley et al., Stat Med 2021;40:4230 (O/E, calibration slope and AUC precision)",
    }


def eval_dir(run: Path | str, split: str = "test", cohort: Path | str | None = None) -> Path:
    """Default output folder of `evaluate`: RUN/eval-<split> or RUN/eval-external."""
    run = Path(run)
    return RunDir(run if run.is_dir() else run.parent).eval_dir(split if cohort is None else "external")


def evaluate_run(
    run: Path | str,
    split: str = "test",
    cohort: Path | str | None = None,
    out: Path | None = None,
    aggregate: str | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    device: str = "auto",
) -> dict:
    """Evaluate a run on its test (or val) split or on an external cohort."""

    run = Path(run)
    predictor = load_predictor(run_checkpoint(run), device)  # loaded once for both splits
    ckpt = predictor.meta
    agg = aggregate or ckpt["config"].get("patient_aggregate", "mean")
    out = Path(out) if out else eval_dir(run, split, cohort)
    own_work = ckpt["config"].get("work")  # empty: a federated server's model, its patients at the sites
    if not own_work and cohort is None:
        raise CcrccError(
            f"{run}: a federated model whose patients stayed at the sites; evaluate it with --cohort SITE_WORK"
        )
    rows = run_predictions(run, split, cohort, out, device, predictor)
    work = own_work if cohort is None else external_work(Path(cohort), out)
    if not own_work:  # the validation patients are at the sites: no operating points from them
        val_rows = None
    elif cohort is not None or split != "val":
        val_rows = run_predictions(run, "val", None, out, device, predictor)
    else:
        val_rows = rows
    return evaluate_rows(
        rows,
        out,
        f"{ckpt['model']} {ckpt['phase']}",
        val_rows,
        agg,
        n_boot,
        seed,
        extra={
            "run": str(run if run.is_dir() else run.parent),
            "split": split if cohort is None else f"external:{cohort}",
            "backend": ckpt.get("backend"),
        },
        policy=policy_of(ckpt)[0],
        attributes=patient_attributes(work, ckpt["phase"]),
    )


def _value_ci(e: dict) -> str:
    """'0.812 [0.640, 0.930]'; an undefined value or interval says so instead of printing NaN."""
    v, (lo, hi) = e["value"], e["ci95"]
    if v is None or not math.isfinite(v):
        return "n/a (one grade only)"
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{v:.3f} ({e.get('ci_note', 'no CI')})"
    used = e.get("resamples_used", e.get("resamples"))
    extra = f", {used} of {e['resamples']} resamples" if used is not None and used < e.get("resamples", used) else ""
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}{extra}]"


def summary_line(m: dict) -> str:
    parts = []
    for lv in ("image", "patient"):
        if lv in m:
            a, acc = metric(m[lv], "auc"), metric(m[lv], "accuracy")
            parts.append(f"{lv}: n={m[lv]['n']} AUC {_value_ci(a)} ACC {_value_ci(acc)} at 0.5 (study default)")
    lines = ["; ".join(parts) + (f" [{m['backend']}]" if m.get("backend") else "")]
    for op in m.get("operating_points", []):
        if not op["estimable"]:
            lines.append(f"  {op['name']}: not estimated - {op['reason']}")
            continue
        lv = "patient"
        ci = op.get("ci95")
        lines.append(
            f"  {op['name']}: threshold {op['threshold']:.3f}"
            + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
            + f", {op['source']}: patient "
            f"sensitivity {op[lv]['high']['sensitivity']['value']:.3f}, "
            f"specificity {op[lv]['high']['specificity']['value']:.3f}"
        )
    return "\n".join(lines)


def evaluate_command(
    run: str | None,
    split: str = "test",
    cohort: str | None = None,
    predictions: str | None = None,
    out: str | None = None,
    val_predictions: str | None = None,
    aggregate: str | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> str:
    note = ""
    if predictions:
        rows = read_predictions(predictions)
        dest = Path(out) if out else Path(predictions).with_suffix("").with_name(Path(predictions).stem + "-eval")
        val = read_predictions(val_predictions) if val_predictions else None
    else:
        if not run:
            raise CcrccError("evaluate needs a RUN folder or --predictions CSV")
        dest = Path(out) if out else eval_dir(run, split, cohort)
    written = (EvalFiles.METRICS, EvalFiles.PREDICTIONS, EvalFiles.PATIENT_PREDICTIONS)
    refuse_overwriting_inputs([("--out", dest / f) for f in written], [predictions, val_predictions])
    if not out and (dest / EvalFiles.METRICS).is_file():  # never replace an earlier evaluation (e.g. the study's)
        taken = dest
        dest = next(
            dest.with_name(f"{dest.name}-{k}")
            for k in range(2, 10_000)
            if not dest.with_name(f"{dest.name}-{k}").exists()
        )
        note = f"\n{taken} holds an earlier evaluation (kept as it is); this one goes to {dest}"
    elif out and (dest / EvalFiles.METRICS).is_file():
        note = f"\nreplaced the earlier evaluation in {dest} (--out names it)"
    if predictions:
        m = evaluate_rows(rows, dest, Path(predictions).stem, val, aggregate or "mean", n_boot, seed)
    else:
        m = evaluate_run(run, split, cohort, dest, aggregate, n_boot, seed)
    return summary_line(m) + note + f"\nwrote {dest / 'metrics.json'}"


def load_side(x: str | Path, split: str = "test") -> list[dict]:
    """A run folder / checkpoint (predicted now on its split) or a predictions CSV."""
    x = Path(x)
    if x.suffix.lower() == ".csv":
        return read_predictions(x)
    eval_csv = eval_dir(x, split) / EvalFiles.PREDICTIONS
    if eval_csv.is_file():
        return read_predictions(eval_csv)
    return run_predictions(x, split)


def compare_command(a: str, b: str, json_out: str | None = None, split: str = "test") -> str:
    refuse_overwriting_inputs([("--json", json_out)], [a, b])
    c = compare(load_side(a, split), load_side(b, split))
    c["a"], c["b"] = str(a), str(b)
    if json_out:
        atomic_write_json(Path(json_out), c)
    return format_comparison(c, a, b)
