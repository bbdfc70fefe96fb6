"""Shared fixtures: small synthetic cohorts (built once per session), the real reference files
in ../shared/data-survey (tests skip with a reason when absent), the CLI runner and what every
test module uses (`refused` for one-line refusals, CSV rows, free ports). Test modules take all of
it as fixtures and import nothing from here."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("CCRCC_NO_PROGRESS", "1")
# two threads per test process; pytest-xdist's workers (`make test` runs 2) share them, one thread
# each: two workers with two threads each on 2 cores oversubscribe them (measured: slower than one
# process). A worker inherits the controller's OMP_NUM_THREADS, so it is set, not defaulted, there;
# this runs before anything imports torch.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, 2 // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
else:
    os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
SURVEY = REPO.parent / "shared" / "data-survey"

MATRIX = 128  # synthetic slices: small but with the real geometry (~0.7 mm pixels scaled)
CROP = 48  # crop size of test caches


# pytest-xdist (`make test`: --dist loadscope) sends each module to one worker; the modules that
# share an expensive session fixture go to one worker together, so it is built once, not once per
# worker (the proposal model of roi_run trains ~90 s on one thread, the study of study_out ~35 s).
SHARED_FIXTURE_MODULES = {
    "roi_run": (
        "tests/roi/test_net.py",
        "tests/roi/test_propose.py",
        "tests/serve/test_assisted.py",
        "tests/serve/test_page_assisted.py",
        "tests/tools/test_bench.py",
    ),
    "study_out": ("tests/study/test_report.py", "tests/study/test_run.py"),
}


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook; plain pytest runs without it
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    unit_of = {m: name for name, modules in SHARED_FIXTURE_MODULES.items() for m in modules}

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:  # xdist's way to say what travels together
            return unit_of.get(nodeid.split("::", 1)[0]) or super()._split_scope(nodeid)

    return SharedFixtureScheduling(config, log)


def survey_file(rel: str) -> Path:
    """A file of ../shared/data-survey, or skip the test when the folder is not there."""
    p = SURVEY / rel
    if not p.exists():
        pytest.skip(f"reference data {p} not present (../shared/data-survey is optional)")
    return p


def csv_rows(path: Path) -> list[dict]:
    """The rows of a CSV file as dicts (clinical.csv, boxes.csv, manifest.csv)."""
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_csv_rows(path: Path, rows: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


# What no command may print: a P value of zero (a P value is never 0) or an undefined number
ZERO_P = re.compile(r"\b[Pp](?: value)?\s*=?\s*0\.0+(?![0-9]*[1-9])\b")
UNDEFINED = re.compile(r"\b(?:nan|NaN|inf)\b")


def cli(*args: str) -> int:
    """Run the CLI in-process and return its exit code (errors print one line to stderr). What it
    prints still reaches capsys, and is checked: no P value of 0, no NaN or infinity."""
    import contextlib
    import io

    from ccrcc_grade.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([str(a) for a in args])
    text = buf.getvalue()
    sys.stdout.write(text)
    assert not ZERO_P.search(text), f"a P value printed as zero: {ZERO_P.search(text).group(0)!r}"
    assert not UNDEFINED.search(text), f"an undefined number printed: {UNDEFINED.search(text).group(0)!r}"
    return code


@pytest.fixture(scope="session")
def slices_cohort(tmp_path_factory) -> Path:
    from ccrcc_grade.tools.synth import make_cohort

    return make_cohort(
        tmp_path_factory.mktemp("coh") / "slices",
        patients=16,
        high_fraction=0.4,
        seed=3,
        matrix=MATRIX,
        difficulty="easy",
    )


@pytest.fixture(scope="session")
def dicom_cohort(tmp_path_factory) -> Path:
    from ccrcc_grade.tools.synth import make_cohort

    return make_cohort(
        tmp_path_factory.mktemp("coh") / "dicom",
        patients=16,
        high_fraction=0.4,
        seed=3,
        matrix=MATRIX,
        layout="dicom",
        difficulty="easy",
    )


@pytest.fixture(scope="session")
def nifti_cohort(tmp_path_factory) -> Path:
    """NIfTI layout with true tumour masks, every phase moved by up to 12 mm (synth.json says how far)."""
    from ccrcc_grade.tools.synth import make_cohort

    return make_cohort(
        tmp_path_factory.mktemp("coh") / "nifti",
        patients=12,
        seed=5,
        matrix=160,
        layout="nifti",
        motion_mm=12.0,
    )


@pytest.fixture(scope="session")
def multicentre_cohort(tmp_path_factory) -> Path:
    """Realistic DICOM phantom of 3 centres (noise, kernel, HU offset and scanner differ; the
    clinical.csv ``center`` column and the DICOM Manufacturer name them): 45 patients, 64 px;
    each centre holds >= 3 patients of each grade (a 2:1:1 split per site)."""
    from ccrcc_grade.tools.synth import make_cohort

    return make_cohort(
        tmp_path_factory.mktemp("coh") / "multicentre",
        patients=45,
        high_fraction=0.45,
        seed=11,
        matrix=64,
        layout="dicom",
        centres=3,
    )


@pytest.fixture(scope="session")
def roi_run(tmp_path_factory, nifti_cohort) -> Path:
    """A proposal model trained briefly on the NIfTI phantom (its own patients; tests measure others)."""
    from ccrcc_grade.roi.net import train_roi
    from ccrcc_grade.tools.synth import make_cohort

    train = make_cohort(
        tmp_path_factory.mktemp("coh") / "roi-train",
        patients=24,
        seed=40,
        matrix=160,
        layout="nifti",
        motion_mm=12.0,
    )
    run = tmp_path_factory.mktemp("runs") / "roi"
    train_roi(train, run, epochs=14, seed=0)
    return run


@pytest.fixture(scope="session")
def work(tmp_path_factory, slices_cohort) -> Path:
    """Ingested + split slices cohort (read-only for tests: copy before changing)."""
    from ccrcc_grade.core.config import PreprocessConfig
    from ccrcc_grade.ingest.pipeline import ingest
    from ccrcc_grade.ingest.splits import make_splits

    w = tmp_path_factory.mktemp("work") / "w"
    ingest(slices_cohort, w, PreprocessConfig(size=CROP), show_progress=False)
    make_splits(w, "2:1:1", seed=0)
    return w


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, work) -> Path:
    """A ResNet34 trained briefly on the parenchymal phase (weights none, 48 px)."""
    from ccrcc_grade.core.config import TrainConfig
    from ccrcc_grade.model.train import fit

    run = tmp_path_factory.mktemp("runs") / "resnet34-parenchymal"
    fit(
        TrainConfig(
            work=str(work),
            phase="parenchymal",
            model="resnet34",
            out=str(run),
            weights="none",
            epochs=4,
            image_size=CROP,
            batch_size=16,
            progress=False,
        )
    )
    return run


@pytest.fixture
def copy_tree(tmp_path):
    def _copy(src: Path, name: str = "copy") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    return _copy


# pixelmed's XSLT exceeds the XPath operator limits of newer JREs (JAXP0801003); lifted for it only
PIXELMED_JAVA = "-Djdk.xml.xpathExprOpLimit=0 -Djdk.xml.xpathExprGrpLimit=0 -Djdk.xml.xpathTotalOpLimit=0"


def dicom_errors(path: Path, sr: bool = False) -> list[str]:
    """The error lines dicom3tools' dciodvfy (and for an SR pixelmed's DicomSRValidator) print
    for a DICOM file; both installed by `make system-deps`, their absence is a failure."""
    import subprocess

    tools = [["dciodvfy", str(path)]] + ([["DicomSRValidator", str(path)]] if sr else [])
    errors = []
    for cmd in tools:
        if shutil.which(cmd[0]) is None:
            pytest.fail(f"{cmd[0]} is not installed: run `make system-deps` (dicom3tools, pixelmed-apps)")
        env = {**os.environ, "JAVA_TOOL_OPTIONS": PIXELMED_JAVA}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        text = out.stdout + out.stderr
        if cmd[0] == "DicomSRValidator" and "Root Template Validation Complete" not in text:
            errors.append(f"DicomSRValidator did not validate: {text[-500:]}")
        errors += [f"{cmd[0]}: {line}" for line in text.splitlines() if line.lstrip().startswith("Error")]
    return errors


def any_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, timeout: float = 30.0, proc=None) -> None:
    """Poll ``url`` until it answers (any HTTP status), the process dies, or time runs out."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@contextlib.contextmanager
def running_orthanc(root: Path, extra: dict | None = None):
    """A real Orthanc PACS (Debian's orthanc + orthanc-dicomweb, installed by `make test`) on a free
    loopback port with its storage in ``root`` and ``extra`` merged into the generated config;
    yields its HTTP base URL."""
    import json
    import subprocess

    exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    plugin = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
    if not Path(exe).is_file() or not plugin.is_file():
        pytest.fail(
            "Orthanc with its DICOMweb plugin is not installed: run `make system-deps` (apt-get install "
            "orthanc orthanc-dicomweb)"
        )
    port = any_free_port()
    config = {
        "Name": "ccrcc-test",
        "HttpPort": port,
        "DicomPort": any_free_port(),
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        **(extra or {}),
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = open(root / "orthanc.log", "w")
    proc = subprocess.Popen([exe, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/system", 30, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A real Orthanc (DICOMweb only); yields its DICOMweb base URL."""
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as url:
        yield url + "/dicom-web"


@pytest.fixture(scope="session")
def start_orthanc():
    """``start_orthanc(root, extra_config)``: a context manager running a real Orthanc with its
    config extended (e.g. its DICOM server and ``DicomModalities``); yields its HTTP URL."""
    return running_orthanc


# ---- what test modules take as fixtures (they import nothing from this file) -----------------


@pytest.fixture(scope="session")
def run_cli():
    """The CLI in-process: ``run_cli("ingest", ...)`` returns the exit code."""
    return cli


@pytest.fixture(scope="session")
def survey():
    """``survey("ct/...")``: a file of ../shared/data-survey, or skip the test without it."""
    return survey_file


@pytest.fixture(scope="session")
def read_rows():
    return csv_rows


@pytest.fixture(scope="session")
def write_rows():
    return write_csv_rows


@pytest.fixture(scope="session")
def free_port():
    return any_free_port


def _real_ct_slice(k: int = 10):
    """Slice k (by position) of the real TotalSegmentator CT series of ../shared (upper abdomen,
    contrast-enhanced; no kidney on these slices): HU, pixel spacing and TotalSegmentator's
    117-class labels of the slice in the DICOM's pixel grid (the NIfTI's i, j are the column and
    the row counted from the bottom)."""
    import nibabel as nib
    import numpy as np
    import pydicom

    from ccrcc_grade.io.dicom import read_hu

    folder = survey_file("ct/totalsegmentator/example_ct_dicom")

    def z(f: Path) -> float:
        return float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])

    hu, spacing = read_hu(sorted(folder.iterdir(), key=z)[k])
    seg = np.asarray(nib.load(survey_file("ct/totalsegmentator/example_seg_dicom.nii.gz")).dataobj)
    return hu, spacing, seg[:, ::-1, k].T


@pytest.fixture(scope="session")
def real_ct_slice():
    """``real_ct_slice(k=10)``: (HU, spacing, labels) of a real CT slice, or skip without ../shared."""
    return _real_ct_slice


@pytest.fixture(scope="session")
def validate_dicom():
    """``validate_dicom(path, sr=False)``: the validators' error lines (an empty list: valid)."""
    return dicom_errors


@pytest.fixture(scope="session")
def wait_http():
    return wait_for_http


@pytest.fixture(scope="session")
def crop_size() -> int:
    """Crop size of the test caches."""
    return CROP


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture
def refused(run_cli):
    """``refused(capsys, [CLI args], *needles)``: the command exits 2 with one line on stderr,
    ``ccrcc-grade: error: ...``, holding every needle; returns that line."""

    def check(capsys, args, *needles) -> str:
        assert run_cli(*args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("ccrcc-grade: error: "), err
        for n in needles:
            assert str(n) in err, (n, err)
        return err

    return check


KITS_CASES = ["case_00152", "case_00061", "case_00038", "case_00546", "case_00285", "case_00110"]


@pytest.fixture(scope="session")
def kits_cases() -> list[str]:
    """The real KiTS23 cases whose masks the KiTS tests use."""
    return list(KITS_CASES)


@pytest.fixture(scope="session")
def kits_dir(tmp_path_factory):
    """Real KiTS23 masks, each paired with a synthetic imaging volume of the same shape and
    affine (the real CT is not available offline): tumour 60 HU, kidney 150, rest -80."""
    import nibabel as nib
    import numpy as np

    survey_file("kits23/segmentations")
    d = tmp_path_factory.mktemp("kits")
    for case in KITS_CASES:
        seg = nib.load(survey_file(f"kits23/segmentations/{case}_segmentation.nii.gz"))
        lab = np.asanyarray(seg.dataobj)
        img = np.where(lab == 2, 60, np.where(lab == 1, 150, -80)).astype(np.int16)
        (d / case).mkdir()
        nib.save(nib.Nifti1Image(img, seg.affine), d / case / "imaging.nii.gz")
        shutil.copy(survey_file(f"kits23/segmentations/{case}_segmentation.nii.gz"), d / case / "segmentation.nii.gz")
    shutil.copy(survey_file("kits23/kits23.json"), d / "kits23.json")
    return d


def folder_snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def snapshot():
    """``snapshot(folder)``: every file's relative path and size, to show a refused command
    changed nothing."""
    return folder_snapshot


@pytest.fixture(scope="session")
def resized_run(tmp_path_factory, work) -> Path:
    """A 1-epoch ResNet34 whose input size (40 px) differs from the cache's crops (48 px): the
    antialiased resize it needs is what the ONNX exporter cannot write."""
    from ccrcc_grade.core.config import TrainConfig
    from ccrcc_grade.model.train import fit

    run = tmp_path_factory.mktemp("resized") / "r"
    fit(
        TrainConfig(
            work=str(work),
            phase="parenchymal",
            model="resnet34",
            out=str(run),
            weights="none",
            epochs=1,
            image_size=40,
            batch_size=16,
            progress=False,
        )
    )
    return run
