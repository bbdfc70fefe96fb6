"""The whole study in one command (Cui et al. 2025, done with validation-only model selection):

ingest -> split -> ResNet34 on plain, corticomedullary, parenchymal, excretory and combined ->
best phase by VALIDATION patient AUC -> SE-ResNet34 on that phase -> evaluate all on test ->
paired ResNet34 vs SE-ResNet34 tests -> report.html / report.md / results.json.

Layout: DIR/work (ingested cohort + splits), DIR/runs/<model>-<phase>[-fold<k>] (normal RUN
folders), DIR/results.json, DIR/report.{html,md}. Finished runs are reused, interrupted ones
resumed, so re-running the command continues where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import CropCache, ingest, summarize
from .clinical import clinical_table
from .compare import compare
from .config import PreprocessConfig, TrainConfig
from .errors import CcrccError
from .evaluate import eval_dir, evaluate_run
from .fileio import atomic_write_json
from .phases import COMBINED, PHASES
from .splits import make_splits

PRESETS = {
    # the study's protocol
    "paper": dict(size=224, image_size=224, epochs=50, weights="imagenet", repeats=3, lr=1e-3, n_boot=2000),
    # a CPU-sized version for demos and smoke tests: small crops, few epochs, no download; a
    # network trained from scratch needs a larger step than the study's fine-tuning lr
    "quick": dict(size=64, image_size=64, epochs=8, weights="none", repeats=1, lr=1e-2, n_boot=500),
}


@dataclass
class StudyOptions:
    preset: str = "paper"
    folds: int = 0
    seed: int = 0
    weights: str | None = None
    device: str = "auto"
    epochs: int | None = None
    image_size: int | None = None
    size: int | None = None
    format: str = "cohort"
    external: str | None = None
    ratios: str = "8:1:1"
    threshold: str = "default"   # the decision-threshold policy of every model (threshold.py)

    def resolved(self) -> dict:
        if self.preset not in PRESETS:
            raise CcrccError(f"unknown preset {self.preset!r}; use paper or quick")
        from .threshold import parse_spec

        parse_spec(self.threshold)   # refuse a bad policy before hours of training
        p = dict(PRESETS[self.preset])
        for k in ("weights", "epochs", "image_size", "size"):
            if getattr(self, k) is not None:
                p[k] = getattr(self, k)
        return p


def _ensure_work(cohort: Path, out: Path, opts: StudyOptions, p: dict) -> Path:
    work = out / "work"
    if (work / "manifest.csv").is_file():
        print(f"reusing ingested cohort {work}")
        return work
    cfg = PreprocessConfig(size=p["size"])
    if opts.format == "kits":
        from .io.kits import ingest_kits

        ingest_kits(cohort, work, cfg)
    elif (cohort / "manifest.csv").is_file():
        raise CcrccError(f"{cohort}: is an ingested WORK folder; give the raw cohort folder to `study`")
    else:
        ingest(cohort, work, cfg)
    return work


def _train(work: Path, out: Path, model: str, phase: str, p: dict, opts: StudyOptions, fold: int = -1) -> Path:
    from .train import fit, resume

    name = f"{model}-{phase}" + (f"-fold{fold}" if fold >= 0 else "")
    run = out / "runs" / name
    if (run / "train_summary.json").is_file() and (run / "best.pt").is_file():
        print(f"[{name}] finished earlier; reused")
        return run
    if (run / "last.pt").is_file():
        print(f"[{name}] resuming")
        resume(run)
        return run
    cfg = TrainConfig(work=str(work), phase=phase, model=model, out=str(run), weights=p["weights"],
                      epochs=p["epochs"], image_size=p["image_size"], repeats=p["repeats"], lr=p["lr"],
                      device=opts.device, seed=opts.seed, fold=fold, threshold=opts.threshold)
    print(f"[{name}] training")
    fit(cfg)
    return run


def _val_auc(run: Path) -> float:
    s = json.loads((run / "train_summary.json").read_text())
    v = s.get("best_val", {}).get("val_auc")
    return -math.inf if v is None else float(v)


def _val_key(run: Path) -> tuple[float, float]:
    """Selection key: validation patient AUC, ties broken by validation image AUC."""
    s = json.loads((run / "train_summary.json").read_text()).get("best_val", {})
    img = s.get("val_image_auc")
    return _val_auc(run), (-math.inf if img is None else float(img))


def _eval(run: Path, p: dict, opts: StudyOptions, split: str = "test", cohort: str | None = None) -> dict:
    dest = eval_dir(run, split, cohort)
    if (dest / "metrics.json").is_file():   # reuse an evaluation made with the same resampling
        m = json.loads((dest / "metrics.json").read_text())
        if m.get("patient", {}).get("bootstrap", {}).get("resamples") == p["n_boot"]:
            return m
    return evaluate_run(run, split, cohort, dest, n_boot=p["n_boot"], seed=opts.seed, device=opts.device)


def run_study(cohort: Path, out: Path, opts: StudyOptions) -> Path:
    """Run (or continue) the whole study; returns the path of report.html."""
    from .report import write_report

    t0 = time.time()
    p = opts.resolved()
    out.mkdir(parents=True, exist_ok=True)
    work = _ensure_work(Path(cohort), out, opts, p)
    if not (work / "splits.json").is_file():
        make_splits(work, opts.ratios, opts.seed, opts.folds)
    splits = json.loads((work / "splits.json").read_text())
    if opts.folds and "folds" not in splits:
        splits = make_splits(work, opts.ratios, opts.seed, opts.folds)
    cache = CropCache.load(work)
    phases = [ph for ph in PHASES if ph in cache.phases()] + ([COMBINED] if len(cache.phases()) > 1 else [])
    results: dict = {"study": {"cohort": str(Path(cohort).resolve()), "out": str(out.resolve()),
                               "preset": opts.preset, "protocol": p, "seed": opts.seed, "folds": opts.folds,
                               "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                               "synthetic": _is_synthetic(Path(cohort))}}
    results["dataset"] = dataset_counts(cache, splits)
    results["clinical"] = clinical_table(work / "clinical.csv")
    ingest_report = json.loads((work / "ingest_report.json").read_text())
    results["ingest_warnings"] = len(ingest_report.get("warnings", []))

    if opts.folds:
        results.update(_cross_validation(work, out, phases, p, opts))
    else:
        runs = {}
        for ph in phases:
            runs[f"resnet34-{ph}"] = _train(work, out, "resnet34", ph, p, opts)
        val_aucs = {ph: _val_auc(runs[f"resnet34-{ph}"]) for ph in phases}
        best = max(phases, key=lambda ph: _val_key(runs[f"resnet34-{ph}"]))
        results["val_auc_resnet34"] = val_aucs
        results["best_phase"] = best
        results["best_phase_rule"] = "highest validation patient-level AUC of ResNet34 (test set never used)"
        runs[f"se_resnet34-{best}"] = _train(work, out, "se_resnet34", best, p, opts)
        results["runs"] = {}
        external = _external_work(out, runs[f"resnet34-{best}"], opts) if opts.external else None
        for name, run in runs.items():
            m = _eval(run, p, opts)
            results["runs"][name] = {"run": str(run), "val_auc": _val_auc(run), "test": m}
            if external:
                results["runs"][name]["external"] = _eval(run, p, opts, cohort=external)
        results["comparison"] = _compare_evals(runs[f"resnet34-{best}"], runs[f"se_resnet34-{best}"])
        results["comparison"]["a"], results["comparison"]["b"] = f"resnet34-{best}", f"se_resnet34-{best}"
    results["limitations"] = limitations(results)
    results["study"]["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "results.json", results)
    return write_report(results, out)


def _external_work(out: Path, run: Path, opts: StudyOptions) -> str:
    """Ingest the external cohort once (with the study's preprocessing) for every model."""
    from .evaluate import external_cache
    from .inference import read_checkpoint

    if (out / "external_work" / "manifest.csv").is_file():
        return str(out / "external_work")
    return str(external_cache(Path(opts.external), read_checkpoint(run / "best.pt"), out).work)


def _compare_evals(run_a: Path, run_b: Path) -> dict:
    from .evaluate import read_predictions

    return compare(read_predictions(run_a / "eval-test" / "predictions.csv"),
                   read_predictions(run_b / "eval-test" / "predictions.csv"))


def _is_synthetic(cohort: Path) -> bool:
    f = cohort / "README.txt"
    return f.is_file() and f.read_text(errors="replace").startswith("SYNTHETIC")


def dataset_counts(cache: CropCache, splits: dict) -> dict:
    """Crops and patients per phase and class, overall and per split part."""
    out = {"all": summarize(cache.manifest)}
    for part in ("train", "val", "test"):
        ids = set(splits.get(part, []))
        out[part] = summarize([r for r in cache.manifest if r["patient_id"] in ids])
    return out


def _cross_validation(work: Path, out: Path, phases: list[str], p: dict, opts: StudyOptions) -> dict:
    """K-fold: ResNet34 on every phase in every fold, SE-ResNet34 on the phase with the best mean
    validation AUC; test metrics per fold and their mean +- SD."""
    runs: dict[str, list[Path]] = {}
    for ph in phases:
        runs[f"resnet34-{ph}"] = [_train(work, out, "resnet34", ph, p, opts, fold=f) for f in range(opts.folds)]
    mean_val = {ph: float(np.mean([_val_auc(r) for r in runs[f"resnet34-{ph}"]])) for ph in phases}
    best = max(phases, key=lambda ph: (mean_val[ph], ph != COMBINED))
    runs[f"se_resnet34-{best}"] = [_train(work, out, "se_resnet34", best, p, opts, fold=f) for f in range(opts.folds)]
    cv: dict = {}
    for name, rs in runs.items():
        folds = [_eval(r, p, opts) for r in rs]
        summary = {}
        for lv in ("image", "patient"):
            vals = {"auc": [f[lv]["high"]["auc"]["value"] for f in folds],
                    "accuracy": [f[lv]["accuracy"]["value"] for f in folds],
                    "sensitivity": [f[lv]["high"]["sensitivity"]["value"] for f in folds],
                    "specificity": [f[lv]["high"]["specificity"]["value"] for f in folds]}
            summary[lv] = {k: {"mean": float(np.nanmean(v)), "sd": float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0,
                               "folds": v} for k, v in vals.items()}
        cv[name] = {"runs": [str(r) for r in rs], "cv": summary, "val_auc_mean": float(np.mean([_val_auc(r) for r in rs]))}
    return {"best_phase": best, "val_auc_resnet34": mean_val, "cross_validation": cv,
            "best_phase_rule": "highest mean validation patient-level AUC of ResNet34 across folds"}


def limitations(results: dict) -> str:
    """Plain-language limitations computed from the data."""
    ds = results["dataset"]
    test = ds.get("test", {}).get("combined") or next(iter(ds.get("test", {}).values()), None)
    parts = []
    if test:
        n_low, n_high = test["low"]["patients"], test["high"]["patients"]
        parts.append(f"The test set holds {n_low + n_high} patients ({n_high} high grade), so every test metric "
                     f"rests on few patients: one misclassified high-grade patient moves high-grade sensitivity by "
                     f"{100 / max(n_high, 1):.0f} percentage points.")
    if "runs" in results:
        widths = []
        for r in results["runs"].values():
            auc = r["test"]["patient"]["high"]["auc"]
            if all(np.isfinite(auc["ci95"])):
                widths.append(auc["ci95"][1] - auc["ci95"][0])
        if widths:
            parts.append(f"Patient-level AUC 95% CIs are {min(widths):.2f} to {max(widths):.2f} wide; differences "
                         f"between phases smaller than that are not evidence of a better phase.")
        c = results.get("comparison", {}).get("patient")
        if c:
            verdict = "significant" if c["delong_p"] < 0.05 else "not significant"
            parts.append(f"SE-ResNet34 vs ResNet34 on the {results['best_phase']} phase: patient AUC difference "
                         f"{c['auc_diff'] * -1:+.3f} (DeLong P = {c['delong_p']:.3f}, {verdict}).")
    parts.append("Image-level metrics treat slices of one patient as independent and overstate precision; the "
                 "patient-level results are the clinically meaningful ones. Results come from one cohort"
                 + (" with external validation" if any("external" in r for r in results.get("runs", {}).values())
                    else " without external validation") + "; the best phase was chosen on validation data only.")
    if results["study"].get("synthetic"):
        parts.append("This cohort is SYNTHETIC (phantom images): the numbers demonstrate the software, not clinical performance.")
    return " ".join(parts)

