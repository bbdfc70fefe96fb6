"""Bootstrap resampling with the patient as the unit: slices of one patient move together, and
patients are drawn within their grade, so every resample holds both grades in their numbers
(pROC's stratified bootstrap, with patients instead of cases)."""

from __future__ import annotations

import numpy as np


def cluster_index(clusters: list[str] | np.ndarray) -> tuple[np.ndarray, int]:
    """(index of each unit's cluster 0..I-1, I)."""
    _, inv = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    return inv.ravel(), int(inv.max()) + 1 if len(inv) else 0


def strata_members(y: np.ndarray, clusters: list[str] | np.ndarray) -> list[list[np.ndarray]]:
    """The units of each patient, grouped into strata by the patient's grade (high, low, mixed)."""
    inv, n_clusters = cluster_index(clusters)
    y = np.asarray(y).astype(int)
    order = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[order], np.arange(n_clusters + 1))
    members = [order[bounds[i] : bounds[i + 1]] for i in range(n_clusters)]
    strata: dict[str, list[np.ndarray]] = {"high": [], "low": [], "mixed": []}
    for m in members:
        ys = set(y[m].tolist())
        strata["high" if ys == {1} else "low" if ys == {0} else "mixed"].append(m)
    return [v for v in strata.values() if v]


def stratified_cluster_resample(strata: list[list[np.ndarray]], rng: np.random.Generator) -> np.ndarray:
    """One bootstrap resample: within each stratum, patients drawn with replacement, each with all
    its units."""
    parts = []
    for members in strata:
        pick = rng.integers(0, len(members), len(members))
        parts.extend(members[j] for j in pick)
    return np.concatenate(parts)


def patients_per_grade(y: np.ndarray, clusters: list[str] | np.ndarray) -> tuple[int, int]:
    """Patients with at least one high-grade unit, patients with at least one low-grade unit."""
    inv, n_clusters = cluster_index(clusters)
    y = np.asarray(y).astype(int)
    return (
        int(np.sum(np.bincount(inv[y == 1], minlength=n_clusters) > 0)),
        int(np.sum(np.bincount(inv[y == 0], minlength=n_clusters) > 0)),
    )
