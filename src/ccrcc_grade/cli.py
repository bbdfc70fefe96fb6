"""Command-line interface: argument parsing only; every command calls one library function."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from ccrcc_grade.core.errors import CcrccError


def _window(text: str) -> tuple[float, float]:
    try:
        level, width = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--window must be LEVEL,WIDTH in HU (e.g. 40,290), got {text!r}") from None
    return level, width


def cmd_synth(a: argparse.Namespace) -> None:
    from ccrcc_grade.tools.synth import make_cohort

    out = make_cohort(
        a.out,
        patients=a.patients,
        high_fraction=a.high_fraction,
        layout=a.layout,
        seed=a.seed,
        matrix=a.matrix,
        difficulty=a.difficulty,
        workers=a.workers,
        readers=a.readers,
        motion_mm=a.motion_mm,
        mask_margin_mm=a.mask_margin_mm,
        centres=a.centers,
    )
    print(f"synthetic cohort (phantom, not patient data): {out}")


def cmd_ingest(a: argparse.Namespace) -> None:
    from ccrcc_grade.core.config import PreprocessConfig
    from ccrcc_grade.ingest.cache import format_summary

    level, width = a.window
    cfg = PreprocessConfig(
        size=a.size, window_level=level, window_width=width, margin_mm=a.margin_mm, mask_margin_mm=a.mask_margin_mm
    )
    from ccrcc_grade.ingest.layouts import CohortSource
    from ccrcc_grade.ingest.pipeline import ingest

    layout = "kits" if a.format == "kits" else "detect" if a.detect_phases else a.layout
    source = CohortSource(
        Path(a.cohort),
        layout,
        clinical=Path(a.clinical) if a.clinical else None,
        phase=a.phase,
        allow_derived=a.allow_derived,
    )
    report = ingest(source, a.out, cfg, overwrite=a.overwrite)
    print(format_summary(report["summary"]))
    print(
        f"{report['n_crops']} crops from {report['n_patients']} patients ({report['layout']} layout); "
        f"{report['n_slices_without_annotation']} slices without annotation skipped"
    )
    for w in report["warnings"][:20]:
        print(f"warning: {w}", file=sys.stderr)
    if len(report["warnings"]) > 20:
        print(
            f"... {len(report['warnings']) - 20} more warnings in {Path(a.out) / 'ingest_report.json'}", file=sys.stderr
        )
    print(f"wrote {a.out}")


def cmd_split(a: argparse.Namespace) -> None:
    from ccrcc_grade.ingest.splits import make_splits

    s = make_splits(Path(a.work), a.ratios, a.seed, a.folds)
    print(
        f"train {len(s['train'])}, val {len(s['val'])}, test {len(s['test'])} patients"
        + (f"; {a.folds}-fold assignment" if a.folds else "")
        + f" -> {Path(a.work) / 'splits.json'}"
    )


def cmd_train(a: argparse.Namespace) -> None:
    from ccrcc_grade.core.config import TrainConfig
    from ccrcc_grade.model.train import fit

    if a.resume:
        from ccrcc_grade.model.train import resume

        result = resume(Path(a.resume), progress=not a.no_progress)
    else:
        if not a.work:
            raise CcrccError("train needs WORK (or --resume RUN)")
        cfg = TrainConfig(
            work=a.work,
            phase=a.phase,
            model=a.model,
            out=a.out or "",
            weights=a.weights,
            epochs=a.epochs,
            lr=a.lr,
            batch_size=a.batch_size,
            image_size=a.image_size,
            repeats=a.repeats,
            device=a.device,
            amp=a.amp,
            compile=a.compile,
            seed=a.seed,
            splits=a.splits or "",
            fold=a.fold,
            select_metric=a.select_metric,
            num_threads=a.threads,
            progress=not a.no_progress,
            weight_decay=a.weight_decay,
            threshold=a.threshold,
            keep_last=a.keep_last,
        )
        result = fit(cfg)
    if result is not None:
        print(json.dumps(result))


def cmd_evaluate(a: argparse.Namespace) -> None:
    from ccrcc_grade.model.evaluate import evaluate_command

    out = evaluate_command(
        run=a.run,
        split=a.split,
        cohort=a.cohort,
        predictions=a.predictions,
        out=a.out,
        val_predictions=a.val_predictions,
        aggregate=a.aggregate,
        n_boot=a.bootstrap,
        seed=a.seed,
    )
    print(out)


def cmd_compare(a: argparse.Namespace) -> None:
    from ccrcc_grade.model.evaluate import compare_command

    print(compare_command(a.a, a.b, a.json, split=a.split))


def cmd_clinical(a: argparse.Namespace) -> None:
    from ccrcc_grade.stats.clinical import clinical_command

    print(clinical_command(a.cohort, a.out, normality=a.normality))


def cmd_study(a: argparse.Namespace) -> None:
    from ccrcc_grade.study.run import StudyOptions, run_study

    opts = StudyOptions(
        preset=a.preset,
        folds=a.folds,
        seed=a.seed,
        weights=a.weights,
        device=a.device,
        epochs=a.epochs,
        image_size=a.image_size,
        size=a.size,
        format=a.format,
        external=a.external,
        ratios=a.ratios,
        threshold=a.threshold,
        evidence=not a.no_evidence,
        jobs=a.jobs,
        second_reader=a.second_reader,
    )
    report = run_study(Path(a.cohort), Path(a.out), opts)
    print(f"report: {report}")


def cmd_radiomics(a: argparse.Namespace) -> None:
    from ccrcc_grade.evidence.radiomics import radiomics_study, summary
    from ccrcc_grade.ingest.cache import CropCache

    res = radiomics_study(Path(a.work), seed=a.seed)
    print(summary(res["result"], CropCache.load(a.work).patient_labels()))
    print(f"wrote {Path(a.work) / 'radiomics'} (features.csv, results.json)")


def cmd_agreement(a: argparse.Namespace) -> None:
    from ccrcc_grade.evidence.agreement import agreement_command

    print(agreement_command(a.readers, model=a.model, json_out=a.json))


def cmd_predict(a: argparse.Namespace) -> None:
    from ccrcc_grade.model.predict import predict_command

    print(
        predict_command(
            a.model,
            a.input,
            json_out=a.json,
            cam_dir=a.cam,
            boxes=a.boxes,
            patient_id=a.patient_id,
            device=a.device,
            box_k=a.box_k,
            allow_derived=a.allow_derived,
        )
    )


def cmd_train_roi(a: argparse.Namespace) -> None:
    from ccrcc_grade.roi.net import train_roi

    s = train_roi(Path(a.cohort), Path(a.out), epochs=a.epochs, seed=a.seed)
    last = s["log"][-1]
    print(
        f"proposal model: {Path(a.out) / 'roi_model.pt'} (+ roi_model.onnx); {s['trained_on']['volumes']} volumes of "
        f"{s['trained_on']['patients']} patients, {s['epochs']} epochs in {s['seconds']:.0f} s; last epoch loss "
        f"{last['loss']}" + (f", validation Dice {last['val_dice']}" if "val_dice" in last else "")
    )


def cmd_propose(a: argparse.Namespace) -> None:
    from ccrcc_grade.roi.propose import propose_command

    report = propose_command(
        None if a.run in ("-", "none") else Path(a.run),
        Path(a.input),
        Path(a.seed),
        Path(a.out),
        phases=a.phases,
        register=not a.no_registration,
        backend=a.backend,
    )
    for pid, info in report["patients"].items():
        for ph, i in info["phases"].items():
            how = i.get("method", "")
            moved = i.get("moved_mm")
            extra = f", moved {moved[3]:.1f} mm" if moved else ""
            note = f" ({i['note']})" if i.get("note") else ""
            print(f"{pid} {ph}: {how}{extra}{note}")
    counts = ", ".join(f"{n} {src}" for src, n in sorted(report["boxes"].items()))
    print(f"boxes: {counts} -> {a.out}")


def cmd_export(a: argparse.Namespace) -> None:
    from ccrcc_grade.model.export import export_onnx

    info = export_onnx(Path(a.model), Path(a.onnx), int8=a.int8)
    print(json.dumps(info))


def cmd_serve(a: argparse.Namespace) -> None:
    from ccrcc_grade.serve.server import serve

    serve(
        a.models,
        a.host,
        a.port,
        a.data,
        a.pacs,
        a.token_file,
        a.max_upload_mb,
        a.max_files,
        a.device,
        allowed_hosts=a.allowed_host,
        roi_model=a.roi_model,
        dicom=_dicom_node(a, a.listen_port),
        ohif_port=(a.ohif_port or a.port + 1) if a.ohif else None,
        sr_style=a.sr_style,
    )


def _dicom_node(a: argparse.Namespace, port: int | None) -> object:
    from ccrcc_grade.serve.receiver import DicomNode

    return DicomNode(a.ae_title, port, a.allow or [], a.stable_seconds, a.dicom_host, getattr(a, "send", None))


def cmd_listen(a: argparse.Namespace) -> None:
    from ccrcc_grade.serve.server import listen

    listen(a.data, _dicom_node(a, a.port))


def cmd_bench(a: argparse.Namespace) -> None:
    from ccrcc_grade.tools.bench import bench

    for line in bench(
        a.what,
        device=a.device,
        steps=a.steps,
        image_size=a.image_size,
        batch_size=a.batch_size,
        preset=a.preset,
        roi_model=a.roi_model,
    ):
        print(json.dumps(line), flush=True)


WORKFLOW = """Preoperative WHO/ISUP grade (low I-II / high III-IV) of clear cell RCC from multi-phase CT.

workflow:
  ccrcc-grade ingest COHORT --out WORK     validate the cohort, crop every tumour box once
  ccrcc-grade split WORK                   patient-level 8:1:1 split, stratified by grade
  ccrcc-grade train WORK --phase parenchymal    (or `study COHORT --out DIR` for all of it + a report)
  ccrcc-grade predict RUN PATIENT_FOLDER --cam cams/   grade a new patient

Research software, not a medical device. `ccrcc-grade COMMAND --help` lists each command's options."""


ALLOW_DERIVED_HELP = (
    "DICOM: also take derived, secondary, reformatted (MPR/MIP), localizer, non-axial images (refused by "
    "default: the model was made for original axial slices); the report and result say so"
)


def _sub(sub: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def _dicom_args(s: argparse.ArgumentParser) -> None:
    """The receiver's flags, shared by `serve` and `listen`."""
    s.add_argument("--ae-title", default="CCRCC", help="this workstation's AE title (the called AE of the PACS)")
    s.add_argument(
        "--allow",
        nargs="+",
        metavar="AE@HOST",
        help="callers that may send studies, e.g. ORTHANC@10.1.2.3 (HOST * = any host); any other is refused",
    )
    s.add_argument(
        "--stable-seconds",
        type=float,
        default=30.0,
        help="a study is complete when no instance came for this long (as Orthanc's StableAge)",
    )
    s.add_argument("--dicom-host", default="0.0.0.0", help="address the DICOM port listens on")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; option defaults come from the config dataclasses (one source)."""
    from ccrcc_grade import __version__
    from ccrcc_grade.core.config import (
        BOX_K,
        CLINICAL_NORMALITY,
        N_BOOT,
        PRESETS,
        SPLIT_RATIOS,
        BenchOptions,
        PreprocessConfig,
        ServeOptions,
        StudyOptions,
        SynthOptions,
        TrainConfig,
        preset_text,
    )
    from ccrcc_grade.core.phases import KITS_PHASE

    pre, tc, so = PreprocessConfig(), TrainConfig(), StudyOptions()
    synth, srv, bn = asdict(SynthOptions()), asdict(ServeOptions()), asdict(BenchOptions())
    p = argparse.ArgumentParser(
        prog="ccrcc-grade", description=WORKFLOW, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"ccrcc-grade {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = _sub(sub, "synth", "write a synthetic (phantom) four-phase cohort")
    s.add_argument("out", help="cohort folder to create")
    s.add_argument("--patients", type=int, default=synth["patients"], help="number of patients")
    s.add_argument(
        "--high-fraction", type=float, default=synth["high_fraction"], help="fraction of high-grade patients (0-1)"
    )
    s.add_argument(
        "--layout",
        choices=["slices", "dicom", "nifti"],
        default=synth["layout"],
        help="exported slices + labelme JSON, DICOM series + boxes.csv, or NIfTI volumes + tumour masks "
        "(<patient>/<phase>.nii.gz, <phase>_mask.nii.gz; true_boxes.csv lists every slice's true box)",
    )
    s.add_argument(
        "--motion-mm",
        type=float,
        default=synth["motion_mm"],
        help="move each phase of a patient by a random rigid shift of up to this many mm (table motion, breath "
        "hold; recorded in synth.json), to measure propagation across phases",
    )
    s.add_argument(
        "--mask-margin-mm",
        type=float,
        default=synth["mask_margin_mm"],
        help="dicom/nifti truth boxes: the tumour mask's box grown by this margin (ingest's mask-to-box rule)",
    )
    s.add_argument(
        "--centers",
        type=int,
        default=synth["centers"],
        help="realistic: simulated centres (1-3) whose quantum noise, kernel, HU offset and scanner differ; "
        "clinical.csv's center column and the DICOM headers name them (federated and per-centre results)",
    )
    s.add_argument("--seed", type=int, default=synth["seed"], help="random seed (the same seed gives the same cohort)")
    s.add_argument("--matrix", type=int, default=synth["matrix"], help="image matrix (pixels, square)")
    s.add_argument(
        "--difficulty",
        choices=["realistic", "easy"],
        default=synth["difficulty"],
        help="realistic: grades overlap as in published series, with timing, dose, scanner, partial "
        "volume and label-noise effects (synth.py lists the sources); easy: nearly separable "
        "grades, for fast tests",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=synth["workers"],
        help="processes rendering patients at once (the cohort is the same for any number)",
    )
    s.add_argument(
        "--readers",
        type=int,
        default=synth["readers"],
        help="readers who boxed the cohort: 2+ also writes reader2_boxes.csv, ... (the same slices boxed "
        "by another reader, perturbed as readers disagree) for `agreement` and `study --second-reader`",
    )
    s.set_defaults(func=cmd_synth)

    s = _sub(sub, "ingest", "validate a cohort and build the crop cache")
    s.add_argument("cohort", help="cohort folder (clinical.csv + one folder per patient), or a KiTS folder")
    s.add_argument("--out", required=True, help="WORK folder to create")
    s.add_argument("--size", type=int, default=pre.size, help="crop edge in the cache (pixels)")
    s.add_argument(
        "--window",
        type=_window,
        default=(pre.window_level, pre.window_width),
        help="LEVEL,WIDTH in HU for DICOM/NIfTI (the study's abdominal window)",
    )
    s.add_argument("--margin-mm", type=float, default=pre.margin_mm, help="extra margin around every box (mm)")
    s.add_argument(
        "--layout",
        choices=["auto", "slices", "dicom", "nifti"],
        default="auto",
        help="input layout (auto: boxes.csv -> dicom, .nii.gz -> nifti, else slices)",
    )
    s.add_argument("--format", choices=["cohort", "kits"], default="cohort", help="a cohort folder or a KiTS folder")
    s.add_argument("--clinical", help="KiTS clinical JSON (kits.json / kits23.json; default: found in the folder)")
    s.add_argument("--phase", default=KITS_PHASE, help="phase of KiTS scans")
    s.add_argument(
        "--mask-margin-mm",
        type=float,
        default=pre.mask_margin_mm,
        help="margin of boxes derived from tumour masks (NIfTI layout, KiTS)",
    )
    s.add_argument("--detect-phases", action="store_true", help="assign DICOM series to phases from their tags")
    s.add_argument("--allow-derived", action="store_true", help=ALLOW_DERIVED_HELP)
    s.add_argument("--overwrite", action="store_true", help="replace an existing WORK folder")
    s.set_defaults(func=cmd_ingest)

    s = _sub(sub, "split", "patient-level stratified train/val/test split")
    s.add_argument("work", help="ingested WORK folder")
    s.add_argument("--ratios", default=SPLIT_RATIOS, help="train:val:test patient ratios")
    s.add_argument("--seed", type=int, default=so.seed, help="random seed")
    s.add_argument("--folds", type=int, default=0, help="also assign K cross-validation folds (0: none)")
    s.set_defaults(func=cmd_split)

    s = _sub(sub, "train", "train a per-phase classifier (study defaults)")
    s.add_argument("work", nargs="?", help="ingested and split WORK folder")
    s.add_argument(
        "--phase", default=tc.phase, help="plain, corticomedullary, parenchymal, excretory (or an alias) or combined"
    )
    s.add_argument("--model", default=tc.model, help="resnet34 or se_resnet34")
    s.add_argument("--out", help="run folder (default: WORK/runs/<model>-<phase>)")
    s.add_argument("--weights", default=tc.weights, help="imagenet | none | PATH to a ResNet34 state dict")
    s.add_argument("--epochs", type=int, default=tc.epochs, help="training epochs")
    s.add_argument("--lr", type=float, default=tc.lr, help="SGD learning rate (momentum 0.9)")
    s.add_argument("--weight-decay", type=float, default=tc.weight_decay, help="SGD weight decay")
    s.add_argument("--batch-size", type=int, default=tc.batch_size, help="global batch size")
    s.add_argument("--image-size", type=int, default=tc.image_size, help="network input size (pixels)")
    s.add_argument("--repeats", type=int, default=tc.repeats, help="augmented copies per crop per epoch")
    s.add_argument("--device", default=tc.device, help="auto, cpu, cuda or cuda:N")
    s.add_argument(
        "--amp",
        default=tc.amp,
        choices=["auto", "on", "off"],
        help="bf16 autocast: auto = on CUDA and on CPUs with AVX-512/AMX, off elsewhere",
    )
    s.add_argument(
        "--compile",
        default=tc.compile,
        choices=["auto", "on", "off"],
        help="compiled training step: auto = torch.compile reduce-overhead (CUDA graphs) on CUDA, eager on "
        "a CPU; on = compile on a CPU too (inductor, needs a C++ compiler; ~1 min to build); the log "
        "says which path ran, and a failed compilation falls back to eager",
    )
    s.add_argument("--seed", type=int, default=tc.seed, help="random seed (same seed, same run)")
    s.add_argument("--splits", help="splits file (default: WORK/splits.json)")
    s.add_argument("--fold", type=int, default=tc.fold, help="validate on cross-validation fold K (-1: no folds)")
    s.add_argument(
        "--select-metric",
        default=tc.select_metric,
        choices=["patient_auc", "image_auc", "loss"],
        help="validation metric that picks the best epoch",
    )
    s.add_argument("--threads", type=int, default=tc.num_threads, help="CPU threads (0: PyTorch's default)")
    s.add_argument(
        "--threshold",
        default=tc.threshold,
        help="decision threshold policy stored in the model: default (the study's 0.5), youden, "
        "sensNN or specNN (fitted on validation patients; needs >= 10 of each grade) or a number",
    )
    s.add_argument(
        "--keep-last",
        action="store_true",
        help="keep last.pt (weights + optimizer state, ~2x best.pt) after the run finishes; by default it "
        "exists only while the run is unfinished",
    )
    s.add_argument("--resume", help="RUN folder to continue from last.pt")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_train)

    s = _sub(sub, "evaluate", "metrics with 95%% CIs at image and patient level")
    s.add_argument("run", nargs="?", help="run folder (or its best.pt)")
    s.add_argument("--split", default="test", choices=["test", "val"], help="which of the run's splits")
    s.add_argument("--cohort", help="external cohort: ingested WORK or raw cohort folder")
    s.add_argument("--predictions", help="evaluate a predictions CSV instead of a run")
    s.add_argument("--val-predictions", help="with --predictions: validation predictions for the operating points")
    s.add_argument(
        "--out",
        help="output folder (default: RUN/eval-<split>, or the next free RUN/eval-<split>-N "
        "when that holds an earlier evaluation)",
    )
    s.add_argument(
        "--aggregate",
        default=None,
        choices=["mean", "median", "max"],
        help="slice probabilities -> patient probability (default: the run's, mean)",
    )
    s.add_argument("--bootstrap", type=int, default=N_BOOT, help="bootstrap resamples (over patients) for the CIs")
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    s.set_defaults(func=cmd_evaluate)

    s = _sub(sub, "compare", "paired DeLong and McNemar tests of two runs / predictions")
    s.add_argument("a", help="run folder or predictions CSV")
    s.add_argument("b", help="run folder or predictions CSV (same patients)")
    s.add_argument("--json", help="write the comparison to this JSON file")
    s.add_argument("--split", default="test", choices=["test", "val"], help="which split of runs to compare")
    s.set_defaults(func=cmd_compare)

    s = _sub(sub, "clinical", "Table 2: clinical characteristics low vs high grade")
    s.add_argument("cohort", help="cohort folder, WORK folder or clinical.csv")
    s.add_argument("--out", help="folder for clinical_table.{json,md}")
    s.add_argument(
        "--normality",
        choices=["ks", "shapiro"],
        default=CLINICAL_NORMALITY,
        help="normality test per group (Lilliefors-corrected Kolmogorov-Smirnov or Shapiro-Wilk)",
    )
    s.set_defaults(func=cmd_clinical)

    s = _sub(sub, "study", "the whole study: ingest, split, train all phases, evaluate, report")
    s.add_argument("cohort", help="cohort folder (or KiTS folder with --format kits)")
    s.add_argument("--out", required=True, help="study folder (work/, runs/, report.html, results.json)")
    s.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=so.preset,
        help="; ".join(f"{k}: {preset_text(v)}" for k, v in PRESETS.items()),
    )
    s.add_argument("--folds", type=int, default=so.folds, help="K-fold cross-validation instead of one split (0: off)")
    s.add_argument("--seed", type=int, default=so.seed, help="seed of the split and of every training")
    s.add_argument("--weights", default=None, help="override the preset's weights (imagenet | none | PATH)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    s.add_argument("--image-size", type=int, default=None, help="override the preset's network input size")
    s.add_argument("--size", type=int, default=None, help="override the preset's crop size of the cache")
    s.add_argument("--format", choices=["cohort", "kits"], default=so.format, help="a cohort folder or a KiTS folder")
    s.add_argument("--external", help="external validation cohort (raw or ingested)")
    s.add_argument(
        "--second-reader",
        help="a second reader's boxes of the same cohort (a boxes.csv whose file paths are relative to the cohort "
        "folder, or a cohort folder): the report adds the readers' agreement and resamples box shifts from it",
    )
    s.add_argument("--ratios", default=so.ratios, help="train:val:test patient ratios")
    s.add_argument(
        "--threshold", default=so.threshold, help="decision threshold policy of every model (see train --threshold)"
    )
    s.add_argument(
        "--jobs",
        default=so.jobs,
        help="trainings at once (the phase models; every fold with --folds): auto = as many per GPU as "
        "its free memory holds (<= 5) on every visible GPU, 1 on a CPU; or a number",
    )
    s.add_argument(
        "--no-evidence",
        action="store_true",
        help="only the study's networks: no late fusion, multi-phase network, radiomics, clinical or "
        "combined models (and no model comparison table, calibration or decision curves)",
    )
    s.set_defaults(func=cmd_study)

    s = _sub(sub, "radiomics", "the radiomics baseline alone: IBSI features, LASSO, logistic and SVM")
    s.add_argument("work", help="ingested and split WORK folder (ingest + split, or a study's DIR/work)")
    s.add_argument("--seed", type=int, default=0, help="seed of the inner cross-validation")
    s.set_defaults(func=cmd_radiomics)

    s = _sub(sub, "agreement", "agreement of two or more readers' boxes (ICC, IoU, slice ranges) and of their grades")
    s.add_argument(
        "readers",
        nargs="+",
        help="each reader's boxes of the same patients: a cohort folder or a boxes.csv (file paths relative to it)",
    )
    s.add_argument("--model", help="a run folder, best.pt or .onnx: also compare the grades each reader's boxes give")
    s.add_argument("--json", help="write the full result (ICC with CIs, IoU, slice ranges, predictions) here")
    s.set_defaults(func=cmd_agreement)

    s = _sub(sub, "predict", "grade a new patient with a trained model")
    s.add_argument("model", help="a run folder, its best.pt, or an exported .onnx")
    s.add_argument("input", help="phase folder, patient folder or NIfTI volume")
    s.add_argument("--json", help="also write the result to this JSON file")
    s.add_argument("--cam", help="folder for Grad-CAM overlays")
    s.add_argument("--boxes", help="boxes CSV for a DICOM series (the cohort's boxes.csv format)")
    s.add_argument("--patient-id", help="patient id to report and to pick rows of --boxes (default: folder name)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (evaluate uses the same)")
    s.add_argument(
        "--box-k",
        type=int,
        default=BOX_K,
        help=f"plausible boxes (each side moved within the study's 1-2 mm rule) over which P(high) is "
        f"re-computed to show how much the grade depends on the box; 0 = off (default {BOX_K})",
    )
    s.add_argument("--allow-derived", action="store_true", help=ALLOW_DERIVED_HELP)
    s.set_defaults(func=cmd_predict)

    s = _sub(sub, "train-roi", "train the box-prompted tumour proposal model (assisted boxes)")
    s.add_argument("cohort", help="a cohort with tumour masks: NIfTI layout (<patient>/<phase>.nii.gz + _mask) or KiTS")
    s.add_argument("--out", required=True, help="RUN folder to create (roi_model.pt, roi_model.onnx, roi_train.json)")
    s.add_argument("--epochs", type=int, default=30, help="training epochs (each sees every tumour slice once)")
    s.add_argument("--seed", type=int, default=0, help="random seed (validation patients, prompts, weights)")
    s.set_defaults(func=cmd_train_roi)

    s = _sub(sub, "propose", "propose tumour boxes on every slice and phase from one or a few drawn boxes")
    s.add_argument("run", help="proposal model (a train-roi RUN folder or its .pt/.onnx); '-' = none (interpolate)")
    s.add_argument("input", help="a DICOM cohort or patient folder (phase folders of DICOM series)")
    s.add_argument("--seed", required=True, help="SEED.csv in boxes.csv format: the drawn box(es) per patient")
    s.add_argument("--out", required=True, help="OUT.csv in boxes.csv format with a source column")
    s.add_argument(
        "--phases",
        default="parenchymal",
        help="parenchymal (default, the study's best phase), all (propagated to every phase), or one phase",
    )
    s.add_argument(
        "--no-registration",
        action="store_true",
        help="propagate through patient coordinates only (no rigid registration for breathing/table motion)",
    )
    s.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto", help="inference backend")
    s.set_defaults(func=cmd_propose)

    s = _sub(sub, "export", "export a model to ONNX")
    s.add_argument("model", help="a run folder or its best.pt")
    s.add_argument("--onnx", required=True, help="ONNX file to write")
    s.add_argument(
        "--int8",
        action="store_true",
        help="static int8 quantization (ONNX Runtime QDQ) calibrated on the model's training crops; "
        "written only when its validation AUC is within 0.01 of fp32 (recorded in its metadata)",
    )
    s.set_defaults(func=cmd_export)

    s = _sub(sub, "serve", "the clinician workstation: web page + REST API")
    s.add_argument("--models", nargs="+", required=True, help="run folders, best.pt or .onnx files to serve")
    s.add_argument(
        "--host", default=srv["host"], help="address to listen on (anything but loopback needs --token-file)"
    )
    s.add_argument("--port", type=int, default=srv["port"], help="TCP port")
    s.add_argument("--data", default=srv["data"], help="folder for studies, boxes, predictions and SRs")
    s.add_argument("--pacs", help="DICOMweb base URL of the PACS (e.g. http://pacs:8042/dicom-web)")
    s.add_argument("--token-file", help="file holding the bearer token every API call must carry")
    s.add_argument(
        "--allowed-host",
        nargs="+",
        help="names clients use to reach the server (Host header) besides the --host address and the loopback "
        "names; any other Host is refused (DNS rebinding)",
    )
    s.add_argument("--max-upload-mb", type=int, default=srv["max_upload_mb"], help="largest upload (MB)")
    s.add_argument("--max-files", type=int, default=srv["max_files"], help="most DICOM files in one upload")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument(
        "--roi-model",
        help="tumour proposal model (a train-roi RUN folder, .pt or .onnx): one box proposes every slice; "
        "without it the workstation interpolates between key boxes and propagates across phases",
    )
    s.add_argument("--listen-port", type=int, help="also receive studies by DICOM C-STORE on this port (see `listen`)")
    _dicom_args(s)
    s.add_argument(
        "--send",
        metavar="AE@HOST:PORT",
        help="where results (SR, key image) go by C-STORE, e.g. ORTHANC@pacs.hospital.org:4242 "
        "(without it: STOW-RS to --pacs)",
    )
    s.set_defaults(func=cmd_serve)

    s.add_argument(
        "--ohif",
        action="store_true",
        help="also serve the OHIF viewer (3.13, `make vendor`) reading --pacs, on --ohif-port; the worklist links "
        "each study to it",
    )
    s.add_argument("--ohif-port", type=int, help="port of the OHIF viewer (default: --port + 1)")
    s.add_argument(
        "--sr-style",
        choices=["standard", "ohif"],
        default="standard",
        help="ohif: the SR's boxes as OHIF's editable rectangles (Cornerstone3DTools RectangleROI groups, the "
        "outline inferred for the area), for sites that correct boxes in OHIF",
    )

    s = _sub(sub, "listen", "the DICOM receiver alone: the PACS pushes studies, they join serve's worklist")
    s.add_argument("--port", "--listen-port", type=int, default=11112, help="DICOM port to listen on")
    s.add_argument("--data", default=srv["data"], help="the study folder `serve --data` reads")
    _dicom_args(s)
    s.set_defaults(func=cmd_listen)

    s = _sub(sub, "bench", "speed and memory benchmarks (JSON lines)")
    s.add_argument(
        "--what",
        choices=["train", "predict", "ingest", "serve", "robustness", "roi", "listen", "study", "all"],
        default="all",
        help="which benchmark (all = every one but study, which trains a whole study; roi trains a proposal "
        "model on a phantom unless --roi-model names one)",
    )
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument("--steps", type=int, default=bn["steps"], help="timed training steps")
    s.add_argument("--image-size", type=int, default=bn["image_size"], help="network input size (pixels)")
    s.add_argument("--batch-size", type=int, default=bn["batch_size"], help="training batch size")
    s.add_argument(
        "--preset", default=None, help="study benchmark: the study preset (default: paper on CUDA, quick on a CPU)"
    )
    s.add_argument("--roi-model", help="roi benchmark: the proposal model to measure (default: train one on a phantom)")
    s.set_defaults(func=cmd_bench)

    from ccrcc_grade.cli_multicentre import add_commands

    add_commands(sub, _sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except CcrccError as exc:
        print(f"ccrcc-grade: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ccrcc-grade: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
