"""results.json -> report.md and a self-contained report.html (figures embedded as base64)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np

from .clinical import format_p, table_markdown
from .fileio import atomic_write_text
from .figures import roc_figure

METRIC_COLS = [("auc", "AUC"), ("precision", "Precision"), ("sensitivity", "Sensitivity"),
               ("specificity", "Specificity"), ("f1", "F1")]


def _ci(e: dict) -> str:
    v, (lo, hi) = e["value"], e["ci95"]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if any(x is None or (isinstance(x, float) and math.isnan(x)) for x in (lo, hi)):
        return f"{v:.3f}"
    return f"{v:.3f} ({lo:.3f}-{hi:.3f})"


def _dataset_md(ds: dict) -> str:
    lines = ["| Phase | Part | Low crops | High crops | Low patients | High patients |", "|---|---|---|---|---|---|"]
    for part in ("all", "train", "val", "test"):
        for phase, t in ds.get(part, {}).items():
            lines.append(f"| {phase} | {part} | {t['low']['crops']} | {t['high']['crops']} | "
                         f"{t['low']['patients']} | {t['high']['patients']} |")
    return "\n".join(lines)


def _metrics_md(runs: dict, level: str) -> str:
    lines = ["| Model | Phase | Grade | " + " | ".join(n for _, n in METRIC_COLS) + " | ACC | n |",
             "|---|---|---|" + "---|" * (len(METRIC_COLS) + 2)]
    for name, r in runs.items():
        model, phase = name.split("-", 1)
        m = r["test"][level]
        for cls in ("low", "high"):
            lines.append(f"| {model} | {phase} | {cls} | " + " | ".join(_ci(m[cls][k]) for k, _ in METRIC_COLS)
                         + f" | {_ci(m['accuracy'])} | {m['n']} |")
    return "\n".join(lines)


def _comparison_md(c: dict) -> str:
    lines = ["| Level | n | AUC ResNet34 | AUC SE-ResNet34 | Difference (95% CI) | DeLong P | ACC ResNet34 | "
             "ACC SE-ResNet34 | McNemar P |", "|---|---|---|---|---|---|---|---|---|"]
    for lv in ("patient", "image"):
        if lv in c:
            x = c[lv]
            d, lo, hi = (0.0 - v for v in (x["auc_diff"], x["auc_diff_ci95"][1], x["auc_diff_ci95"][0]))
            lines.append(f"| {lv} | {x['n']} | {x['auc_a']:.3f} | {x['auc_b']:.3f} | {d + 0.0:+.3f} "
                         f"({lo + 0.0:+.3f} to {hi + 0.0:+.3f}) | {format_p(x['delong_p'])} | "
                         f"{x['acc_a']:.3f} | {x['acc_b']:.3f} | {format_p(x['mcnemar_p'])} |")
    return "\n".join(lines)


def _cv_md(cv: dict) -> str:
    lines = ["| Model | Level | AUC | ACC | Sensitivity (high) | Specificity (high) |", "|---|---|---|---|---|---|"]
    for name, r in cv.items():
        for lv in ("patient", "image"):
            s = r["cv"][lv]
            lines.append(f"| {name} | {lv} | " + " | ".join(f"{s[k]['mean']:.3f} ± {s[k]['sd']:.3f}"
                                                         for k in ("auc", "accuracy", "sensitivity", "specificity")) + " |")
    return "\n".join(lines)


def _roc_all(results: dict, out: Path) -> list[tuple[str, Path]]:
    """Figure 3 (ResNet34, every phase, patient level) and Figure 4 (ResNet34 vs SE-ResNet34)."""
    from .evaluate import patient_level, read_predictions

    figs = []
    runs = results.get("runs", {})
    if not runs:
        return figs

    def curves(names: list[str]) -> dict:
        c = {}
        for n in names:
            rows = patient_level(read_predictions(Path(runs[n]["run"]) / "eval-test" / "predictions.csv"))
            c[n] = (np.array([r["label"] for r in rows]), np.array([r["prob_high"] for r in rows]), runs[n]["test"]["patient"])
        return c

    f3 = out / "figures" / "fig3_roc_phases.png"
    f3.parent.mkdir(parents=True, exist_ok=True)
    roc_figure(curves([n for n in runs if n.startswith("resnet34-")]), f3, "ResNet34 by phase (test, patient level)")
    figs.append(("Figure 3. ROC curves of ResNet34 for every phase (test patients)", f3))
    best = results["best_phase"]
    f4 = out / "figures" / "fig4_roc_resnet_vs_se.png"
    roc_figure(curves([f"resnet34-{best}", f"se_resnet34-{best}"]), f4, f"{best}: ResNet34 vs SE-ResNet34 (test, patient level)")
    figs.append((f"Figure 4. ROC curves of ResNet34 and SE-ResNet34 on the {best} phase", f4))
    for n in (f"resnet34-{best}", f"se_resnet34-{best}"):
        figs.append((f"Figure 2. Confusion matrix of {n} (test, image level, threshold 0.5)",
                     Path(runs[n]["run"]) / "eval-test" / "confusion.png"))
        figs.append((f"Calibration of {n} (test)", Path(runs[n]["run"]) / "eval-test" / "calibration.png"))
    return figs


def report_markdown(results: dict, figs: list[tuple[str, Path]], out: Path) -> str:
    st = results["study"]
    md = ["# ccRCC WHO/ISUP grade from multi-phase CT: study report", ""]
    if st.get("synthetic"):
        md += ["> **Synthetic cohort.** These images are phantoms made by `ccrcc-grade synth`; the numbers show "
               "the software working, not clinical performance.", ""]
    md += [f"Cohort: `{st['cohort']}` - preset `{st['preset']}` (crop {st['protocol']['size']} px, input "
           f"{st['protocol']['image_size']} px, {st['protocol']['epochs']} epochs, weights {st['protocol']['weights']}, "
           f"x{st['protocol']['repeats']} augmentation) - seed {st['seed']} - this invocation took {st.get('seconds', 0):.0f} s "
           "(finished models are reused on re-runs).", "",
           "## Dataset", "", _dataset_md(results["dataset"]), "",
           "## Table 2. Clinical characteristics", "", table_markdown(results["clinical"]), ""]
    if "runs" in results:
        md += ["## Table 3. Test results of every model (95% CI)", "",
               "Patient level (probability = mean of the patient's slices; DeLong CI for AUC, patient bootstrap "
               "for the rest):", "", _metrics_md(results["runs"], "patient"), "",
               "Image level (patient-cluster bootstrap CIs):", "", _metrics_md(results["runs"], "image"), "",
               f"Best phase by validation AUC: **{results['best_phase']}** ({results['best_phase_rule']}). "
               "Validation AUC of ResNet34 per phase: "
               + ", ".join(f"{k} {v:.3f}" for k, v in results["val_auc_resnet34"].items()) + ".", "",
               f"## Table 4. ResNet34 vs SE-ResNet34 on the {results['best_phase']} phase", "",
               _comparison_md(results["comparison"]), "",
               "Difference = SE-ResNet34 minus ResNet34 (paired DeLong); McNemar exact test on correctness at 0.5.", ""]
    if "cross_validation" in results:
        md += [f"## Cross-validation ({st['folds']} folds, test folds, mean ± SD)", "", _cv_md(results["cross_validation"]), "",
               f"Best phase by mean validation AUC: **{results['best_phase']}**.", ""]
    md += ["## Figures", ""]
    for caption, path in figs:
        if path.is_file():
            md += [f"![{caption}]({path.relative_to(out) if path.is_relative_to(out) else path})", f"*{caption}*", ""]
    md += ["## Limitations", "", results["limitations"], ""]
    return "\n".join(md)


def _md_table_to_html(lines: list[str]) -> str:
    rows = [ln.strip().strip("|").split("|") for ln in lines if not set(ln.replace("|", "").strip()) <= {"-"}]
    head, body = rows[0], rows[1:]
    h = "".join(f"<th>{c.strip()}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{c.strip()}</td>" for c in r) + "</tr>" for r in body)
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
            parts.append(f"<h2>{html.escape(line[3:])}</h2>")
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
    css = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}"
           "th{background:#f0f3f7}img{max-width:100%}.warn{background:#fff4d6;padding:.6em;border-left:4px solid #e0a000}"
           ".cap{font-style:italic;color:#555;margin-top:0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>ccrcc-grade study report</title>"
            f"<style>{css}</style></head><body>{''.join(parts)}</body></html>\n")


def _inline(text: str) -> str:
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
    return t


def write_report(results: dict, out: Path) -> Path:
    figs = _roc_all(results, out)
    md = report_markdown(results, figs, out)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", markdown_to_html(md, out))
    return out / "report.html"
