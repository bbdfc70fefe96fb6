"""The command line: `python -m ccrcc_grade`, help, argument errors, and the bench JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, run_cli


def test_module_entry_point_and_help():
    out = subprocess.run([sys.executable, "-m", "ccrcc_grade", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0
    for cmd in ("synth", "ingest", "split", "train", "evaluate", "compare", "clinical", "study", "radiomics",
                "predict", "export", "serve", "bench"):
        assert cmd in out.stdout


def test_synth_cli_and_its_errors(tmp_path, capsys):
    assert run_cli("synth", tmp_path / "c", "--patients", "3", "--matrix", "64", "--layout", "dicom") == 0
    assert (tmp_path / "c" / "boxes.csv").is_file()
    assert run_cli("synth", tmp_path / "d", "--high-fraction", "1.5") == 2
    assert "--high-fraction" in capsys.readouterr().err
    assert run_cli("ingest", tmp_path / "nowhere", "--out", tmp_path / "w") == 2
    assert "cohort folder not found" in capsys.readouterr().err
    assert run_cli("split", tmp_path / "c") == 2
    assert "not an ingested cohort" in capsys.readouterr().err


def test_bench_lines(capsys):
    assert run_cli("bench", "--what", "train", "--image-size", "32", "--steps", "2", "--batch-size", "4") == 0
    line = json.loads(capsys.readouterr().out)
    assert {"train_img_s", "train_img_s_baseline", "train_speedup", "peak_rss_mb", "data_share", "device"} <= set(line)
    assert line["train_img_s"] > 0 and 0 <= line["data_share"] < 1
    assert run_cli("bench", "--what", "predict", "--image-size", "32", "--steps", "5") == 0
    line = json.loads(capsys.readouterr().out)
    assert {"predict_ms_p50", "predict_ms_p95", "predict_ms_p50_baseline", "predict_speedup", "patient_ms_p50",
            "peak_rss_mb", "backend"} <= set(line)


def test_bench_study_never_takes_or_removes_a_folder_it_did_not_make(tmp_path, monkeypatch, capsys):
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


def _subcommands():
    import argparse

    from ccrcc_grade.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices


def test_every_option_of_every_command_has_help():
    """Issue #16: --json, --device, --patient-id, run, --split, --bootstrap had no help text."""
    parser, commands = _subcommands()
    assert "workflow:" in parser.description and "ingest COHORT --out WORK" in parser.description
    missing = [f"{name} {a.option_strings[0] if a.option_strings else a.dest}"
               for name, sp in commands.items() for a in sp._actions
               if a.dest != "help" and not (a.help and a.help.strip())]
    assert missing == []
    assert len(commands) == 13


def test_readme_and_help_describe_the_presets_from_one_place():
    """Issue #16: the README said the quick preset ran 6 epochs while it ran 8."""
    from ccrcc_grade.core.config import PRESETS, preset_text

    readme = (REPO / "README.md").read_text()
    _, commands = _subcommands()
    study_help = commands["study"].format_help().replace("\n", " ")
    for name, p in PRESETS.items():
        assert f"`{name}`: {preset_text(p)}" in readme, name
        assert " ".join(f"{name}: {preset_text(p)}".split()) in " ".join(study_help.split())
