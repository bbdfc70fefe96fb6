"""The folders the pipeline writes, as objects that own their file names.

A WORK folder (``ingest``) holds the crop cache and what is derived from it; a run folder
(``train``) holds one model; a study folder (``study``) holds a WORK folder, the runs and the
report. Every module reaches these files through :class:`WorkDir`, :class:`RunDir` and
:class:`StudyDir`, so a file name is spelled once.

    WORK/crops.npy, manifest.csv, preprocess.json, clinical.csv, ingest_report.json,
        acquisition.csv  (the cache)
    WORK/splits.json, WORK/radiomics/
    RUN/config.json, log.csv, curves.png, train.log, best.pt, last.pt, train_summary.json,
    RUN/eval-<split>/ (predictions.csv, predictions_patient.csv, metrics.json, figures)
    STUDY/work/, STUDY/runs/<model>-<phase>/, STUDY/results.json, report.html, report.md
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ccrcc_grade.core.errors import CcrccError


def read_json(path: Path, what: str = "") -> dict:
    """A JSON file written by this package; a one-line error naming it when damaged."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CcrccError(f"{path}: {what or 'file'} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CcrccError(f"{path}: damaged {what or 'JSON file'} ({exc})") from None


@dataclass(frozen=True)
class WorkDir:
    """An ingested cohort: the crop cache and the files derived from it."""

    path: Path

    CROPS = "crops.npy"
    MANIFEST = "manifest.csv"
    PREPROCESS = "preprocess.json"
    CLINICAL = "clinical.csv"
    INGEST_REPORT = "ingest_report.json"
    ACQUISITION = "acquisition.csv"
    CACHE_FILES = (CROPS, MANIFEST, PREPROCESS, CLINICAL, INGEST_REPORT, ACQUISITION)  # what ingest writes
    SPLITS = "splits.json"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def crops(self) -> Path:
        return self.path / self.CROPS

    @property
    def manifest(self) -> Path:
        return self.path / self.MANIFEST

    @property
    def preprocess(self) -> Path:
        return self.path / self.PREPROCESS

    @property
    def clinical(self) -> Path:
        return self.path / self.CLINICAL

    @property
    def ingest_report(self) -> Path:
        return self.path / self.INGEST_REPORT

    @property
    def acquisition(self) -> Path:
        """Per patient and phase: centre, scanner and acquisition (``ingest.acquisition``)."""
        return self.path / self.ACQUISITION

    @property
    def splits(self) -> Path:
        return self.path / self.SPLITS

    @property
    def radiomics(self) -> Path:
        return self.path / "radiomics"

    def is_ingested(self) -> bool:
        return self.manifest.is_file()

    def read_ingest_report(self) -> dict:
        """The ingest report, or {} for a cache written before reports existed."""
        return read_json(self.ingest_report, "ingest report") if self.ingest_report.is_file() else {}

    def read_splits(self) -> dict:
        return read_json(self.splits, "splits file")


@dataclass(frozen=True)
class RunDir:
    """One trained model: its configuration, log, checkpoints, summary and evaluations."""

    path: Path

    BEST = "best.pt"
    LAST = "last.pt"
    SUMMARY = "train_summary.json"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def log(self) -> Path:
        return self.path / "log.csv"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def train_log(self) -> Path:
        """stdout of a training run in its own process (`study --jobs`)."""
        return self.path / "train.log"

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def summary(self) -> Path:
        return self.path / self.SUMMARY

    def is_finished(self) -> bool:
        return self.summary.is_file() and self.best.is_file()

    def read_summary(self) -> dict:
        return read_json(self.summary, "training summary")

    def read_config(self) -> dict:
        return read_json(self.config, "run configuration")

    def eval_dir(self, split: str = "test") -> Path:
        """RUN/eval-<split>: 'val', 'test', 'train' or 'external'."""
        return self.path / f"eval-{split}"

    def predictions(self, split: str = "test") -> Path:
        return self.eval_dir(split) / EvalFiles.PREDICTIONS

    def patient_predictions(self, split: str = "test") -> Path:
        return self.eval_dir(split) / EvalFiles.PATIENT_PREDICTIONS

    def metrics(self, split: str = "test") -> Path:
        return self.eval_dir(split) / EvalFiles.METRICS

    def read_metrics(self, split: str = "test") -> dict:
        return read_json(self.metrics(split), "metrics file")


class EvalFiles:
    """File names inside an evaluation folder (RUN/eval-<split> or evaluate --out)."""

    PREDICTIONS = "predictions.csv"
    PATIENT_PREDICTIONS = "predictions_patient.csv"
    METRICS = "metrics.json"
    CONFUSION = "confusion.png"
    CALIBRATION = "calibration.png"
    ROC = "roc.png"


@dataclass(frozen=True)
class StudyDir:
    """A study: WORK folder, runs, results and report."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def work(self) -> WorkDir:
        return WorkDir(self.path / "work")

    @property
    def runs(self) -> Path:
        return self.path / "runs"

    def run(self, name: str) -> RunDir:
        return RunDir(self.runs / name)

    @property
    def external_work(self) -> WorkDir:
        return WorkDir(self.path / "external_work")

    @property
    def results(self) -> Path:
        return self.path / "results.json"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"
