"""Figures of the study: ROC curves (Figures 3-4), confusion matrix (Figure 2),
calibration curve, all written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from .fileio import atomic_save_figure  # noqa: E402


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
        auc = m["high"]["auc"]
        ci = auc["ci95"]
        ci_text = "CI degenerate" if auc.get("degenerate") else f"{ci[0]:.2f}-{ci[1]:.2f}"
        ls, marker = STYLES[k % len(STYLES)]
        off = 0.008 * k   # a few pixels apart: identical curves do not hide each other
        ax.plot(np.clip(fpr + off, 0, 1.02), np.clip(tpr - off, -0.02, 1), ls=ls, marker=marker, ms=4, lw=1.6,
                label=f"{name}: AUC {auc['value']:.3f} ({ci_text})" + (f" - same curve as {same}" if same else ""))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set_xlabel("1 - specificity (high grade)"), ax.set_ylabel("sensitivity (high grade)")
    ax.set_xlim(-0.03, 1.03), ax.set_ylim(-0.03, 1.03), ax.set_aspect("equal")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=7, frameon=False)   # below: hides nothing
    ax.set_title(_wrap(title, 60), fontsize=9)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110, bbox_inches="tight")   # keeps the legend below the axes
    plt.close(fig)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def confusion_figure(cm: list[list[int]], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(3.6, 3.3))
    a = np.asarray(cm)
    ax.imshow(a, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(a[i, j]), ha="center", va="center",
                    color="white" if a[i, j] > a.max() / 2 else "black", fontsize=13)
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
