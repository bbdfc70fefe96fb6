"""Command-line interface: argument parsing only; every command calls one library function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import CcrccError


def _window(text: str) -> tuple[float, float]:
    try:
        level, width = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--window must be LEVEL,WIDTH in HU (e.g. 40,290), got {text!r}") from None
    return level, width


def cmd_synth(a: argparse.Namespace) -> None:
    from .synth import make_cohort

    out = make_cohort(a.out, patients=a.patients, high_fraction=a.high_fraction, layout=a.layout,
                      seed=a.seed, matrix=a.matrix)
    print(f"synthetic cohort (phantom, not patient data): {out}")


def cmd_ingest(a: argparse.Namespace) -> None:
    from .cache import format_summary
    from .config import PreprocessConfig

    level, width = a.window
    cfg = PreprocessConfig(size=a.size, window_level=level, window_width=width, margin_mm=a.margin_mm,
                           mask_margin_mm=a.mask_margin_mm)
    if a.format == "kits":
        from .io.kits import ingest_kits

        report = ingest_kits(a.cohort, a.out, cfg, clinical=a.clinical, phase=a.phase, overwrite=a.overwrite)
    else:
        from .cache import ingest

        if a.detect_phases:
            from .phase_detect import ingest_detected

            report = ingest_detected(a.cohort, a.out, cfg, overwrite=a.overwrite)
        else:
            report = ingest(a.cohort, a.out, cfg, layout=a.layout, overwrite=a.overwrite)
    print(format_summary(report["summary"]))
    print(f"{report['n_crops']} crops from {report['n_patients']} patients ({report['layout']} layout); "
          f"{report['n_slices_without_annotation']} slices without annotation skipped")
    for w in report["warnings"][:20]:
        print(f"warning: {w}", file=sys.stderr)
    if len(report["warnings"]) > 20:
        print(f"... {len(report['warnings']) - 20} more warnings in {Path(a.out) / 'ingest_report.json'}",
              file=sys.stderr)
    print(f"wrote {a.out}")


def cmd_split(a: argparse.Namespace) -> None:
    from .splits import make_splits

    s = make_splits(Path(a.work), a.ratios, a.seed, a.folds)
    print(f"train {len(s['train'])}, val {len(s['val'])}, test {len(s['test'])} patients"
          + (f"; {a.folds}-fold assignment" if a.folds else "") + f" -> {Path(a.work) / 'splits.json'}")


def cmd_train(a: argparse.Namespace) -> None:
    from .config import TrainConfig
    from .train import fit

    if a.resume:
        from .train import resume

        result = resume(Path(a.resume), progress=not a.no_progress)
    else:
        if not a.work:
            raise CcrccError("train needs WORK (or --resume RUN)")
        cfg = TrainConfig(work=a.work, phase=a.phase, model=a.model, out=a.out or "", weights=a.weights,
                          epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, image_size=a.image_size,
                          repeats=a.repeats, device=a.device, amp=a.amp, seed=a.seed, splits=a.splits or "",
                          fold=a.fold, select_metric=a.select_metric, num_threads=a.threads,
                          progress=not a.no_progress, weight_decay=a.weight_decay, threshold=a.threshold)
        result = fit(cfg)
    if result is not None:
        print(json.dumps(result))


def cmd_evaluate(a: argparse.Namespace) -> None:
    from .evaluate import evaluate_command

    out = evaluate_command(run=a.run, split=a.split, cohort=a.cohort, predictions=a.predictions,
                           out=a.out, val_predictions=a.val_predictions, aggregate=a.aggregate,
                           n_boot=a.bootstrap, seed=a.seed)
    print(out)


def cmd_compare(a: argparse.Namespace) -> None:
    from .compare import compare_command

    print(compare_command(a.a, a.b, a.json, split=a.split))


def cmd_clinical(a: argparse.Namespace) -> None:
    from .clinical import clinical_command

    print(clinical_command(a.cohort, a.out, normality=a.normality))


def cmd_study(a: argparse.Namespace) -> None:
    from .study import StudyOptions, run_study

    opts = StudyOptions(preset=a.preset, folds=a.folds, seed=a.seed, weights=a.weights, device=a.device,
                        epochs=a.epochs, image_size=a.image_size, size=a.size, format=a.format,
                        external=a.external, ratios=a.ratios, threshold=a.threshold)
    report = run_study(Path(a.cohort), Path(a.out), opts)
    print(f"report: {report}")


def cmd_predict(a: argparse.Namespace) -> None:
    from .predict import predict_command

    print(predict_command(a.model, a.input, json_out=a.json, cam_dir=a.cam, boxes=a.boxes,
                          patient_id=a.patient_id, device=a.device))


def cmd_export(a: argparse.Namespace) -> None:
    from .export import export_onnx

    info = export_onnx(Path(a.model), Path(a.onnx))
    print(json.dumps(info))


def cmd_bench(a: argparse.Namespace) -> None:
    from .bench import bench

    for line in bench(a.what, device=a.device, steps=a.steps, image_size=a.image_size, batch_size=a.batch_size):
        print(json.dumps(line), flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ccrcc-grade", description=__doc__.split("\n")[0] if __doc__ else None)
    from . import __version__

    p.add_argument("--version", action="version", version=f"ccrcc-grade {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic (phantom) four-phase cohort")
    s.add_argument("out")
    s.add_argument("--patients", type=int, default=40)
    s.add_argument("--high-fraction", type=float, default=0.25)
    s.add_argument("--layout", choices=["slices", "dicom"], default="slices")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--matrix", type=int, default=512, help="image matrix (pixels, square)")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("ingest", help="validate a cohort and build the crop cache")
    s.add_argument("cohort")
    s.add_argument("--out", required=True, help="WORK folder to create")
    s.add_argument("--size", type=int, default=224)
    s.add_argument("--window", type=_window, default=(40.0, 290.0), help="LEVEL,WIDTH in HU (DICOM/NIfTI)")
    s.add_argument("--margin-mm", type=float, default=0.0, help="extra margin around every box")
    s.add_argument("--layout", choices=["auto", "slices", "dicom", "nifti"], default="auto")
    s.add_argument("--format", choices=["cohort", "kits"], default="cohort")
    s.add_argument("--clinical", help="KiTS clinical JSON (kits.json / kits23.json)")
    s.add_argument("--phase", default="corticomedullary", help="phase of KiTS scans")
    s.add_argument("--mask-margin-mm", type=float, default=1.5,
                   help="margin of boxes derived from tumour masks (NIfTI layout, KiTS)")
    s.add_argument("--detect-phases", action="store_true", help="assign DICOM series to phases from their tags")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("split", help="patient-level stratified train/val/test split")
    s.add_argument("work")
    s.add_argument("--ratios", default="8:1:1")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--folds", type=int, default=0)
    s.set_defaults(func=cmd_split)

    s = sub.add_parser("train", help="train a per-phase classifier (study defaults)")
    s.add_argument("work", nargs="?")
    s.add_argument("--phase", default="parenchymal")
    s.add_argument("--model", default="resnet34")
    s.add_argument("--out")
    s.add_argument("--weights", default="imagenet", help="imagenet | none | PATH to a ResNet34 state dict")
    s.add_argument("--epochs", type=int, default=50)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--weight-decay", type=float, default=0.0)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--image-size", type=int, default=224)
    s.add_argument("--repeats", type=int, default=3, help="augmented copies per crop per epoch (study: 3)")
    s.add_argument("--device", default="auto")
    s.add_argument("--amp", default="auto", choices=["auto", "on", "off"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--splits")
    s.add_argument("--fold", type=int, default=-1)
    s.add_argument("--select-metric", default="patient_auc", choices=["patient_auc", "image_auc", "loss"])
    s.add_argument("--threads", type=int, default=0)
    s.add_argument("--threshold", default="default",
                   help="decision threshold policy stored in the model: default (the study's 0.5), youden, "
                        "sensNN or specNN (fitted on validation patients; needs >= 10 of each grade) or a number "
                        "(default: %(default)s)")
    s.add_argument("--resume", help="RUN folder to continue from last.pt")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="metrics with 95%% CIs at image and patient level")
    s.add_argument("run", nargs="?")
    s.add_argument("--split", default="test", choices=["test", "val"])
    s.add_argument("--cohort", help="external cohort: ingested WORK or raw cohort folder")
    s.add_argument("--predictions", help="evaluate a predictions CSV instead of a run")
    s.add_argument("--val-predictions", help="with --predictions: validation predictions for the Youden threshold")
    s.add_argument("--out", help="output folder (default RUN/eval-<split>)")
    s.add_argument("--aggregate", default=None, choices=["mean", "median", "max"])
    s.add_argument("--bootstrap", type=int, default=2000)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("compare", help="paired DeLong and McNemar tests of two runs / predictions")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--json")
    s.add_argument("--split", default="test", choices=["test", "val"])
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("clinical", help="Table 2: clinical characteristics low vs high grade")
    s.add_argument("cohort", help="cohort folder, WORK folder or clinical.csv")
    s.add_argument("--out", help="folder for clinical_table.{json,md}")
    s.add_argument("--normality", choices=["ks", "shapiro"], default="ks")
    s.set_defaults(func=cmd_clinical)

    s = sub.add_parser("study", help="the whole study: ingest, split, train all phases, evaluate, report")
    s.add_argument("cohort")
    s.add_argument("--out", required=True)
    s.add_argument("--preset", choices=["paper", "quick"], default="paper")
    s.add_argument("--folds", type=int, default=0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--weights", default=None)
    s.add_argument("--device", default="auto")
    s.add_argument("--epochs", type=int, default=None)
    s.add_argument("--image-size", type=int, default=None)
    s.add_argument("--size", type=int, default=None, help="crop size of the cache")
    s.add_argument("--format", choices=["cohort", "kits"], default="cohort")
    s.add_argument("--external", help="external validation cohort (raw or ingested)")
    s.add_argument("--ratios", default="8:1:1", help="train:val:test patient ratios")
    s.add_argument("--threshold", default="default",
                   help="decision threshold policy of every model (see train --threshold; default: %(default)s)")
    s.set_defaults(func=cmd_study)

    s = sub.add_parser("predict", help="grade a new patient with a trained model")
    s.add_argument("model", help="best.pt of a run, or an exported .onnx")
    s.add_argument("input", help="phase folder or patient folder")
    s.add_argument("--json")
    s.add_argument("--cam", help="folder for Grad-CAM overlays")
    s.add_argument("--boxes", help="boxes CSV for a DICOM series")
    s.add_argument("--patient-id")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("export", help="export a model to ONNX")
    s.add_argument("model")
    s.add_argument("--onnx", required=True)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("bench", help="speed and memory benchmarks (JSON lines)")
    s.add_argument("--what", choices=["train", "predict", "ingest", "all"], default="all")
    s.add_argument("--device", default="auto")
    s.add_argument("--steps", type=int, default=6)
    s.add_argument("--image-size", type=int, default=224)
    s.add_argument("--batch-size", type=int, default=32)
    s.set_defaults(func=cmd_bench)
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
