"""The sites of a federation and their WORK folders.

A site is an ingested WORK folder (crops, manifest, clinical.csv, acquisition.csv, preprocessing)
with its own patient split. ``split_by_centre`` makes one per value of the cohort's ``center``
column (``federated --simulate``: the phantom's or a real cohort's centres stand in for
hospitals); ``merge_sites`` pools site WORKs into one (the centralised comparison, and the pooled
test patients every model is evaluated on). ``check_sites`` refuses, before anything trains, what
would make the federation meaningless: sites ingested with other preprocessing than the first,
a site whose training patients hold one grade only, a patient id at two sites.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np

from ccrcc_grade.core.config import to_dict
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_write_csv, atomic_write_json
from ccrcc_grade.core.paths import WorkDir
from ccrcc_grade.ingest.acquisition import ACQUISITION_COLUMNS, CENTER_COLUMNS, column
from ccrcc_grade.ingest.cache import MANIFEST_COLUMNS, CropCache
from ccrcc_grade.ingest.splits import load_splits, make_splits


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    if not path.is_file():
        return [], []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        r = csv.DictReader(fh)
        return list(r.fieldnames or []), list(r)


def write_work(parts: list[tuple[Path, set[str]]], out: Path, note: dict) -> Path:
    """A WORK folder of the given patients of one or more WORK folders (same preprocessing):
    crops re-indexed, manifest, clinical.csv and acquisition.csv rows of those patients, the
    first folder's preprocess.json, and an ingest report saying where it came from."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)  # only ever a folder this package made inside the federation's DIR
    out.mkdir(parents=True)
    crops, manifest, clinical, acquisition = [], [], [], []
    clin_cols: list[str] = []
    for work, patients in parts:
        cache = CropCache.load(work)
        rows = [r for r in cache.manifest if r["patient_id"] in patients]
        crops.append(np.asarray(cache.crops[[r["index"] for r in rows]]))
        base = sum(len(c) for c in crops[:-1])
        manifest += [{**r, "index": base + i} for i, r in enumerate(rows)]
        cols, clin = _read_csv(WorkDir(work).clinical)
        clin_cols += [c for c in cols if c not in clin_cols]
        clinical += [r for r in clin if r.get("patient_id") in patients]
        acquisition += [r for r in _read_csv(WorkDir(work).acquisition)[1] if r.get("patient_id") in patients]
    wd = WorkDir(out)
    np.save(wd.crops, np.concatenate(crops) if crops else np.zeros((0, 1, 1), np.uint8))
    atomic_write_csv(wd.manifest, MANIFEST_COLUMNS, manifest)
    atomic_write_csv(wd.clinical, clin_cols, clinical)
    atomic_write_csv(wd.acquisition, ACQUISITION_COLUMNS, acquisition)
    shutil.copyfile(WorkDir(parts[0][0]).preprocess, wd.preprocess)
    atomic_write_json(
        wd.ingest_report,
        {
            **note,
            "n_crops": len(manifest),
            "n_patients": len({r["patient_id"] for r in manifest}),
            "cohort_fingerprint": note.get("cohort_fingerprint"),
        },
    )
    return out


def centres_of(work: Path) -> dict[str, list[str]]:
    """centre -> its patients, from WORK's clinical.csv (``center`` column, else acquisition.csv)."""
    _, clin = _read_csv(WorkDir(work).clinical)
    _, acq = _read_csv(WorkDir(work).acquisition)
    from_acq = {r["patient_id"]: r.get("center", "") for r in acq}
    out: dict[str, list[str]] = {}
    for r in clin:
        c = column(r, CENTER_COLUMNS) or from_acq.get(r["patient_id"], "")
        out.setdefault(c, []).append(r["patient_id"])
    return out


def safe_name(centre: str) -> str:
    """A centre's name as a folder name (letters, digits, '-', '_'; others become '_')."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in centre)[:40] or "site"


def split_by_centre(work: Path, out: Path, ratios: str, seed: int) -> dict[str, Path]:
    """One site WORK per centre of an ingested cohort (``out/<centre>/work``), each with its own
    stratified patient split (``ratios``, ``seed``); returns centre -> WORK."""
    centres = centres_of(work)
    if "" in centres:
        raise CcrccError(
            f"{work}: {len(centres[''])} patient(s) without a centre (clinical.csv needs a 'center' column "
            f"with a value for every patient for --simulate), e.g. {centres[''][0]!r}"
        )
    if len(centres) < 2:
        raise CcrccError(f"{work}: one centre only ({', '.join(centres)}); --simulate needs >= 2 values of 'center'")
    rep = WorkDir(work).read_ingest_report()
    sites = {}
    for c, pids in sorted(centres.items()):
        site = write_work(
            [(work, set(pids))],
            Path(out) / safe_name(c) / "work",
            {"cohort": rep.get("cohort"), "cohort_fingerprint": rep.get("cohort_fingerprint"), "site": c},
        )
        try:
            make_splits(site, ratios, seed)
        except CcrccError as exc:
            raise CcrccError(f"site {c!r}: {exc}") from None
        sites[c] = site
    return sites


def site_name(work: Path) -> str:
    """A site WORK's name: its centre (from the ingest report or its one centre), else the folder."""
    rep = WorkDir(work).read_ingest_report()
    if rep.get("site"):
        return str(rep["site"])
    centres = [c for c in centres_of(work) if c]
    return centres[0] if len(centres) == 1 else Path(work).resolve().name


def check_sites(works: dict[str, Path], phase: str) -> dict[str, dict]:
    """Per site: patients per split and grade; one-line refusals for a mismatched preprocessing,
    a training split with one grade, a patient id at two sites or a site without the phase."""
    if len(works) < 2:
        raise CcrccError(f"a federation needs >= 2 sites, got {len(works)}")
    first_name, first = next(iter(works.items()))
    pre0 = to_dict(CropCache.load(first).preprocess)
    seen: dict[str, str] = {}
    out = {}
    for name, work in works.items():
        cache = CropCache.load(work)
        pre = to_dict(cache.preprocess)
        differ = {k: (v, pre0.get(k)) for k, v in pre.items() if pre0.get(k) != v}
        if differ:
            raise CcrccError(
                f"site {name!r} ({work}): ingested with other preprocessing than site {first_name!r} "
                f"({', '.join(f'{k} {a} vs {b}' for k, (a, b) in differ.items())}); every site must ingest "
                "with the same settings"
            )
        labels = cache.patient_labels()
        for pid in labels:
            if pid in seen:
                raise CcrccError(f"patient {pid!r} is at two sites ({seen[pid]!r} and {name!r}); ids must be unique")
            seen[pid] = name
        splits = load_splits(WorkDir(work).splits, set(labels))
        if not cache.select(phase):
            raise CcrccError(f"site {name!r} ({work}): no {phase} crops")
        train = [labels[p] for p in splits["train"]]
        if len(set(train)) < 2:
            raise CcrccError(
                f"site {name!r} ({work}): its training patients hold one grade only ({len(train)} "
                f"patient(s), all {'high' if train and train[0] else 'low'}); a site must hold both grades"
            )
        out[name] = {
            "work": str(Path(work).resolve()),
            **{f"{part}_patients": len(splits[part]) for part in ("train", "val", "test")},
            "high_grade_patients": int(sum(labels.values())),
            "patients": len(labels),
        }
    return out


def merge_sites(works: dict[str, Path], out: Path) -> Path:
    """The sites pooled into one WORK (every patient, the union of the sites' splits)."""
    merged = write_work(
        [(w, set(CropCache.load(w).patient_labels())) for w in works.values()],
        out,
        {"cohort": "pooled sites: " + ", ".join(works), "sites": list(works)},
    )
    splits: dict = {"train": [], "val": [], "test": []}
    for w in works.values():
        s = json.loads(WorkDir(w).splits.read_text())
        for part in splits:
            splits[part] += s[part]
    atomic_write_json(WorkDir(merged).splits, {**splits, "sites": list(works)})
    return merged


def pooled_test(pooled: Path) -> tuple[list[str], np.ndarray]:
    """The test patients of a pooled WORK (``merge_sites``) and their labels."""
    labels = CropCache.load(pooled).patient_labels()
    test = json.loads(WorkDir(pooled).splits.read_text())["test"]
    return test, np.array([labels[p] for p in test])
