"""Evaluation of a trained run (or any predictions file) at image and patient level.

Writes predictions.csv, predictions_patient.csv, metrics.json and the figures into the output
folder. metrics.json: {"image": M, "patient": M, "validation_threshold": {...}} where M holds
accuracy, balanced_accuracy, brier, per-class (low/high) auc, precision, sensitivity,
specificity, f1 - each {"value", "ci95"} - plus confusion_matrix, n and threshold.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ccrcc_grade.ingest.cache import CropCache
from ccrcc_grade.core.errors import CcrccError, check_number
from ccrcc_grade.core.fileio import atomic_write_json, atomic_write_text
from ccrcc_grade.stats.figures import calibration_figure, confusion_figure, roc_figure
from ccrcc_grade.stats.metrics import aggregate_patients, bootstrap_metrics, calibration
from ccrcc_grade.core.threshold import (DEFAULT_POLICY, DEFAULT_THRESHOLD, FITTED_METHODS, ThresholdPolicy, fit_policy,
                        policy_of)

IMAGE_COLUMNS = ["patient_id", "phase", "source", "label", "prob_high", "x_min", "y_min", "x_max", "y_max"]
PATIENT_COLUMNS = ["patient_id", "label", "prob_high"]


def run_checkpoint(run: Path | str) -> Path:
    """RUN folder or checkpoint file -> the checkpoint path (best.pt preferred)."""
    run = Path(run)
    if run.is_file():
        return run
    for name in ("best.pt", "last.pt"):
        if (run / name).is_file():
            return run / name
    raise CcrccError(f"{run}: no best.pt or last.pt (not a training run folder)")


def predict_rows(predictor: tuple, rows: list[dict], cache: CropCache) -> list[dict]:
    """Run a model (``predict.load_predictor``'s result, so it is loaded and called exactly as
    `predict` does and both give the same numbers) over manifest rows of a cache; returns
    image-level prediction rows."""
    from ccrcc_grade.core.config import to_dict

    predict_fn, meta, _ = predictor
    pre = meta["preprocess"]
    differ = {k: (v, pre.get(k)) for k, v in to_dict(cache.preprocess).items() if k in pre and pre[k] != v}
    if differ:
        raise CcrccError(f"{cache.work}: ingested with other preprocessing than the model "
                         f"({', '.join(f'{k} {a} vs {b}' for k, (a, b) in differ.items())}); "
                         "re-ingest with the model's settings or give the raw cohort")
    probs = predict_fn(np.asarray(cache.crops[[r["index"] for r in rows]]))
    return [{"patient_id": r["patient_id"], "phase": r["phase"], "source": r["source"], "label": int(r["label"]),
             "prob_high": float(p), **{k: r[k] for k in ("x_min", "y_min", "x_max", "y_max")}}
            for r, p in zip(rows, probs)]


def run_predictions(run: Path | str, split: str = "test", cohort: Path | str | None = None,
                    out: Path | None = None, device: str = "auto", predictor: tuple | None = None) -> list[dict]:
    """Image-level predictions of a run on its own split, or on an external cohort (all patients).
    Pass ``predictor`` to reuse a model already loaded for another split."""
    from ccrcc_grade.model.predict import load_predictor

    predictor = predictor or load_predictor(run_checkpoint(run), device)
    ckpt = predictor[1]
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
    from ccrcc_grade.ingest.cache import ingest
    from ccrcc_grade.core.config import PreprocessConfig, from_dict

    if (cohort / "manifest.csv").is_file():
        return CropCache.load(cohort)
    if out is None:
        raise CcrccError("an output folder is needed to ingest a raw external cohort")
    work = Path(out) / "external_work"
    cfg = from_dict(PreprocessConfig, ckpt["preprocess"])
    if any(cohort.glob("kits*.json")) or any(cohort.glob("case_*/segmentation.nii.gz")):
        from ccrcc_grade.io.kits import ingest_kits

        ingest_kits(cohort, work, cfg, overwrite=True)
    else:
        ingest(cohort, work, cfg, overwrite=True)
    return CropCache.load(work)


def read_predictions(path: Path | str) -> list[dict]:
    """A predictions CSV: image level (patient_id, phase, source, label, prob_high) or patient
    level (patient_id, label, prob_high)."""
    path = Path(path)
    if not path.is_file():
        raise CcrccError(f"{path}: predictions file not found")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        need = {"patient_id", "label", "prob_high"}
        missing = need - set(reader.fieldnames or [])
        if missing:
            raise CcrccError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        rows = []
        for lineno, r in enumerate(reader, start=2):
            r["label"] = int(check_number(r["label"], f"{path}:{lineno}: label (0 low, 1 high)", 0, 1, integer=True))
            r["prob_high"] = check_number(r["prob_high"], f"{path}:{lineno}: prob_high", 0, 1)
            rows.append(r)
    if not rows:
        raise CcrccError(f"{path}: no predictions")
    check_prediction_rows(rows, str(path))
    return rows


def check_prediction_rows(rows: list[dict], where: str) -> None:
    """One label per patient, each case once: a patient whose rows disagree on the grade, or a
    row listed twice (which would count a patient twice), is refused."""
    labels: dict[str, int] = {}
    seen: set[tuple] = set()
    image = is_image_level(rows)
    for r in rows:
        pid = r["patient_id"]
        if labels.setdefault(pid, r["label"]) != r["label"]:
            raise CcrccError(f"{where}: patient {pid!r} has rows with label 0 and label 1; one patient has one grade")
        key = ((pid, r.get("phase", ""), r.get("source", ""), *(str(r.get(k, "")) for k in
                                                               ("x_min", "y_min", "x_max", "y_max"))) if image else pid)
        if key in seen:
            raise CcrccError(f"{where}: " + (f"patient {pid!r} is listed twice" if not image else
                                              f"the row of {pid!r} {r.get('source', '')} is listed twice"))
        seen.add(key)


def is_image_level(rows: list[dict]) -> bool:
    return bool(rows) and "source" in rows[0] and rows[0].get("source") not in (None, "")


def patient_level(rows: list[dict], how: str = "mean") -> list[dict]:
    if not is_image_level(rows):
        return [{"patient_id": r["patient_id"], "label": int(r["label"]), "prob_high": float(r["prob_high"])} for r in rows]
    ids, y, p = aggregate_patients([r["patient_id"] for r in rows], np.array([r["prob_high"] for r in rows]),
                                   np.array([r["label"] for r in rows]), how)
    return [{"patient_id": i, "label": int(a), "prob_high": float(b)} for i, a, b in zip(ids, y, p)]


def compute_metrics(rows: list[dict], threshold: float = 0.5, aggregate: str = "mean", n_boot: int = 2000,
                    seed: int = 0) -> dict:
    """{"image": M, "patient": M} (image only for image-level rows)."""
    out = {}
    if is_image_level(rows):
        out["image"] = bootstrap_metrics(np.array([r["label"] for r in rows]), np.array([r["prob_high"] for r in rows]),
                                         [r["patient_id"] for r in rows], threshold, n_boot, seed)
    prow = patient_level(rows, aggregate)
    out["patient"] = bootstrap_metrics(np.array([r["label"] for r in prow]), np.array([r["prob_high"] for r in prow]),
                                       [r["patient_id"] for r in prow], threshold, n_boot, seed)
    return out


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6f}" if k == "prob_high" else v) for k, v in r.items() if k in columns})
    atomic_write_text(path, buf.getvalue())


def operating_points(rows: list[dict], val_rows: list[dict] | None, policy: ThresholdPolicy | None,
                     aggregate: str, n_boot: int, seed: int) -> list[dict]:
    """Metrics at every threshold chosen on **validation** patients (Youden, 90% sensitivity, 90%
    specificity) and at the model's own policy when it is not the default; each entry says how
    its threshold was chosen, or why it could not be (too few validation patients). The test
    rows never choose a threshold."""
    points = []
    if policy is not None and policy.method != "default":
        points.append({"name": "model", **policy.to_dict(), "estimable": True,
                       **compute_metrics(rows, policy.threshold, aggregate, n_boot, seed)})
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
        points.append({"name": method, **fitted.to_dict(), "estimable": True,
                       **compute_metrics(rows, fitted.threshold, aggregate, n_boot, seed)})
    return points


def evaluate_rows(rows: list[dict], out: Path, title: str, val_rows: list[dict] | None = None,
                  aggregate: str = "mean", n_boot: int = 2000, seed: int = 0, extra: dict | None = None,
                  policy: ThresholdPolicy | None = None) -> dict:
    """Predictions -> files + metrics.json in ``out`` (``extra`` keys added to it); returns the
    metrics dict. The main metrics use the study's 0.5; ``operating_points`` add the others."""
    out.mkdir(parents=True, exist_ok=True)
    if is_image_level(rows):
        write_csv(out / "predictions.csv", rows, IMAGE_COLUMNS)
    prow = patient_level(rows, aggregate)
    write_csv(out / "predictions_patient.csv", prow, PATIENT_COLUMNS)
    metrics = compute_metrics(rows, DEFAULT_THRESHOLD, aggregate, n_boot, seed)
    metrics["aggregate"] = aggregate
    metrics["threshold_policy"] = (policy or DEFAULT_POLICY).to_dict()
    metrics["operating_points"] = operating_points(rows, val_rows, policy, aggregate, n_boot, seed)
    levels = [lv for lv in ("image", "patient") if lv in metrics]
    curves = {}
    for lv in levels:
        src = rows if lv == "image" else prow
        y = np.array([r["label"] for r in src])
        p = np.array([r["prob_high"] for r in src])
        metrics[lv]["calibration"] = calibration(y, p) if len(np.unique(y)) == 2 else None
        curves[lv] = (y, p, metrics[lv])
    metrics.update(extra or {})
    roc_figure(curves, out / "roc.png", f"{title}: ROC")
    confusion_figure(metrics[levels[0]]["confusion_matrix"], out / "confusion.png",
                     f"{title} ({levels[0]} level, threshold 0.5)")
    calibration_figure({lv: (metrics[lv]["calibration"]["mean_predicted"], metrics[lv]["calibration"]["fraction_positive"])
                        for lv in levels if metrics[lv]["calibration"]}, out / "calibration.png", f"{title}: calibration")
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def eval_dir(run: Path | str, split: str = "test", cohort: Path | str | None = None) -> Path:
    """Default output folder of `evaluate`: RUN/eval-<split> or RUN/eval-external."""
    run = Path(run)
    return (run if run.is_dir() else run.parent) / (f"eval-{split}" if cohort is None else "eval-external")


def evaluate_run(run: Path | str, split: str = "test", cohort: Path | str | None = None, out: Path | None = None,
                 aggregate: str | None = None, n_boot: int = 2000, seed: int = 0, device: str = "auto") -> dict:
    """Evaluate a run on its test (or val) split or on an external cohort."""
    from ccrcc_grade.model.predict import load_predictor

    run = Path(run)
    predictor = load_predictor(run_checkpoint(run), device)   # loaded once for both splits
    ckpt = predictor[1]
    agg = aggregate or ckpt["config"].get("patient_aggregate", "mean")
    out = Path(out) if out else eval_dir(run, split, cohort)
    rows = run_predictions(run, split, cohort, out, device, predictor)
    val_rows = run_predictions(run, "val", None, out, device, predictor) if (cohort is not None or split != "val") else rows
    return evaluate_rows(rows, out, f"{ckpt['model']} {ckpt['phase']}", val_rows, agg, n_boot, seed,
                         extra={"run": str(run if run.is_dir() else run.parent),
                                "split": split if cohort is None else f"external:{cohort}",
                                "backend": ckpt.get("backend")},
                         policy=policy_of(ckpt)[0])


def summary_line(m: dict) -> str:
    parts = []
    for lv in ("image", "patient"):
        if lv in m:
            a, acc = m[lv]["high"]["auc"], m[lv]["accuracy"]
            parts.append(f"{lv}: n={m[lv]['n']} AUC {a['value']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}] "
                         f"ACC {acc['value']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}] at 0.5 (study default)")
    lines = ["; ".join(parts) + (f" [{m['backend']}]" if m.get("backend") else "")]
    for op in m.get("operating_points", []):
        if not op["estimable"]:
            lines.append(f"  {op['name']}: not estimated - {op['reason']}")
            continue
        lv = "patient"
        ci = op.get("ci95")
        lines.append(f"  {op['name']}: threshold {op['threshold']:.3f}"
                     + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "") + f", {op['source']}: patient "
                     f"sensitivity {op[lv]['high']['sensitivity']['value']:.3f}, "
                     f"specificity {op[lv]['high']['specificity']['value']:.3f}")
    return "\n".join(lines)


def evaluate_command(run: str | None, split: str = "test", cohort: str | None = None, predictions: str | None = None,
                     out: str | None = None, val_predictions: str | None = None, aggregate: str | None = None,
                     n_boot: int = 2000, seed: int = 0) -> str:
    note = ""
    if predictions:
        rows = read_predictions(predictions)
        dest = Path(out) if out else Path(predictions).with_suffix("").with_name(Path(predictions).stem + "-eval")
        val = read_predictions(val_predictions) if val_predictions else None
    else:
        if not run:
            raise CcrccError("evaluate needs a RUN folder or --predictions CSV")
        dest = Path(out) if out else eval_dir(run, split, cohort)
    if not out and (dest / "metrics.json").is_file():   # never replace an earlier evaluation (e.g. the study's)
        taken = dest
        dest = next(dest.with_name(f"{dest.name}-{k}") for k in range(2, 10_000)
                    if not dest.with_name(f"{dest.name}-{k}").exists())
        note = f"\n{taken} holds an earlier evaluation (kept as it is); this one goes to {dest}"
    elif out and (dest / "metrics.json").is_file():
        note = f"\nreplaced the earlier evaluation in {dest} (--out names it)"
    if predictions:
        m = evaluate_rows(rows, dest, Path(predictions).stem, val, aggregate or "mean", n_boot, seed)
    else:
        m = evaluate_run(run, split, cohort, dest, aggregate, n_boot, seed)
    return summary_line(m) + note + f"\nwrote {dest / 'metrics.json'}"

