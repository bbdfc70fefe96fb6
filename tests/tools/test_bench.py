"""ccrcc_grade.tools.bench: the benchmarks."""

from __future__ import annotations

import json


def test_bench_lines(run_cli, capsys):
    assert run_cli("bench", "--what", "train", "--image-size", "32", "--steps", "2", "--batch-size", "4") == 0
    line = json.loads(capsys.readouterr().out)
    assert {"train_img_s", "train_img_s_baseline", "train_speedup", "peak_rss_mb", "data_share", "device"} <= set(line)
    assert line["train_img_s"] > 0 and 0 <= line["data_share"] < 1
    assert run_cli("bench", "--what", "predict", "--image-size", "32", "--steps", "5") == 0
    line = json.loads(capsys.readouterr().out)
    assert {
        "predict_ms_p50",
        "predict_ms_p95",
        "predict_ms_p50_baseline",
        "predict_speedup",
        "patient_ms_p50",
        "peak_rss_mb",
        "backend",
    } <= set(line)


def test_bench_robustness_line(run_cli, capsys):
    assert run_cli("bench", "--what", "robustness", "--image-size", "32") == 0
    line = json.loads(capsys.readouterr().out)
    assert line["bench"] == "robustness" and line["k"] == 20 and line["image_size"] == 32
    for n in (15, 37):
        r = line[f"slices_{n}"]
        assert r["grade_s"] > 0 and r["robustness_added_s"] > 0 and r["crops_per_s"] > 0
    assert line["backend"] and line["cpu"]


def test_bench_study_never_takes_or_removes_a_folder_it_did_not_make(run_cli, tmp_path, monkeypatch, capsys):
    """The cached benchmark cohort appears only complete (made elsewhere, renamed); a folder of
    that name without clinical.csv is someone else's: refused, left as it is."""
    from ccrcc_grade.tools.bench import STUDY_COHORT

    c = STUDY_COHORT
    theirs = tmp_path / f"study-cohort-{c['patients']}-{c['high']}-{c['matrix']}"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    monkeypatch.setenv("CCRCC_BENCH_DIR", str(tmp_path))
    assert run_cli("bench", "--what", "study", "--device", "cpu") == 2
    assert "is not a finished benchmark cohort; move it away" in capsys.readouterr().err
    assert (theirs / "notes.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [theirs.name]


def test_bench_serve_line():
    """The workstation through its real app (the Host check included): the fast first grade is
    the grade without robustness or heat map, and faster than both."""
    from ccrcc_grade.tools.bench import bench_serve

    line = bench_serve(steps=2, matrix=128, box_k=4, image_size=64)  # the test's share of the work
    assert line["bench"] == "serve" and line["slices"] == 15 and line["box_k"] == 4
    assert 0 < line["grade_fast_ms_p50"] < line["predict_endpoint_ms_p50"] < line["grade_with_heat_map_ms_p50"]
    assert line["slice_png_ms_p50"] > 0


def test_bench_roi_measures_a_given_proposal_model(run_cli, roi_run, capsys, monkeypatch):
    """`bench --what roi --roi-model RUN`: one JSON line with the contract's keys, on held-out
    phantom patients of another seed (the test-sized model: the numbers are checked for sense,
    the issue's targets are measured on the full-sized one)."""
    import json

    from ccrcc_grade.tools import bench

    monkeypatch.setitem(bench.ROI_BENCH, "held_out", 4)  # the test's share: 4 held-out patients
    monkeypatch.setitem(bench.ROI_BENCH, "matrix", 160)
    assert run_cli("bench", "--what", "roi", "--roi-model", roi_run) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"seconds_per_phase", "slices", "median_iou", "cpu"} <= set(line)
    assert line["bench"] == "roi" and line["backend"] == "onnx" and line["train_seconds"] is None
    assert 0 < line["seconds_per_phase"] < 5 and line["slices"] >= 10
    assert 0.3 < line["median_iou"] <= 1 and line["patients"] == 4
    assert set(line["propagation_centre_error_mm"]) == {"plain", "corticomedullary", "excretory"}
