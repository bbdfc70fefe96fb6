"""Figures of the study: ROC curves for both classes (Figures 3-4), confusion matrix (Figure 2),
calibration curve, all written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from .fileio import atomic_save_figure  # noqa: E402


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, dict]], path: Path, title: str) -> None:
    """One panel per class (low, high); each curve is (y, p, metrics_of_that_level)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, cls in zip(axes, ("low", "high")):
        for name, (y, p, m) in curves.items():
            yy = (np.asarray(y) == (1 if cls == "high" else 0)).astype(int)
            pp = np.asarray(p) if cls == "high" else 1 - np.asarray(p)
            if len(np.unique(yy)) < 2:
                continue
            fpr, tpr, _ = roc_curve(yy, pp)
            auc = m[cls]["auc"]
            ax.plot(fpr, tpr, lw=1.8, label=f"{name}: AUC {auc['value']:.3f} ({auc['ci95'][0]:.2f}-{auc['ci95'][1]:.2f})")
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
        ax.set_xlabel("1 - specificity"), ax.set_ylabel("sensitivity")
        ax.set_title(f"ROC, {cls} grade as positive"), ax.legend(loc="lower right", fontsize=7)
        ax.set_aspect("equal")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def confusion_figure(cm: list[list[int]], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(3.6, 3.3))
    a = np.asarray(cm)
    ax.imshow(a, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(a[i, j]), ha="center", va="center",
                    color="white" if a[i, j] > a.max() / 2 else "black", fontsize=13)
    ax.set_xticks([0, 1], ["low", "high"]), ax.set_yticks([0, 1], ["low", "high"])
    ax.set_xlabel("predicted grade"), ax.set_ylabel("true grade"), ax.set_title(title, fontsize=9)
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
