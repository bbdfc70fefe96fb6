"""Assign unsorted DICOM series to the four phases from their tags (`ingest --detect-phases`).

Rules, in order:
  1. keywords in SeriesDescription / ProtocolName (e.g. NC, plain, arterial, CMP, nephrographic,
     venous, delayed, excretory);
  2. otherwise: a series without ContrastBolusAgent acquired before every contrast series is
     plain; contrast series are ordered by AcquisitionTime and mapped to corticomedullary,
     parenchymal, excretory when exactly those three are missing; otherwise by delay from the
     first contrast series (the injection time is not in the tags): the first is
     corticomedullary when another follows within 40-150 s, a series 40-150 s after it is
     parenchymal, one >= 150 s after it excretory;
  3. anything else is ambiguous: reported, not guessed, and left out of the cache.
The assignment table is written to ingest_report.json for the user to confirm.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pydicom

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.phases import PHASES

KEYWORDS = {
    "plain": {"nc", "noncontrast", "non", "plain", "unenhanced", "native", "pre", "precontrast", "nativ"},
    "corticomedullary": {"arterial", "art", "cmp", "cortico", "corticomedullary", "cm", "la"},
    "parenchymal": {"nephrographic", "nephro", "np", "venous", "portal", "pv", "parenchymal", "pvp"},
    "excretory": {"delayed", "delay", "excretory", "ep", "urographic", "uro", "pyelo", "excretion"},
}


def _tokens(*texts: str) -> set[str]:
    words = set()
    for t in texts:
        words |= {w for w in re.split(r"[^a-z0-9]+", (t or "").lower()) if w}
    if "non" in words and "contrast" in words:
        words.add("noncontrast")
    return words


def _seconds(t: str) -> float | None:
    t = (t or "").split(".")[0]
    if len(t) < 6 or not t[:6].isdigit():
        return None
    return int(t[:2]) * 3600 + int(t[2:4]) * 60 + int(t[4:6]) + float("0." + (t.split(".")[1] if "." in t else "0"))


def detect_phases(series: list[dict]) -> list[dict]:
    """``series``: dicts with uid, description, protocol, contrast (bool), time (s or None) and
    optionally ``problem`` (why its images are not original axial slices: such a series is never
    assigned a phase). Returns the same dicts with ``phase`` (or None) and ``rule``."""
    for s in series:
        if s.get("problem"):
            s["phase"], s["rule"] = None, f"{s['problem']}: not assigned to a phase"
    assign_phases([s for s in series if not s.get("problem")])
    return series


def assign_phases(series: list[dict]) -> None:
    """The rules of ``detect_phases`` on the series that may take a phase."""
    for s in series:
        words = _tokens(s.get("description", ""), s.get("protocol", ""))
        hits = [ph for ph, kw in KEYWORDS.items() if words & kw]
        s["phase"], s["rule"] = (hits[0], "keyword") if len(hits) == 1 else (None, "")
        if len(hits) > 1:
            s["rule"] = "conflicting keywords: " + ", ".join(hits)
    rest = [s for s in series if s["phase"] is None and not s["rule"]]
    contrast = sorted([s for s in rest if s["contrast"] and s["time"] is not None], key=lambda s: s["time"])
    plain = [s for s in rest if not s["contrast"]]
    first_contrast = contrast[0]["time"] if contrast else None
    for s in plain:
        if s["time"] is not None and (first_contrast is None or s["time"] < first_contrast):
            s["phase"], s["rule"] = "plain", "no contrast agent, acquired first"
    taken = {s["phase"] for s in series if s["phase"]}
    free = [ph for ph in PHASES[1:] if ph not in taken]
    if contrast and len(contrast) == len(free) == 3:
        for s, ph in zip(contrast, free):
            s["phase"], s["rule"] = ph, "contrast series in acquisition order"
    elif contrast:
        # the injection time is unknown, so delays are counted from the first contrast series, which
        # is corticomedullary only when another contrast series follows it within 40-150 s
        for s in contrast:
            delay = s["time"] - first_contrast
            ph = None
            if len(contrast) >= 2 and s is contrast[0] and 40 <= contrast[1]["time"] - first_contrast <= 150:
                ph = "corticomedullary"
            elif (
                len(contrast) >= 2
                and s is not contrast[0]
                and 40 <= delay <= 150
                and contrast[0].get("phase") in (None, "corticomedullary")
            ):
                ph = "parenchymal"
            elif delay >= 150:
                ph = "excretory"
            if ph and ph in free and not any(o["phase"] == ph for o in series):
                s["phase"], s["rule"] = ph, f"contrast, {delay:.0f} s after the first contrast series"
    for s in series:
        if s["phase"] is None and not s["rule"]:
            s["rule"] = "ambiguous: no phase keyword and timing does not decide"
    seen = defaultdict(list)
    for s in series:
        if s["phase"]:
            seen[s["phase"]].append(s)
    for ph, ss in seen.items():
        if len(ss) > 1:
            for s in ss:
                s["phase"], s["rule"] = None, f"ambiguous: {len(ss)} series look {ph}"


def series_tags(ds: pydicom.Dataset) -> dict:
    """The tags phase detection reads from one instance of a series."""
    return {
        "description": str(getattr(ds, "SeriesDescription", "")),
        "protocol": str(getattr(ds, "ProtocolName", "")),
        "contrast": bool(str(getattr(ds, "ContrastBolusAgent", "")).strip()),
        "time": _seconds(str(getattr(ds, "AcquisitionTime", "") or getattr(ds, "SeriesTime", ""))),
    }


def scan_patient(pdir: Path, allow_derived: bool = False) -> dict[str, dict]:
    """Every DICOM file under a patient folder grouped by series with the tags used above;
    checked to be one patient with every image and series UID once. A series of derived,
    reformatted or localizer images is kept out of phase detection (its ``problem`` says why)
    unless ``allow_derived``."""
    from ccrcc_grade.io.dicom import (
        check_distinct_positions,
        check_one_patient,
        display_flips,
        image_problem,
        pixel_bytes_problem,
        pixel_spacing,
        read_header,
        slice_position,
    )

    groups: dict[str, dict] = {}
    items = []
    for f in sorted(p for p in pdir.rglob("*") if p.is_file() and not p.name.startswith(".")):
        ds = read_header(f)
        if too_large := pixel_bytes_problem(ds):
            raise CcrccError(f"{f}: {too_large}")
        items.append((f, ds))
        uid = str(getattr(ds, "SeriesInstanceUID", ""))
        g = groups.setdefault(uid, {"uid": uid, **series_tags(ds), "files": {}, "problem": None})
        if not allow_derived and g["problem"] is None:
            g["problem"] = image_problem(ds)
        spacing = pixel_spacing(ds, f)
        g["files"][f.resolve()] = (slice_position(ds), spacing, display_flips(ds))
    check_one_patient(items, f"the folder of patient {pdir.name} ({pdir})")
    for g in groups.values():
        check_distinct_positions([(f, pos) for f, (pos, _, _) in g["files"].items()], f"series {g['uid']}")
    return groups
