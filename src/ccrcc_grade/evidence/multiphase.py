"""A multi-phase network: one shared ResNet34 trunk over the four phases' crops of a patient,
features pooled per phase and concatenated (with a phase-present indicator) before the
classifier, trained end to end - the design of multi-phase renal-mass models (e.g. the
renal-mass-ai multi-phase model) rather than the study's pooling of slices.

A training sample is a tuple of one crop per phase of one patient (a random annotated slice of
each phase, drawn anew every time, so a patient's slices are all used over an epoch); every epoch
draws as many tuples per patient as its most-sliced phase has crops, times the protocol's
augmentation repeats. Phases are dropped at random (p = 0.2, never all) so the network learns to
grade a patient with a missing phase: a missing phase's features are zeros and its indicator 0.
A patient's probability is the mean over tuples of slices at the same relative position in
every phase. The best epoch is chosen on validation patient AUC, as for the single phases.

Run folder: config.json, log.json, best.pt (weights_only checkpoint), train_summary.json,
eval-val/ and eval-test/ predictions_patient.csv.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ccrcc_grade.core.config import TrainConfig
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_torch_save, atomic_write_json
from ccrcc_grade.core.paths import RunDir
from ccrcc_grade.core.phases import PHASES
from ccrcc_grade.core.progress import progress
from ccrcc_grade.evidence.scores import ModelScores
from ccrcc_grade.ingest.cache import CropCache
from ccrcc_grade.model.data import augment, to_model_input
from ccrcc_grade.model.inference import amp_dtype, autocast, make_checkpoint, read_checkpoint, resolve_device
from ccrcc_grade.model.registry import create_model, uses_imagenet_norm
from ccrcc_grade.stats.metrics import safe_auc
from ccrcc_grade.stats.predictions import PATIENT_COLUMNS, write_csv

PHASE_DROPOUT = 0.2
NAME = "multiphase-resnet34"


@dataclass
class MultiPhaseConfig:
    work: str
    out: str
    epochs: int = 50
    lr: float = 1e-3
    momentum: float = 0.9
    batch_size: int = 32  # patient tuples per step (x the number of phases images)
    image_size: int = TrainConfig.image_size
    repeats: int = 3
    weights: str = "imagenet"
    device: str = "auto"
    amp: str = "auto"
    seed: int = 0
    progress: bool = True


class MultiPhaseNet(nn.Module):
    """Shared trunk -> per-phase features (zeros where absent) + presence flags -> linear."""

    def __init__(self, phases: tuple[str, ...] = PHASES, weights: str = "none"):
        super().__init__()
        trunk, self.load_report = create_model("resnet34", weights)
        width = trunk.fc.in_features
        trunk.fc = nn.Identity()
        self.trunk, self.phases, self.width = trunk, tuple(phases), width
        self.head = nn.Linear(width * len(phases) + len(phases), 2)

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """x: (B, P, 3, H, W) images (absent ones ignored), present: (B, P) bool."""
        b, n = present.shape
        feats = x.new_zeros((b, n, self.width), dtype=torch.float32)
        if present.any():
            feats[present] = self.trunk(x[present]).float()
        return self.head(torch.cat([feats.flatten(1), present.float()], 1))


def patient_crops(cache: CropCache, patients: list[str], phases: tuple[str, ...]) -> dict[str, dict[str, list[int]]]:
    """patient -> phase -> crop indices (manifest order); phases a patient lacks are left out."""
    out: dict[str, dict[str, list[int]]] = {p: {} for p in patients}
    for r in cache.manifest:
        if r["patient_id"] in out and r["phase"] in phases:
            out[r["patient_id"]].setdefault(r["phase"], []).append(r["index"])
    return {p: v for p, v in out.items() if v}


def aligned_tuples(crops: dict[str, list[int]], phases: tuple[str, ...]) -> list[list[int | None]]:
    """Tuples of crops at the same relative position in every phase (None: phase absent)."""
    k = max(len(v) for v in crops.values())
    return [
        [(crops[ph][round(t * (len(crops[ph]) - 1) / max(k - 1, 1))] if ph in crops else None) for ph in phases]
        for t in range(k)
    ]


def _batch(
    images: np.ndarray,
    tuples: list[list[int | None]],
    size: int,
    normalize: bool,
    device: torch.device,
    gen: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    present = torch.tensor([[i is not None for i in t] for t in tuples], dtype=torch.bool)
    idx = [i for t in tuples for i in t if i is not None]
    flat = torch.from_numpy(np.ascontiguousarray(images[idx])).to(device)
    x = to_model_input(flat, size, normalize, transform=(lambda t: augment(t, gen)) if gen is not None else None)
    full = x.new_zeros((len(tuples), len(tuples[0]), *x.shape[1:]))
    full[present.to(device)] = x
    return full, present.to(device)


@torch.no_grad()
def predict_patients(
    model: MultiPhaseNet,
    images: np.ndarray,
    crops: dict[str, dict[str, list[int]]],
    size: int,
    normalize: bool,
    device: torch.device,
    amp: torch.dtype | None,
) -> dict[str, float]:
    """P(high) per patient: the mean over its aligned tuples."""
    model.eval()
    out = {}
    for pid, c in crops.items():
        tuples = aligned_tuples(c, model.phases)
        probs = []
        for s in range(0, len(tuples), 32):
            x, present = _batch(images, tuples[s : s + 32], size, normalize, device, None)
            with autocast(device, amp):
                probs.append(torch.softmax(model(x, present).float(), 1)[:, 1].cpu().numpy())
        out[pid] = float(np.mean(np.concatenate(probs)))
    return out


def train_multiphase(cfg: MultiPhaseConfig, splits: dict) -> ModelScores:
    """Train (or reuse a finished run of) the multi-phase network; its validation and test scores."""
    run = Path(cfg.out)
    cache = CropCache.load(cfg.work)
    labels = cache.patient_labels()
    phases = tuple(cache.phases())
    if len(phases) < 2:
        raise CcrccError(f"{cfg.work}: the multi-phase network needs >= 2 phases (found {', '.join(phases)})")
    crops = {part: patient_crops(cache, list(splits.get(part, [])), phases) for part in ("train", "val", "test")}
    device = resolve_device(cfg.device)
    amp = amp_dtype(device, cfg.amp)
    normalize = uses_imagenet_norm(cfg.weights)
    images = np.asarray(cache.crops)
    if RunDir(run).is_finished():
        ck = read_checkpoint(RunDir(run).best)
        model = MultiPhaseNet(tuple(ck["phases"]))
        model.load_state_dict(ck["state_dict"])
        model.to(device)
    else:
        model = _fit(cfg, run, crops, labels, phases, images, device, amp, normalize)
    scores = {}
    for part in ("val", "test"):
        scores[part] = predict_patients(model, images, crops[part], cfg.image_size, normalize, device, amp)
        write_csv(
            RunDir(run).patient_predictions(part),
            [{"patient_id": i, "label": labels[i], "prob_high": p} for i, p in sorted(scores[part].items())],
            PATIENT_COLUMNS,
        )
    return ModelScores(
        NAME,
        "fusion",
        scores["test"],
        scores["val"],
        "shared ResNet34 trunk over the " + "/".join(phases) + " crops, features concatenated, "
        "trained end to end (phase dropout 0.2)",
    )


def _fit(
    cfg: MultiPhaseConfig,
    run: Path,
    crops: dict,
    labels: dict[str, int],
    phases: tuple[str, ...],
    images: np.ndarray,
    device: torch.device,
    amp: torch.dtype | None,
    normalize: bool,
) -> MultiPhaseNet:
    train = crops["train"]
    y_train = {p: labels[p] for p in train}
    if len(set(y_train.values())) < 2:
        raise CcrccError("multi-phase network: the training patients hold one grade only")
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RunDir(run).config, asdict(cfg))
    torch.manual_seed(cfg.seed)
    model = MultiPhaseNet(phases, cfg.weights).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    counts = np.bincount(list(y_train.values()), minlength=2).astype(float)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(counts.sum() / (2 * counts), dtype=torch.float32, device=device))
    pids = sorted(train)
    best, best_state, log = (-math.inf, -math.inf), None, []
    print(
        f"training {NAME}: {len(pids)} train patients, {len(crops['val'])} val patients, phases "
        f"{'/'.join(phases)}; device {device}, amp {amp}",
        flush=True,
    )
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, epoch])
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        samples = [pid for pid in pids for _ in range(max(len(v) for v in train[pid].values()) * cfg.repeats)]
        rng.shuffle(samples)
        model.train()
        tot, n_seen = 0.0, 0
        steps = range(0, len(samples) - (len(samples) % cfg.batch_size == 1), cfg.batch_size)
        for s in progress(
            steps, desc=f"{NAME} epoch {epoch}/{cfg.epochs}", unit="batch", enable=cfg.progress, leave=False
        ):
            batch = samples[s : s + cfg.batch_size]
            tuples = []
            for pid in batch:
                c = train[pid]
                t = [int(rng.choice(c[ph])) if ph in c else None for ph in phases]
                keep = [i for i, v in enumerate(t) if v is not None]
                drop = [i for i in keep if rng.random() < PHASE_DROPOUT]
                for i in drop[: len(keep) - 1]:
                    t[i] = None
                tuples.append(t)
            x, present = _batch(images, tuples, cfg.image_size, normalize, device, gen)
            y = torch.tensor([labels[p] for p in batch], device=device)
            with autocast(device, amp):
                loss = loss_fn(model(x, present).float(), y)
            if not torch.isfinite(loss):
                raise CcrccError(f"{NAME}: training loss became {loss.item()} at epoch {epoch}; try a lower lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(batch)
            n_seen += len(batch)
        val = predict_patients(model, images, crops["val"], cfg.image_size, normalize, device, amp)
        vy = np.array([labels[p] for p in val])
        vp = np.clip(np.array(list(val.values())), 1e-7, 1 - 1e-7)
        auc = safe_auc(vy, vp)
        vloss = float(-np.mean(np.where(vy == 1, np.log(vp), np.log(1 - vp)))) if len(vy) else math.nan
        score = (-math.inf if auc is None else auc, -vloss)
        improved = score > best
        if improved:
            best, best_epoch = score, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        log.append(
            {
                "epoch": epoch,
                "train_loss": tot / max(n_seen, 1),
                "val_auc": auc,
                "val_loss": vloss,
                "seconds": time.perf_counter() - t0,
            }
        )
        print(
            f"{NAME} epoch {epoch}/{cfg.epochs} loss {tot / max(n_seen, 1):.4f} val AUC "
            f"{'n/a' if auc is None else f'{auc:.3f}'} {log[-1]['seconds']:.1f}s" + (" *" if improved else ""),
            flush=True,
        )
    model.load_state_dict(best_state)
    meta = {
        "model": NAME,
        "phases": list(phases),
        "config": asdict(cfg),
        "best_epoch": best_epoch,
        "classes": ["low", "high"],
        "splits": {part: sorted(v) for part, v in crops.items()},
    }
    atomic_torch_save(make_checkpoint(model, meta), RunDir(run).best)
    atomic_write_json(run / "log.json", log)
    atomic_write_json(
        RunDir(run).summary,
        {
            "run": str(run),
            "model": NAME,
            "phases": list(phases),
            "best_epoch": best_epoch,
            "epochs": cfg.epochs,
            "best_val": log[best_epoch - 1],
            "device": str(device),
            "amp": str(amp),
        },
    )
    return model
