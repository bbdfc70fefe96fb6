"""results.json -> report.md and a self-contained report.html (figures embedded as base64)."""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import numpy as np

from ccrcc_grade.core.config import LOGISTIC_C, N_BOOT
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_write_text
from ccrcc_grade.core.paths import EvalFiles, RunDir
from ccrcc_grade.evidence.agreement import icc_text
from ccrcc_grade.stats.clinical import table_markdown
from ccrcc_grade.stats.figures import robustness_figure, roc_figure
from ccrcc_grade.stats.format import format_p, signed
from ccrcc_grade.stats.metrics import metric
from ccrcc_grade.stats.predictions import patient_level, read_predictions
from ccrcc_grade.study.checklists import checklist_md, claim_2024, tripod_ai

METRIC_COLS = [
    ("auc", "AUC"),
    ("precision", "Precision"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("f1", "F1"),
]


def _num(v: object) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _n_text(e: dict) -> str:
    if "n_positive" in e:
        return f"n={e['n_positive'] + e['n_negative']}, {e['n_positive']} high"
    return f"n={e['n']}" if "n" in e else ""


def _ci(e: dict) -> str:
    """'0.812 (0.640-0.930, n=16)'; a zero-width interval is called what it is."""
    v, (lo, hi) = e["value"], e["ci95"]
    if not _num(v):
        return "n/a"
    n = _n_text(e)
    if e.get("degenerate"):
        return f"{v:.3f} (no CI: zero variance, {n})"
    if not (_num(lo) and _num(hi)):
        return f"{v:.3f} ({e['ci_note'] if 'ci_note' in e else 'no CI'}, {n})"
    used = e.get("resamples_used", e.get("resamples"))
    if used is not None and used < e.get("resamples", used):
        n += f", {used} of {e['resamples']} resamples usable"
    return f"{v:.3f} ({lo:.3f}-{hi:.3f}, {n})"


def _dataset_md(ds: dict) -> str:
    lines = ["| Phase | Part | Low crops | High crops | Low patients | High patients |", "|---|---|---|---|---|---|"]
    for part in ("all", "train", "val", "test"):
        for phase, t in ds.get(part, {}).items():
            lines.append(
                f"| {phase} | {part} | {t['low']['crops']} | {t['high']['crops']} | "
                f"{t['low']['patients']} | {t['high']['patients']} |"
            )
    return "\n".join(lines)


def _metrics_md(runs: dict, level: str) -> str:
    """One row per model: a two-class problem has one AUC; per-class precision and the
    sensitivity of each grade (high-grade specificity = low-grade sensitivity) at 0.5."""
    lines = [
        "| Model | Phase | AUC | ACC | Sensitivity (high) | Specificity (high) | Precision (high) | Precision (low) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        model, phase = name.split("-", 1)
        m = r["test"][level]
        lines.append(
            f"| {model} | {phase} | {_ci(m['high']['auc'])} | {_ci(m['accuracy'])} | "
            f"{_ci(m['high']['sensitivity'])} | {_ci(m['high']['specificity'])} | "
            f"{_ci(m['high']['precision'])} | {_ci(m['low']['precision'])} |"
        )
    return "\n".join(lines)


def _operating_points_md(runs: dict) -> str:
    """Patient-level sensitivity/specificity at the study default and at every threshold chosen
    on validation patients, each labelled with how it was chosen (the test set chooses none)."""
    lines = [
        "| Model | Threshold | How it was chosen | Sensitivity (high) | Specificity (high) |",
        "|---|---|---|---|---|",
    ]
    notes = set()
    for name, r in runs.items():
        m = r["test"]
        lines.append(
            f"| {name} | 0.500 | study default | {_ci(m['patient']['high']['sensitivity'])} | "
            f"{_ci(m['patient']['high']['specificity'])} |"
        )
        for op in m.get("operating_points", []):
            if not op["estimable"]:
                notes.add(op["reason"].split("refused: ")[-1])
                continue
            ci = op.get("ci95")
            t = f"{op['threshold']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
            lines.append(
                f"| {name} | {t} | {op['source']} | {_ci(op['patient']['high']['sensitivity'])} | "
                f"{_ci(op['patient']['high']['specificity'])} |"
            )
    text = "\n".join(lines)
    if notes:
        text += (
            "\n\nYouden, 90% sensitivity and 90% specificity thresholds were not estimated: "
            + "; ".join(sorted(notes))
            + ". The study default 0.5 is used."
        )
    return text


def _comparison_md(c: dict) -> str:
    """Table 4: A = SE-ResNet34, B = ResNet34; the difference is A minus B as computed. Each row
    names its unit and its tests (the image row's are the clustered ones)."""
    lines = [
        "| Level (unit) | n | AUC SE-ResNet34 | AUC ResNet34 | Difference SE-ResNet34 minus ResNet34 (95% CI) | "
        "AUC test | P | ACC SE-ResNet34 | ACC ResNet34 | Accuracy test | P |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in ("patient", "image"):
        if lv in c:
            x = c[lv]
            ci = (
                f"({signed(x['auc_diff_ci95'][0])} to {signed(x['auc_diff_ci95'][1])}, {x['auc_diff_ci_method']}"
                + (
                    f"; patient-cluster bootstrap {signed(x['auc_diff_bootstrap_ci95'][0])} to "
                    f"{signed(x['auc_diff_bootstrap_ci95'][1])}"
                    if "auc_diff_bootstrap_ci95" in x
                    else ""
                )
                + ")"
                if x["auc_estimable"]
                else "(CI not estimable)"
            )
            p = format_p(x["auc_p"]) if x["auc_estimable"] else x["auc_note"]
            n = f"{x['n']} patients" if lv == "patient" else f"{x['n']} slices of {x['n_patients']} patients"
            lines.append(
                f"| {lv} | {n} | {x['auc_a']:.3f} | {x['auc_b']:.3f} | {signed(x['auc_diff'])} {ci} | "
                f"{x['auc_test']} | {p} | {x['acc_a']:.3f} | {x['acc_b']:.3f} | {x['accuracy_test']} | "
                f"{format_p(x['accuracy_p'])} |"
            )
    return "\n".join(lines)


def _auc_ci_text(auc: float, detail: dict | None) -> str:
    """'0.812 (0.640-0.930, n=12, 4 high)' from ``metrics.auc_with_ci``; without a CI it says so."""
    if not detail:
        return f"{auc:.3f}"
    n = f"n={detail['n']}, {detail['n_high']} high"
    ci = detail.get("ci95")
    return f"{auc:.3f} ({ci[0]:.3f}-{ci[1]:.3f}, {n})" if ci else f"{auc:.3f} (no CI, {n})"


def _cv_md(cv: dict) -> str:
    lines = [
        "| Model | Level | AUC | ACC | Sensitivity (high) | Specificity (high) | Test patients per fold | "
        "Pooled out-of-fold patient AUC (DeLong 95% CI) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in cv.items():
        pooled = r.get("pooled_patient_auc")
        per_fold = ", ".join(str(n) for n in r.get("n_patients_per_fold", []))
        for lv in ("patient", "image"):
            s = r["cv"][lv]
            extra = " |  |  |"
            if lv == "patient" and pooled and pooled["value"] is not None:
                extra = f" | {per_fold} | {_auc_ci_text(pooled['value'], pooled)} |"
            lines.append(
                f"| {name} | {lv} | "
                + " | ".join(
                    f"{s[k]['mean']:.3f} ± {s[k]['sd']:.3f}" for k in ("auc", "accuracy", "sensitivity", "specificity")
                )
                + extra
            )
    return "\n".join(lines)


def _roc_all(results: dict, out: Path) -> list[tuple[str, Path]]:
    """Figure 3 (ResNet34, every phase, patient level) and Figure 4 (ResNet34 vs SE-ResNet34)."""
    figs = []
    runs = results.get("runs", {})
    if not runs:
        return figs

    def curves(names: list[str]) -> dict:
        c = {}
        for n in names:
            rows = patient_level(read_predictions(RunDir(runs[n]["run"]).predictions("test")))
            c[n] = (
                np.array([r["label"] for r in rows]),
                np.array([r["prob_high"] for r in rows]),
                runs[n]["test"]["patient"],
            )
        return c

    f3 = out / "figures" / "fig3_roc_phases.png"
    f3.parent.mkdir(parents=True, exist_ok=True)
    roc_figure(curves([n for n in runs if n.startswith("resnet34-")]), f3, "ResNet34 by phase (test, patient level)")
    offsets = " Curves are drawn a few pixels apart (curve k shifted by 0.008k) so identical curves stay visible."
    figs.append(("Figure 3. ROC curves of ResNet34 for every phase (test patients)." + offsets, f3))
    best = results["best_phase"]
    f4 = out / "figures" / "fig4_roc_resnet_vs_se.png"
    roc_figure(
        curves([f"resnet34-{best}", f"se_resnet34-{best}"]),
        f4,
        f"{best}: ResNet34 vs SE-ResNet34 (test, patient level)",
    )
    figs.append((f"Figure 4. ROC curves of ResNet34 and SE-ResNet34 on the {best} phase." + offsets, f4))
    rb = results.get("box_robustness", {})
    if rb.get("patients"):
        f5 = out / "figures" / "box_robustness.png"
        robustness_figure(
            rb["patients"], rb["threshold"], f5, f"{Path(rb['model']).name}: P(high) over {rb['k']} plausible box sets"
        )
        figs.append(
            (
                "Robustness to the box: each test patient's P(high) with the boxes as drawn (dot) and its range "
                "over the plausible box sets (bar); red where the range crosses the decision threshold",
                f5,
            )
        )
    ev = results.get("evidence", {}).get("figures", {})
    if "decision_curves" in ev:
        figs.append(
            (
                "Decision curves: net benefit of every model over threshold probabilities 0.05-0.60 "
                "(test patients), against treating all or none as high grade",
                Path(ev["decision_curves"]),
            )
        )
        figs.append(
            (
                "Reliability diagrams of every model (test patients; marker area ~ patients per bin, "
                "ticks = the patients)",
                Path(ev["reliability"]),
            )
        )
    if (out / "figures" / "nomogram.png").is_file() and results.get("evidence", {}).get("details", {}).get("combined"):
        figs.append(
            ("Nomogram of the combined model (DL score + clinical predictors)", out / "figures" / "nomogram.png")
        )
    for n in (f"resnet34-{best}", f"se_resnet34-{best}"):
        figs.append(
            (
                f"Figure 2. Confusion matrix of {n} (test, image level, threshold 0.5, the study default)",
                RunDir(runs[n]["run"]).eval_dir("test") / EvalFiles.CONFUSION,
            )
        )
        figs.append((f"Calibration of {n} (test)", RunDir(runs[n]["run"]).eval_dir("test") / EvalFiles.CALIBRATION))
    return figs


def _summary_md(results: dict) -> list[str]:
    """The few lines a reader needs first: cohort, best model and its AUC, the key comparison."""
    st, ds = results["study"], results["dataset"]
    allp = ds.get("all", {}).get("combined") or next(iter(ds.get("all", {}).values()), None)
    lines = []
    if allp:
        lines.append(
            f"- **Cohort:** {allp['low']['patients'] + allp['high']['patients']} patients "
            f"({allp['high']['patients']} high grade), preset `{st['preset']}`."
        )
    if "runs" in results:
        best = results["best_phase"]
        r = results["runs"][f"resnet34-{best}"]["test"]["patient"]
        lines.append(f"- **Best phase (chosen on validation):** {best}. {_tie_sentence(results)}")
        lines.append(
            f"- **ResNet34 on {best}, test patients:** AUC {_ci(r['high']['auc'])}, "
            f"accuracy {_ci(r['accuracy'])} at the study's threshold 0.5."
        )
        c = results.get("comparison", {}).get("patient")
        if c and c["auc_estimable"]:
            lines.append(
                f"- **SE-ResNet34 minus ResNet34 ({best}):** patient AUC {signed(c['auc_diff'])} "
                f"({signed(c['auc_diff_ci95'][0])} to {signed(c['auc_diff_ci95'][1])}), "
                f"DeLong P = {format_p(c['auc_p'])} on {c['n']} patients."
            )
        elif c:
            lines.append(
                f"- **SE-ResNet34 minus ResNet34 ({best}):** patient AUC {signed(c['auc_diff'])} on "
                f"{c['n']} patients; DeLong's test {c['auc_note']}."
            )
    if results.get("models"):
        ms = results["models"]
        top = max(ms, key=lambda m: m["patient"]["auc"]["value"] if _num(m["patient"]["auc"]["value"]) else -1)
        sig = [m["name"] for m in ms if m.get("delong_p_holm") is not None and m["delong_p_holm"] < 0.05]
        lines.append(
            f"- **Model comparison:** {len(ms)} models on the same test patients; highest test AUC: "
            f"{top['name']} ({_ci(top['patient']['auc'])}) - a description, not a selection (models are "
            "chosen on validation). Different from the best phase after Holm's correction: "
            + (", ".join(sig) if sig else "none")
            + "."
        )
    if "cross_validation" in results:
        lines.append(
            f"- **Cross-validation:** {st['folds']} folds; best phase by mean validation AUC: {results['best_phase']}."
        )
    return lines


def _tie_sentence(results: dict) -> str:
    tie = results.get("best_phase_tie")
    return tie["text"] if tie else ""


SECTIONS = [
    ("summary", "Summary"),
    ("dataset", "Dataset"),
    ("table-2", "Table 2. Clinical characteristics"),
    ("models", "Model comparison"),
    ("table-3", "Table 3. Test results of every model"),
    ("thresholds", "Decision thresholds"),
    ("table-4", "Table 4. ResNet34 vs SE-ResNet34"),
    ("cv", "Cross-validation"),
    ("agreement", "Reader agreement"),
    ("robustness", "Robustness to the box"),
    ("subgroups", "Results by centre, scanner and tumour size"),
    ("sample-size", "Sample size"),
    ("figures", "Figures"),
    ("methods", "Statistical methods"),
    ("tripod", "TRIPOD+AI summary"),
    ("limitations", "Limitations"),
    ("checklists", "Checklists"),
]


def _p(v: float | None) -> str:
    return "-" if v is None or not _num(v) else format_p(v)


def _opt(v: float | None, fmt: str = "{:.2f}") -> str:
    return "n/e" if v is None or not _num(v) else fmt.format(v)


def models_md(models: list[dict]) -> str:
    """The model comparison table: every model on the same test patients."""
    lines = [
        "| Model | Kind | Patient AUC (95% CI) | ACC | Sensitivity | Specificity | Threshold | Brier (95% CI) | "
        "ECE | Slope | Intercept | AUC minus best phase (95% CI) | DeLong P | Holm P |",
        "|" + "---|" * 14,
    ]
    for m in models:
        pt = m["patient"]
        d = m.get("auc_diff_vs_best_phase")
        diff = (
            "reference"
            if d is None
            else (
                f"{signed(d['value'])} ({signed(d['ci95'][0])} to {signed(d['ci95'][1])})"
                if _num(d["ci95"][0])
                else f"{signed(d['value'])} (n/e)"
            )
            if _num(d["value"])
            else "n/e"
        )
        b = pt["brier"]
        lines.append(
            f"| {m['name']} | {m['kind']} | {_ci(pt['auc'])} | {_ci(pt['accuracy'])} | "
            f"{_ci(pt['sensitivity'])} | {_ci(pt['specificity'])} | {m['threshold']:.2f} | "
            f"{_ci(b) if 'n' in b else _ci({**b, 'n': m['n']})} | {pt['ece']:.3f} | "
            f"{_opt(pt['calibration_slope'])} | {_opt(pt['calibration_intercept'])} | {diff} | "
            f"{_p(m.get('delong_p_vs_best_phase'))} | {_p(m.get('delong_p_holm'))} |"
        )
    return "\n".join(lines)


def _models_text(results: dict) -> list[str]:
    ev = results.get("evidence", {})
    lines = [
        f"Every model on the same {results['models'][0]['n']} test patients. Reference: **{ev.get('reference')}** "
        "(the best single phase, chosen on validation). AUC CIs by DeLong; accuracy, sensitivity and "
        "specificity (high grade) at each model's threshold with exact CIs; Brier score with a patient "
        "bootstrap CI; ECE over 10 bins; calibration slope and intercept (ideal 1 and 0; n/e = not "
        "estimable, e.g. perfect separation); paired DeLong test against the reference with Holm's "
        "correction over all comparisons. Fitted combinations (fusion-logistic, nomogram) were fitted on "
        "validation patients, radiomics and clinical models on training patients: no test patient was "
        "used to fit or tune anything.",
        "",
        models_md(results["models"]),
        "",
    ]
    for name, why in ev.get("skipped", {}).items():
        lines.append(f"- **{name}** not fitted: {why}")
    det = ev.get("details", {})
    for name, d in det.get("radiomics", {}).items():
        lines.append(
            f"- **{name}**: {len(d['selected_features'])} of {d['n_features']} features kept by LASSO "
            f"({', '.join(d['selected_features'][:6])}{', ...' if len(d['selected_features']) > 6 else ''}); "
            f"inner-CV AUC on training patients {d['inner_cv_auc']:.3f}."
        )
    if "clinical" in det:
        c = det["clinical"]
        lines.append(
            f"- **clinical**: predictors {', '.join(c['predictors'])} (tumour size always; others when "
            "P < 0.05 between grades on training patients; univariable P: "
            + ", ".join(f"{k} {format_p(v)}" for k, v in c["univariable_p_train"].items())
            + ")."
        )
    if "combined" in det:
        c = det["combined"]
        lines.append(
            "- **nomogram (DL + clinical)**: log-odds per SD: "
            + ", ".join(f"{k} {v:+.2f}" for k, v in c["coefficients_per_sd"].items())
            + "."
        )
    return lines + [""]


def _icc_cell(e: dict) -> str:
    return icc_text(e, "({lo:.3f}-{hi:.3f})")  # the report's interval style


def agreement_md(a: dict) -> list[str]:
    """The readers' agreement: ICCs of box size and position, IoU, slice ranges, grades."""
    lines = [
        f"{len(a['readers'])} readers boxed the same cohort; {a['n_slices']} slices of {a['n_patients']} patients "
        f"were boxed by both (sizes and positions in {a['unit']}).",
        "",
        "| Measure | ICC(2,1), absolute agreement (95% CI) | ICC(3,1), consistency (95% CI) | n slices |",
        "|---|---|---|---|",
    ]
    for m, e in a["icc"].items():
        lines.append(f"| {m} | {_icc_cell(e['ICC2'])} | {_icc_cell(e['ICC3'])} | {e['n']} |")
    i, sr = a["iou"], a["slice_range"]
    lines += ["", f"IoU of the two boxes on a slice: mean {i['mean']:.3f} (SD {i['sd']:.3f}, min {i['min']:.3f})."]
    if sr["jaccard"]["n"]:
        lines.append(
            f"Slice ranges: Jaccard index {sr['jaccard']['mean']:.3f} over {sr['patient_phases']} patient-phases; "
            f"{sr['slices_one_reader_only']} slices were boxed by one reader only."
        )
    pr = a.get("prediction", {})
    if "icc_prob_high" in pr:
        kappa = f"{pr['kappa']:.3f}" if pr["kappa"] is not None else pr.get("kappa_note", "n/a")
        lines.append(
            f"Grades from each reader's boxes ({pr['phase']} model, {pr['n_patients']} patients): ICC(2,1) of "
            f"P(high) {_icc_cell(pr['icc_prob_high']['ICC2'])}, Cohen's kappa of the decisions {kappa}, "
            f"decision differs in {100 * pr['flip_rate']:.1f}% of patients."
        )
    return lines


def robustness_md(r: dict) -> list[str]:
    """How much each test patient's P(high) moves over plausible boxes."""
    if "note" in r:
        return [f"Robustness to the box: {r['note']}."]
    lines = [
        f"P(high) of `{Path(r['model']).name}` ({r['phase']}) for each of the {r['n_patients']} test patients, "
        f"recomputed over {r['k']} plausible box sets ({r['method']}). Over patients (mean, bootstrap 95% CI "
        f"over patients, {r['bootstrap']['resamples']} resamples): range of P(high) {r['range']['mean']:.3f} "
        f"({r['range']['ci95'][0]:.3f}-{r['range']['ci95'][1]:.3f}; largest {r['range']['max']:.3f}), SD "
        f"{r['sd']['mean']:.3f} ({r['sd']['ci95'][0]:.3f}-{r['sd']['ci95'][1]:.3f}); the decision flips in "
        f"{100 * r['flip_rate']['mean']:.1f}% of box sets ({100 * r['flip_rate']['ci95'][0]:.1f}-"
        f"{100 * r['flip_rate']['ci95'][1]:.1f}%), and for {r['patients_with_a_flip']['n']} of "
        f"{r['n_patients']} patients in at least one set. {r['seconds_per_patient']:.2f} s per patient.",
        "",
        "| Patient | Slices | P(high) as drawn | Range over plausible boxes | SD | Decision flips |",
        "|---|---|---|---|---|---|",
    ]
    for p in r["patients"]:
        lines.append(
            f"| {p['patient_id']} | {p['slices']} | {p['prob_high']:.3f} | {p['p_min']:.3f}-{p['p_max']:.3f} | "
            f"{p['sd']:.3f} | {100 * p['flip_rate']:.0f}% |"
        )
    return lines


def methods_md(results: dict) -> list[str]:
    """The methods paragraph a reviewer checks: every interval, test, penalty and fitting choice,
    with the numbers (resamples, Holm's m) taken from this run."""
    st = results["study"]
    n_boot = st.get("protocol", {}).get("n_boot", N_BOOT)
    models = results.get("models", [])
    m_holm = sum(1 for m in models if m.get("delong_p_vs_best_phase") is not None)
    text = [
        "- **Unit of analysis.** The patient: a patient's probability is the mean of its slices' probabilities; "
        "patient-level results are primary. Image-level numbers keep each patient's slices together.",
        "- **Intervals.** Patient AUC: DeLong; image-level AUC: Obuchowski's clustered variance (patients as "
        "clusters); no AUC interval with fewer than 2 patients of a grade (half of the variance is then not "
        "estimable). Proportions on independent patients: exact Clopper-Pearson. "
        f"Everything else (image level, Brier score, balanced accuracy): percentile bootstrap with {n_boot} "
        "resamples (seed 0) of patients drawn within their grade, each with all its slices; where a metric is "
        "undefined in some resamples (e.g. precision when nobody is called high) the number of usable "
        "resamples is printed beside the interval.",
        "- **Comparisons.** Paired DeLong test of patient AUCs and exact McNemar test of correctness at 0.5. "
        "Image level: Obuchowski's clustered AUC test and Durkalski's clustered McNemar test (patients as "
        "clusters), the AUC difference's CI by Obuchowski's variance (as its P) and, beside it, by the "
        "grade-stratified patient-cluster bootstrap. "
        + (
            f"Model comparison: each model against the best phase, Holm's correction over m = {m_holm} tests."
            if m_holm
            else "No model comparison with estimable tests."
        )
        + " P values below 0.001 are printed as <0.001, never 0.",
        "- **Calibration.** Intercept (slope fixed at 1) and slope by logistic maximum likelihood on the logit of "
        "the probability; the slope is not estimable when the probabilities separate the grades (detected, "
        "not guessed). ECE: 10 equal-width bins [0, 0.1), ..., [0.9, 1.0], weighted by their share of patients. "
        "Decision curves: net benefit TP/n - FP/n x pt/(1 - pt) for pt 0.05-0.60.",
        f"- **Fitted models.** Logistic fusion, clinical model and nomogram: L2-penalised logistic regression "
        f"(C = {LOGISTIC_C:g}, standardised predictors). The fusion and the nomogram are fitted on validation "
        "patients, so a threshold fitted for them uses in-sample validation probabilities and is optimistic; "
        "the test patients choose nothing. Radiomics: LASSO-logistic selection inside the training patients.",
        "- **Thresholds.** The study's 0.5 by default; Youden, 90% sensitivity and 90% specificity cut-points "
        "only on validation patients with >= 10 of each grade (exact search under the rule P >= threshold), "
        "with a stratified bootstrap CI (1000 resamples).",
        "- **Table 2.** Per variable n and missing counts; t-test or Mann-Whitney U after a normality test; "
        "chi-square, Fisher's exact (2 x 2, expected < 5) or Fisher-Freeman-Halton by Monte Carlo (sparse "
        "larger tables).",
    ]
    return text


def tripod_md(results: dict) -> list[str]:
    """A TRIPOD+AI-style summary (Collins et al., BMJ 2024) filled from the run."""
    st, ds = results["study"], results["dataset"]
    allp = ds.get("all", {})
    n_low = max((t["low"]["patients"] for t in allp.values()), default=0)
    n_high = max((t["high"]["patients"] for t in allp.values()), default=0)
    parts = {k: ds.get(k, {}) for k in ("train", "val", "test")}

    def count(part: str) -> str:
        t = parts[part]
        if not t:
            return "0"
        lo = max(v["low"]["patients"] for v in t.values())
        hi = max(v["high"]["patients"] for v in t.values())
        return f"{lo + hi} ({hi} high)"

    missing = [
        f"{ph}: {n_low + n_high - t['low']['patients'] - t['high']['patients']}"
        for ph, t in allp.items()
        if ph != "combined"
    ]
    ext = any("external" in r for r in results.get("runs", {}).values())
    det = results.get("evidence", {}).get("details", {})
    rows = [
        (
            "Source of data",
            f"`{st['cohort']}`"
            + (" - SYNTHETIC phantom cohort" if st.get("synthetic") else "")
            + f"; study run started {st.get('started', '?')}",
        ),
        ("Participants", f"{n_low + n_high} patients with a boxed ccRCC on CT and a WHO/ISUP grade"),
        (
            "Outcome",
            "WHO/ISUP grade from pathology, dichotomised low (I-II) vs high (III-IV); "
            f"{n_high} high grade ({100 * n_high / max(n_low + n_high, 1):.0f}%)",
        ),
        (
            "Predictors",
            "box crops of the CT phases (networks, radiomics: "
            + (
                f"{det['radiomics'][next(iter(det['radiomics']))]['n_features']} IBSI features"
                if det.get("radiomics")
                else "n/a"
            )
            + "); clinical: "
            + (", ".join(det["clinical"]["predictors"]) if "clinical" in det else "n/a"),
        ),
        (
            "Sample size",
            f"training {count('train')}, validation {count('val')}, test {count('test')} patients; "
            "no formal sample size calculation (the cohort at hand)",
        ),
        (
            "Missing data",
            "patients without a phase - " + ", ".join(missing) + "; fusion imputes a missing phase "
            "(mean validation logit), the multi-phase network masks it; clinical values: median "
            "imputation",
        ),
        (
            "Model development",
            f"{len(results.get('models', []))} models (networks, fusions, radiomics, clinical, "
            "combined); networks selected per epoch on validation patient AUC",
        ),
        (
            "Validation",
            "internal, random patient-level split stratified by grade ("
            + st.get("ratios", "8:1:1")
            + " train:validation:test)"
            + ("; external cohort" if ext else "; no external validation"),
        ),
        (
            "Performance measures",
            "discrimination (AUC, DeLong CI), classification (exact CIs), calibration "
            "(Brier, ECE, slope, intercept, reliability), clinical usefulness (decision curves)",
        ),
    ]
    return ["| Item | This study |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]


SUBGROUP_TITLES = {
    "center": "Centre",
    "manufacturer": "Scanner manufacturer",
    "slice_thickness": "Slice thickness",
    "tumor_size": "Tumour size",
}


def _cell(text: object) -> str:
    """Text from the data (centre, scanner names) as one table cell: no column breaks, no newlines
    (and, like every cell, escaped when the page is made)."""
    return str(text).replace("|", "/").replace("\n", " ")


def _cal_text(e: dict | None) -> str:
    if not e or e.get("value") is None:
        return "n/a"
    lo, hi = e["ci95"]
    return f"{e['value']:.2f} ({lo:.2f} to {hi:.2f})"


def subgroups_md(metrics: dict, where: str) -> list[str]:
    """Per centre, scanner, slice thickness and tumour size: patients, AUC and calibration, or why
    a group has no estimate; the centres' heterogeneity test."""
    sub = metrics.get("subgroups")
    if not sub:
        return [f"{where}: no subgroup results (evaluated before this version; re-run `evaluate`)."]
    lines = [f"{where} (patient level; calibration intercept, slope and O/E with Wald / Riley 95% CIs):", ""]
    for kind, title in SUBGROUP_TITLES.items():
        lines += [
            f"| {title} | Patients (high) | AUC (95% CI) | Calibration intercept | Calibration slope | O/E |",
            "|---|---|---|---|---|---|",
        ]
        for name, g in sub.get(kind, {}).items():
            n = f"{g['n_patients']} ({g.get('n_high', '?')})"
            if not g.get("estimable", True):
                lines.append(f"| {_cell(name)} | {n} | not estimable: {g['reason']} | | | |")
                continue
            cal = g.get("calibration", {})
            lines.append(
                f"| {_cell(name)} | {n} | {_ci(metric(g, 'auc'))} | {_cal_text(cal.get('calibration_intercept'))} "
                f"| {_cal_text(cal.get('calibration_slope'))} | {_cal_text(cal.get('o_e'))} |"
            )
        lines.append("")
    het = (metrics.get("subgroup_heterogeneity") or {}).get("center")
    if het:
        if het.get("estimable"):
            lines.append(
                f"Heterogeneity of the AUC across centres ({het['test']}): Q = {het['q']:.2f}, df {het['df']}, "
                f"P = {_p(het['p'])}, I^2 = {100 * het['i2']:.0f}%."
            )
        else:
            lines.append(f"Heterogeneity across centres not tested: {het['reason']}.")
        for g, why in het.get("groups_left_out", {}).items():
            lines.append(f"- {_cell(g)} left out: {why}")
        lines.append("")
    return lines


def sample_size_md(results: dict) -> list[str]:
    """Riley et al.'s criteria: is the test set large enough to validate the model, and how many
    patients would developing a model of this kind need."""
    from ccrcc_grade.stats.samplesize import development

    best = results.get("best_phase")
    m = ((results.get("runs") or {}).get(f"resnet34-{best}") or {}).get("test") or {}
    ss = m.get("sample_size")
    if not ss:
        return ["No sample-size assessment (evaluated before this version)."]
    if not ss.get("estimable", True):
        return [f"Sample size not assessed: {ss['reason']}."]
    v = ss["riley_validation"]
    c = v["criteria"]
    lines = [
        f"Validation (Riley et al., Stat Med 2021): at the test set's prevalence {ss['prevalence']:.2f} and the "
        f"best phase's test AUC {ss['auc']:.2f}"
        + (
            f" (taken as {ss['auc_used']:.2f}: the formulas need 0.5 < AUC < 1)"
            if ss.get("auc_used", ss["auc"]) != ss["auc"]
            else ""
        )
        + f", a precise validation needs {v['n']} patients ({v['events']} high "
        f"grade): O/E {c['o_e']}, calibration slope {c['calibration_slope']}, AUC {c['auc']}. This test set has "
        f"{ss['n_patients']}: "
        + (
            "large enough."
            if ss["large_enough"]
            else "**too small**; its CIs are wide "
            "and its calibration estimates imprecise (a multi-centre validation is the remedy)."
        ),
    ]
    try:
        d = development(ss["prevalence"], ss.get("auc_used", ss["auc"]), 1)
        crit = d["criteria"]
        lines += [
            "",
            f"Development (Riley et al., BMJ 2020), for a score with one parameter (e.g. recalibrating the "
            f"network's output, or a single-predictor model): {d['n']} patients (shrinkage {crit['shrinkage']}, "
            f"optimism {crit['optimism']}, overall risk {crit['overall_risk']}). The networks' millions of "
            "weights have no such formula; their overfitting shows in validation vs test AUC.",
        ]
    except CcrccError:
        pass
    return lines


def report_markdown(results: dict, figs: list[tuple[str, Path]], out: Path) -> str:
    st = results["study"]
    has_runs, has_cv = "runs" in results, "cross_validation" in results
    has_models = bool(results.get("models"))
    shown = {
        "table-3": has_runs,
        "thresholds": has_runs,
        "table-4": has_runs,
        "cv": has_cv,
        "models": has_models,
        "agreement": "agreement" in results,
        "robustness": "box_robustness" in results,
    }
    md = ["# ccRCC WHO/ISUP grade from multi-phase CT: study report", ""]
    if st.get("synthetic"):
        md += [
            "> **Synthetic cohort.** These images are phantoms made by `ccrcc-grade synth`; the numbers show "
            "the software working, not clinical performance.",
            "",
        ]
    md += ["Contents: " + " · ".join(f"[{t}](#{a})" for a, t in SECTIONS if shown.get(a, True)), ""]
    md += ["## Summary", ""] + _summary_md(results) + [""]
    md += [
        f"Cohort: `{st['cohort']}` - preset `{st['preset']}` (crop {st['protocol']['size']} px, input "
        f"{st['protocol']['image_size']} px, {st['protocol']['epochs']} epochs, weights {st['protocol']['weights']}, "
        f"x{st['protocol']['repeats']} augmentation) - seed {st['seed']} - "
        f"this invocation took {st.get('seconds', 0):.0f} s "
        "(finished models are reused on re-runs).",
        "",
        "## Dataset",
        "",
        _dataset_md(results["dataset"]),
        "",
        "## Table 2. Clinical characteristics",
        "",
        table_markdown(results["clinical"]),
        "",
    ]
    if has_models:
        md += ["## Model comparison", ""] + _models_text(results)
    if has_runs:
        md += [
            "## Table 3. Test results of every model",
            "",
            "Patient level (probability = mean of the patient's slices; threshold 0.5). 95% CIs: DeLong for the "
            "AUC, exact Clopper-Pearson for proportions; n = the patients each number rests on (for the AUC: "
            "patients, of them high grade):",
            "",
            _metrics_md(results["runs"], "patient"),
            "",
            "Image level (slices of one patient are not independent: AUC CI by Obuchowski's clustered variance, "
            "the others by the grade-stratified bootstrap over patients; n = slices):",
            "",
            _metrics_md(results["runs"], "image"),
            "",
            f"Best phase: **{results['best_phase']}** ({results['best_phase_rule']}). {_tie_sentence(results)} "
            "Validation patient AUC of ResNet34 per phase (DeLong 95% CI, validation patients): "
            + ", ".join(
                f"{k} {_auc_ci_text(v, results.get('val_auc_resnet34_ci', {}).get(k))}"
                for k, v in results["val_auc_resnet34"].items()
            )
            + ".",
            "",
            "## Decision thresholds",
            "",
            "The grade is read at the study's threshold 0.5 unless a model stores another policy; thresholds "
            "fitted on validation patients are shown with their bootstrap CI. The test set never chooses a "
            "threshold.",
            "",
            _operating_points_md(results["runs"]),
            "",
            f"## Table 4. ResNet34 vs SE-ResNet34 on the {results['best_phase']} phase",
            "",
            _comparison_md(results["comparison"]),
            "",
            "Difference = SE-ResNet34 minus ResNet34 everywhere in this report. The patient level is primary "
            "(paired DeLong; exact McNemar on correctness at 0.5). The image level keeps each patient's slices "
            "together: Obuchowski's clustered AUC test with its CI, a grade-stratified patient-cluster bootstrap CI "
            "beside it and Durkalski's clustered McNemar; unclustered image-level tests are not shown because they "
            "reject a true null far more often than 5%.",
            "",
        ]
    if has_cv:
        md += [
            f"## Cross-validation ({st['folds']} folds, test folds, mean ± SD)",
            "",
            _cv_md(results["cross_validation"]),
            "",
            "Mean ± SD over the test folds describe the spread between folds; they carry no confidence "
            "interval because folds share training patients (their estimates are not independent). The "
            "pooled column puts every patient's out-of-fold prediction together (each patient tested once) "
            "and gives DeLong's interval on all of them.",
            "",
            f"Best phase by mean validation AUC: **{results['best_phase']}**.",
            "",
        ]
    if "agreement" in results:
        md += ["## Reader agreement", ""] + agreement_md(results["agreement"]) + [""]
    if "box_robustness" in results:
        md += ["## Robustness to the box", ""] + robustness_md(results["box_robustness"]) + [""]
    best_run = (results.get("runs") or {}).get(f"resnet34-{results.get('best_phase')}")
    if best_run:
        md += ["## Results by centre, scanner and tumour size", ""]
        md += subgroups_md(best_run.get("test") or {}, f"ResNet34 on the {results['best_phase']} phase, test patients")
        if best_run.get("external"):
            md += subgroups_md(best_run["external"], "The same model on the external cohort")
        md += ["## Sample size", ""] + sample_size_md(results) + [""]
    md += ["## Figures", ""]
    for caption, path in figs:
        if path.is_file():
            md += [f"![{caption}]({path.relative_to(out) if path.is_relative_to(out) else path})", f"*{caption}*", ""]
    md += ["## Statistical methods", ""] + methods_md(results) + [""]
    md += ["## TRIPOD+AI summary", ""] + tripod_md(results) + [""]
    md += ["## Limitations", "", results["limitations"], ""]
    md += [
        "## Checklists",
        "",
        "TRIPOD+AI (Collins et al., BMJ 2024), filled from this run; rows marked for the authors need what "
        "software cannot know.",
        "",
        *checklist_md(tripod_ai(results), "Item"),
        "",
        "CLAIM 2024 (Tejani et al., Radiology: Artificial Intelligence 2024), by topic in the checklist's order "
        "(match each row to the official form's item).",
        "",
        *checklist_md(claim_2024(results), "Section"),
        "",
    ]
    return "\n".join(md)


def _md_table_to_html(lines: list[str]) -> str:
    rows = [ln.strip().strip("|").split("|") for ln in lines if not set(ln.replace("|", "").strip()) <= {"-"}]
    head, body = rows[0], rows[1:]
    # escaped: cells hold names from the data; only ASCII spaces are trimmed (Table 2 indents its
    # levels with non-breaking spaces)
    h = "".join(f"<th>{_inline(c.strip(' '))}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{_inline(c.strip(' '))}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def markdown_to_html(md: str, out: Path) -> str:
    """The small Markdown subset the report uses (headings, tables, images, emphasis) -> HTML.
    Written here because the report's subset is tiny and a Markdown dependency is not needed."""
    parts, table = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            parts.append(_md_table_to_html(table))
            table = []
        if line.startswith("# "):
            parts.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            anchor = next((a for a, t in SECTIONS if line[3:].startswith(t.split(".")[0])), "")
            parts.append(f"<h2 id='{anchor}'>{html.escape(line[3:])}</h2>")
        elif line.startswith("- "):
            parts.append(f"<li>{_inline(line[2:])}</li>")
        elif line.startswith("> "):
            parts.append(f"<p class='warn'>{_inline(line[2:])}</p>")
        elif line.startswith("!["):
            cap, src = line[2:].split("](", 1)
            p = Path(src.rstrip(")"))
            p = p if p.is_absolute() else out / p
            if p.is_file():
                data = base64.b64encode(p.read_bytes()).decode()
                parts.append(f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{data}'></figure>")
        elif line.startswith("*") and line.endswith("*") and not line.startswith("**"):
            parts.append(f"<p class='cap'>{html.escape(line.strip('*'))}</p>")
        elif line.strip():
            parts.append(f"<p>{_inline(line)}</p>")
    css = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}"
        "th{background:#f0f3f7}img{max-width:100%}.warn{background:#fff4d6;padding:.6em;border-left:4px solid #e0a000}"
        ".cap{font-style:italic;color:#555;margin-top:0}"
    )
    body = re.sub(r"((?:<li>.*?</li>)+)", r"<ul>\1</ul>", "".join(parts))
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>ccrcc-grade study report</title>"
        f"<style>{css}</style></head><body>{body}</body></html>\n"
    )


def _inline(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
    t = re.sub(r"\[(.+?)\]\(#([\w-]+)\)", r"<a href='#\2'>\1</a>", t)
    return t


def write_report(results: dict, out: Path) -> Path:
    figs = _roc_all(results, out)
    md = report_markdown(results, figs, out)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", markdown_to_html(md, out))
    return out / "report.html"
