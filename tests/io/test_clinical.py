"""ccrcc_grade.io.clinical: the clinical CSV."""

from __future__ import annotations

import shutil


def test_clinical_csv_with_the_grade_column_twice(refused, slices_cohort, tmp_path, capsys):
    c = tmp_path / "c"
    shutil.copytree(slices_cohort, c)
    lines = (c / "clinical.csv").read_text().splitlines()
    head = lines[0].split(",")
    g = head.index("who_isup_grade")
    (c / "clinical.csv").write_text(
        "\n".join(ln + "," + ln.split(",")[g] if i else ln + ",who_isup_grade" for i, ln in enumerate(lines)) + "\n"
    )
    refused(capsys, ["ingest", c, "--out", tmp_path / "w"], "clinical.csv", "'who_isup_grade' appears twice")
