"""The quick study both study test modules read (run once for the package)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package")
def study_out(run_cli, slices_cohort, tmp_path_factory):
    """A quick study of the phantom (1 epoch, 32 px) and what it printed."""
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
            )
            == 0
        )
    return out, buf.getvalue()
