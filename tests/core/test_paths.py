"""ccrcc_grade.core.paths: the folders the pipeline writes own their file names."""

from __future__ import annotations

import json

import pytest

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.paths import EvalFiles, RunDir, StudyDir, WorkDir, read_json


def test_an_ingested_work_folder_holds_what_workdir_names(work):
    """The session's WORK folder was written by ingest: every cache file WorkDir names exists,
    and the report and manifest are found through it."""
    w = WorkDir(work)
    assert w.is_ingested()
    for name in WorkDir.CACHE_FILES:
        assert (work / name).is_file(), name
    assert w.read_ingest_report()["n_crops"] > 0
    assert set(w.read_splits()) >= {"train", "val", "test"}


def test_a_trained_run_holds_what_rundir_names(trained_run):
    r = RunDir(trained_run)
    assert r.is_finished() and r.best.is_file() and r.config.is_file() and r.log.is_file()
    assert r.read_summary()["best_epoch"] >= 1
    assert r.read_config()["phase"] == "parenchymal"
    assert r.eval_dir("val") == trained_run / "eval-val"
    assert r.metrics("test") == trained_run / "eval-test" / EvalFiles.METRICS


def test_study_dir_layout(tmp_path):
    s = StudyDir(tmp_path)
    assert s.work.path == tmp_path / "work" and s.run("resnet34-plain").path == tmp_path / "runs" / "resnet34-plain"
    assert s.results.name == "results.json" and s.external_work.path.name == "external_work"


@pytest.mark.parametrize(
    "content, needle",
    [(None, "training summary not found"), ("{not json", "damaged training summary"), (b"\xff\xfe", "damaged")],
)
def test_damaged_or_missing_files_are_one_line_errors(tmp_path, content, needle):
    r = RunDir(tmp_path)
    if isinstance(content, bytes):
        r.summary.write_bytes(content)
    elif content is not None:
        r.summary.write_text(content)
    with pytest.raises(CcrccError, match=needle) as e:
        r.read_summary()
    assert str(r.summary) in str(e.value)


def test_read_json_reads_what_was_written(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"a": [1, 2]}))
    assert read_json(tmp_path / "x.json") == {"a": [1, 2]}
    assert WorkDir(tmp_path).read_ingest_report() == {}  # a cache from before ingest reports
