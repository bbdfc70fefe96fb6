"""Axis-aligned boxes in pixel coordinates (x = column, y = row), edges inclusive of x_min/y_min
and exclusive of x_max/y_max after rounding; and the boxes.csv file that gives them for DICOM."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ccrcc_grade.core.errors import CcrccError, check_number
from ccrcc_grade.core.phases import canonical_phase


@dataclass(frozen=True)
class Box:
    x_min: float
    y_min: float
    x_max: float
    y_max: float

    @classmethod
    def from_corners(cls, x0: float, y0: float, x1: float, y1: float) -> Box:
        """Normalise two opposite corners given in any order."""
        return cls(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    @property
    def width(self) -> float:
        return self.x_max - self.x_min

    @property
    def height(self) -> float:
        return self.y_max - self.y_min

    def expand(self, dx: float, dy: float) -> Box:
        return Box(self.x_min - dx, self.y_min - dy, self.x_max + dx, self.y_max + dy)

    def clip(self, width: int, height: int) -> Box:
        return Box(
            max(0.0, self.x_min), max(0.0, self.y_min), min(float(width), self.x_max), min(float(height), self.y_max)
        )

    def inside(self, width: int, height: int) -> bool:
        return self.x_min >= 0 and self.y_min >= 0 and self.x_max <= width and self.y_max <= height

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x_min, self.y_min, self.x_max, self.y_max)


def read_boxes_csv(path: Path, root: Path, require_phase: bool = True) -> list[dict]:
    """boxes.csv rows: patient_id, phase, file, x_min, y_min, x_max, y_max (pixel col/row);
    ``file`` is relative to ``root`` and must stay inside it. Without ``require_phase`` (phase
    detection) the phase column may be empty or absent."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CcrccError(f"{path}: cannot read ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    need = ["patient_id", "phase", "file", "x_min", "y_min", "x_max", "y_max"]
    missing = [c for c in need if c not in (reader.fieldnames or []) and (require_phase or c != "phase")]
    if missing:
        raise CcrccError(f"{path}: missing column(s) {', '.join(missing)}")
    rows = []
    for lineno, row in enumerate(reader, start=2):
        where = f"{path}:{lineno}"
        phase = canonical_phase(row.get("phase") or "")
        if phase is None and (require_phase or (row.get("phase") or "").strip()):
            raise CcrccError(f"{where}: unknown phase {row.get('phase')!r}")
        box = Box.from_corners(*(check_number(row[c], f"{where}: {c}", -1e5, 1e5) for c in need[3:]))
        if box.width < 1 or box.height < 1:
            raise CcrccError(f"{where}: box has zero area ({box.width:g} x {box.height:g} px)")
        f = (Path(root) / row["file"]).resolve()
        if not f.is_relative_to(Path(root).resolve()):
            raise CcrccError(f"{where}: file {row['file']!r} points outside the cohort folder")
        rows.append(
            {
                "patient_id": row["patient_id"].strip(),
                "phase": phase,
                "file": f,
                "file_text": row["file"],
                "box": box,
                "where": where,
            }
        )
    return rows
