"""The study's Table 2: clinical characteristics of low- vs high-grade patients.

Continuous variables: normality by Kolmogorov-Smirnov (Lilliefors-corrected, against a normal
with the sample's mean and SD; or Shapiro-Wilk) in each group; if both normal, mean +- SD and Student's
t-test, else median (IQR) and Mann-Whitney U. Categorical variables: counts (%) of the patients
with a value and Pearson's chi-square, Fisher's exact test for 2x2 tables with an expected count
< 5, or the Fisher-Freeman-Halton test (Monte Carlo) for sparse larger tables. Each row carries
its n per grade and its missing counts.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from scipy import stats
from scipy.special import gammaln

from ccrcc_grade.core.config import CLINICAL_NORMALITY
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_write_json, atomic_write_text, refuse_overwriting_inputs
from ccrcc_grade.io.clinical import read_clinical
from ccrcc_grade.stats.format import format_p

SKIP = {"patient_id", "who_isup_grade", "grade"}


MISSING = {"", "na", "n/a", "nan", "none", "null", "unknown", "not known", "missing", "-", "--", "?", "."}
NUMERIC_SHARE = 0.8  # a column is a number when at least this share of its given cells are numbers


def _number(v: str) -> float | None:
    """A cell as a finite number ('65', '65.5', '65,5'), else None."""
    try:
        f = float(v.replace(",", ".") if v.count(",") == 1 and "." not in v else v)
    except ValueError:
        return None
    return f if np.isfinite(f) else None


def _level(v: str) -> str:
    """A category's spelling normalised: case and spaces ('Male ', 'male', 'MALE' are one level)."""
    return " ".join(v.split()).casefold()


def typed_column(col: str, values: list[str], lines: list[int], path: Path) -> tuple[str, list, list[str]]:
    """(type, values with None where missing, problems per cell). Explicit missing markers (NA,
    unknown, -) are missing; a numeric column's cells that are not numbers are reported by line
    and counted as missing, so one 'unknown' or '65 y' no longer turns age into a category."""
    given = [v for v in values if v.strip().casefold() not in MISSING]
    nums = {v: _number(v) for v in given}  # each distinct spelling parsed once
    numeric = given and sum(nums[v] is not None for v in given) >= NUMERIC_SHARE * len(given)
    problems: list[str] = []
    out: list = []
    for v, line in zip(values, lines):
        if v not in nums:  # a missing marker
            out.append(None)
        elif numeric:
            if nums[v] is None:
                problems.append(f"{path.name}:{line}: {col} {v!r} is not a number; counted as missing")
            out.append(nums[v])
        else:
            out.append(_level(v))
    if not numeric:  # each level shown in its most frequent spelling
        spellings: dict[str, Counter] = {}
        for v in given:
            spellings.setdefault(_level(v), Counter())[" ".join(v.split())] += 1
        out = [None if v is None else spellings[v].most_common(1)[0][0] for v in out]
    return ("numeric" if numeric else "categorical"), out, problems


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


FFH_RESAMPLES = 20000  # Monte-Carlo tables of the Fisher-Freeman-Halton test (seeded)


def fisher_freeman_halton(ct: np.ndarray, n_sim: int = FFH_RESAMPLES, seed: int = 0) -> float:
    """Monte-Carlo Fisher-Freeman-Halton exact test of an r x 2 table (categories x grade).

    Tables are drawn under independence with both margins fixed (the grade labels permuted among
    the patients) and ordered by their hypergeometric probability, as R's
    ``fisher.test(simulate.p.value = TRUE)``; P = (1 + tables at most as probable) / (1 + n_sim).
    scipy's exact test covers 2 x 2 only, hence this."""
    ct = np.asarray(ct, dtype=int)
    cats = np.repeat(np.arange(ct.shape[0]), ct.sum(axis=1))
    labels = np.concatenate([np.repeat([0, 1], row) for row in ct])
    rng = np.random.default_rng(seed)

    def log_prob(high: np.ndarray) -> np.ndarray:  # up to a constant, for fixed margins
        low = ct.sum(axis=1)[:, None] - high
        return -(gammaln(high + 1) + gammaln(low + 1)).sum(axis=0)

    obs = log_prob(ct[:, 1:2])[0]
    onehot = np.eye(ct.shape[0], dtype=np.int64)[cats]  # patients x categories
    hits, done = 0, 0
    while done < n_sim:
        b = min(2000, n_sim - done)
        perm = rng.permuted(np.tile(labels, (b, 1)), axis=1)  # b permutations of the grade labels
        hits += int(np.sum(log_prob(onehot.T @ perm.T) <= obs + 1e-7))
        done += b
    return (1 + hits) / (1 + n_sim)


def _categorical_test(ct: np.ndarray) -> tuple[float, str]:
    """Pearson's chi-square; Fisher's exact for a sparse 2 x 2 table; Fisher-Freeman-Halton
    (Monte Carlo) for a sparse larger table (an expected count < 1, or > 20% below 5: Cochran)."""
    chi = stats.chi2_contingency(ct, correction=True)
    expected = chi.expected_freq
    sparse = expected.min() < 1 or np.mean(expected < 5) > 0.2
    if ct.shape == (2, 2) and expected.min() < 5:
        return float(stats.fisher_exact(ct).pvalue), "Fisher's exact"
    if sparse:
        return fisher_freeman_halton(ct), f"Fisher-Freeman-Halton (Monte Carlo, {FFH_RESAMPLES} tables)"
    return float(chi.pvalue), "chi-square"


def clinical_table(path: Path, normality: str = CLINICAL_NORMALITY) -> dict:
    """Compute Table 2 from a clinical.csv. Every row says on how many patients of each grade it
    rests and how many are missing; percentages are of the patients with a value."""
    table = read_clinical(path)
    ids = list(table.rows)
    labels = np.array([table.labels[i] for i in ids])
    n_low, n_high = int((labels == 0).sum()), int((labels == 1).sum())
    rows, problems = [], []
    lines = [(table.lines or {}).get(i, 0) for i in ids]
    for col in table.columns:
        if col.lower() in SKIP:
            continue
        raw = [table.rows[i].get(col, "").strip() for i in ids]
        kind, typed, bad = typed_column(col, raw, lines, Path(path))
        problems += bad
        present = np.array([v is not None for v in typed])
        counts = {
            "n_low": int(np.sum(present & (labels == 0))),
            "n_high": int(np.sum(present & (labels == 1))),
            "missing_low": int(np.sum(~present & (labels == 0))),
            "missing_high": int(np.sum(~present & (labels == 1))),
        }
        if kind == "numeric" and len({v for v in typed if v is not None}) > 5:
            arr = np.array([np.nan if v is None else v for v in typed], dtype=float)
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
                    **counts,
                }
            )
        else:
            values = ["" if v is None else _fmt_level(v) for v in typed]
            cats = sorted({v for v in values if v != ""})
            if len(cats) < 2 or len(cats) > 10:
                continue
            ct = np.array([[sum(1 for v, y in zip(values, labels) if v == c and y == k) for k in (0, 1)] for c in cats])
            p, test = _categorical_test(ct)
            nl, nh = max(counts["n_low"], 1), max(counts["n_high"], 1)
            levels = [
                {
                    "level": c,
                    "low": f"{ct[i, 0]} ({100 * ct[i, 0] / nl:.1f}%)",
                    "high": f"{ct[i, 1]} ({100 * ct[i, 1] / nh:.1f}%)",
                }
                for i, c in enumerate(cats)
            ]
            rows.append(
                {"variable": col, "type": "categorical", "levels": levels, "test": test, "p": float(p), **counts}
            )
    return {
        "n_low": n_low,
        "n_high": n_high,
        "normality_test": "Kolmogorov-Smirnov (Lilliefors)" if normality == "ks" else "Shapiro-Wilk",
        "rows": rows,
        "cell_problems": problems,
    }


def _fmt_level(v: float | str) -> str:
    """A level as shown: numbers of a few-valued column without a trailing .0."""
    return f"{v:g}" if isinstance(v, float) else v


def _n_cell(r: dict) -> str:
    """'58/60' (patients with a value of each grade) and the missing ones."""
    miss = r.get("missing_low", 0) + r.get("missing_high", 0)
    text = f"{r['n_low']} / {r['n_high']}"
    return text + (f" ({r['missing_low']} / {r['missing_high']} missing)" if miss else "")


def table_markdown(t: dict) -> str:
    lines = [
        f"| Variable | n low / high | Low grade (n={t['n_low']}) | High grade (n={t['n_high']}) | Test | P |",
        "|---|---|---|---|---|---|",
    ]
    for r in t["rows"]:
        if r["type"] == "continuous":
            lines.append(
                f"| {r['variable']} | {_n_cell(r)} | {r['low']} | {r['high']} | {r['test']} | {format_p(r['p'])} |"
            )
        else:
            lines.append(f"| {r['variable']} | {_n_cell(r)} |  |  | {r['test']} | {format_p(r['p'])} |")
            for lv in r["levels"]:
                lines.append(f"| \u00a0\u00a0{lv['level']} |  | {lv['low']} | {lv['high']} |  |  |")
    lines.append("")
    lines.append(
        f"Continuous variables: mean ± SD (t-test) when {t['normality_test']} found both groups normal "
        "(P > 0.05), else median (IQR) and Mann-Whitney U. Categorical: n (%) of the patients with a value, "
        "Pearson's chi-square; Fisher's exact test for 2 x 2 tables with an expected count < 5; "
        f"Fisher-Freeman-Halton by Monte Carlo ({FFH_RESAMPLES} seeded tables) for larger tables with an "
        "expected count < 1 or more than 20% below 5. Missing values are excluded per variable and counted."
    )
    if t.get("cell_problems"):
        lines.append("")
        lines.append(f"Cells counted as missing because they do not fit their column ({len(t['cell_problems'])}):")
        lines += [f"- {p}" for p in t["cell_problems"]]
    return "\n".join(lines)


def clinical_command(cohort: str, out: str | None = None, normality: str = CLINICAL_NORMALITY) -> str:
    p = Path(cohort)
    path = p if p.is_file() else p / "clinical.csv"
    if not path.is_file():
        raise CcrccError(f"{cohort}: no clinical.csv")
    if out:
        refuse_overwriting_inputs(
            [("--out", Path(out) / "clinical_table.json"), ("--out", Path(out) / "clinical_table.md")], [path]
        )
    t = clinical_table(path, normality)
    md = table_markdown(t)
    if out:
        atomic_write_json(Path(out) / "clinical_table.json", t)
        atomic_write_text(Path(out) / "clinical_table.md", md + "\n")
    return md
