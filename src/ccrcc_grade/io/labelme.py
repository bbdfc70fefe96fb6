"""labelme annotation files (v3 to v5): the rectangles drawn around the tumour on a slice.

Only ``rectangle`` shapes are ROIs; other shape types are reported so the user knows they were
ignored. ``imagePath`` is resolved relative to the JSON file and must stay inside ``root``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path

from ccrcc_grade.core.errors import CcrccError, check_number
from ccrcc_grade.io.boxes import Box

MAX_COORD = 100_000.0  # pixels: no CT slice or export is larger


@dataclass
class LabelmeFile:
    json_path: Path
    image_path: Path | None  # None when only embedded imageData exists
    image_data: bytes | None  # decoded base64 imageData, when embedded
    width: int | None
    height: int | None
    boxes: list[tuple[str, Box]]  # (label, box) for every rectangle
    ignored: list[str] = field(default_factory=list)  # shape types ignored


def read_labelme(json_path: Path, root: Path | None = None, root_name: str = "the cohort folder") -> LabelmeFile:
    """Parse and validate one labelme JSON file.

    Raises :class:`CcrccError` naming the file when it is not labelme JSON, when a rectangle has
    zero area, or when ``imagePath`` escapes ``root``.
    """
    json_path = Path(json_path)
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CcrccError(f"{json_path}: not a readable JSON file ({exc.__class__.__name__}: {exc})") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("shapes"), list)
        or ("imagePath" not in data and "imageData" not in data)
    ):
        raise CcrccError(f"{json_path}: not a labelme annotation (needs 'shapes' and 'imagePath')")

    image_path = None
    if data.get("imagePath"):
        rel = str(data["imagePath"]).replace("\\", "/")  # labelme on Windows writes backslashes
        image_path = (json_path.parent / rel).resolve()
        if root is not None and not image_path.is_relative_to(Path(root).resolve()):
            raise CcrccError(f"{json_path}: imagePath {data['imagePath']!r} points outside {root_name}")
    image_data = None
    if data.get("imageData"):
        try:
            image_data = base64.b64decode(data["imageData"], validate=False)
        except (binascii.Error, ValueError, TypeError):
            raise CcrccError(f"{json_path}: imageData is not valid base64") from None
    if image_path is None and image_data is None:
        raise CcrccError(f"{json_path}: neither imagePath nor imageData is set")

    boxes: list[tuple[str, Box]] = []
    ignored: list[str] = []
    for i, shape in enumerate(data["shapes"]):
        if not isinstance(shape, dict):
            raise CcrccError(f"{json_path}: shape {i} is not an object")
        kind = shape.get("shape_type") or "polygon"  # labelme's default when the key is absent
        if kind != "rectangle":
            ignored.append(str(kind))
            continue
        pts = shape.get("points")
        try:
            (x0, y0), (x1, y1) = [(float(p[0]), float(p[1])) for p in pts]
        except (TypeError, ValueError, IndexError):
            raise CcrccError(f"{json_path}: rectangle {i} must have exactly two [x, y] points, got {pts!r}") from None
        for v in (x0, y0, x1, y1):  # NaN, infinity and absurd coordinates are annotation errors
            check_number(v, f"{json_path}: rectangle {i} coordinate", -MAX_COORD, MAX_COORD)
        box = Box.from_corners(x0, y0, x1, y1)
        if box.width < 1 or box.height < 1:
            raise CcrccError(f"{json_path}: rectangle {i} has zero area ({box.width:g} x {box.height:g} px)")
        boxes.append((str(shape.get("label", "")), box))

    def _dim(key: str) -> int | None:
        v = data.get(key)
        if v is None:
            return None
        return int(check_number(v, f"{json_path}: {key}", 0, MAX_COORD, lo_open=True, integer=True))

    return LabelmeFile(json_path, image_path, image_data, _dim("imageWidth"), _dim("imageHeight"), boxes, ignored)
