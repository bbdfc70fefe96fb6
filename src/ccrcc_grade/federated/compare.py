"""Federated vs centralised vs each site alone, on the same pooled test patients.

The question a multi-centre paper must answer: does the federated model do as well as pooling
the images would have (centralised), and better than what each hospital could train alone? Each
model is trained with `train`'s protocol and the same epoch budget (rounds x local epochs), and
all are scored on the same test patients of every site, with DeLong CIs and paired DeLong tests
against the federated model (``stats.metrics``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ccrcc_grade.core.config import TrainConfig
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_write_text
from ccrcc_grade.core.paths import RunDir
from ccrcc_grade.federated.sites import pooled_test
from ccrcc_grade.stats.format import format_p
from ccrcc_grade.stats.metrics import auc_with_ci, bootstrap_metrics, delong_paired_test
from ccrcc_grade.stats.predictions import patient_level


def test_probabilities(run: Path, pooled: Path, test: list[str], phase: str, aggregate: str) -> np.ndarray:
    """A run's patient-level P(high) for the pooled test patients, in ``test``'s order."""
    from ccrcc_grade.ingest.cache import CropCache
    from ccrcc_grade.model.evaluate import predict_rows
    from ccrcc_grade.model.predict import load_predictor

    cache = CropCache.load(pooled)
    rows = predict_rows(load_predictor(run, backend="torch"), cache.select(phase, set(test)), cache)
    by = {r["patient_id"]: r["prob_high"] for r in patient_level(rows, aggregate)}
    return np.array([by[p] for p in test])


def compare_models(out: Path, sites: dict[str, Path], cfg: TrainConfig, n_boot: int) -> dict:
    """Train the centralised model and one per site (DIR/compare/), score all on the pooled
    test patients, write DIR/comparison.md and DIR/comparison_roc.png; returns the numbers."""
    from ccrcc_grade.model.train import fit
    from ccrcc_grade.stats.figures import roc_figure

    pooled = out / "pooled"
    test, y = pooled_test(pooled)
    runs = {"federated": out}
    notes = {}
    plan = {"centralised": pooled, **{f"site {k} alone": w for k, w in sites.items()}}
    for name, work in plan.items():
        run = out / "compare" / name.replace(" ", "-").replace("/", "_")
        if not RunDir(run).is_finished():
            print(f"comparison: training {name}", flush=True)
            try:
                fit(dataclasses.replace(cfg, work=str(Path(work).resolve()), out=str(run), progress=False))
            except CcrccError as exc:
                notes[name] = str(exc)
                continue
        runs[name] = run
    probs = {
        name: test_probabilities(run, pooled, test, cfg.phase, cfg.patient_aggregate) for name, run in runs.items()
    }
    result: dict = {"test_patients": len(test), "test_high": int(y.sum()), "models": {}}
    for name, p in probs.items():
        entry = {"auc": auc_with_ci(y, p), "run": str(runs[name])}
        if name != "federated":
            entry["vs_federated"] = delong_paired_test(y, probs["federated"], p)
        result["models"][name] = entry
    for name, why in notes.items():
        result["models"][name] = {"estimable": False, "reason": why}
    roc_figure(
        {
            name: (y, p, {"patient": bootstrap_metrics(y, p, test, n_boot=min(n_boot, 200))}["patient"])
            for name, p in probs.items()
        },
        out / "comparison_roc.png",
        "federated vs centralised vs single sites (pooled test patients)",
    )
    atomic_write_text(out / "comparison.md", comparison_markdown(result))
    return result


def comparison_markdown(c: dict) -> str:
    lines = [
        "# Federated vs centralised vs each site alone",
        "",
        f"Same {c['test_patients']} pooled test patients of every site ({c['test_high']} high grade); "
        "AUC with DeLong 95% CI; P: paired DeLong test against the federated model.",
        "",
        "| model | AUC (95% CI) | difference vs federated | P |",
        "|---|---|---|---|",
    ]
    for name, e in c["models"].items():
        if not e.get("auc"):
            lines.append(f"| {name} | not trained: {e['reason']} | | |")
            continue
        a = e["auc"]
        ci = f" ({a['ci95'][0]:.3f}-{a['ci95'][1]:.3f})" if a.get("ci95") else " (no CI)"
        auc = "-" if a["value"] is None else f"{a['value']:.3f}{ci}"
        vs = e.get("vs_federated")
        diff = "" if not vs else f"{-vs['auc_diff']:+.3f}"
        p = "" if not vs else format_p(vs.get("p"))
        lines.append(f"| {name} | {auc} | {diff} | {p} |")
    lines += ["", "![ROC](comparison_roc.png)", ""]
    return "\n".join(lines)
