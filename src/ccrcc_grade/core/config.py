"""Configuration dataclasses, saved as JSON with every ingest and run.

``PreprocessConfig`` is everything needed to turn a raw slice and a box into a model input; it is
stored in the cache and in every checkpoint so prediction reproduces training exactly.
``TrainConfig`` holds the study's protocol as defaults (Cui et al. 2025).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ccrcc_grade.core.errors import CcrccError, check_number
from ccrcc_grade.core.fileio import atomic_write_text
from ccrcc_grade.core.phases import COMBINED


@dataclass
class PreprocessConfig:
    """How a slice becomes a crop: HU window (DICOM/NIfTI only), box margin, crop size."""

    size: int = 224  # crop edge in the cache (pixels)
    window_level: float = 40.0  # HU, the study's abdominal window
    window_width: float = 290.0  # HU
    margin_mm: float = 0.0  # extra margin added around every box (mm; pixels if no spacing)
    mask_margin_mm: float = 1.5  # boxes derived from tumour masks (NIfTI, KiTS): the study's 1-2 mm

    def validate(self) -> PreprocessConfig:
        check_number(self.size, "size (--size)", 8, 1024, integer=True)
        check_number(self.window_level, "window level (--window)", -5000, 5000)
        check_number(self.window_width, "window width (--window)", 0, 10000, lo_open=True)
        check_number(self.margin_mm, "box margin (--margin-mm)", 0, 100)
        check_number(self.mask_margin_mm, "mask box margin (--mask-margin-mm)", 0, 100)
        return self


@dataclass
class TrainConfig:
    """One training run. Defaults follow the study: SGD lr 1e-3, batch 32, 50 epochs, 224 px."""

    work: str = ""
    phase: str = "parenchymal"
    model: str = "resnet34"
    out: str = ""
    weights: str = "imagenet"  # imagenet | none | PATH to a ResNet34 state dict
    epochs: int = 50
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    image_size: int = 224
    repeats: int = 3  # every training crop used this many times per epoch (x3)
    rotation: float = 30.0  # degrees, uniform in [-rotation, rotation]
    hflip: bool = True
    vflip: bool = True
    class_weighted: bool = True  # CE weights inversely proportional to class frequency
    select_metric: str = "patient_auc"  # patient_auc | image_auc | loss  (validation only)
    patient_aggregate: str = "mean"  # how slice probabilities become a patient's
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto | on | off  (bf16 on CPUs that support it, fp16 on CUDA)
    channels_last: bool = True
    seed: int = 0
    splits: str = ""  # defaults to WORK/splits.json
    fold: int = -1  # >= 0: train on the K-fold assignment, fold = validation
    num_threads: int = 0  # 0 = torch default
    progress: bool = True
    threshold: str = "default"  # default (0.5) | youden | sensNN | specNN | a number (threshold.py)
    keep_last: bool = False  # keep last.pt (the resume state) after the run has finished
    compile: str = "auto"  # auto (CUDA: torch.compile reduce-overhead = CUDA graphs) | on | off

    def validate(self) -> TrainConfig:
        for name in ("epochs", "batch_size", "image_size", "repeats"):
            if getattr(self, name) < 1:
                raise CcrccError(f"{name} (--{name.replace('_', '-')}) must be >= 1, got {getattr(self, name)}")
        check_number(self.lr, "learning rate (--lr)", 0, None, lo_open=True)
        check_number(self.weight_decay, "weight decay (--weight-decay)", 0, 1)
        check_number(self.momentum, "momentum", 0, 1)
        check_number(self.rotation, "rotation", 0, 180)
        if self.select_metric not in ("patient_auc", "image_auc", "loss"):
            raise CcrccError(
                f"select_metric (--select-metric) must be patient_auc, image_auc or loss, got {self.select_metric!r}"
            )
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise CcrccError(f"device (--device) must be auto, cpu or cuda, got {self.device!r}")
        if self.amp not in ("auto", "on", "off"):
            raise CcrccError(f"amp (--amp) must be auto, on or off, got {self.amp!r}")
        if self.compile not in ("auto", "on", "off"):
            raise CcrccError(f"compile (--compile) must be auto, on or off, got {self.compile!r}")
        from ccrcc_grade.core.threshold import parse_spec

        parse_spec(self.threshold)
        return self


@dataclass(frozen=True)
class StudyProtocol:
    """What `study` trains and evaluates every model with: a preset (:data:`PRESETS`) with the
    command's overrides applied (``with_overrides``). Stored in results.json as ``protocol``."""

    size: int  # crop edge in the cache (PreprocessConfig.size)
    image_size: int  # network input (TrainConfig.image_size)
    epochs: int
    weights: str
    repeats: int
    lr: float
    n_boot: int  # bootstrap resamples of every CI
    combined_epochs: int | None = None  # the 4x larger combined set, when it differs

    def epochs_for(self, phase: str) -> int:
        return self.combined_epochs or self.epochs if phase == COMBINED else self.epochs

    def with_overrides(self, **values) -> StudyProtocol:
        """The protocol with every value that is not None replaced; an explicit ``epochs``
        applies to every model, the combined one included."""
        given = {k: v for k, v in values.items() if v is not None}
        if "epochs" in given:
            given["combined_epochs"] = None
        return dataclasses.replace(self, **given)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "size": self.size,
            "image_size": self.image_size,
            "epochs": self.epochs,
            "combined_epochs": self.combined_epochs,
            "weights": self.weights,
            "repeats": self.repeats,
            "lr": self.lr,
            "n_boot": self.n_boot,
        }
        if self.combined_epochs is None:
            del d["combined_epochs"]
        return d


SPLIT_RATIOS = "8:1:1"  # the study's train:val:test patient split
N_BOOT = 2000  # bootstrap resamples of every confidence interval (the paper preset's)
# Inverse L2 penalty of the logistic models fitted on standardised predictors (logistic fusion,
# clinical model, nomogram): scikit-learn's default, stated in the report's methods.
LOGISTIC_C = 1.0
BOX_K = 20  # plausible box sets per patient in predict's and the workstation's box robustness


# Study presets (`study --preset`); --help and the README describe them from here.
PRESETS: dict[str, StudyProtocol] = {
    # the study's protocol: the configuration defaults
    "paper": StudyProtocol(
        size=PreprocessConfig.size,
        image_size=TrainConfig.image_size,
        epochs=TrainConfig.epochs,
        weights=TrainConfig.weights,
        repeats=TrainConfig.repeats,
        lr=TrainConfig.lr,
        n_boot=N_BOOT,
    ),
    # a CPU-sized version for demos and smoke tests: small crops, few epochs, no download; a
    # network trained from scratch needs a larger step than the study's fine-tuning lr. The
    # combined set holds 4x the crops of a phase: 2 epochs give it the optimizer steps of 8
    "quick": StudyProtocol(
        size=64, image_size=64, epochs=8, combined_epochs=2, weights="none", repeats=1, lr=1e-2, n_boot=500
    ),
}


@dataclass(frozen=True)
class SynthOptions:
    """`synth`: the phantom cohort's defaults."""

    patients: int = 40
    high_fraction: float = 0.25
    layout: str = "slices"
    seed: int = 0
    matrix: int = 512
    difficulty: str = "realistic"
    workers: int = 1
    readers: int = 1
    motion_mm: float = 0.0  # each phase moved by a random rigid shift up to this length (mm)
    mask_margin_mm: float = 1.5  # dicom/nifti truth boxes: the mask's box grown by this (ingest's rule)
    centers: int = 3  # realistic: simulated centres (noise, kernel, HU offset, scanner)


@dataclass(frozen=True)
class ServeOptions:
    """`serve`: the workstation's defaults (loopback only unless a token file is given)."""

    host: str = "127.0.0.1"
    port: int = 8000
    data: str = "ccrcc-data"
    max_upload_mb: int = 2048
    max_files: int = 5000
    max_boxes: int = 4000  # four phases of 500+ slices, every slice boxed twice over
    max_uploads: int = 2  # uploads read at the same time (each is held in memory while parsed)


@dataclass(frozen=True)
class BenchOptions:
    """`bench`: timed steps and the study's batch and input size."""

    steps: int = 6
    image_size: int = TrainConfig.image_size
    batch_size: int = TrainConfig.batch_size


CLINICAL_NORMALITY = "ks"  # Table 2's normality test per group (Lilliefors-corrected KS)


def parse_jobs(jobs: str | int) -> int:
    """``--jobs N``: a whole number >= 1 ('auto' is resolved by the study, which knows the GPUs)."""
    try:
        n = int(jobs)
    except (TypeError, ValueError):
        raise CcrccError(f"jobs (--jobs) must be auto or a whole number >= 1, got {jobs!r}") from None
    if n < 1:
        raise CcrccError(f"jobs (--jobs) must be auto or a whole number >= 1, got {jobs!r}")
    return n


@dataclass
class StudyOptions:
    """What `study` is asked to do; ``resolved()`` gives the typed protocol every model uses."""

    preset: str = "paper"
    folds: int = 0
    seed: int = 0
    weights: str | None = None  # overrides of the preset (None: the preset's)
    device: str = "auto"
    epochs: int | None = None
    image_size: int | None = None
    size: int | None = None
    format: str = "cohort"
    external: str | None = None
    ratios: str = SPLIT_RATIOS
    threshold: str = TrainConfig.threshold  # the decision-threshold policy of every model (threshold.py)
    evidence: bool = True  # fusion, multi-phase network, radiomics, clinical models (evidence/)
    jobs: str = "auto"  # trainings at once: auto (GPUs x what fits; 1 on a CPU) or a number
    second_reader: str | None = None  # another reader's boxes of the cohort (boxes.csv or cohort folder)

    def resolved(self) -> StudyProtocol:
        """The protocol every model is trained with: the preset with this command's overrides.
        Refuses a bad preset, threshold policy or --jobs before anything is ingested or trained."""
        if self.preset not in PRESETS:
            raise CcrccError(f"unknown preset {self.preset!r}; use {' or '.join(PRESETS)}")
        from ccrcc_grade.core.threshold import parse_spec

        parse_spec(self.threshold)  # refuse a bad policy before hours of training
        if str(self.jobs) != "auto":
            parse_jobs(self.jobs)  # and a bad --jobs before the ingest
        return PRESETS[self.preset].with_overrides(
            weights=self.weights, epochs=self.epochs, image_size=self.image_size, size=self.size
        )


def preset_text(p: StudyProtocol) -> str:
    """One line describing a study preset (used by --help and the README, so both say the same)."""
    combined = (
        f" ({p.combined_epochs} for the 4x larger combined set: the same optimizer steps)" if p.combined_epochs else ""
    )
    return (
        f"crops {p.size} px, input {p.image_size} px, {p.epochs} epochs{combined}, lr {p.lr:g}, "
        f"weights {p.weights}, x{p.repeats} augmentation, {p.n_boot} bootstrap resamples"
    )


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a dataclass from a dict, ignoring unknown keys (forward compatibility)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def save_json(obj: Any, path: Path) -> None:
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    atomic_write_text(Path(path), json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
