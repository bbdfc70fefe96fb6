"""The box-prompted proposal network: a 2-D U-Net (MONAI) that sees the CT around a box and the
box itself as a second channel, and answers the tumour mask on that slice.

Input: a square of ``context`` x the box's longer side (at least ``min_side_mm``) centred on the
box, resampled to ``size`` x ``size`` (bilinear, in mm, so every pixel spacing looks alike), HU
windowed to [0, 1]; channel 2 is 1 inside the box. Output: tumour logits on the same grid, mapped
back to the slice's pixels and turned into a box by ingest's mask-to-box rule (``io.nifti.
mask_boxes`` grown by ``margin_mm``), so a proposed box and a true box compare like with like.

Trained on any cohort with tumour masks (NIfTI layout, KiTS), with prompts drawn as clinicians
would: the slice's own box jittered, or the neighbouring slice's box (the walk's prompt), and
slices just beyond the tumour's end with the last box (where the walk must stop). The checkpoint
carries this preprocessing (``cfg``) and the weights' checksum, as the grading models do.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.io.boxes import Box
from ccrcc_grade.roi.volume import PhaseVolume

if TYPE_CHECKING:
    import torch

KIND = "ccrcc-grade roi-proposal"
FORMAT = 1


@dataclass(frozen=True)
class RoiConfig:
    size: int = 64  # network input edge (pixels)
    context: float = 2.0  # crop side / box's longer side
    min_side_mm: float = 40.0  # smallest crop side (a 10 mm tumour still sees its kidney)
    window_level: float = 60.0  # HU: soft tissue to contrast-filled kidney
    window_width: float = 500.0
    margin_mm: float = 1.5  # mask -> box: the study's 1-2 mm beyond the tumour (ingest's rule)
    min_area_mm2: float = 12.0  # less tumour than this on a slice ends the walk
    channels: tuple[int, ...] = (16, 32, 64, 128)


def build_network(cfg: RoiConfig) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=2,
        out_channels=1,
        channels=tuple(cfg.channels),
        strides=(2,) * (len(cfg.channels) - 1),
        num_res_units=1,
        norm="batch",
    )


# --- crops -------------------------------------------------------------------------------------
def crop_grid(box: Box, spacing: tuple[float, float], cfg: RoiConfig) -> tuple[float, float, float, float]:
    """(x0, y0, step_x, step_y): crop pixel (u, v) samples slice pixel (x0 + u * step_x, y0 + v * step_y)."""
    w_mm, h_mm = box.width * spacing[1], box.height * spacing[0]
    side = max(cfg.min_side_mm, cfg.context * max(w_mm, h_mm))
    sx, sy = side / spacing[1], side / spacing[0]  # crop side in slice pixels
    cx, cy = (box.x_min + box.x_max) / 2, (box.y_min + box.y_max) / 2
    step_x, step_y = sx / cfg.size, sy / cfg.size
    # pixel centres: pixel i of the slice covers [i, i+1) in box coordinates, its centre is i + 0.5
    return cx - sx / 2 + step_x / 2 - 0.5, cy - sy / 2 + step_y / 2 - 0.5, step_x, step_y


def make_input(hu: np.ndarray, box: Box, spacing: tuple[float, float], cfg: RoiConfig) -> tuple[np.ndarray, tuple]:
    """(2, size, size) float32 network input for ``box`` on slice ``hu``, and its grid."""
    from scipy.ndimage import map_coordinates

    x0, y0, sx, sy = grid = crop_grid(box, spacing, cfg)
    u = np.arange(cfg.size)
    ys, xs = np.meshgrid(y0 + u * sy, x0 + u * sx, indexing="ij")
    img = map_coordinates(hu, [ys, xs], order=1, mode="constant", cval=-1000.0)
    lo = cfg.window_level - cfg.window_width / 2
    ct = np.clip((img - lo) / cfg.window_width, 0, 1)
    # box channel: crop pixels whose centre lies inside the box
    bx = (xs + 0.5 >= box.x_min) & (xs + 0.5 <= box.x_max) & (ys + 0.5 >= box.y_min) & (ys + 0.5 <= box.y_max)
    return np.stack([ct, bx]).astype(np.float32), grid


def crop_target(mask: np.ndarray, grid: tuple, cfg: RoiConfig) -> np.ndarray:
    from scipy.ndimage import map_coordinates

    x0, y0, sx, sy = grid
    u = np.arange(cfg.size)
    ys, xs = np.meshgrid(y0 + u * sy, x0 + u * sx, indexing="ij")
    return (map_coordinates(mask.astype(np.float32), [ys, xs], order=1, mode="constant") > 0.5).astype(np.float32)


def prob_to_slice(prob: np.ndarray, grid: tuple, shape: tuple[int, int], cfg: RoiConfig) -> tuple[np.ndarray, tuple]:
    """The crop's probability map on the slice's pixels (bilinear) inside the crop's extent:
    (probabilities, (row0, col0)) of the covered window."""
    from scipy.ndimage import map_coordinates

    x0, y0, sx, sy = grid
    c0, c1 = max(0, int(np.floor(x0))), min(shape[1], int(np.ceil(x0 + sx * cfg.size)))
    r0, r1 = max(0, int(np.floor(y0))), min(shape[0], int(np.ceil(y0 + sy * cfg.size)))
    if c1 <= c0 or r1 <= r0:
        return np.zeros((0, 0), np.float32), (r0, c0)
    rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
    p = map_coordinates(prob, [(rr - y0) / sy, (cc - x0) / sx], order=1, mode="constant", cval=0.0)
    return p.astype(np.float32), (r0, c0)


def _nearest_component(mask: np.ndarray, offset: tuple[int, int], near: Box) -> tuple[np.ndarray, tuple, float] | None:
    """(the component of ``mask`` nearest ``near`` and largest, its slices, its pixel area)."""
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return None
    cx, cy = (near.x_min + near.x_max) / 2 - offset[1], (near.y_min + near.y_max) / 2 - offset[0]
    best, best_score = None, None
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        rows, cols = sl
        area = float((lab[sl] == i).sum())
        d = np.hypot((cols.start + cols.stop) / 2 - cx, (rows.start + rows.stop) / 2 - cy)
        score = area / (1.0 + d)
        if best_score is None or score > best_score:
            best, best_score = (lab == i, sl, area), score
    return best


def mask_to_box(
    mask: np.ndarray, offset: tuple[int, int], spacing: tuple[float, float], cfg: RoiConfig, near: Box
) -> tuple[Box | None, float]:
    """The box of the mask's component nearest ``near`` (ingest's rule, margin in mm); None if empty."""
    found = _nearest_component(mask, offset, near)
    if found is None:
        return None, 0.0
    _, (rows, cols), area = found
    mx, my = cfg.margin_mm / spacing[1], cfg.margin_mm / spacing[0]
    box = Box(
        offset[1] + cols.start - mx, offset[0] + rows.start - my, offset[1] + cols.stop + mx, offset[0] + rows.stop + my
    )
    return box, area * spacing[0] * spacing[1]


def tumour_mask(model: RoiModel, hu: np.ndarray, box: Box, spacing: tuple[float, float]) -> np.ndarray:
    """The model's tumour on one slice, prompted by ``box``: a boolean mask of the slice's shape
    holding the component the box's proposal is made from (empty when the model finds none)."""
    x, grid = make_input(hu, box, spacing, model.cfg)
    p, (r0, c0) = prob_to_slice(model.masks(x[None])[0], grid, hu.shape, model.cfg)
    out = np.zeros(hu.shape, bool)
    found = _nearest_component(p > 0.5, (r0, c0), box)
    if found is not None:
        out[r0 : r0 + p.shape[0], c0 : c0 + p.shape[1]] = found[0]
    return out


# --- the model as a callable -------------------------------------------------------------------
class RoiModel:
    """A loaded proposal model: ``masks(inputs)`` -> tumour probabilities (N, size, size)."""

    def __init__(
        self,
        cfg: RoiConfig,
        fn: Callable[[np.ndarray], np.ndarray],
        meta: dict,
        path: Path | None = None,
        backend: str = "torch",
    ):
        self.cfg, self._fn, self.meta, self.path, self.backend = cfg, fn, meta, path, backend

    def masks(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 4 or x.shape[1:] != (2, self.cfg.size, self.cfg.size):
            raise CcrccError(
                f"proposal model {self.path}: input {tuple(x.shape[1:])} but the model takes (2, {self.cfg.size}, "
                f"{self.cfg.size})"
            )
        return self._fn(x.astype(np.float32))


def weights_sha256(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def load_roi_model(path: Path, backend: str = "auto") -> RoiModel:
    """A proposal model from ``RUN`` (its ``roi_model.pt`` / ``roi_model.onnx``) or the file itself.
    ``backend``: torch, onnx, or auto (ONNX Runtime when the export exists: no PyTorch at start)."""
    path = Path(path)
    if path.is_dir():
        onnx_p, pt_p = path / "roi_model.onnx", path / "roi_model.pt"
        if backend in ("auto", "onnx") and onnx_p.is_file():
            path = onnx_p
        elif pt_p.is_file():
            path = pt_p
        else:
            raise CcrccError(f"{path}: no roi_model.pt or roi_model.onnx (make one with `ccrcc-grade train-roi`)")
    if not path.is_file():
        raise CcrccError(f"{path}: proposal model not found")
    if path.suffix == ".onnx":
        return _load_onnx(path)
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for foreign files
        raise CcrccError(f"{path}: not a readable checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND:
        what = (
            "a grading model" if isinstance(ckpt, dict) and "threshold" in ckpt and "phase" in ckpt else "not a model"
        )
        raise CcrccError(f"{path}: {what}, not a tumour proposal model (`ccrcc-grade train-roi` makes one)")
    cfg = _cfg(ckpt, path)
    if weights_sha256(ckpt["state_dict"]) != ckpt.get("weights_sha256"):
        raise CcrccError(f"{path}: the weights do not match their recorded checksum (damaged or altered)")
    net = build_network(cfg)
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CcrccError(f"{path}: weights do not fit the network its cfg describes ({str(exc)[:120]})") from None
    net.eval()

    def fn(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.sigmoid(net(torch.from_numpy(x)))[:, 0].numpy()

    return RoiModel(cfg, fn, {k: v for k, v in ckpt.items() if k != "state_dict"}, path, "torch")


def _cfg(meta: dict, path: Path) -> RoiConfig:
    try:
        raw = dict(meta["cfg"])
        raw["channels"] = tuple(raw["channels"])
        cfg = RoiConfig(**raw)
    except (KeyError, TypeError) as exc:
        raise CcrccError(f"{path}: proposal model without a valid cfg ({exc})") from None
    if not 16 <= cfg.size <= 512 or cfg.size % 2 ** (len(cfg.channels) - 1):
        raise CcrccError(f"{path}: input size {cfg.size} does not fit the network's {len(cfg.channels) - 1} poolings")
    return cfg


def _load_onnx(path: Path) -> RoiModel:
    import json

    import onnx

    from ccrcc_grade.model.onnx_runtime import ONNX_META_KEY, onnx_session, onnx_weights_sha256

    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf decode errors
        raise CcrccError(f"{path}: not a readable ONNX model ({exc.__class__.__name__})") from None
    raw = next((p.value for p in proto.metadata_props if p.key == ONNX_META_KEY), None)
    meta = json.loads(raw) if raw else {}
    if meta.get("kind") != KIND:
        raise CcrccError(f"{path}: not a tumour proposal model (no {KIND!r} metadata)")
    if onnx_weights_sha256(proto) != meta.get("onnx_weights_sha256"):
        raise CcrccError(f"{path}: the weights do not match their recorded checksum (damaged or altered)")
    cfg = _cfg(meta, path)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    if dims[1:] != [2, cfg.size, cfg.size]:
        raise CcrccError(f"{path}: the graph takes input {dims[1:]} but its cfg says (2, {cfg.size}, {cfg.size})")
    sess = onnx_session(proto.SerializeToString())
    name = sess.get_inputs()[0].name

    def fn(x: np.ndarray) -> np.ndarray:
        logits = sess.run(None, {name: x})[0]
        return (1.0 / (1.0 + np.exp(-logits)))[:, 0]

    return RoiModel(cfg, fn, meta, path, "onnx")


# --- training ----------------------------------------------------------------------------------
def _tight_box(mask2d: np.ndarray) -> Box | None:
    rows = np.nonzero(mask2d.any(axis=1))[0]
    cols = np.nonzero(mask2d.any(axis=0))[0]
    if not len(rows):
        return None
    return Box(float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def _jitter(box: Box, rng: np.random.Generator, spacing: tuple[float, float], cfg: RoiConfig, sd: float) -> Box:
    """A box as a clinician would draw it: the margin of the rule, each edge off by ~sd of the size + 1 mm."""
    m = (cfg.margin_mm / spacing[1], cfg.margin_mm / spacing[0])
    e = rng.normal(0, 1, 4)
    w, h = box.width, box.height
    b = Box(
        box.x_min - m[0] + e[0] * (sd * w + 1.0 / spacing[1]),
        box.y_min - m[1] + e[1] * (sd * h + 1.0 / spacing[0]),
        box.x_max + m[0] + e[2] * (sd * w + 1.0 / spacing[1]),
        box.y_max + m[1] + e[3] * (sd * h + 1.0 / spacing[0]),
    )
    return Box.from_corners(*b.as_tuple()) if b.width >= 2 and b.height >= 2 else box.expand(*m)


def training_samples(
    volumes: list[tuple[PhaseVolume, np.ndarray]], cfg: RoiConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of (inputs, targets): per tumour slice one prompt (its own jittered box, or the
    neighbour's box), and per tumour end one slice beyond it prompted with the last box."""
    xs, ys = [], []
    for vol, mask in volumes:
        ks = [k for k in range(len(mask)) if mask[k].any()]
        if not ks:
            continue
        tight = {k: _tight_box(mask[k]) for k in ks}
        for k in ks:
            nb = [j for j in (k - 1, k + 1) if j in tight]
            if nb and rng.random() < 0.5:
                prompt = _jitter(tight[int(rng.choice(nb))], rng, vol.spacing, cfg, 0.03)
            else:
                prompt = _jitter(tight[k], rng, vol.spacing, cfg, 0.08)
            x, grid = make_input(vol.hu[k], prompt, vol.spacing, cfg)
            xs.append(x)
            ys.append(crop_target(mask[k], grid, cfg))
        # beyond each end: up to 3 slices without tumour, prompted with the end's box (the walk's
        # last prompt there), twice each - where the walk must learn to stop
        for end, step in ((ks[0], -1), (ks[-1], 1)):
            for d in (1, 2, 3):
                beyond = end + step * d
                if not 0 <= beyond < len(mask) or mask[beyond].any():
                    break
                for _ in range(2):
                    prompt = _jitter(tight[end], rng, vol.spacing, cfg, 0.05)
                    x, _grid = make_input(vol.hu[beyond], prompt, vol.spacing, cfg)
                    xs.append(x)
                    ys.append(np.zeros((cfg.size, cfg.size), np.float32))
    return np.stack(xs), np.stack(ys)[:, None]


def cohort_volumes(cohort: Path) -> list[tuple[str, str, Path, Path]]:
    """(patient, phase, volume, mask) of a NIfTI-layout cohort or a KiTS folder (tumour label 2)."""
    from ccrcc_grade.core.phases import canonical_phase

    cohort = Path(cohort)
    if not cohort.is_dir():
        raise CcrccError(f"{cohort}: cohort folder not found")
    out = []
    for pdir in sorted(p for p in cohort.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (pdir / "imaging.nii.gz").is_file() and (pdir / "segmentation.nii.gz").is_file():
            out.append((pdir.name, "kits", pdir / "imaging.nii.gz", pdir / "segmentation.nii.gz"))
            continue
        for vol in sorted(pdir.glob("*.nii*")):
            if "_mask" in vol.name:
                continue
            stem = vol.name.split(".")[0]
            mask = next((m for m in pdir.glob(f"{stem}_mask.nii*")), None)
            if mask is not None and canonical_phase(stem):
                out.append((pdir.name, canonical_phase(stem), vol, mask))
    if not out:
        raise CcrccError(
            f"{cohort}: no volumes with tumour masks (<patient>/<phase>.nii.gz + <phase>_mask.nii.gz, or KiTS "
            "case folders with imaging.nii.gz + segmentation.nii.gz)"
        )
    return out


def _load_pairs(items: list[tuple[str, str, Path, Path]]) -> list[tuple[PhaseVolume, np.ndarray]]:
    from ccrcc_grade.core.progress import progress
    from ccrcc_grade.io.kits import TUMOUR_LABEL
    from ccrcc_grade.roi.volume import read_nifti_mask, read_nifti_volume

    pairs = []
    for _pid, phase, vol, mask in progress(items, desc="read volumes", unit="volume"):
        v = read_nifti_volume(vol)
        pairs.append((v, read_nifti_mask(mask, v, (TUMOUR_LABEL,) if phase == "kits" else None)))
    return pairs


def train_roi(
    cohort: Path, out: Path, epochs: int = 30, seed: int = 0, batch: int = 32, val_fraction: float = 0.15
) -> dict:
    """Train the proposal network on ``cohort`` and write ``out``/roi_model.pt (+ .onnx and
    roi_train.json). Patients are split for validation (by patient, never by slice)."""
    import torch
    from monai.losses import DiceCELoss

    from ccrcc_grade.core.fileio import atomic_torch_save, atomic_write_json
    from ccrcc_grade.core.progress import progress

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CcrccError(f"{out}: output folder exists and is not empty")
    if epochs < 1:
        raise CcrccError("--epochs must be at least 1")
    cfg = RoiConfig()
    items = cohort_volumes(cohort)
    pids = sorted({i[0] for i in items})
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    n_val = max(1, int(round(len(pids) * val_fraction))) if len(pids) > 2 else 0
    val_p = set(rng.permutation(pids)[:n_val].tolist())
    train_pairs = _load_pairs([i for i in items if i[0] not in val_p])
    val_pairs = _load_pairs([i for i in items if i[0] in val_p])
    net = build_network(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    first = training_samples(train_pairs, cfg, rng)  # the sample count fixes the schedule's length
    per_epoch = -(-len(first[0]) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * per_epoch + 1, pct_start=0.15)
    loss_fn = DiceCELoss(sigmoid=True, squared_pred=True)
    log = []
    t0 = time.perf_counter()
    steps = 0
    for epoch in progress(range(epochs), desc="train-roi", unit="epoch"):
        x, y = first if epoch == 0 else training_samples(train_pairs, cfg, rng)
        flip = rng.random(len(x)) < 0.5
        x[flip], y[flip] = x[flip][..., ::-1], y[flip][..., ::-1]
        order = rng.permutation(len(x))
        net.train()
        total = 0.0
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            xb, yb = torch.from_numpy(np.ascontiguousarray(x[idx])), torch.from_numpy(np.ascontiguousarray(y[idx]))
            opt.zero_grad()
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
            if steps < epochs * per_epoch:
                sched.step()
            steps += 1
            total += loss.item() * len(idx)
        row = {"epoch": epoch + 1, "loss": round(total / len(order), 4), "samples": int(len(order))}
        if val_pairs:
            row["val_dice"] = round(_dice(net, val_pairs, cfg, np.random.default_rng(seed + 1)), 4)
        log.append(row)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    ckpt = {
        "kind": KIND,
        "format": FORMAT,
        "arch": "monai.networks.nets.UNet (2-D, 2 -> 1 channels)",
        "cfg": asdict(cfg),
        "state_dict": state,
        "weights_sha256": weights_sha256(state),
        "trained_on": {"cohort": str(Path(cohort).resolve()), "patients": len(pids), "volumes": len(items)},
        "validation_patients": sorted(val_p),
        "seed": seed,
        "epochs": epochs,
        "log": log,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(ckpt, out / "roi_model.pt")
    export_roi_onnx(out / "roi_model.pt", out / "roi_model.onnx")
    summary = {k: v for k, v in ckpt.items() if k != "state_dict"}
    atomic_write_json(out / "roi_train.json", summary)
    return summary


def _dice(
    net: torch.nn.Module, pairs: list[tuple[PhaseVolume, np.ndarray]], cfg: RoiConfig, rng: np.random.Generator
) -> float:
    import torch

    x, y = training_samples(pairs, cfg, rng)
    net.eval()
    with torch.inference_mode():
        p = (torch.sigmoid(net(torch.from_numpy(x))).numpy() > 0.5).astype(np.float32)
    inter, denom = float((p * y).sum()), float(p.sum() + y.sum())
    return 2 * inter / denom if denom else 1.0


def export_roi_onnx(model_path: Path, out: Path) -> None:
    """The proposal model as ONNX (opset 17) with its cfg and weights checksum in the metadata."""
    import io
    import json

    import onnx
    import torch

    from ccrcc_grade.core.fileio import atomic_write
    from ccrcc_grade.model.onnx_runtime import ONNX_META_KEY, onnx_weights_sha256

    ckpt = torch.load(model_path, map_location="cpu", weights_only=False)
    cfg = _cfg(ckpt, model_path)
    net = build_network(cfg)
    net.load_state_dict(ckpt["state_dict"])
    net.eval()
    buf = io.BytesIO()
    x = torch.zeros(1, 2, cfg.size, cfg.size)
    import warnings

    with warnings.catch_warnings():  # the TorchScript exporter: the graph is a plain U-Net, no control flow
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (x,),
            buf,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
            opset_version=17,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "log")}
    meta["onnx_weights_sha256"] = onnx_weights_sha256(proto)
    onnx.helper.set_model_props(proto, {ONNX_META_KEY: json.dumps(meta, default=str)})
    data = proto.SerializeToString()
    atomic_write(out, lambda fh: fh.write(data))
