"""Figures of the study: ROC curves (Figures 3-4), confusion matrix (Figure 2),
calibration curve, all written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from ccrcc_grade.core.fileio import atomic_save_figure  # noqa: E402
from ccrcc_grade.stats.metrics import metric

ROC_OFFSET_NOTE = (
    "curve k is drawn shifted by 0.008k right and down so identical\n"
    "curves stay visible; the AUCs come from the unshifted curves"
)
STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 1)), "P")]


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, dict]], path: Path, title: str) -> None:
    """ROC curves with high grade as the positive class (for two classes the low-grade curve is
    its mirror and adds nothing). Each curve gets its own line style and marker and a small
    offset, so curves with the same ROC stay visible; the legend names every curve and says
    which ones coincide."""
    fig, ax = plt.subplots(figsize=(5.6, 5.6))
    drawn: dict[tuple, str] = {}
    for k, (name, (y, p, m)) in enumerate(curves.items()):
        y = np.asarray(y).astype(int)
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, np.asarray(p))
        key = (tuple(np.round(fpr, 6)), tuple(np.round(tpr, 6)))
        same = drawn.get(key)
        drawn.setdefault(key, name)
        auc = metric(m, "auc")
        ci = auc["ci95"]
        ci_text = (
            "CI degenerate"
            if auc.get("degenerate")
            else f"{ci[0]:.2f}-{ci[1]:.2f}"
            if ci[0] is not None and np.isfinite(ci[0]) and np.isfinite(ci[1])
            else "no CI"
        )
        ls, marker = STYLES[k % len(STYLES)]
        off = 0.008 * k  # a few pixels apart: identical curves do not hide each other
        ax.plot(
            np.clip(fpr + off, 0, 1.02),
            np.clip(tpr - off, -0.02, 1),
            ls=ls,
            marker=marker,
            ms=4,
            lw=1.6,
            label=f"{name}: AUC {auc['value']:.3f} ({ci_text})" + (f" - same curve as {same}" if same else ""),
        )
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    if len(curves) > 1:
        ax.text(
            0.99,
            0.01,
            ROC_OFFSET_NOTE,
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=6,
            color="#444",
        )
    ax.set_xlabel("1 - specificity (high grade)"), ax.set_ylabel("sensitivity (high grade)")
    ax.set_xlim(-0.03, 1.03), ax.set_ylim(-0.03, 1.03), ax.set_aspect("equal")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=7, frameon=False)  # below: hides nothing
    ax.set_title(_wrap(title, 60), fontsize=9)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110, bbox_inches="tight")  # keeps the legend below the axes
    plt.close(fig)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def text_colour(rgba: tuple) -> str:
    """Black or white, whichever reads on a cell of this colour (WCAG relative luminance)."""

    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    lum = 0.2126 * lin(rgba[0]) + 0.7152 * lin(rgba[1]) + 0.0722 * lin(rgba[2])
    return "black" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "white"


def confusion_figure(cm: list[list[int]], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(3.6, 3.3))
    a = np.asarray(cm)
    cmap = plt.get_cmap("Blues")
    top = max(int(a.max()), 1)
    ax.imshow(a, cmap=cmap, vmin=0, vmax=top)  # from zero: equal counts look equal across figures
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(a[i, j]), ha="center", va="center", color=text_colour(cmap(a[i, j] / top)), fontsize=13)
    ax.set_xticks([0, 1], ["low", "high"]), ax.set_yticks([0, 1], ["low", "high"])
    ax.set_xlabel("predicted grade"), ax.set_ylabel("true grade"), ax.set_title(_wrap(title, 38), fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def calibration_figure(curves: dict[str, tuple[list, list]], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(4, 3.8))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfect")
    for name, (mean_pred, frac) in curves.items():
        ax.plot(mean_pred, frac, marker="o", lw=1.5, label=name)
    ax.set_xlabel("predicted probability of high grade"), ax.set_ylabel("observed fraction high grade")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1), ax.legend(fontsize=7), ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def decision_curve_figure(
    panels: dict[str, dict[str, np.ndarray]], thresholds: np.ndarray, treat_all: np.ndarray, path: Path, title: str
) -> None:
    """Net benefit over threshold probabilities against treat-all and treat-none; one panel per
    group of models (``panels``: title -> {model: net benefit}), so a dozen curves stay legible."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.6), squeeze=False, sharey=True)
    allv = [float(np.nanmax(v)) for curves in panels.values() for v in curves.values()]
    top = max(allv + [float(np.max(treat_all)), 0.05])
    for ax, (ptitle, curves) in zip(axes[0], panels.items()):
        ax.plot(thresholds, treat_all, c="grey", lw=1.2, label="treat all as high grade")
        ax.axhline(0, c="black", lw=1.0, label="treat none")
        for k, (name, nb) in enumerate(curves.items()):
            ls, _ = STYLES[k % len(STYLES)]
            ax.plot(thresholds, nb, ls=ls, lw=1.6, label=name, color=plt.cm.tab10(k % 10))
        ax.set_ylim(-0.05, top * 1.1 + 0.01), ax.set_xlim(thresholds[0], thresholds[-1])
        ax.set_xlabel("threshold probability of high grade"), ax.set_title(ptitle, fontsize=9)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=7, frameon=False, ncol=2)
    axes[0][0].set_ylabel("net benefit")
    fig.suptitle(_wrap(title, 90), fontsize=9)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def reliability_figure(panels: dict[str, tuple[np.ndarray, np.ndarray, str]], path: Path, bins: int = 5) -> None:
    """One small reliability diagram per model: observed fraction of high grade per bin of
    predicted probability (marker area ~ patients in the bin), the diagonal, and the model's
    calibration numbers (``text``) in the corner."""
    n = len(panels)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax, (name, (y, p, text)) in zip(axes.flat, panels.items()):
        y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
        which = np.minimum((p * bins).astype(int), bins - 1)
        xs, ys, ns = [], [], []
        for b in range(bins):
            sel = which == b
            if sel.any():
                xs.append(p[sel].mean()), ys.append(y[sel].mean()), ns.append(int(sel.sum()))
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
        ax.plot(xs, ys, c="tab:blue", lw=1.2)
        ax.scatter(xs, ys, s=[12 + 10 * k for k in ns], c="tab:blue", zorder=3)
        ax.plot(p, np.where(y == 1, 1.02, -0.02), "|", c="k", ms=5, alpha=0.5)  # the patients themselves
        ax.set_xlim(-0.03, 1.03), ax.set_ylim(-0.05, 1.05), ax.set_aspect("equal")
        ax.set_title(_wrap(name, 28), fontsize=8)
        ax.text(0.03, 0.97, text, transform=ax.transAxes, fontsize=6, va="top")
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.supxlabel("predicted probability of high grade", fontsize=8)
    fig.supylabel("observed fraction high grade", fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def nomogram_figure(
    names: list[str],
    ranges: list[tuple[float, float]],
    points_per_unit: list[float],
    intercept: float,
    path: Path,
    title: str,
) -> None:
    """A points nomogram of a logistic model: each predictor's range on a 0-100 points scale
    (the predictor with the widest effect gets 100), total points, and P(high) against total."""
    spans = [abs(k) * (hi - lo) for k, (lo, hi) in zip(points_per_unit, ranges)]
    scale = 100 / max(max(spans), 1e-12)
    fig, ax = plt.subplots(figsize=(8.5, 0.75 * (len(names) + 3)))
    ax.axis("off")
    rows = len(names) + 2
    ax.set_xlim(-42, 106), ax.set_ylim(-0.8, rows)
    y = rows - 0.5
    ax.plot([0, 100], [y, y], c="k", lw=0.8)
    for t in range(0, 101, 10):
        ax.plot([t, t], [y, y + 0.12], c="k", lw=0.8), ax.text(t, y + 0.2, str(t), ha="center", fontsize=6)
    ax.text(-2, y, "points", ha="right", va="center", fontsize=8)
    total_max = 0.0
    lowest = 0.0
    for i, (name, (lo, hi), k) in enumerate(zip(names, ranges, points_per_unit)):
        y = rows - 1.5 - i
        a, b = (lo, hi) if k >= 0 else (hi, lo)
        length = abs(k) * (hi - lo) * scale
        ax.plot([0, length], [y, y], c="tab:blue", lw=1.2)
        for v in np.linspace(a, b, int(np.clip(length // 18 + 1, 2, 5))):  # labels never overlap
            x = abs(k) * abs(v - a) * scale
            ax.plot([x, x], [y, y + 0.1], c="tab:blue", lw=0.8)
            ax.text(x, y - 0.3, f"{v:.3g}", ha="center", fontsize=6)
        ax.text(-2, y, name, ha="right", va="center", fontsize=8)
        total_max += abs(k) * (hi - lo) * scale
        lowest += k * a
    y = 0.3
    ax.plot([0, 100], [y, y], c="tab:red", lw=1.2)
    for frac in np.linspace(0, 1, 6):
        total = frac * total_max
        lp = intercept + lowest + total / scale
        ax.plot([frac * 100, frac * 100], [y, y + 0.1], c="tab:red", lw=0.8)
        ax.text(frac * 100, y - 0.45, f"{total:.0f} pts\nP={1 / (1 + np.exp(-lp)):.2f}", ha="center", fontsize=6)
    ax.text(-2, y, "total points\n-> P(high)", ha="right", va="center", fontsize=8)
    ax.set_title(_wrap(title, 90), fontsize=9)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def robustness_figure(patients: list[dict], threshold: float, path: Path, title: str) -> None:
    """One row per patient: P(high) with the boxes as drawn (dot) and its range over the plausible
    boxes (bar), against the decision threshold; rows whose range crosses it are drawn in red."""
    rows = sorted(patients, key=lambda p: p["prob_high"])
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.28 * len(rows)))
    for i, p in enumerate(rows):
        crosses = p["p_min"] < threshold <= p["p_max"]
        color = "#c0392b" if crosses else "#2c3e50"
        ax.plot([p["p_min"], p["p_max"]], [i, i], color=color, lw=4, alpha=0.45, solid_capstyle="butt")
        ax.plot([p["prob_high"]], [i], "o", color=color, ms=5)
    ax.axvline(threshold, color="#7f8c8d", ls="--", lw=1)
    ax.set_yticks(range(len(rows)), [p["patient_id"] for p in rows], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"P(high grade); dashed: threshold {threshold:.2f}")
    ax.set_title(_wrap(title, 70), fontsize=9, pad=20)
    ax.plot([], [], "o", color="#2c3e50", label="boxes as drawn")
    ax.plot([], [], color="#2c3e50", lw=4, alpha=0.45, label="range over plausible boxes")
    ax.plot([], [], color="#c0392b", lw=4, alpha=0.45, label="range crosses the threshold")
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=130, bbox_inches="tight")
    plt.close(fig)
