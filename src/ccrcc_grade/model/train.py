"""Training: the study's protocol, readable top to bottom (torchvision reference style).

``fit(cfg)`` -> RUN folder with config.json, log.csv, curves.png, best.pt, last.pt,
train_summary.json. The best epoch is chosen on the validation split only. Each epoch's
shuffling and augmentation come from a generator seeded by (seed, epoch), so a resumed run
repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ccrcc_grade.core.config import TrainConfig, from_dict, save_json, to_dict
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_save_figure, atomic_torch_save, atomic_write_json, atomic_write_text
from ccrcc_grade.core.paths import RunDir, WorkDir
from ccrcc_grade.core.phases import CLASSES, check_phase
from ccrcc_grade.core.progress import progress
from ccrcc_grade.core.threshold import class_counts, estimability, fit_policy, parse_spec
from ccrcc_grade.ingest.cache import CropCache
from ccrcc_grade.ingest.splits import fold_split, load_splits
from ccrcc_grade.model.data import CropSet, augment, class_weights, epoch_order, to_model_input
from ccrcc_grade.model.inference import (
    amp_dtype,
    autocast,
    make_checkpoint,
    predict_probs,
    read_checkpoint,
    resolve_device,
)
from ccrcc_grade.model.registry import create_model, uses_imagenet_norm
from ccrcc_grade.stats.metrics import aggregate_patients, auc_with_ci, safe_auc

LOG_COLUMNS = [
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_auc",
    "val_image_auc",
    "val_acc",
    "lr",
    "seconds",
    "data_seconds",
    "step_seconds",
    "img_per_s",
]


@dataclass
class Dist:
    """Process-group facts; world = 1 without torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    cuda: bool = False  # nccl on one GPU per process; False: gloo, processes on the CPU

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    # nccl needs a GPU of its own per process; with fewer GPUs than processes on a node, gloo on CPU
    use_cuda = torch.cuda.is_available() and device_name != "cpu" and local_world <= torch.cuda.device_count()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), use_cuda)


def load_data(cfg: TrainConfig) -> tuple[CropCache, dict, CropSet, CropSet]:
    """Cache + splits -> train and validation sets, with every pre-training check."""
    cache = CropCache.load(cfg.work)
    phase = check_phase(cfg.phase, allow_combined=True)
    splits = load_splits(Path(cfg.splits) if cfg.splits else WorkDir(cfg.work).splits, set(cache.patient_labels()))
    if cfg.fold >= 0:
        if "folds" not in splits:
            raise CcrccError(f"--fold {cfg.fold} given but the splits file has no fold assignment (split --folds K)")
        if cfg.fold > max(splits["folds"].values()):
            raise CcrccError(f"--fold {cfg.fold} out of range (folds 0..{max(splits['folds'].values())})")
        splits = fold_split(splits["folds"], cfg.fold, cache.patient_labels(), cfg.seed)
    for part in ("train", "val"):
        if not splits.get(part):
            raise CcrccError(f"the {part} split is empty; re-run `ccrcc-grade split` with a non-zero {part} ratio")
    rows_train = cache.select(phase, set(splits["train"]))
    rows_val = cache.select(phase, set(splits["val"]))
    if not cache.select(phase):
        raise CcrccError(f"{cfg.work}: no crops of phase {phase!r} (phases present: {', '.join(cache.phases())})")
    if not rows_train:
        raise CcrccError(f"no {phase} crops for the training patients")
    if not rows_val:
        raise CcrccError(f"no {phase} crops for the validation patients")
    train_labels = {r["label"] for r in rows_train}
    for k, cls in enumerate(CLASSES):
        if k not in train_labels:
            raise CcrccError(f"no {cls}-grade {phase} crops in the training split; cannot learn two classes")
    spec = parse_spec(cfg.threshold)
    if isinstance(spec, str) and spec != "default":  # a cut-point fitted on validation patients
        labels = cache.patient_labels()  # refuse a fitted threshold before training, not after it
        why = estimability(*class_counts([labels[p] for p in {r["patient_id"] for r in rows_val}]))
        if why:
            raise CcrccError(
                f"threshold {cfg.threshold!r} refused: {why}; use the study default 0.5 "
                "(threshold default) or a fixed number"
            )
    return cache, splits, CropSet(cache.crops, rows_train), CropSet(cache.crops, rows_val)


class StepModel:
    """The network as the training step calls it: a compiled graph for full batches (CUDA graphs
    on CUDA via ``torch.compile(mode="reduce-overhead")``: static shapes, launch overhead gone),
    the eager module for the last partial batch (same parameters, so nothing is recompiled for
    it), and the eager module for good if compilation fails - said once in the log."""

    def __init__(self, model: nn.Module, device: torch.device, mode: str, batch_size: int, world: int):
        self.model, self.batch_size, self.compiled = model, batch_size, None
        want = mode == "on" or (mode == "auto" and device.type == "cuda")
        if want and world > 1:
            self.path = "eager (torch.compile is not combined with DDP here)"
        elif want and not hasattr(torch, "compile"):
            self.path = "eager (this PyTorch has no torch.compile)"
        elif want:
            backend = os.environ.get("CCRCC_COMPILE_BACKEND") or "inductor"  # tests: aot_eager (no C++ build)
            cuda_graphs = device.type == "cuda" and backend == "inductor"
            try:
                self.compiled = torch.compile(
                    model, backend=backend, dynamic=False, mode="reduce-overhead" if cuda_graphs else None
                )
                self.path = "torch.compile reduce-overhead (CUDA graphs)" if cuda_graphs else f"torch.compile {backend}"
            except Exception as exc:  # noqa: BLE001 - e.g. an unknown backend: train eagerly and say so
                self.path = f"eager (compilation failed: {exc.__class__.__name__})"
        else:
            self.path = "eager"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None and x.shape[0] == self.batch_size:
            try:
                return self.compiled(x)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: train on, eagerly, and say so
                self.compiled = None
                self.path = f"eager (compilation failed: {exc.__class__.__name__})"
                print(f"step: {self.path}", flush=True)
        return self.model(x)

    def train(self) -> None:
        self.model.train()


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    data: CropSet,
    cfg: TrainConfig,
    epoch: int,
    device: torch.device,
    amp: torch.dtype | None,
    normalize: bool,
    ddp: Dist,
    scaler: torch.amp.GradScaler | None = None,
) -> dict:
    """One pass over every training crop ``cfg.repeats`` times, augmented; returns loss/acc/timings."""
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    order = epoch_order(len(data), cfg.repeats, gen)
    order = order[: len(order) - len(order) % ddp.world][ddp.rank :: ddp.world]  # equal share per rank
    per_rank = max(1, cfg.batch_size // ddp.world)
    n_batches = math.ceil(len(order) / per_rank)
    if n_batches > 1 and len(order) % per_rank == 1:
        n_batches -= 1  # a lone last image would break batch norm: it joins the previous batch
    images = data.images.to(device, non_blocking=True)
    labels = data.labels.to(device)
    aug_gen = torch.Generator().manual_seed(cfg.seed * 7_368_787 + epoch * 31 + ddp.rank)
    tot_loss = tot_correct = tot_n = 0.0
    t_data = t_step = t2 = 0.0
    on_gpu = device.type == "cuda"
    bar = progress(
        range(n_batches),
        total=n_batches,
        desc=f"epoch {epoch}/{cfg.epochs}",
        unit="batch",
        enable=cfg.progress and ddp.main,
        leave=False,
    )
    for b in bar:
        t0 = time.perf_counter()
        idx = order[b * per_rank : (b + 1) * per_rank if b < n_batches - 1 else len(order)].to(device)
        x = to_model_input(
            images[idx],
            cfg.image_size,
            normalize,
            cfg.channels_last,
            transform=lambda t: augment(t, aug_gen, cfg.rotation, cfg.hflip, cfg.vflip),
        )
        y = labels[idx]
        t1 = time.perf_counter()
        with autocast(device, amp):
            logits = model(x)
            loss = loss_fn(logits.float(), y)
        if not on_gpu and not torch.isfinite(loss):  # on a GPU checked once per epoch: no sync per step
            raise CcrccError(
                f"training loss became {loss.item()} at epoch {epoch}, batch {b + 1}; "
                f"the run is stopped (try a lower --lr, now {cfg.lr:g})"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        n = len(y)
        tot_loss = tot_loss + loss.detach() * n  # device tensors: no host sync per step
        tot_correct = tot_correct + (logits.argmax(1) == y).sum()
        tot_n += n
        t2 = time.perf_counter()
        t_data += t1 - t0
        t_step += t2 - t1
    if on_gpu:
        torch.cuda.synchronize(device)
        t_step += time.perf_counter() - t2 if n_batches else 0.0
    tot_loss, tot_correct = float(tot_loss), float(tot_correct)
    if not math.isfinite(tot_loss):
        raise CcrccError(
            f"training loss became {tot_loss} at epoch {epoch}; the run is stopped (try a lower --lr, now {cfg.lr:g})"
        )
    return {
        "train_loss": tot_loss / max(tot_n, 1),
        "train_acc": tot_correct / max(tot_n, 1),
        "data_seconds": t_data,
        "step_seconds": t_step,
        "images": tot_n * ddp.world,
    }


@torch.no_grad()
def validate(
    model: nn.Module,
    data: CropSet,
    cfg: TrainConfig,
    device: torch.device,
    amp: torch.dtype | None,
    normalize: bool,
    weights: torch.Tensor | None = None,
) -> dict:
    """Validation metrics: patient-level AUC (mean of slice probabilities), image AUC, ACC, loss."""
    probs = predict_probs(
        model,
        data.images,
        cfg.image_size,
        normalize,
        device,
        amp,
        batch_size=max(cfg.batch_size, 256 if device.type == "cuda" else 64),
        channels_last=cfg.channels_last,
    )
    y = data.labels.numpy()
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    w = weights.cpu().numpy() if weights is not None else np.ones(2)
    loss = float(np.sum(-w[y] * np.where(y == 1, np.log(p), np.log(1 - p))) / np.sum(w[y]))
    pat_ids, pat_y, pat_p = aggregate_patients(data.patients, probs, y, cfg.patient_aggregate)
    metrics = {
        "val_loss": loss,
        "val_auc": safe_auc(pat_y, pat_p),
        "val_image_auc": safe_auc(y, probs),
        "val_acc": float(np.mean((probs >= 0.5) == y)),
    }
    return metrics, (pat_y, pat_p)


def _selection_score(metrics: dict, how: str) -> tuple[float, float]:
    """Higher is better. AUC first; ties (common with few validation patients, where the AUC
    saturates at 1.0) are broken by the lower validation loss."""
    if how == "loss":
        return (-metrics["val_loss"], 0.0)
    v = metrics["val_auc" if how == "patient_auc" else "val_image_auc"]
    return (-math.inf if v is None or math.isnan(v) else v, -metrics["val_loss"])


def fit(cfg: TrainConfig) -> dict | None:
    """Train one model; only rank 0 writes. Returns the run summary (rank 0) or None. ``cfg`` is
    not changed (the run's own copy, completed with resolved paths, goes to RUN/config.json)."""
    return _fit(dataclasses.replace(cfg), None)


def _fit(cfg: TrainConfig, resume_state: dict | None) -> dict | None:
    """``fit`` on its own copy of the config, from scratch or from a resume state (``resume``)."""
    cfg.validate()
    cfg.phase = check_phase(cfg.phase, allow_combined=True)
    cfg.work = str(Path(cfg.work).resolve())  # the checkpoint must find its cohort from anywhere
    ddp = init_distributed(cfg.device)
    device = resolve_device(cfg.device)
    if ddp.world > 1 and device.type == "cuda":
        if ddp.cuda:
            device = torch.device("cuda", ddp.local_rank)
            torch.cuda.set_device(device)
        else:
            if ddp.main:
                print(
                    f"{ddp.world} processes but {torch.cuda.device_count()} GPU(s) on this node: "
                    "training on the CPU with gloo",
                    flush=True,
                )
            device = torch.device("cpu")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    cache, splits, train_set, val_set = load_data(cfg)
    if device.type == "cuda":  # the whole uint8 training set lives on the GPU: one pinned copy, once
        train_set.images = train_set.images.pin_memory().to(device, non_blocking=True)
        val_set.images = val_set.images.pin_memory().to(device, non_blocking=True)
    run = Path(cfg.out or Path(cfg.work) / "runs" / f"{cfg.model}-{cfg.phase}")
    if ddp.main:
        if resume_state is None and RunDir(run).last.exists():
            raise CcrccError(f"{run}: already holds a run (use --resume {run} to continue, or another --out)")
        if resume_state is None and (RunDir(run).best.exists() or RunDir(run).summary.exists()):
            raise CcrccError(f"{run}: already holds a finished run (give another --out; nothing was replaced)")
        run.mkdir(parents=True, exist_ok=True)
        cfg.out = str(run)
        save_json(cfg, RunDir(run).config)

    torch.manual_seed(cfg.seed)
    model, load_report = create_model(cfg.model, cfg.weights)
    normalize = uses_imagenet_norm(cfg.weights)
    model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    try:  # fused SGD kernels on CUDA (one launch for all parameters); foreach elsewhere
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            fused=device.type == "cuda" or None,
        )
    except (TypeError, RuntimeError):
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    weights = class_weights(train_set.labels).to(device) if cfg.class_weighted else None
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    amp = amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None

    start_epoch, best_score, best_epoch, log_rows = 1, (-math.inf, -math.inf), 0, []
    best_val_patients = None
    if resume_state is not None:
        best_val_patients = resume_state.get("best_val_patients")
        model.load_state_dict(resume_state["state_dict"])
        optimizer.load_state_dict(resume_state["optimizer"])
        start_epoch = resume_state["epoch"] + 1
        best_score, best_epoch = tuple(resume_state["best_score"]), resume_state["best_epoch"]
        log_rows = resume_state["log"]
    net = model
    if ddp.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    step_model = StepModel(net, device, cfg.compile, max(1, cfg.batch_size // ddp.world), ddp.world)

    meta_base = run_meta(cfg, cache, splits, normalize)
    cohort = meta_base["cohort"]
    if ddp.main:
        print(
            f"training {cfg.model} on {cfg.phase}: {len(train_set)} train crops "
            f"({int(train_set.labels.sum())} high), {len(val_set)} val crops; device {device}, "
            f"amp {amp}, world {ddp.world}; step {step_model.path}; weights {cfg.weights}"
            + (
                f" (missing {len(load_report.get('missing', []))}, unexpected "
                f"{len(load_report.get('unexpected', []))} keys)"
                if cfg.weights != "none"
                else ""
            ),
            flush=True,
        )
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        stats = train_one_epoch(
            step_model, optimizer, loss_fn, train_set, cfg, epoch, device, amp, normalize, ddp, scaler
        )
        if ddp.world > 1:  # BN running stats drift per rank after the last forward: take rank 0's
            for buf in model.buffers():
                dist.broadcast(buf, 0)
        val, (val_y, val_p) = validate(model, val_set, cfg, device, amp, normalize, weights)
        secs = time.perf_counter() - t0
        row = {
            "epoch": epoch,
            **{k: stats[k] for k in ("train_loss", "train_acc", "data_seconds", "step_seconds")},
            **val,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": secs,
            "img_per_s": stats["images"] / max(stats["data_seconds"] + stats["step_seconds"], 1e-9),
        }
        log_rows.append({k: row[k] for k in LOG_COLUMNS})
        score = _selection_score(val, cfg.select_metric)
        improved = score > best_score
        if improved:
            best_score, best_epoch = score, epoch
            best_val_patients = auc_with_ci(val_y, val_p)
        if ddp.main:
            meta = {**meta_base, "epoch": epoch, "val": val, "best_epoch": best_epoch}
            if improved:  # the threshold policy on this epoch's validation patients (see threshold.py)
                policy = fit_policy(cfg.threshold, val_y, val_p, seed=cfg.seed)
                best_meta = {**meta, "threshold": policy.threshold, "threshold_policy": policy.to_dict()}
                atomic_torch_save(make_checkpoint(model, best_meta), RunDir(run).best)
            last = make_checkpoint(model, meta)
            last.update(
                optimizer=optimizer.state_dict(),
                best_score=list(best_score),
                log=log_rows,
                best_val_patients=best_val_patients,
            )
            atomic_torch_save(last, RunDir(run).last)
            _write_log(run, log_rows)
            print(
                f"epoch {epoch}/{cfg.epochs} loss {stats['train_loss']:.4f} val AUC {_f(val['val_auc'])} "
                f"(image {_f(val['val_image_auc'])}) ACC {val['val_acc']:.3f} {secs:.1f}s" + (" *" if improved else ""),
                flush=True,
            )
    checksum = float(sum(p.detach().double().sum().item() for p in model.parameters()))
    checksums = [checksum]
    if ddp.world > 1:
        checksums = [None] * ddp.world
        dist.all_gather_object(checksums, checksum)
    summary = None
    if ddp.main:
        _plot_curves(run, log_rows)
        total_data = sum(r["data_seconds"] for r in log_rows)
        total_step = sum(r["step_seconds"] for r in log_rows)
        summary = {
            "run": str(run),
            "model": cfg.model,
            "phase": cfg.phase,
            "best_epoch": best_epoch,
            "best_val": next((r for r in log_rows if r["epoch"] == best_epoch), {}),
            "best_val_patients": best_val_patients,
            "epochs": cfg.epochs,
            "world_size": ddp.world,
            "rank_checksums": checksums,
            "data_share": total_data / max(total_data + total_step, 1e-9),
            "weights_load": load_report,
            "device": str(device),
            "amp": str(amp),
            "cohort": cohort,
            "step": step_model.path,
        }
        atomic_write_json(RunDir(run).summary, summary)
        if not cfg.keep_last:  # the resume state (weights + optimizer, 2x best.pt) is only needed
            RunDir(run).last.unlink(missing_ok=True)  # while the run is unfinished
    if ddp.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def run_meta(cfg: TrainConfig, cache: CropCache, splits: dict, normalize: bool) -> dict:
    """What every checkpoint of a run carries besides its weights (timm's habit: the config
    travels with the weights): model, classes, config, cohort identity, preprocessing, phase,
    patient splits and the training boxes' reference. Also used by the federated server."""
    return {
        "model": cfg.model,
        "classes": list(CLASSES),
        "config": to_dict(cfg),
        "cohort": cohort_identity(Path(cfg.work)),
        "preprocess": {**to_dict(cache.preprocess), "image_size": cfg.image_size, "normalize": normalize},
        "phase": cfg.phase,
        "splits": {k: list(splits.get(k, [])) for k in ("train", "val", "test")},
        "reference": training_reference(Path(cfg.work), cfg.phase),
    }


def resume(run: Path, progress: bool = True) -> dict | None:
    """Continue an interrupted run from RUN/last.pt with its saved config."""
    run = Path(run)
    if not RunDir(run).last.is_file() and RunDir(run).summary.is_file():
        print(f"{run}: already finished")
        return RunDir(run).read_summary()
    state = read_checkpoint(RunDir(run).last)
    if "optimizer" not in state:
        raise CcrccError(f"{run / 'last.pt'}: not a resumable checkpoint")
    cfg = from_dict(TrainConfig, state["config"])
    cfg.out, cfg.progress = str(run), progress
    if state["epoch"] >= cfg.epochs:
        print(f"{run}: already finished ({cfg.epochs} epochs)")
        return RunDir(run).read_summary() if RunDir(run).summary.exists() else None
    return _fit(cfg, state)


def cohort_identity(work: Path) -> dict:
    """The cohort a WORK cache was made from (path and content fingerprint, from its ingest
    report), recorded in every run so a run is never reused for another cohort."""
    f = WorkDir(work).ingest_report
    try:
        rep = json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, json.JSONDecodeError):
        rep = {}
    return {"path": rep.get("cohort"), "fingerprint": rep.get("cohort_fingerprint")}


def training_reference(work: Path, phase: str) -> dict | None:
    """The training boxes' reference of a phase from the ingest report (the model carries it
    for the workstation's plausibility checks); None for caches made before it existed."""
    f = WorkDir(work).ingest_report
    try:
        rep = json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return None
    return (rep.get("reference") or {}).get(phase)


def _write_log(run: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(RunDir(run).log, buf.getvalue())


def _plot_curves(run: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    a1.plot(ep, [r["train_loss"] for r in rows], label="train")
    a1.plot(ep, [r["val_loss"] for r in rows], label="validation")
    a1.set_xlabel("epoch"), a1.set_ylabel("weighted cross-entropy"), a1.legend(), a1.set_title("loss")
    a2.plot(ep, [np.nan if r["val_auc"] is None else r["val_auc"] for r in rows], label="patient AUC")
    a2.plot(ep, [np.nan if r["val_image_auc"] is None else r["val_image_auc"] for r in rows], label="image AUC")
    a2.plot(ep, [r["val_acc"] for r in rows], label="image ACC")
    a2.set_ylim(0, 1.02), a2.set_xlabel("epoch"), a2.legend(), a2.set_title("validation")
    fig.tight_layout()
    atomic_save_figure(fig, RunDir(run).curves, dpi=110)
    plt.close(fig)


def _f(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def train_images_per_second(device: str = "auto", image_size: int = TrainConfig.image_size, steps: int = 2) -> float:
    """Training speed of ResNet34 on this device (images/s), from a few timed steps on random
    crops after one warm-up step: what `study` multiplies by its training images to say how long
    it will take before it starts. The same mixed precision as training; a few seconds on a CPU
    at 224 px, a fraction of one at the quick preset's 48-64 px."""
    dev = resolve_device(device)
    torch.manual_seed(0)
    model, _ = create_model("resnet34", "none")
    model.to(dev).train()
    amp = amp_dtype(dev, TrainConfig.amp)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    batch = TrainConfig.batch_size
    x = torch.randint(0, 256, (batch, image_size, image_size), dtype=torch.uint8)
    y = torch.randint(0, 2, (batch,), device=dev)
    elapsed = 0.0
    for step in range(steps + 1):
        t0 = time.perf_counter()
        inp = to_model_input(x.to(dev), image_size, True)
        with autocast(dev, amp):
            loss = nn.functional.cross_entropy(model(inp).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step:
            elapsed += time.perf_counter() - t0
    return steps * batch / max(elapsed, 1e-9)
