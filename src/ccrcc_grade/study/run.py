"""The whole study in one command (Cui et al. 2025, done with validation-only model selection):

ingest -> split -> ResNet34 on plain, corticomedullary, parenchymal, excretory and combined ->
best phase by VALIDATION patient AUC -> SE-ResNet34 on that phase -> evaluate all on test ->
paired ResNet34 vs SE-ResNet34 tests -> beyond the study (evidence/: late fusion, a multi-phase
network, radiomics, clinical and combined models, all compared on the same test patients with
calibration and decision curves) -> report.html / report.md / results.json.

Independent trainings (the phase models, every fold) run ``--jobs`` at a time (train_all).

Layout: DIR/work (ingested cohort + splits), DIR/runs/<model>-<phase>[-fold<k>] (normal RUN
folders), DIR/results.json, DIR/report.{html,md}. Finished runs are reused, interrupted ones
resumed, so re-running the command continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from ccrcc_grade.core.config import PreprocessConfig, StudyOptions, StudyProtocol, TrainConfig, parse_jobs
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_write_json
from ccrcc_grade.core.paths import EvalFiles, RunDir, StudyDir, WorkDir, read_json
from ccrcc_grade.core.phases import COMBINED, PHASES
from ccrcc_grade.evidence.box_robustness import reader_study, robustness_study
from ccrcc_grade.evidence.run import evaluate_models
from ccrcc_grade.ingest.cache import CropCache, cohort_fingerprint, summarize
from ccrcc_grade.ingest.layouts import detect_layout
from ccrcc_grade.ingest.pipeline import ingest
from ccrcc_grade.ingest.splits import make_splits
from ccrcc_grade.model.evaluate import eval_dir, evaluate_run, external_cache
from ccrcc_grade.model.inference import read_checkpoint
from ccrcc_grade.model.train import cohort_identity, fit, resume
from ccrcc_grade.stats.clinical import clinical_table
from ccrcc_grade.stats.compare import compare
from ccrcc_grade.stats.format import format_p, signed
from ccrcc_grade.stats.metrics import auc_with_ci, metric, metric_value
from ccrcc_grade.stats.predictions import patient_level, read_predictions
from ccrcc_grade.study.report import write_report


def _ensure_work(cohort: Path, study: StudyDir, opts: StudyOptions, protocol: StudyProtocol) -> Path:
    work = study.work
    if work.is_ingested():
        check_same_cohort(cohort, work.path)
        print(f"reusing ingested cohort {work.path}")
        return work.path
    layout = "kits" if opts.format == "kits" else detect_layout(cohort)
    if layout == "work":
        raise CcrccError(f"{cohort}: is an ingested WORK folder; give the raw cohort folder to `study`")
    ingest(cohort, work.path, PreprocessConfig(size=protocol.size), layout=layout)
    return work.path


class StudyProgress:
    """One line per model of the study: 'model 3 of 6: resnet34-parenchymal (~4 min left)', the
    estimate from the models trained so far in this invocation (reused ones cost nothing)."""

    def __init__(self, total: int):
        self.total, self.done, self.trained, self.seconds = total, 0, 0, 0.0

    def start(self, name: str, reused: bool = False) -> float:
        self.done += 1
        left = self.total - self.done + 1
        eta = (
            f" (~{max(1, round(left * self.seconds / self.trained / 60))} min left)"
            if self.trained and not reused
            else ""
        )
        print(
            f"[study] model {self.done} of {self.total}: {name}" + (" - finished earlier, reused" if reused else eta),
            flush=True,
        )
        return time.time()

    def finish(self, t0: float) -> None:
        self.trained += 1
        self.seconds += time.time() - t0


def check_same_cohort(cohort: Path, work: Path) -> None:
    """A study folder belongs to one cohort: reusing its cache and models for another (or for
    the same folder edited since) would report one cohort's numbers under the other's name."""
    rep = WorkDir(work).read_ingest_report()
    here = str(Path(cohort).resolve())
    if rep.get("cohort") != here:
        raise CcrccError(
            f"{work.parent}: holds the study of cohort {rep.get('cohort', '(unknown)')}, not {here}; give another --out"
        )
    if rep.get("cohort_fingerprint") and rep["cohort_fingerprint"] != cohort_fingerprint(Path(cohort)):
        raise CcrccError(
            f"{work.parent}: cohort {here} has changed since this study ingested it (files or tables "
            "differ); give another --out to study it as it is now"
        )


def _train(
    work: Path,
    out: Path,
    model: str,
    phase: str,
    protocol: StudyProtocol,
    opts: StudyOptions,
    fold: int = -1,
    progress: StudyProgress | None = None,
) -> Path:
    progress = progress or StudyProgress(1)
    name = f"{model}-{phase}" + (f"-fold{fold}" if fold >= 0 else "")
    run = StudyDir(out).run(name).path
    if RunDir(run).is_finished():
        made_from = RunDir(run).read_summary().get("cohort") or {}
        if made_from.get("fingerprint") and made_from["fingerprint"] != cohort_identity(work)["fingerprint"]:
            raise CcrccError(
                f"{run}: was trained on another cohort ({made_from.get('path')}) than {work} holds; "
                "give the study another --out"
            )
        progress.start(name, reused=True)
        return run
    t0 = progress.start(name)
    if RunDir(run).last.is_file():
        print(f"[{name}] resuming")
        resume(run)
        progress.finish(t0)
        return run
    cfg = TrainConfig(
        work=str(work),
        phase=phase,
        model=model,
        out=str(run),
        weights=protocol.weights,
        epochs=protocol.epochs_for(phase),
        image_size=protocol.image_size,
        repeats=protocol.repeats,
        lr=protocol.lr,
        device=opts.device,
        seed=opts.seed,
        fold=fold,
        threshold=opts.threshold,
    )
    fit(cfg)
    progress.finish(t0)
    return run


JOBS_PER_GPU_MAX = 5  # measured: 5 ResNet34 trainings share one H100 at ~4,500 img/s together
GPU_GB_PER_JOB = 4.0  # batch 32 at 224 px, bf16: ~3 GB of activations + weights, with headroom


def resolve_jobs(jobs: str | int, device: str) -> int:
    """How many trainings run at once: a number as given; ``auto``: on CUDA as many per GPU as its
    free memory holds (at most 5 per GPU) times the visible GPUs, on a CPU one (a training
    already uses every core)."""
    if str(jobs) != "auto":
        return parse_jobs(jobs)
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return 1
    per_gpu = []
    for i in range(torch.cuda.device_count()):
        free, _ = torch.cuda.mem_get_info(i)
        per_gpu.append(max(1, min(JOBS_PER_GPU_MAX, int(free / 2**30 // GPU_GB_PER_JOB))))
    return sum(per_gpu)


def _train_job(args: tuple) -> str:
    """One training of a concurrent study, in its own process: stdout to RUN/train.log, the CPU
    threads of a sequential run (so a CPU run is bit for bit the one it would be alone; the
    cores are shared), its GPU by round robin."""
    import contextlib
    import os

    import torch

    work, out, model, phase, protocol, opts, fold, slot, threads = args
    name = f"{model}-{phase}" + (f"-fold{fold}" if fold >= 0 else "")
    run = StudyDir(out).run(name).path
    run.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)  # the sequential study's threads: CPU kernels reduce in the same order
    if opts.device != "cpu" and torch.cuda.is_available():
        opts = dataclasses.replace(opts, device=f"cuda:{slot % torch.cuda.device_count()}")
    os.environ["CCRCC_NO_PROGRESS"] = "1"
    with open(RunDir(run).train_log, "a", encoding="utf-8") as fh, contextlib.redirect_stdout(fh):
        _train(work, out, model, phase, protocol, opts, fold, StudyProgress(1))
    return name


def train_all(
    work: Path,
    out: Path,
    todo: list[tuple[str, str, int]],
    protocol: StudyProtocol,
    opts: StudyOptions,
    progress: StudyProgress,
) -> dict[tuple[str, str, int], Path]:
    """Train every (model, phase, fold) of ``todo`` (fold -1: the single split): one after another,
    or ``--jobs`` at a time in separate processes (same config, seed and data order, so each run
    is the one it would be alone). Finished runs are reused and interrupted ones resumed either way."""
    jobs = min(resolve_jobs(opts.jobs, opts.device), len(todo))
    if jobs <= 1:
        return {(m, ph, f): _train(work, out, m, ph, protocol, opts, f, progress) for (m, ph, f) in todo}
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    print(f"[study] {len(todo)} trainings, {jobs} at a time (each run's output in RUN/train.log)", flush=True)
    t0 = time.time()
    runs = {}
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        import torch

        threads = torch.get_num_threads()
        futures = {
            pool.submit(_train_job, (work, out, m, ph, protocol, opts, f, k, threads)): (m, ph, f)
            for k, (m, ph, f) in enumerate(todo)
        }
        for done, fut in enumerate(as_completed(futures), start=1):
            name = fut.result()
            runs[futures[fut]] = StudyDir(out).run(name).path
            print(f"[study] {done} of {len(todo)} trainings done: {name} ({time.time() - t0:.0f} s)", flush=True)
    return runs


def _val_auc(run: Path) -> float:
    s = RunDir(run).read_summary()
    v = s.get("best_val", {}).get("val_auc")
    return -math.inf if v is None else float(v)


def choose_best_phase(
    keys: dict[str, tuple[float, float]], second: str = "validation image AUC", show_second: bool = True
) -> tuple[str, dict]:
    """The phase with the highest validation patient AUC; ties broken by validation image AUC,
    then by the order of ``keys`` (the study's phase order). Returns the phase and a record of
    the tie (``text`` says it in a sentence for the report; empty when there was none)."""
    best = max(keys, key=lambda ph: keys[ph])  # max keeps the first of equal keys
    top = keys[best][0]
    tied = [ph for ph in keys if keys[ph][0] == top]
    record = {"tied": tied, "broken_by": None, "text": ""}
    if len(tied) > 1:
        still = [ph for ph in tied if keys[ph] == keys[best]]
        record["broken_by"] = second + (", then phase order" if len(still) > 1 else "")
        record["text"] = (
            f"{len(tied)} phases tie at validation patient AUC {top:.3f} ({', '.join(tied)}); the tie "
            f"was broken by {second}"
            + (" (" + ", ".join(f"{ph} {keys[ph][1]:.3f}" for ph in tied) + ")" if show_second else "")
            + (
                f" and, as {', '.join(still)} tie on that too, by the phase order (first listed)"
                if len(still) > 1
                else ""
            )
            + f": {best}."
        )
    return best, record


def _val_key(run: Path) -> tuple[float, float]:
    """Selection key: validation patient AUC, ties broken by validation image AUC."""
    s = RunDir(run).read_summary().get("best_val", {})
    img = s.get("val_image_auc")
    return _val_auc(run), (-math.inf if img is None else float(img))


def _eval(
    run: Path, protocol: StudyProtocol, opts: StudyOptions, split: str = "test", cohort: str | None = None
) -> dict:
    dest = eval_dir(run, split, cohort)
    if (dest / EvalFiles.METRICS).is_file():  # reuse an evaluation made with the same resampling
        m = read_json(dest / EvalFiles.METRICS)
        if m.get("patient", {}).get("bootstrap", {}).get("resamples") == protocol.n_boot:
            return m
    return evaluate_run(run, split, cohort, dest, n_boot=protocol.n_boot, seed=opts.seed, device=opts.device)


def run_study(cohort: Path, out: Path, opts: StudyOptions) -> Path:
    """Run (or continue) the whole study; returns the path of report.html."""
    t0 = time.time()
    protocol = opts.resolved()
    if opts.second_reader and not Path(opts.second_reader).exists():
        raise CcrccError(f"--second-reader {opts.second_reader}: not found (a boxes.csv or a cohort folder)")
    out.mkdir(parents=True, exist_ok=True)
    work = _ensure_work(Path(cohort), StudyDir(out), opts, protocol)
    if not WorkDir(work).splits.is_file():
        make_splits(work, opts.ratios, opts.seed, opts.folds)
    splits = WorkDir(work).read_splits()
    if opts.folds and "folds" not in splits:
        splits = make_splits(work, opts.ratios, opts.seed, opts.folds)
    cache = CropCache.load(work)
    phases = [ph for ph in PHASES if ph in cache.phases()] + ([COMBINED] if len(cache.phases()) > 1 else [])
    results: dict = {
        "study": {
            "cohort": str(Path(cohort).resolve()),
            "out": str(out.resolve()),
            "preset": opts.preset,
            "protocol": protocol.to_dict(),
            "seed": opts.seed,
            "folds": opts.folds,
            "ratios": opts.ratios,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "synthetic": _is_synthetic(Path(cohort)),
        }
    }
    preflight(cache, splits, phases, opts.folds)
    results["estimate"] = estimate_seconds(cache, splits, phases, protocol, opts)
    print(f"[study] {results['estimate']['text']}", flush=True)
    results["dataset"] = dataset_counts(cache, splits)
    results["clinical"] = clinical_table(WorkDir(work).clinical)
    ingest_report = WorkDir(work).read_ingest_report()
    results["ingest_warnings"] = len(ingest_report.get("warnings", []))

    if opts.folds:
        results.update(_cross_validation(work, out, phases, protocol, opts))
    else:
        progress = StudyProgress(len(phases) + 1)
        runs = {
            f"{m}-{ph}": r
            for (m, ph, _), r in train_all(
                work, out, [("resnet34", ph, -1) for ph in phases], protocol, opts, progress
            ).items()
        }
        val_aucs = {ph: _val_auc(runs[f"resnet34-{ph}"]) for ph in phases}
        best, tie = choose_best_phase({ph: _val_key(runs[f"resnet34-{ph}"]) for ph in phases})
        results["val_auc_resnet34"] = val_aucs
        results["val_auc_resnet34_ci"] = {
            ph: RunDir(runs[f"resnet34-{ph}"]).read_summary().get("best_val_patients") for ph in phases
        }
        results["best_phase"] = best
        results["best_phase_tie"] = tie
        results["best_phase_rule"] = "highest validation patient-level AUC of ResNet34 (test set never used)"
        runs[f"se_resnet34-{best}"] = _train(work, out, "se_resnet34", best, protocol, opts, progress=progress)
        results["runs"] = {}
        external = _external_work(out, runs[f"resnet34-{best}"], opts) if opts.external else None
        for name, run in runs.items():
            m = _eval(run, protocol, opts)
            results["runs"][name] = {"run": str(run), "val_auc": _val_auc(run), "test": m}
            if external:
                results["runs"][name]["external"] = _eval(run, protocol, opts, cohort=external)
        # computed once, in the order the report shows it: SE-ResNet34 (a) minus ResNet34 (b)
        results["comparison"] = _compare_evals(runs[f"se_resnet34-{best}"], runs[f"resnet34-{best}"])
        results["comparison"]["a"], results["comparison"]["b"] = f"se_resnet34-{best}", f"resnet34-{best}"
        if opts.evidence:
            results.update(
                evaluate_models(work, out, runs, best, protocol, splits, opts.threshold, opts.device, opts.seed)
            )
        results.update(_box_evidence(Path(cohort), work, runs[f"resnet34-{best}"], protocol, opts))
    results["limitations"] = limitations(results)
    results["study"]["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(StudyDir(out).results, results)
    return write_report(results, out)


def _box_evidence(cohort: Path, work: Path, run: Path, protocol: StudyProtocol, opts: StudyOptions) -> dict:
    """The readers' agreement (with --second-reader) and the best-phase model's robustness to the
    box on the test patients; what cannot be computed says why instead."""
    out: dict = {}
    shifts = None
    if detect_layout(cohort) == "work":
        why = "the study was given an ingested WORK folder, not the cohort with its boxes"
        return {"box_robustness": {"note": f"not computed: {why}"}}
    try:
        if opts.second_reader:
            out["agreement"] = reader_study(cohort, Path(opts.second_reader), run, opts.device)
            shifts = np.array(out["agreement"]["side_differences_mm"]["values"])
        test_ids = list(WorkDir(work).read_splits()["test"])
        out["box_robustness"] = robustness_study(
            cohort, run, test_ids, observed_shifts_mm=shifts, n_boot=protocol.n_boot, seed=opts.seed, device=opts.device
        )
    except CcrccError as exc:
        out.setdefault("box_robustness", {"note": f"not computed: {exc}"})
    return out


def _external_work(out: Path, run: Path, opts: StudyOptions) -> str:
    """Ingest the external cohort once (with the study's preprocessing) for every model."""
    if StudyDir(out).external_work.is_ingested():
        return str(StudyDir(out).external_work.path)
    return str(external_cache(Path(opts.external), read_checkpoint(RunDir(run).best), out).work)


def _compare_evals(run_a: Path, run_b: Path) -> dict:
    return compare(
        read_predictions(RunDir(run_a).predictions("test")), read_predictions(RunDir(run_b).predictions("test"))
    )


def _is_synthetic(cohort: Path) -> bool:
    f = cohort / "README.txt"
    return f.is_file() and f.read_text(errors="replace").startswith("SYNTHETIC")


def preflight(cache: CropCache, splits: dict, phases: list[str], folds: int | None) -> None:
    """Before any training: every model must have crops of both grades in each part it uses
    (train, validation, test; each fold's training and validation patients with --folds), on its
    phase. Otherwise a model would train on one grade or report an AUC that cannot exist hours
    later; the refusal names the phase and the part."""
    labels = {r["patient_id"]: int(r["label"]) for r in cache.manifest}
    parts = {p: set(splits.get(p, [])) for p in ("train", "val", "test")}
    if folds and "folds" in splits:
        parts = {"test": parts["test"]}
        fold_of = splits["folds"]  # patient -> fold
        for k in sorted(set(fold_of.values())):
            held = {p for p, f in fold_of.items() if f == k}
            parts |= {f"fold {k + 1} training": set(fold_of) - held, f"fold {k + 1} validation": held}
    for ph in phases:
        have = {r["patient_id"] for r in cache.select(ph)}
        for part, ids in parts.items():
            grades = {labels[i] for i in ids & have}
            if grades != {0, 1}:
                missing = " and ".join(n for k, n in ((0, "low"), (1, "high")) if k not in grades)
                raise CcrccError(
                    f"the {part} patients have no {missing}-grade patient with a {ph} crop: the {ph} model "
                    "needs both grades in every part (more patients of that grade, other --ratios or --seed)"
                )


def estimate_seconds(
    cache: CropCache, splits: dict, phases: list[str], protocol: StudyProtocol, opts: StudyOptions
) -> dict:
    """The study's training time before it starts: the training images of every model (epochs
    x repeats x its phase's training crops; the SE-ResNet34 as a second model of one phase) at
    the speed of a few timed training steps of ResNet34 on this device."""
    from ccrcc_grade.model.train import train_images_per_second

    train = set(splits.get("train", []))
    images = sum(len(cache.select(ph, train)) * protocol.repeats * protocol.epochs_for(ph) for ph in phases)
    images += max((len(cache.select(ph, train)) for ph in phases if ph != COMBINED), default=0) * (
        protocol.repeats * protocol.epochs
    )
    if opts.folds:
        images *= opts.folds
    from ccrcc_grade.model.inference import resolve_device

    speed = train_images_per_second(opts.device, protocol.image_size)
    device = resolve_device(opts.device).type
    seconds = images / speed * 1.25  # validation passes and evaluation on top of the training steps
    minutes = seconds / 60
    span = f"~{minutes:.0f} min" if minutes >= 1.5 else "under 2 min"
    return {
        "train_images": int(images),
        "images_per_second": round(speed, 1),
        "seconds": round(seconds),
        "text": f"estimated training time {span}: {images} training images at {speed:.0f} images/s "
        f"on {device} ({len(phases) + 1} models; reused models cost nothing)",
    }


def dataset_counts(cache: CropCache, splits: dict) -> dict:
    """Crops and patients per phase and class, overall and per split part."""
    out = {"all": summarize(cache.manifest)}
    for part in ("train", "val", "test"):
        ids = set(splits.get(part, []))
        out[part] = summarize([r for r in cache.manifest if r["patient_id"] in ids])
    return out


def _pooled_auc(runs: list[Path]) -> dict:
    """The patient AUC of the out-of-fold predictions pooled over the folds (each patient is tested
    once), with its DeLong CI: the interval the fold means cannot give (folds share training data)."""
    rows = [r for run in runs for r in patient_level(read_predictions(RunDir(run).predictions("test")))]
    return auc_with_ci(np.array([r["label"] for r in rows]), np.array([r["prob_high"] for r in rows]))


def _cross_validation(work: Path, out: Path, phases: list[str], protocol: StudyProtocol, opts: StudyOptions) -> dict:
    """K-fold: ResNet34 on every phase in every fold, SE-ResNet34 on the phase with the best mean
    validation AUC; test metrics per fold and their mean +- SD."""
    progress = StudyProgress((len(phases) + 1) * opts.folds)
    done = train_all(
        work, out, [("resnet34", ph, f) for ph in phases for f in range(opts.folds)], protocol, opts, progress
    )
    runs = {f"resnet34-{ph}": [done[("resnet34", ph, f)] for f in range(opts.folds)] for ph in phases}
    mean_val = {ph: float(np.mean([_val_auc(r) for r in runs[f"resnet34-{ph}"]])) for ph in phases}
    best, tie = choose_best_phase(
        {ph: (mean_val[ph], float(ph != COMBINED)) for ph in phases},
        "preferring a single phase over the combined set",
        show_second=False,
    )
    se = train_all(work, out, [("se_resnet34", best, f) for f in range(opts.folds)], protocol, opts, progress)
    runs[f"se_resnet34-{best}"] = [se[("se_resnet34", best, f)] for f in range(opts.folds)]
    cv: dict = {}
    for name, rs in runs.items():
        folds = [_eval(r, protocol, opts) for r in rs]
        summary = {}
        for lv in ("image", "patient"):
            vals = {
                k: [metric_value(f[lv], k) for f in folds] for k in ("auc", "accuracy", "sensitivity", "specificity")
            }
            summary[lv] = {
                k: {"mean": float(np.nanmean(v)), "sd": float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0, "folds": v}
                for k, v in vals.items()
            }
        cv[name] = {
            "runs": [str(r) for r in rs],
            "cv": summary,
            "val_auc_mean": float(np.mean([_val_auc(r) for r in rs])),
            "n_patients_per_fold": [int(f["patient"]["n"]) for f in folds],
            "pooled_patient_auc": _pooled_auc(rs),
        }
    return {
        "best_phase": best,
        "val_auc_resnet34": mean_val,
        "cross_validation": cv,
        "best_phase_tie": tie,
        "best_phase_rule": "highest mean validation patient-level AUC of ResNet34 across folds",
    }


def limitations(results: dict) -> str:
    """Plain-language limitations computed from the data."""
    ds = results["dataset"]
    test = ds.get("test", {}).get("combined") or next(iter(ds.get("test", {}).values()), None)
    parts = []
    if test:
        n_low, n_high = test["low"]["patients"], test["high"]["patients"]
        parts.append(
            f"The test set holds {n_low + n_high} patients ({n_high} high grade), so every test metric "
            f"rests on few patients: one misclassified high-grade patient moves high-grade sensitivity by "
            f"{100 / max(n_high, 1):.0f} percentage points."
        )
        few = [(n, g) for n, g in ((n_low, "low"), (n_high, "high")) if n <= 2]
        if few:
            parts.append(
                " and ".join(f"{n} {g}-grade patient{'s' if n != 1 else ''}" for n, g in few).capitalize()
                + " in the test set: every test conclusion about that grade (its sensitivity, the AUC, "
                "the comparisons) rests on one or two patients and would change with one of them."
            )
    if "runs" in results:
        widths = []
        for r in results["runs"].values():
            auc = metric(r["test"]["patient"], "auc")
            if all(v is not None and np.isfinite(v) for v in auc["ci95"]):  # null in a resumed study's JSON
                widths.append(auc["ci95"][1] - auc["ci95"][0])
        if widths:
            parts.append(
                f"The width of the patient-level AUC 95% CIs (upper minus lower bound) ranges from "
                f"{min(widths):.2f} to {max(widths):.2f} across the models"
                + (
                    " (a width of 0.00 is a degenerate interval: zero variance on few patients, not certainty)"
                    if min(widths) == 0
                    else ""
                )
                + "; differences between phases smaller than that are not evidence of a better phase."
            )
        c = results.get("comparison", {}).get("patient")
        if c:
            verdict = (
                f"95% CI {signed(c['auc_diff_ci95'][0])} to {signed(c['auc_diff_ci95'][1])}, "
                f"{c['auc_test']} P = {format_p(c['auc_p'])}, one pre-specified comparison on {c['n']} patients"
                if c["auc_estimable"]
                else f"{c['auc_test']} {c['auc_note']}"
            )
            parts.append(
                f"SE-ResNet34 minus ResNet34 on the {results['best_phase']} phase: patient AUC difference "
                f"{signed(c['auc_diff'])} ({verdict})."
            )
    tested = [m for m in results.get("models") or [] if m.get("delong_p_holm") is not None]
    if tested:  # significance from the Holm-adjusted P, never the raw one
        differ = [m["name"] for m in tested if m["delong_p_holm"] < 0.05]
        least = min(tested, key=lambda m: m["delong_p_holm"])
        parts.append(
            f"Compared with the best phase, {len(differ)} of {len(tested)} models differ after Holm's correction "
            f"over those {len(tested)} tests ({', '.join(differ) if differ else 'none'}; smallest Holm-adjusted "
            f"P = {format_p(least['delong_p_holm'])} for {least['name']}, unadjusted "
            f"P = {format_p(least['delong_p_vs_best_phase'])}): significance is judged on the adjusted P."
        )
    parts.append(
        "Image-level intervals and tests keep each patient's slices together (patient-cluster bootstrap, "
        "Obuchowski's clustered AUC test, Durkalski's clustered McNemar); slices are not independent cases, "
        "and the patient-level results are the primary ones. Results come from one cohort"
        + (
            " with external validation"
            if any("external" in r for r in results.get("runs", {}).values())
            else " without external validation"
        )
        + "; the best phase was chosen on validation data only."
    )
    if results["study"].get("synthetic"):
        parts.append(
            "This cohort is SYNTHETIC (phantom images): the numbers demonstrate the software, not clinical performance."
        )
    return " ".join(parts)
