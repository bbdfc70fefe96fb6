"""ccrcc_grade.core.fileio: outputs never replace inputs."""

from __future__ import annotations

import numpy as np
import pytest

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import refuse_overwriting_inputs


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pt").write_bytes(b"model")
    (tmp_path / "patient").mkdir()
    (tmp_path / "patient" / "a.json").write_text("{}")
    (tmp_path / "preds.csv").write_text("x")
    return tmp_path


@pytest.mark.parametrize(
    ("out", "inputs", "needle"),
    [
        ("run/best.pt", ["run", "patient"], "is a file inside the input"),
        ("run/best.pt", ["run/best.pt"], "is the input"),
        ("patient/a.json", ["run", "patient"], "is a file inside the input"),
        ("preds.csv", ["preds.csv"], "is the input"),
        ("run/../preds.csv", ["preds.csv"], "is the input"),  # the same file by another path
    ],
)
def test_an_output_that_would_replace_an_input_is_refused(tree, out, inputs, needle):
    with pytest.raises(CcrccError, match=needle):
        refuse_overwriting_inputs([("--json", tree / out)], [tree / i for i in inputs])


@pytest.mark.parametrize(
    ("out", "inputs"),
    [
        ("result.json", ["run", "patient"]),  # elsewhere
        ("patient/new.json", ["patient"]),  # a new file beside the inputs replaces nothing
        (None, ["run"]),  # no output asked for
    ],
)
def test_outputs_beside_the_inputs_are_allowed(tree, out, inputs):
    refuse_overwriting_inputs([("--json", tree / out if out else None)], [tree / i for i in inputs])


@pytest.mark.parametrize(
    "value, reason",
    [
        (float("nan"), "NaN: not defined for these data"),
        (float("inf"), "inf: not a finite number"),
        (-float("inf"), "-inf: not a finite number"),
        (np.float32("nan"), "NaN: not defined for these data"),
        (np.array([1.0, np.nan]), "NaN: not defined for these data"),
    ],
)
def test_json_is_strict_with_the_reason_for_every_null(tmp_path, value, reason):
    import json

    from ccrcc_grade.core.fileio import atomic_write_json

    atomic_write_json(tmp_path / "r.json", {"runs": {"a": {"auc": value, "n": 3}}, "list": [1.5, value]})
    text = (tmp_path / "r.json").read_text()

    def refuse(token):
        raise ValueError(f"non-standard JSON literal {token}")

    data = json.loads(text, parse_constant=refuse)  # a strict parser: NaN/Infinity would fail here
    assert data["runs"]["a"]["n"] == 3 and data["list"][0] == 1.5
    where = "runs.a.auc" if not isinstance(value, np.ndarray) else "runs.a.auc[1]"
    assert data["null_reasons"][where] == reason
    assert len(data["null_reasons"]) == 2
