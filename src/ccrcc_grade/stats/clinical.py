"""The study's Table 2: clinical characteristics of low- vs high-grade patients.

Continuous variables: normality by Kolmogorov-Smirnov (Lilliefors-corrected, against a normal
with the sample's mean and SD; or Shapiro-Wilk) in each group; if both normal, mean +- SD and Student's
t-test, else median (IQR) and Mann-Whitney U. Categorical variables: counts (%) and Pearson's
chi-square, or Fisher's exact test for 2x2 tables with an expected count < 5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from ccrcc_grade.core.config import CLINICAL_NORMALITY
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_write_json, atomic_write_text
from ccrcc_grade.io.clinical import read_clinical
from ccrcc_grade.stats.format import format_p

SKIP = {"patient_id", "who_isup_grade", "grade"}


def _numbers(values: list[str]) -> list[float] | None:
    out = []
    for v in values:
        if v == "":
            continue
        try:
            out.append(float(v))
        except ValueError:
            return None
    return out


def _normal(x: np.ndarray, method: str) -> tuple[bool, float]:
    if len(x) < 3 or np.std(x) == 0:
        return False, float("nan")
    if method == "shapiro":
        p = stats.shapiro(x).pvalue
    else:
        # KS against a normal whose mean and SD are estimated from the same data needs the
        # Lilliefors null distribution (plain kstest p-values are far too large); scipy's
        # goodness_of_fit simulates it. Seeded, so the table is reproducible.
        p = stats.goodness_of_fit(stats.norm, x, statistic="ks", n_mc_samples=2000, rng=np.random.default_rng(0)).pvalue
    return bool(p > 0.05), float(p)


def clinical_table(path: Path, normality: str = CLINICAL_NORMALITY) -> dict:
    """Compute Table 2 from a clinical.csv."""
    table = read_clinical(path)
    ids = list(table.rows)
    labels = np.array([table.labels[i] for i in ids])
    n_low, n_high = int((labels == 0).sum()), int((labels == 1).sum())
    rows = []
    for col in table.columns:
        if col.lower() in SKIP:
            continue
        values = [table.rows[i].get(col, "") for i in ids]
        nums = _numbers(values)
        if nums is not None and len(set(nums)) > 5:
            arr = np.array([float(v) if v != "" else np.nan for v in values])
            lo, hi = arr[(labels == 0) & ~np.isnan(arr)], arr[(labels == 1) & ~np.isnan(arr)]
            if len(lo) < 2 or len(hi) < 2:
                continue
            nl, pl = _normal(lo, normality)
            nh, ph = _normal(hi, normality)
            if nl and nh:
                p = stats.ttest_ind(lo, hi).pvalue
                fmt = lambda a: f"{np.mean(a):.2f} ± {np.std(a, ddof=1):.2f}"  # noqa: E731
                test = "t-test"
            else:
                p = stats.mannwhitneyu(lo, hi, alternative="two-sided").pvalue
                fmt = lambda a: f"{np.median(a):.2f} ({np.percentile(a, 25):.2f}-{np.percentile(a, 75):.2f})"  # noqa: E731
                test = "Mann-Whitney U"
            rows.append(
                {
                    "variable": col,
                    "type": "continuous",
                    "low": fmt(lo),
                    "high": fmt(hi),
                    "test": test,
                    "p": float(p),
                    "normality_p": {"low": pl, "high": ph},
                }
            )
        else:
            cats = sorted({v for v in values if v != ""})
            if len(cats) < 2 or len(cats) > 10:
                continue
            ct = np.array([[sum(1 for v, y in zip(values, labels) if v == c and y == k) for k in (0, 1)] for c in cats])
            chi = stats.chi2_contingency(ct, correction=True)
            expected = chi.expected_freq
            if ct.shape == (2, 2) and expected.min() < 5:
                p, test = stats.fisher_exact(ct).pvalue, "Fisher's exact"
            else:
                p, test = chi.pvalue, "chi-square"
            levels = [
                {
                    "level": c,
                    "low": f"{ct[i, 0]} ({100 * ct[i, 0] / max(n_low, 1):.1f}%)",
                    "high": f"{ct[i, 1]} ({100 * ct[i, 1] / max(n_high, 1):.1f}%)",
                }
                for i, c in enumerate(cats)
            ]
            rows.append({"variable": col, "type": "categorical", "levels": levels, "test": test, "p": float(p)})
    return {
        "n_low": n_low,
        "n_high": n_high,
        "normality_test": "Kolmogorov-Smirnov (Lilliefors)" if normality == "ks" else "Shapiro-Wilk",
        "rows": rows,
    }


def table_markdown(t: dict) -> str:
    lines = [
        f"| Variable | Low grade (n={t['n_low']}) | High grade (n={t['n_high']}) | Test | P |",
        "|---|---|---|---|---|",
    ]
    for r in t["rows"]:
        if r["type"] == "continuous":
            lines.append(f"| {r['variable']} | {r['low']} | {r['high']} | {r['test']} | {format_p(r['p'])} |")
        else:
            lines.append(f"| {r['variable']} |  |  | {r['test']} | {format_p(r['p'])} |")
            for lv in r["levels"]:
                lines.append(f"| &nbsp;&nbsp;{lv['level']} | {lv['low']} | {lv['high']} |  |  |")
    lines.append("")
    lines.append(
        f"Continuous variables: mean ± SD (t-test) when {t['normality_test']} found both groups normal "
        "(P > 0.05), else median (IQR) and Mann-Whitney U. Categorical: n (%), chi-square or Fisher's exact."
    )
    return "\n".join(lines)


def clinical_command(cohort: str, out: str | None = None, normality: str = CLINICAL_NORMALITY) -> str:
    p = Path(cohort)
    path = p if p.is_file() else p / "clinical.csv"
    if not path.is_file():
        raise CcrccError(f"{cohort}: no clinical.csv")
    t = clinical_table(path, normality)
    md = table_markdown(t)
    if out:
        atomic_write_json(Path(out) / "clinical_table.json", t)
        atomic_write_text(Path(out) / "clinical_table.md", md + "\n")
    return md
