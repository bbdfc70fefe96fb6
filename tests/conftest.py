"""Shared fixtures: small synthetic cohorts (built once per session), the real reference files
in ../shared/data-survey (tests skip with a reason when absent), and a CLI runner."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("CCRCC_NO_PROGRESS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
SURVEY = REPO.parent / "shared" / "data-survey"

MATRIX = 128     # synthetic slices: small but with the real geometry (~0.7 mm pixels scaled)
CROP = 48        # crop size of test caches


def survey(rel: str) -> Path:
    """A file of ../shared/data-survey, or skip the test when the folder is not there."""
    p = SURVEY / rel
    if not p.exists():
        pytest.skip(f"reference data {p} not present (../shared/data-survey is optional)")
    return p


def run_cli(*args: str) -> int:
    """Run the CLI in-process and return its exit code (errors print one line to stderr)."""
    from ccrcc_grade.cli import main

    return main([str(a) for a in args])


@pytest.fixture(scope="session")
def slices_cohort(tmp_path_factory) -> Path:
    from ccrcc_grade.synth import make_cohort

    return make_cohort(tmp_path_factory.mktemp("coh") / "slices", patients=16, high_fraction=0.4, seed=3,
                       matrix=MATRIX)


@pytest.fixture(scope="session")
def dicom_cohort(tmp_path_factory) -> Path:
    from ccrcc_grade.synth import make_cohort

    return make_cohort(tmp_path_factory.mktemp("coh") / "dicom", patients=16, high_fraction=0.4, seed=3,
                       matrix=MATRIX, layout="dicom")


@pytest.fixture(scope="session")
def work(tmp_path_factory, slices_cohort) -> Path:
    """Ingested + split slices cohort (read-only for tests: copy before changing)."""
    from ccrcc_grade.cache import ingest
    from ccrcc_grade.config import PreprocessConfig
    from ccrcc_grade.splits import make_splits

    w = tmp_path_factory.mktemp("work") / "w"
    ingest(slices_cohort, w, PreprocessConfig(size=CROP), show_progress=False)
    make_splits(w, "2:1:1", seed=0)
    return w


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, work) -> Path:
    """A ResNet34 trained briefly on the parenchymal phase (weights none, 48 px)."""
    from ccrcc_grade.config import TrainConfig
    from ccrcc_grade.train import fit

    run = tmp_path_factory.mktemp("runs") / "resnet34-parenchymal"
    fit(TrainConfig(work=str(work), phase="parenchymal", model="resnet34", out=str(run), weights="none", epochs=4,
                    image_size=CROP, batch_size=16, progress=False))
    return run


@pytest.fixture
def copy_tree(tmp_path):
    def _copy(src: Path, name: str = "copy") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst
    return _copy
