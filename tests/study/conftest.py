"""The quick study both study test modules read (run once for the package)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package")
def second_reader(slices_cohort, tmp_path_factory):
    """A second reader's boxes of the phantom (as `synth --readers 2` makes them), in a CSV
    outside the cohort whose file paths are relative to the cohort folder."""
    import csv

    import numpy as np

    from ccrcc_grade.evidence.agreement import read_reader
    from ccrcc_grade.tools.synth import second_reader_rows

    rows = [  # the phantom's slice files are named in slice order
        {"patient_id": pid, "phase": ph, "file": f, **dict(zip(("x_min", "y_min", "x_max", "y_max"), b.as_tuple()))}
        | {"spacing": 1.0, "slice": i}
        for i, ((pid, ph, f), b) in enumerate(sorted(read_reader(slices_cohort).boxes.items()))
    ]
    path = tmp_path_factory.mktemp("reader2") / "reader2_boxes.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["patient_id", "phase", "file", "x_min", "y_min", "x_max", "y_max"])
        w.writeheader()
        w.writerows(second_reader_rows(rows, np.random.default_rng(0), 128))
    return path


@pytest.fixture(scope="package")
def study_out(run_cli, slices_cohort, second_reader, tmp_path_factory):
    """A quick study of the phantom (1 epoch, 32 px) with a second reader, and what it printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("study") / "study"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert (
            run_cli(
                "study",
                slices_cohort,
                "--out",
                out,
                "--preset",
                "quick",
                "--epochs",
                "1",
                "--image-size",
                "32",
                "--size",
                "32",
                "--second-reader",
                second_reader,
            )
            == 0
        )
    return out, buf.getvalue()
