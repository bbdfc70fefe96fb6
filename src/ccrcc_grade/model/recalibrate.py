"""``recalibrate RUN --cohort LOCAL --out NEWRUN``: update a model's calibration for a new site.

Between hospitals a model's discrimination often holds while its calibration drifts (other
prevalence, scanners, protocols). The updating ladder of Steyerberg (Clinical Prediction Models,
ch. 20) and Vergouwe et al.'s closed testing procedure (Stat Med 2017;36:4529) choose how much to
change on the local patients:

    keep          z' = z
    intercept     z' = a + z                       (recalibration in the large)
    logistic      z' = a + b z                     (logistic recalibration)
    refit         z' = a + b z + sum_j c_j u_j     (the last layer re-estimated along the k main
                                                    directions u_j of its input, k <= 3)

where z is the network's logit of high grade on a slice (the final layer's output difference) and
a patient's probability is the model's own aggregate of its slices' expit(z'). Every update is a
maximum-likelihood fit on the patients (scipy's BFGS on the patient-level log-likelihood, so the
aggregation is inside the fit); the closed test: refit vs keep (df k + 2) - not significant: keep;
refit vs intercept (df k + 1) - not significant: intercept; refit vs logistic (df k) - not
significant: logistic; else refit. The chosen update is folded into the final linear layer, so
NEWRUN/best.pt is an ordinary checkpoint that `predict`, `evaluate`, `export` and `serve` load and
that exports to ONNX unchanged; RUN is never written. Below Riley et al.'s minimum sample size for
estimating the update (shrinkage and optimism criteria, ``stats.samplesize``) it refuses.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from scipy import optimize, stats
from scipy.special import expit

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_torch_save, atomic_write_json
from ccrcc_grade.core.paths import RunDir
from ccrcc_grade.ingest.cache import CropCache
from ccrcc_grade.model.data import to_model_input
from ccrcc_grade.model.evaluate import external_cache, run_checkpoint
from ccrcc_grade.model.inference import make_checkpoint, read_checkpoint
from ccrcc_grade.model.registry import create_model
from ccrcc_grade.stats.calibration import calibration_with_ci
from ccrcc_grade.stats.metrics import auc_with_ci
from ccrcc_grade.stats.samplesize import development

METHODS = ("keep", "intercept", "logistic", "refit")
MAX_DIRECTIONS = 3
SEPARATED = 1e-3  # every patient's fitted probability this close to its grade: separation
MAX_COEFFICIENT = 50.0  # |a|, |b| or |c_j| beyond this: the fit ran off to infinity (separation)
RECALIBRATION = "recalibration.json"


@torch.no_grad()
def slice_features(model: torch.nn.Module, crops: np.ndarray, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """(z, h): each crop's logit of high grade and the final layer's input (fp32 on the CPU)."""
    pre = meta["preprocess"]
    model.eval()
    zs, hs = [], []
    for i in range(0, len(crops), 64):
        x = to_model_input(
            torch.from_numpy(np.ascontiguousarray(crops[i : i + 64])), pre["image_size"], pre["normalize"]
        )
        h = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model.get_classifier()(h)
        zs.append((logits[:, 1] - logits[:, 0]).numpy())
        hs.append(h.numpy())
    return np.concatenate(zs).astype(np.float64), np.concatenate(hs).astype(np.float64)


def _aggregate(values: np.ndarray, groups: list[np.ndarray], how: str) -> np.ndarray:
    f = {"mean": np.mean, "median": np.median, "max": np.max}[how]
    return np.array([f(values[g]) for g in groups])


class Fit:
    """One update's maximum-likelihood fit through the patient aggregation."""

    def __init__(self, method: str, z: np.ndarray, u: np.ndarray, groups: list[np.ndarray], y: np.ndarray, how: str):
        self.method, self.z, self.u, self.groups, self.y, self.how = method, z, u, groups, y, how
        k = {"keep": 0, "intercept": 1, "logistic": 2, "refit": 2 + u.shape[1]}[method]
        self.params = np.zeros(k)
        self.reason = ""
        if method in ("logistic", "refit"):
            self.params[1] = 1.0
        if k:
            res = optimize.minimize(lambda t: -self.loglik(t), self.params, method="BFGS")
            fitted = self.patient_p(res.x) if np.all(np.isfinite(res.x)) else None
            if (
                fitted is None
                or np.max(np.abs(res.x)) > MAX_COEFFICIENT
                or np.all(np.abs(fitted - y) < SEPARATED)  # a perfect fit: the estimate runs off to infinity
            ):
                # no finite maximum-likelihood estimate: the model separates these patients' grades
                # (or nearly); such an update would turn the model into a step function
                self.reason = (
                    f"no finite estimate (coefficients beyond {MAX_COEFFICIENT:g}: the model separates the grades "
                    "of these patients, or nearly)"
                )
            else:
                self.params = res.x
        self.ll = self.loglik(self.params)

    @property
    def estimable(self) -> bool:
        return not self.reason

    def slice_logit(self, t: np.ndarray) -> np.ndarray:
        if self.method == "keep":
            return self.z
        if self.method == "intercept":
            return t[0] + self.z
        out = t[0] + t[1] * self.z
        if self.method == "refit":
            out = out + self.u @ t[2:]
        return out

    def patient_p(self, t: np.ndarray | None = None) -> np.ndarray:
        p = _aggregate(expit(self.slice_logit(self.params if t is None else t)), self.groups, self.how)
        return np.clip(p, 1e-9, 1 - 1e-9)

    def loglik(self, t: np.ndarray) -> float:
        p = self.patient_p(t)
        return float(np.sum(self.y * np.log(p) + (1 - self.y) * np.log(1 - p)))


def closed_test(fits: dict[str, Fit], alpha: float) -> tuple[str, list[dict]]:
    """Vergouwe et al.'s closed testing: the most extensive (estimable) update against each
    simpler one, simplest first; the first simpler one it does not beat significantly is chosen."""
    order = [m for m in METHODS if fits[m].estimable]
    full_name = order[-1]
    full = fits[full_name]
    steps = [{"test": m, "not_estimable": fits[m].reason} for m in METHODS if not fits[m].estimable]
    for simpler in order[:-1]:
        df = len(full.params) - len(fits[simpler].params)
        lr = max(0.0, 2 * (full.ll - fits[simpler].ll))
        p = float(stats.chi2.sf(lr, df))
        steps.append({"test": f"{full_name} vs {simpler}", "lr": lr, "df": df, "p": p, "significant": p < alpha})
        if p >= alpha:
            return simpler, steps
    return full_name, steps


def minimum_patients(y: np.ndarray, p: np.ndarray, parameters: int = 2) -> dict:
    """Riley's shrinkage and optimism criteria for estimating ``parameters`` update parameters
    (logistic recalibration: 2) at the local prevalence and the model's local AUC."""
    prevalence = float(np.mean(y))
    auc = auc_with_ci(y, p)["value"]
    if not 0 < prevalence < 1:
        raise CcrccError(f"the local cohort holds one grade only ({len(y)} patients); recalibration needs both")
    auc = min(max(auc or 0.5, 0.55), 0.99)  # an AUC <= 0.55 anticipates no signal: the largest minimum
    d = development(prevalence, auc, parameters)
    return {
        "n": max(d["criteria"]["shrinkage"], d["criteria"]["optimism"]),
        "criteria": d["criteria"],
        "anticipated_r2cs": d["r2cs"],
        "prevalence": prevalence,
        "auc": auc,
        "reference": "Riley et al., BMJ 2020;368:m441, criteria (i) and (ii) for 2 parameters",
    }


def _fold(state: dict, fit: Fit, pca: tuple[np.ndarray, np.ndarray, np.ndarray] | None, clf_key: str) -> dict:
    """The update as the final linear layer's new weights: z' = w'.h + b' (class 0 row zero)."""
    w, b = state[f"{clf_key}.weight"].double().numpy(), state[f"{clf_key}.bias"].double().numpy()
    wd, bd = w[1] - w[0], b[1] - b[0]
    t = fit.params
    if fit.method == "keep":
        nw, nb = wd, bd
    elif fit.method == "intercept":
        nw, nb = wd, t[0] + bd
    else:
        nw, nb = t[1] * wd, t[0] + t[1] * bd
        if fit.method == "refit" and pca is not None:
            mean, comps, sd = pca
            dirs = comps / sd[:, None]  # u_j = comps_j . (h - mean) / sd_j
            nw = nw + t[2:] @ dirs
            nb = nb - float(t[2:] @ dirs @ mean)
    new = dict(state)
    new[f"{clf_key}.weight"] = torch.from_numpy(np.stack([np.zeros_like(nw), nw])).to(state[f"{clf_key}.weight"].dtype)
    new[f"{clf_key}.bias"] = torch.tensor([0.0, nb], dtype=state[f"{clf_key}.bias"].dtype)
    return new


def _summary(y: np.ndarray, p: np.ndarray) -> dict:
    return {"auc": auc_with_ci(y, p), **calibration_with_ci(y, p)}


def recalibrate(
    run: Path | str,
    cohort: Path | str,
    out: Path | str,
    method: str = "auto",
    alpha: float = 0.05,
) -> dict:
    """Fit the updates on the local cohort, choose one (closed test or ``method``), write NEWRUN
    (the network runs in fp32 on the CPU here: a few hundred patients' crops, once)."""
    run, out = Path(run), Path(out)
    if method not in ("auto", *METHODS):
        raise CcrccError(f"--method must be auto or one of {', '.join(METHODS)}, got {method!r}")
    if not (0 < alpha < 1):
        raise CcrccError(f"--alpha must be between 0 and 1, got {alpha}")
    ckpt_path = run_checkpoint(run)
    if out.exists() and any(out.iterdir()):
        raise CcrccError(f"{out}: output folder exists and is not empty (give a new folder; nothing was replaced)")
    src, dst = ckpt_path.parent.resolve(), out.resolve()
    if dst == src or dst.is_relative_to(src):
        raise CcrccError(f"{out}: inside the original run {run}; the original is never modified, give another folder")
    ckpt = read_checkpoint(ckpt_path)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _recalibrate(run, ckpt, Path(cohort), out, method, alpha)
    except BaseException:  # nothing half-written is left: only what this command made goes
        if created:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for child in out.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        raise


def _recalibrate(run: Path, ckpt: dict, cohort: Path, out: Path, method: str, alpha: float) -> dict:
    cache: CropCache = external_cache(cohort, ckpt, out)
    rows = cache.select(ckpt["phase"])
    if not rows:
        raise CcrccError(f"{cohort}: no {ckpt['phase']} crops to recalibrate on")
    pre = {k: v for k, v in ckpt["preprocess"].items() if k not in ("image_size", "normalize")}
    from ccrcc_grade.core.config import to_dict

    differ = {k: (v, pre.get(k)) for k, v in to_dict(cache.preprocess).items() if k in pre and pre[k] != v}
    if differ:
        raise CcrccError(f"{cohort}: ingested with other preprocessing than the model ({differ}); give the raw cohort")
    model, _ = create_model(ckpt["model"], "none")
    model.load_state_dict(ckpt["state_dict"])
    z, h = slice_features(model, np.asarray(cache.crops[[r["index"] for r in rows]]), ckpt)
    patients = sorted({r["patient_id"] for r in rows})
    index = {p: i for i, p in enumerate(patients)}
    groups = [[] for _ in patients]
    for i, r in enumerate(rows):
        groups[index[r["patient_id"]]].append(i)
    groups = [np.array(g) for g in groups]
    labels = cache.patient_labels()
    y = np.array([labels[p] for p in patients], dtype=float)
    how = ckpt["config"].get("patient_aggregate", "mean")
    keep = Fit("keep", z, np.zeros((len(z), 0)), groups, y, how)
    p0 = keep.patient_p()
    need = minimum_patients(y, p0)
    if len(patients) < need["n"]:
        raise CcrccError(
            f"{cohort}: {len(patients)} patients; recalibrating needs >= {need['n']} (Riley et al.'s minimum "
            f"for 2 parameters at prevalence {need['prevalence']:.2f} and AUC {need['auc']:.2f}); nothing was written"
        )
    n_events = int(min(y.sum(), len(y) - y.sum()))
    k = int(min(MAX_DIRECTIONS, max(1, n_events // 10)))
    mean = h.mean(0)
    _, sv, vt = np.linalg.svd(h - mean, full_matrices=False)
    comps = vt[:k]
    scores = (h - mean) @ comps.T
    sd = scores.std(0) + 1e-12
    u = scores / sd
    fits = {"keep": keep}
    for m in METHODS[1:]:
        fits[m] = Fit(m, z, u, groups, y, how)
    chosen, steps = closed_test(fits, alpha) if method == "auto" else (method, [])
    fit = fits[chosen]
    if not fit.estimable:
        raise CcrccError(f"--method {chosen}: {fit.reason}; nothing was written")
    clf_key = next(name for name, mod in model.named_modules() if mod is model.get_classifier())
    state = _fold({k2: v for k2, v in ckpt["state_dict"].items()}, fit, (mean, comps, sd), clf_key)
    p1 = fit.patient_p()
    site = cache.work.name if Path(cohort).resolve() == cache.work.resolve() else Path(cohort).name
    record = {
        "original_run": str(run.resolve()),
        "original_weights_sha256": ckpt.get("weights_sha256"),
        "site": site,
        "cohort": str(Path(cohort).resolve()),
        "patients": len(patients),
        "high_grade_patients": int(y.sum()),
        "method": chosen,
        "chosen_by": "closed test (Vergouwe et al. 2017)" if method == "auto" else "--method",
        "alpha": alpha,
        "tests": steps,
        "parameters": {m: [float(v) for v in f.params] if f.estimable else f.reason for m, f in fits.items()},
        "loglik": {m: f.ll for m, f in fits.items()},
        "refit_directions": k,
        "minimum_patients": need,
        "before": _summary(y, p0),
        "after": _summary(y, p1),
        "after_note": "apparent: measured on the patients the update was fitted on (optimistic)",
    }
    meta = {
        key: v for key, v in ckpt.items() if key not in ("state_dict", "weights_sha256", "format", "format_version")
    }
    meta["recalibration"] = {key: record[key] for key in ("site", "patients", "method", "original_weights_sha256")}
    atomic_torch_save(make_checkpoint(_with_state(model, state), meta), RunDir(out).best)
    if RunDir(run).config.is_file():
        shutil.copyfile(RunDir(run).config, RunDir(out).config)
    atomic_write_json(out / RECALIBRATION, record)
    return record


def _with_state(model: torch.nn.Module, state: dict) -> torch.nn.Module:
    model.load_state_dict(state)
    return model


def _fmt(e: dict) -> str:
    if e.get("value") is None:
        return f"not estimable ({e.get('reason', '')})"
    ci = e.get("ci95")
    return f"{e['value']:.3f}" + (f" ({ci[0]:.3f} to {ci[1]:.3f})" if ci else "")


def recalibrate_command(run: str, cohort: str, out: str, method: str = "auto", alpha: float = 0.05) -> str:
    r = recalibrate(run, cohort, out, method, alpha)
    lines = [f"recalibrated model: {out} ({r['method']}, chosen by {r['chosen_by']})"]
    lines.append(f"  site {r['site']}: {r['patients']} patients ({r['high_grade_patients']} high grade)")
    for t in r["tests"]:
        if "not_estimable" in t:
            lines.append(f"  {t['test']}: {t['not_estimable']}")
        else:
            lines.append(f"  {t['test']}: LR {t['lr']:.2f}, df {t['df']}, P {t['p']:.3g}")
    for name in ("calibration_intercept", "calibration_slope", "o_e"):
        lines.append(f"  {name}: before {_fmt(r['before'][name])}, after {_fmt(r['after'][name])}")
    lines.append(f"  ECE: before {r['before']['ece']:.3f}, after {r['after']['ece']:.3f} (after: apparent)")
    return "\n".join(lines)
