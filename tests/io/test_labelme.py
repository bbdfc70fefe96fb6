"""ccrcc_grade.io.labelme: labelme JSON (real v4 / v5.7 examples) and bad annotations."""

from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.io.labelme import read_labelme


def _write(tmp_path, shapes, image_path="s.png", **extra):
    p = tmp_path / "s.json"
    p.write_text(
        json.dumps({"version": "5.2.1", "shapes": shapes, "imagePath": image_path, "imageData": None, **extra})
    )
    return p


def rect(p0, p1):
    return {"label": "tumor", "points": [p0, p1], "shape_type": "rectangle"}


def _labelme_case(c, mutate):
    j = sorted((c / "SYN002" / "plain").glob("*.json"))[0]
    text = j.read_text()
    d = json.loads(text)
    mutate(d)
    j.write_text(json.dumps(d))  # json writes NaN / Infinity literals, as a broken exporter would
    return j.name


def test_real_v4_rectangles_match_the_json(survey):
    for name in ("bbox_2011_000003.json", "bbox_2011_000006.json", "bbox_2011_000025.json"):
        path = survey(f"labelme/{name}")
        raw = json.loads(path.read_text())
        lm = read_labelme(path, path.parent)
        rects = [s for s in raw["shapes"] if s["shape_type"] == "rectangle"]
        assert raw["version"].startswith("4.")
        assert len(lm.boxes) == len(rects) > 0
        for (label, box), s in zip(lm.boxes, rects):
            (x0, y0), (x1, y1) = s["points"]
            assert label == s["label"]
            assert box.as_tuple() == (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        assert lm.image_path == (path.parent / raw["imagePath"]).resolve() and lm.image_path.is_file()


def test_real_v57_mixed_shapes_only_rectangles_count(survey):
    path = survey("labelme/primitives.json")
    raw = json.loads(path.read_text())
    lm = read_labelme(path, path.parent)
    kinds = [s.get("shape_type") for s in raw["shapes"]]
    assert raw["version"].startswith("5.7")
    assert len(lm.boxes) == kinds.count("rectangle") >= 1
    assert sorted(lm.ignored) == sorted(k for k in kinds if k != "rectangle")
    assert {"circle", "polygon", "line", "point", "linestrip", "mask"} <= set(lm.ignored)


def test_real_polygon_file_has_no_rectangle(survey):
    path = survey("labelme/polygon_2011_000003.json")
    lm = read_labelme(path, path.parent)
    assert lm.boxes == [] and "polygon" in lm.ignored


def test_corner_order_is_normalised(tmp_path):
    lm = read_labelme(_write(tmp_path, [rect([50, 40], [10, 5]), rect([10, 40], [50, 5])]), tmp_path)
    assert [b.as_tuple() for _, b in lm.boxes] == [(10, 5, 50, 40), (10, 5, 50, 40)]


def test_zero_area_rectangle_is_an_error(tmp_path):
    with pytest.raises(CcrccError, match=r"s\.json: rectangle 0 has zero area"):
        read_labelme(_write(tmp_path, [rect([10, 10], [10, 30])]), tmp_path)


def test_image_path_escaping_the_cohort_is_an_error(tmp_path):
    root = tmp_path / "cohort"
    root.mkdir()
    p = _write(root, [rect([1, 1], [5, 5])], image_path="../../etc/passwd")
    with pytest.raises(CcrccError, match="points outside the cohort folder"):
        read_labelme(p, root)


def test_json_that_is_not_labelme_is_an_error(tmp_path):
    p = tmp_path / "coco.json"
    p.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(CcrccError, match=r"coco\.json: not a labelme annotation"):
        read_labelme(p, tmp_path)
    p.write_text("{broken")
    with pytest.raises(CcrccError, match=r"coco\.json: not a readable JSON"):
        read_labelme(p, tmp_path)


def test_rectangle_with_wrong_points_is_an_error(tmp_path):
    with pytest.raises(CcrccError, match="exactly two"):
        read_labelme(_write(tmp_path, [{"points": [[1, 2]], "shape_type": "rectangle"}]), tmp_path)


def test_embedded_image_data_and_windows_paths(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 77, np.uint8)).save(buf, format="PNG")
    p = _write(
        tmp_path,
        [rect([1, 1], [5, 5])],
        image_path="sub\\missing.png",
        imageData=base64.b64encode(buf.getvalue()).decode(),
    )
    lm = read_labelme(p, tmp_path)
    assert lm.image_path == (tmp_path / "sub" / "missing.png").resolve()
    assert Image.open(io.BytesIO(lm.image_data)).getpixel((0, 0)) == 77


def test_labelme_image_of_another_patient(refused, slices_cohort, tmp_path, capsys):
    c = tmp_path / "c"
    shutil.copytree(slices_cohort, c)
    j = sorted((c / "SYN001" / "parenchymal").glob("*.json"))[0]
    d = json.loads(j.read_text())
    other = sorted((c / "SYN004" / "parenchymal").glob("*.png")) or sorted((c / "SYN004" / "parenchymal").glob("*.bmp"))
    d["imagePath"] = f"../../SYN004/parenchymal/{other[0].name}"
    j.write_text(json.dumps(d))
    refused(capsys, ["ingest", c, "--out", tmp_path / "w"], j.name, "points outside the folder of patient SYN001")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "case, needle",
    [
        ("labelme point NaN", "coordinate must be a finite number"),
        ("labelme point 1e308", "coordinate must lie in [-100000, 100000]"),
        ("labelme imageWidth Infinity", "imageWidth must be a finite number"),
        ("labelme imageHeight 2.5", "imageHeight must be a whole number"),
    ],
)
def test_non_finite_numbers_in_labelme(refused, slices_cohort, tmp_path, capsys, case, needle):
    c = tmp_path / "c"
    shutil.copytree(slices_cohort, c)
    mutate = {
        "labelme point NaN": lambda d: d["shapes"][0]["points"][0].__setitem__(0, float("nan")),
        "labelme point 1e308": lambda d: d["shapes"][0]["points"][1].__setitem__(1, 1e308),
        "labelme imageWidth Infinity": lambda d: d.__setitem__("imageWidth", float("inf")),
        "labelme imageHeight 2.5": lambda d: d.__setitem__("imageHeight", 2.5),
    }[case]
    name = _labelme_case(c, mutate)
    refused(capsys, ["ingest", c, "--out", tmp_path / "w"], name, needle)
    assert not (tmp_path / "w").exists()


def test_truncated_embedded_image_names_the_json(refused, slices_cohort, tmp_path, capsys):
    import base64

    c = tmp_path / "c"
    shutil.copytree(slices_cohort, c)
    j = sorted((c / "SYN002" / "plain").glob("*.json"))[0]
    d = json.loads(j.read_text())
    img = j.parent / d["imagePath"]
    d["imageData"] = base64.b64encode(img.read_bytes()[:300]).decode()  # cut short
    d["imagePath"] = "exported-elsewhere.png"  # not beside the JSON
    j.write_text(json.dumps(d))
    err = refused(capsys, ["ingest", c, "--out", tmp_path / "w"], j.name, "unreadable or truncated image")
    assert "exported-elsewhere" not in err
