"""From one box to every slice and every phase.

``propose_series``: from the clinician's box(es) on one series, the proposal model walks up and
down slice by slice (each slice prompted with the box it proposed on the neighbour) until the
tumour ends; with two or more key boxes and no model, the boxes in between are interpolated.
``propose_patient``: the same, then every other phase through ``propagate``. ``propose_command``:
the CLI over a cohort or a patient folder, writing boxes.csv rows with a ``source`` column.
The clinician's own boxes are never changed: a drawn box stays as drawn on its slice, proposals
fill only slices without one, and a failed proposal leaves the drawn boxes as they were.
"""

from __future__ import annotations

import csv
import io
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.phases import PHASES
from ccrcc_grade.io.boxes import Box
from ccrcc_grade.roi.interpolate import interpolate_boxes
from ccrcc_grade.roi.net import RoiModel, make_input, mask_to_box, prob_to_slice
from ccrcc_grade.roi.volume import PhaseVolume

BODY_HU = -500.0  # a seed box whose mean is below this lies in air (outside the body)
REGROW_AFTER = 0.7  # the walk ends where the tumour, once shrunk below 70% of its widest slice ...
REGROW_BY = 1.1  # ... grows again by more than 10% from one slice to the next


def check_seed(vol: PhaseVolume, k: int, box: Box, where: str) -> None:
    """A seed box inside the series and the body: a one-line error naming it otherwise."""
    nz, ny, nx = vol.hu.shape
    if not 0 <= k < nz:
        raise CcrccError(f"{where}: seed slice {k + 1} outside the series ({nz} slices)")
    if box.width < 1 or box.height < 1 or box.x_max <= 0 or box.y_max <= 0 or box.x_min >= nx or box.y_min >= ny:
        raise CcrccError(f"{where}: seed box lies outside the {nx}x{ny} image")
    b = box.clip(nx, ny)
    patch = vol.hu[
        k,
        int(b.y_min) : max(int(b.y_min) + 1, int(np.ceil(b.y_max))),
        int(b.x_min) : max(int(b.x_min) + 1, int(np.ceil(b.x_max))),
    ]
    if float(patch.mean()) < BODY_HU:
        raise CcrccError(
            f"{where}: the seed box on slice {k + 1} lies outside the body (mean {patch.mean():.0f} HU); "
            "box the tumour in the kidney"
        )


def _box_area(box: Box, vol: PhaseVolume) -> float:
    return box.width * box.height * vol.spacing[0] * vol.spacing[1]


def _predict(model: RoiModel, vol: PhaseVolume, k: int, prompt: Box) -> tuple[Box | None, float]:
    x, grid = make_input(vol.hu[k], prompt, vol.spacing, model.cfg)
    prob = model.masks(x[None])[0]
    p, off = prob_to_slice(prob, grid, vol.hu.shape[1:], model.cfg)
    return mask_to_box(p > 0.5, off, vol.spacing, model.cfg, prompt)


def propose_series(
    vol: PhaseVolume, seeds: dict[int, Box], model: RoiModel | None = None, where: str = ""
) -> tuple[dict[int, tuple[Box, str]], dict]:
    """Every tumour slice's box on ``vol`` from the seed boxes (slice -> box): returns
    (slice -> (box, source)) with source drawn / proposed / interpolated, and info (slices, seconds)."""
    t0 = time.perf_counter()
    where = where or vol.name
    if not seeds:
        raise CcrccError(f"{where}: no seed box")
    for k, b in seeds.items():
        check_seed(vol, k, b, where)
    out: dict[int, tuple[Box, str]] = {k: (b, "drawn") for k, b in seeds.items()}
    info: dict = {"method": "", "seconds": 0.0}
    nz, ny, nx = vol.hu.shape
    if model is not None:
        info["method"] = "proposal model"
        for k0, b0 in sorted(seeds.items()):
            refined, area = _predict(model, vol, k0, b0)
            if refined is None or area < model.cfg.min_area_mm2:
                raise CcrccError(
                    f"{where}: no tumour found in the seed box on slice {k0 + 1}; box a slice that shows the tumour"
                )
            for step in (-1, 1):
                prev, k = refined, k0 + step
                largest = last = _box_area(refined, vol)
                while 0 <= k < nz and k not in seeds:
                    box, area = _predict(model, vol, k, prev)
                    if box is None or area < model.cfg.min_area_mm2:
                        break
                    box = box.clip(nx, ny)
                    size = _box_area(box, vol)
                    # a tumour has one widest slice: once its box has shrunk, a slice where it grows
                    # again is the kidney (or another lesion) beyond the tumour's pole
                    if last < REGROW_AFTER * largest and size > REGROW_BY * last:
                        break
                    if k not in out:
                        out[k] = (box, "proposed")
                    prev, k = box, k + step
                    largest, last = max(largest, size), size
        # slices between two drawn boxes that the walk did not reach are interpolated
        if len(seeds) > 1:
            for k, b in interpolate_boxes(seeds, vol.positions).items():
                out.setdefault(k, (b, "interpolated"))
    else:
        if len(seeds) < 2:
            raise CcrccError(
                f"{where}: one box and no proposal model: box the first and last slice of the tumour (interpolation), "
                "or give a proposal model"
            )
        info["method"] = "interpolation"
        for k, b in interpolate_boxes(seeds, vol.positions).items():
            out[k] = (b, "interpolated")
    info["slices"] = len(out)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    return dict(sorted(out.items())), info


def propose_patient(
    volumes: dict[str, PhaseVolume],
    seeds: dict[str, dict[int, Box]],
    model: RoiModel | None = None,
    phases: tuple[str, ...] | None = None,
    register: bool = True,
    source_phase: str | None = None,
) -> tuple[dict[str, dict[int, tuple[Box, str]]], dict]:
    """Boxes for every requested phase of one patient. ``seeds``: phase -> (slice -> drawn box).
    ``source_phase`` (default: the phase with the most seed boxes) is walked first; the others get its boxes propagated
    (then refined by the model when there is one). Returns (phase -> slice -> (box, source), info)."""
    from ccrcc_grade.roi.propagate import propagate_boxes

    phases = tuple(p for p in (phases or tuple(volumes)) if p in volumes)
    seeded = [p for p in phases if seeds.get(p)]
    if not seeded:
        raise CcrccError("no seed box on any of the phases asked for")
    src = source_phase or max(seeded, key=lambda p: (len(seeds[p]), p == "parenchymal"))
    if src not in seeded:
        raise CcrccError(f"no seed box on the {src} phase")
    result: dict[str, dict[int, tuple[Box, str]]] = {}
    info: dict = {"source_phase": src, "phases": {}}
    result[src], info["phases"][src] = propose_series(volumes[src], seeds[src], model)
    src_boxes = {k: b for k, (b, _) in result[src].items()}
    for ph in phases:
        if ph == src:
            continue
        if seeds.get(ph) and (model is not None or len(seeds[ph]) > 1):
            result[ph], info["phases"][ph] = propose_series(volumes[ph], seeds[ph], model)
            continue
        moved, pinfo = propagate_boxes(src_boxes, volumes[src], volumes[ph], register=register)
        boxes = {k: (b, "propagated") for k, b in moved.items()}
        if model is not None:  # the propagated box on the largest slice seeds a walk on this phase
            k0 = max(moved, key=lambda k: moved[k].width * moved[k].height)
            try:
                walked, _ = propose_series(volumes[ph], {k0: moved[k0]}, model)
                boxes = {k: (b, "propagated" if s == "drawn" else "proposed") for k, (b, s) in walked.items()}
            except CcrccError as exc:
                pinfo["note"] = (pinfo.get("note", "") + f"; the model found no tumour there ({exc})").lstrip("; ")
        for k, b in (seeds.get(ph) or {}).items():  # the clinician's own boxes stay
            boxes[k] = (b, "drawn")
        result[ph], info["phases"][ph] = dict(sorted(boxes.items())), pinfo
    return result, info


# --- CLI ----------------------------------------------------------------------------------------
def _patient_folders(inp: Path) -> list[Path]:
    from ccrcc_grade.core.phases import canonical_phase

    if not inp.is_dir():
        raise CcrccError(f"{inp}: input folder not found")
    if any(canonical_phase(p.name) for p in inp.iterdir() if p.is_dir()):
        return [inp]
    return sorted(p for p in inp.iterdir() if p.is_dir() and not p.name.startswith("."))


def propose_command(
    run: Path | None,
    inp: Path,
    seed_csv: Path,
    out_csv: Path,
    phases: str = "parenchymal",
    register: bool = True,
    backend: str = "auto",
) -> dict:
    """``ccrcc-grade propose``: seed boxes (boxes.csv rows, DICOM layout) -> every slice's box of
    the phases asked for, in boxes.csv format with a ``source`` column (drawn / interpolated /
    propagated / proposed), readable by ingest and ``predict --boxes`` as it is."""
    from ccrcc_grade.core.fileio import atomic_write_text, refuse_overwriting_inputs
    from ccrcc_grade.core.phases import canonical_phase
    from ccrcc_grade.io.boxes import read_boxes_csv
    from ccrcc_grade.roi.net import load_roi_model
    from ccrcc_grade.roi.volume import read_dicom_volume

    inp, seed_csv, out_csv = Path(inp), Path(seed_csv), Path(out_csv)
    refuse_overwriting_inputs([("--out", out_csv)], [seed_csv, inp / "boxes.csv"])
    if phases not in ("parenchymal", "all") and phases not in PHASES:
        raise CcrccError(f"--phases must be parenchymal, all or a phase name, got {phases!r}")
    want = PHASES if phases == "all" else (phases,)
    model = load_roi_model(run, backend) if run is not None else None
    pdirs = _patient_folders(inp)
    one_patient = len(pdirs) == 1 and pdirs[0] == inp
    root = inp.parent if one_patient else inp
    rows = read_boxes_csv(seed_csv, seed_csv.parent)
    by_pid: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_pid[r["patient_id"]].append(r)
    out_rows, report = [], {"patients": {}, "model": str(model.path) if model else None}
    for pdir in pdirs:
        pid = pdir.name
        if pid not in by_pid:
            continue
        folders = {canonical_phase(p.name): p for p in pdir.iterdir() if p.is_dir() and canonical_phase(p.name)}
        seed_phases = {r["phase"] for r in by_pid[pid]}
        need = [p for p in PHASES if p in folders and (p in want or p in seed_phases)]
        volumes = {p: read_dicom_volume(folders[p], root) for p in need}
        seeds: dict[str, dict[int, Box]] = defaultdict(dict)
        for r in by_pid[pid]:
            if r["phase"] not in volumes:
                raise CcrccError(f"{r['where']}: no {r['phase']} folder for patient {pid!r} in {pdir}")
            vol = volumes[r["phase"]]
            k = _slice_of(vol, r, root)
            seeds[r["phase"]][k] = r["box"]
        result, info = propose_patient(volumes, seeds, model, tuple(p for p in want if p in volumes), register)
        report["patients"][pid] = info
        for ph, boxes in result.items():
            vol = volumes[ph]
            for k, (b, source) in boxes.items():
                out_rows.append(
                    {
                        "patient_id": pid,
                        "phase": ph,
                        "file": vol.refs[k],
                        "x_min": round(b.x_min, 2),
                        "y_min": round(b.y_min, 2),
                        "x_max": round(b.x_max, 2),
                        "y_max": round(b.y_max, 2),
                        "source": source,
                    }
                )
    missing = sorted(set(by_pid) - set(report["patients"]))
    if one_patient and not report["patients"]:
        raise CcrccError(f"{seed_csv}: no seed box for patient {inp.name!r}")
    if missing and not one_patient:
        raise CcrccError(f"{seed_csv}: patient(s) {', '.join(missing)} have seed boxes but no folder in {inp}")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["patient_id", "phase", "file", "x_min", "y_min", "x_max", "y_max", "source"])
    w.writeheader()
    w.writerows(out_rows)
    atomic_write_text(out_csv, buf.getvalue())
    counts = defaultdict(int)
    for r in out_rows:
        counts[r["source"]] += 1
    report["boxes"] = dict(counts)
    return report


def _slice_of(vol: PhaseVolume, row: dict, root: Path) -> int:
    """The slice a seed row names: its file relative to the seed CSV's folder or to the cohort
    folder (as in the cohort's boxes.csv) - never a bare file name, which recurs in every series."""
    root = root.resolve()
    for f in (Path(row["file"]).resolve(), (root / row["file_text"]).resolve()):
        rel = str(f.relative_to(root)) if f.is_relative_to(root) else None
        if rel in vol.refs:
            return vol.refs.index(rel)
    f = Path(row["file"])
    names = [Path(r).name for r in vol.refs]
    raise CcrccError(
        f"{row['where']}: {row['file_text']} is not an image of {vol.name}"
        + (" (a file of that name is, in another folder)" if f.name in names else "")
    )
