"""The decision-threshold policy: how a patient probability becomes the grade a clinician reads.

A Youden cut-point fitted on a handful of validation patients lands anywhere between two
neighbouring validation probabilities (the demo's six patients gave 0.974), and the printed grade
then contradicts the probability beside it. So:

- ``default``: the study's 0.5 on the probability. Always available; the default everywhere.
- ``youden`` (max sensitivity + specificity - 1), ``sensNN`` / ``specNN`` (the highest threshold
  reaching NN% sensitivity, the lowest reaching NN% specificity): fitted on **validation
  patients only**, and only when validation holds at least ``MIN_PER_CLASS`` patients of each
  grade. Below that the cut-point's bootstrap interval spans most of [0, 1] (one patient moves
  sensitivity or specificity by >= 10 points), so the policy is refused, not silently fitted.
  A percentile bootstrap over validation patients gives the threshold's 95% CI.
- a number in (0, 1): a fixed threshold chosen by the user.

``decide`` turns a probability into "high", "low" or "uncertain" (the probability lies inside
the threshold's CI) and the one sentence that explains it, used by predict, evaluate, the report
and the SR, so no output can contradict itself.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import numpy as np

from ccrcc_grade.core.errors import CcrccError, check_number

DEFAULT_THRESHOLD = 0.5
MIN_PER_CLASS = 10  # validation patients of each grade needed to fit a cut-point
FITTED_METHODS = ("youden", "sens90", "spec90")  # the operating points evaluate reports
_TARGET = re.compile(r"^(sens|spec)(\d{2})$")


@dataclass(frozen=True)
class ThresholdPolicy:
    """A threshold and where it came from (stored in every checkpoint and ONNX file)."""

    method: str  # default | fixed | youden | sensNN | specNN
    threshold: float
    source: str  # one human sentence: how it was chosen
    ci95: tuple[float, float] | None = None  # bootstrap CI over validation patients (fitted only)
    n_low: int = 0  # validation patients used (fitted only)
    n_high: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ci95"] = list(self.ci95) if self.ci95 is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ThresholdPolicy:
        t = check_probability(d.get("threshold"), "threshold")
        ci = d.get("ci95")
        if ci is not None:
            ci = (check_probability(ci[0], "threshold CI"), check_probability(ci[1], "threshold CI"))
        return cls(
            str(d.get("method", "fixed")),
            t,
            str(d.get("source", "")),
            ci,
            int(d.get("n_low", 0)),
            int(d.get("n_high", 0)),
        )

    @property
    def label(self) -> str:
        """Short label used after the threshold, e.g. 'study default'."""
        return "study default" if self.method == "default" else self.source


DEFAULT_POLICY = ThresholdPolicy("default", DEFAULT_THRESHOLD, "study default")


def check_probability(v: object, what: str) -> float:
    """A finite number in [0, 1] (``errors.check_number``), or one line naming ``what`` and the range."""
    try:
        return check_number(v, what, 0.0, 1.0)
    except CcrccError:
        raise CcrccError(f"{what} must be a number in [0, 1], got {v!r}") from None


def parse_spec(spec: str | float) -> str | float:
    """'default' | 'youden' | 'sensNN' | 'specNN' (NN 50-99) | a number in (0, 1)."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        f = float(spec)
    else:
        s = str(spec).strip().lower()
        if s in ("default", "youden"):
            return s
        m = _TARGET.match(s)
        if m:
            if not 50 <= int(m.group(2)) <= 99:
                raise CcrccError(f"threshold {spec!r}: the target must be 50-99%")
            return s
        try:
            f = float(s)
        except ValueError:
            raise CcrccError(
                f"threshold must be default, youden, sensNN, specNN (e.g. sens90) or a number in (0, 1), got {spec!r}"
            ) from None
    if not math.isfinite(f) or not 0.0 < f < 1.0:
        raise CcrccError(f"a fixed threshold must lie strictly between 0 and 1, got {spec!r}")
    return f


def cut_point(method: str, y: np.ndarray, p: np.ndarray) -> float | None:
    """The cut-point of a fitted method on labels ``y`` and probabilities ``p`` (both classes
    present), for the rule "high when P(high) >= threshold"; None when a target cannot be met.

    Exact search: every observed probability is a candidate (plus one above the largest when it is
    below 1, i.e. nobody called high), and the achieved sensitivity and specificity are counted
    under the rule itself, so ties (e.g. several probabilities of exactly 1.0 after rounding) can
    never give a threshold that misses its target."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    cand = np.unique(p)
    if cand[-1] < 1.0:
        cand = np.append(cand, (cand[-1] + 1.0) / 2)
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    sens = 1.0 - np.searchsorted(pos, cand, side="left") / len(pos)  # share of cases with p >= t
    spec = np.searchsorted(neg, cand, side="left") / len(neg)  # share of controls with p < t
    if method == "youden":
        j = sens + spec - 1
        return float(cand[np.nonzero(j >= j.max() - 1e-12)[0][-1]])  # the highest of the best
    kind, pct = method[:4], int(method[4:]) / 100
    ok = np.nonzero((sens if kind == "sens" else spec) >= pct - 1e-12)[0]
    if not len(ok):
        return None
    # sensNN: the highest threshold still reaching the sensitivity; specNN: the lowest reaching it
    return float(cand[ok[-1]] if kind == "sens" else cand[ok[0]])


def class_counts(y: np.ndarray | list[int]) -> tuple[int, int]:
    y = np.asarray(y).astype(int)
    return int(np.sum(y == 0)), int(np.sum(y == 1))


def estimability(n_low: int, n_high: int) -> str | None:
    """None when a fitted cut-point may be estimated from these validation counts, else why not."""
    if n_low < MIN_PER_CLASS or n_high < MIN_PER_CLASS:
        return (
            f"validation holds {n_low} low- and {n_high} high-grade patients; a fitted threshold needs "
            f">= {MIN_PER_CLASS} of each"
        )
    return None


def fit_policy(
    spec: str | float,
    y_val: np.ndarray | None = None,
    p_val: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> ThresholdPolicy:
    """The policy for ``spec`` on validation patients (labels, patient probabilities).

    Fitted methods are refused (``CcrccError``) when validation has too few patients of a grade."""
    spec = parse_spec(spec)
    if spec == "default":
        return DEFAULT_POLICY
    if isinstance(spec, float):
        return ThresholdPolicy("fixed", spec, f"fixed at {spec:g} by the user")
    y = np.asarray(y_val if y_val is not None else [], dtype=int)
    p = np.asarray(p_val if p_val is not None else [], dtype=float)
    n_low, n_high = class_counts(y)
    why = estimability(n_low, n_high)
    if why:
        raise CcrccError(f"threshold {spec!r} refused: {why} (use the study default 0.5 or a fixed number)")
    if not np.all(np.isfinite(p)):
        raise CcrccError("validation probabilities contain NaN or infinity")
    t = cut_point(spec, y, p)
    if t is None:
        at_one = int(np.sum((y == 0) & (p >= 1.0)))
        raise CcrccError(
            f"threshold {spec!r} refused: no threshold <= 1 reaches the target on validation patients "
            f"({at_one} low-grade patients have P(high) = 1.0; use the study default 0.5 or a fixed number)"
        )
    rng = np.random.default_rng(seed)
    lo_idx, hi_idx = np.nonzero(y == 0)[0], np.nonzero(y == 1)[0]
    boots = []
    for _ in range(n_boot):  # stratified: every resample keeps both grades in their numbers
        idx = np.concatenate([rng.choice(lo_idx, len(lo_idx)), rng.choice(hi_idx, len(hi_idx))])
        b = cut_point(spec, y[idx], p[idx])
        if b is not None:  # a resample where the target cannot be met is counted, not guessed
            boots.append(b)
    ci = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)))
    name = {"youden": "Youden J"}.get(
        spec, f"{spec[4:]}% {'sensitivity' if spec.startswith('sens') else 'specificity'}"
    )
    source = f"{name} on {n_low + n_high} validation patients"
    if len(boots) < n_boot:
        source += f" (CI from {len(boots)} of {n_boot} resamples; the others cannot reach the target)"
    return ThresholdPolicy(spec, t, source, ci, n_low, n_high)


def policy_of(meta: dict) -> tuple[ThresholdPolicy, str | None]:
    """The policy stored in a checkpoint / ONNX metadata, and a warning for older model files
    whose threshold was fitted without this policy (they get the study default)."""
    d = meta.get("threshold_policy")
    if d:
        return ThresholdPolicy.from_dict(d), None
    old = meta.get("threshold")
    if old is None or float(old) == DEFAULT_THRESHOLD:
        return DEFAULT_POLICY, None
    return DEFAULT_POLICY, (
        f"this model file stores a threshold of {float(old):.3f} fitted without a minimum "
        f"number of validation patients (older version); the study default 0.5 is used"
    )


@dataclass(frozen=True)
class Decision:
    grade: str  # high | low | uncertain
    text: str  # "P(high) = 0.83 >= 0.50 (study default) -> HIGH"


def decision_digits(p: float, t: float) -> int:
    """Decimals (at least 2) that print ``p`` and the threshold ``t`` so they show the comparison
    that was made: 0.5049 against 0.5 reads 0.505, never 0.50."""
    digits = 2
    while digits < 15 and (round(p, digits) == round(t, digits)) != (p == t):
        digits += 1
    return digits


def decide(prob: float, policy: ThresholdPolicy) -> Decision:
    """The grade for one patient probability, in words that cannot contradict the numbers."""
    p, t = float(prob), policy.threshold
    if policy.ci95 is not None and policy.ci95[0] <= p <= policy.ci95[1]:
        lo, hi = policy.ci95
        return Decision(
            "uncertain",
            f"P(high) = {p:.2f} lies inside the threshold's 95% CI {lo:.2f}-{hi:.2f} "
            f"({policy.label}, threshold {t:.2f}) -> UNCERTAIN",
        )
    grade = "high" if p >= t else "low"
    rel = ">=" if grade == "high" else "<"
    digits = decision_digits(p, t)
    return Decision(grade, f"P(high) = {p:.{digits}f} {rel} {t:.{digits}f} ({policy.label}) -> {grade.upper()}")
