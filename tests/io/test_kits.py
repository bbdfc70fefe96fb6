"""ccrcc_grade.io.kits: the KiTS clinical JSON (real KiTS19 / KiTS23 files)."""

from __future__ import annotations

import json

import pytest

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.io.kits import kits_grade, read_kits_clinical, select_cases


def test_kits23_clinical_counts(survey):
    cases = read_kits_clinical(survey("kits23/kits23.json"))
    assert len(cases) == 489
    kept, excluded = select_cases(cases)
    cc = [c for c in cases if c["tumor_histologic_subtype"] == "clear_cell_rcc"]
    assert len(cc) == 310 and len(kept) == 308
    grades = [kits_grade(c) for c in kept]
    assert [grades.count(g) for g in "1234"] == [34, 151, 86, 37]
    assert sum(r == "clear cell RCC without ISUP grade" for r in excluded.values()) == 2


def test_kits19_clinical_counts(survey):
    kept, _ = select_cases(read_kits_clinical(survey("kits19/kits.json")))
    grades = [kits_grade(c) for c in kept]
    assert len(kept) == 143 and [grades.count(g) for g in "1234"] == [18, 79, 36, 10]


def test_bad_kits_json(tmp_path):
    (tmp_path / "k.json").write_text(json.dumps({"not": "kits"}))
    with pytest.raises(CcrccError, match="not a KiTS clinical JSON"):
        read_kits_clinical(tmp_path / "k.json")
