"""Grade a new patient: boxes -> crops (the ingest code) -> model -> probabilities.

INPUT is one phase folder (exported slices + labelme JSON, a DICOM series with --boxes, or a
NIfTI volume + mask) or a whole patient folder, from which the model's phase is taken.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ccrcc_grade.core.config import BOX_K, PreprocessConfig, from_dict
from ccrcc_grade.core.errors import CcrccError, check_number
from ccrcc_grade.core.fileio import atomic_write_json, refuse_overwriting_inputs
from ccrcc_grade.core.paths import RunDir
from ccrcc_grade.core.phases import canonical_phase
from ccrcc_grade.core.threshold import decide, decision_digits, policy_of
from ccrcc_grade.ingest.cache import crop_rois
from ccrcc_grade.ingest.cohort import Roi
from ccrcc_grade.ingest.layouts import dicom_folder_rois, slice_folder_rois, volume_rois
from ccrcc_grade.io.boxes import read_boxes_csv
from ccrcc_grade.io.dicom import ALLOW_DERIVED_NOTE
from ccrcc_grade.io.images import IMAGE_SUFFIXES
from ccrcc_grade.model.robustness import box_robustness, robustness_text
from ccrcc_grade.stats.metrics import aggregate_patients


@dataclass(frozen=True)
class Predictor:
    """A model loaded for prediction (``load_predictor``): called on uint8 crops (N, size, size)
    it returns P(high) per crop. ``meta`` is the checkpoint's metadata (model, phase, preprocess,
    config, threshold policy) plus ``path`` and ``backend``; ``checkpoint`` is the .pt file
    (Grad-CAM reloads it) or None for an ONNX file."""

    predict: Callable[[np.ndarray], np.ndarray]
    meta: dict
    checkpoint: Path | None

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        return self.predict(crops)

    @property
    def phase(self) -> str:
        return self.meta["phase"]

    @property
    def preprocess(self) -> PreprocessConfig:
        return from_dict(PreprocessConfig, self.meta["preprocess"])

    @property
    def backend(self) -> str | None:
        return self.meta.get("backend")

    @property
    def weights_sha256(self) -> str:
        """The checksum of the weights (verified when loaded); for files saved before checksums
        existed, the file's modification time and size stand in."""
        m = self.meta
        if m.get("onnx_weights_sha256") or m.get("weights_sha256"):
            return m.get("onnx_weights_sha256") or m["weights_sha256"]
        st = Path(m["path"]).stat()
        return f"unsummed:{st.st_mtime_ns}:{st.st_size}"


def load_predictor(model_path: Path, device: str = "auto", backend: str = "auto") -> Predictor:
    """A .pt checkpoint, a run folder (its best.pt) or an .onnx file, ready to predict.

    On a CPU a checkpoint runs on the fastest correct backend for it (``inference.cpu_backend``:
    PyTorch bf16 where AVX-512 BF16/AMX exist, else ONNX Runtime fp32 on the same graph as
    `export`); ``metadata["backend"]`` says which, and predict and evaluate print it."""
    model_path = Path(model_path)
    if model_path.is_dir():  # a run folder: its best checkpoint
        if not RunDir(model_path).best.is_file():
            raise CcrccError(f"{model_path}: a folder without best.pt; give a run folder, its best.pt or an .onnx file")
        model_path = RunDir(model_path).best
    if model_path.suffix.lower() == ".onnx":
        from ccrcc_grade.model.onnx_runtime import onnx_probs, onnx_session, read_onnx_metadata

        meta = {**read_onnx_metadata(model_path), "path": str(model_path)}
        sess = onnx_session(model_path)
        meta["backend"] = "onnxruntime " + ("int8" if meta.get("int8") else "fp32") + " (exported model)"
        return Predictor(lambda crops: onnx_probs(model_path, crops, sess), meta, None)
    from ccrcc_grade.model.inference import (
        CpuBf16Model,
        cpu_backend,
        fast_inference_model,
        load_model,
        predict_probs,
        resolve_device,
    )

    dev = resolve_device(device)
    model, ckpt = load_model(model_path, dev)
    meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer", "log")}
    meta["path"] = str(model_path)
    if backend not in ("auto", "torch", "onnxruntime"):
        raise CcrccError(f"backend must be auto, torch or onnxruntime, got {backend!r}")
    chosen = (cpu_backend() if backend == "auto" else backend) if dev.type == "cpu" else "torch"
    fallback = ""
    if chosen == "onnxruntime":
        from ccrcc_grade.model.export import onnx_graph
        from ccrcc_grade.model.onnx_runtime import onnx_probs, onnx_session

        try:
            graph = onnx_graph(model, ckpt)
        except Exception as exc:  # noqa: BLE001 - e.g. an antialiased resize (crop size != input size)
            if backend == "onnxruntime":
                raise CcrccError(
                    f"{model_path}: cannot run on ONNX Runtime ({exc.__class__.__name__}: "
                    f"{str(exc).splitlines()[0][:120]})"
                ) from None
            fallback = f" (ONNX Runtime not possible for this model: {exc.__class__.__name__})"
        else:
            sess = onnx_session(graph.SerializeToString())
            meta["backend"] = "onnxruntime fp32 (CPU without bf16)" if backend == "auto" else "onnxruntime fp32"
            return Predictor(lambda crops: onnx_probs(model_path, crops, sess), meta, model_path)
    model, amp = fast_inference_model(model, dev)
    pre = ckpt["preprocess"]

    def fn(crops: np.ndarray) -> np.ndarray:
        return predict_probs(
            model,
            crops,
            pre["image_size"],
            pre["normalize"],
            dev,
            amp,
            channels_last=not isinstance(model, CpuBf16Model),
        )

    meta["backend"] = (
        f"torch {dev.type} "
        + (
            "bf16 (AVX-512 BF16/AMX)"
            if isinstance(model, CpuBf16Model)
            else f"{str(amp).replace('torch.', '') if amp else 'fp32'}"
        )
    ) + fallback
    return Predictor(fn, meta, model_path)


def find_rois(
    inp: Path,
    phase: str,
    boxes: Path | None,
    patient_id: str | None,
    mask_margin_mm: float = PreprocessConfig.mask_margin_mm,
    allow_derived: bool = False,
) -> tuple[list[Roi], str, list[str]]:
    """ROIs of the model's phase in a phase folder, a patient folder, or a NIfTI file."""
    warnings: list[str] = []
    inp = Path(inp)
    if not inp.exists():
        raise CcrccError(f"{inp}: input not found")
    folder = inp
    if inp.is_dir():
        subs = {canonical_phase(p.name): p for p in inp.iterdir() if p.is_dir() and canonical_phase(p.name)}
        if subs:  # a patient folder
            if phase not in subs:
                raise CcrccError(
                    f"{inp}: no {phase} folder, and the model was trained on the {phase} phase "
                    f"(found: {', '.join(sorted(subs))})"
                )
            folder = subs[phase]
        else:
            named = canonical_phase(inp.name)
            if named is not None and named != phase:
                raise CcrccError(f"{inp}: is a {named} folder but the model was trained on the {phase} phase")
    pid = patient_id or (folder.parent.name if folder != inp or canonical_phase(inp.name) else inp.name)
    nifti = _nifti_input(inp, folder, phase)
    if nifti is not None:
        rois, _ = volume_rois(nifti[0], nifti[1], pid, phase, nifti[0].parent, margin_mm=mask_margin_mm)
        return rois, pid, warnings
    if not folder.is_dir():
        raise CcrccError(f"{inp}: expected a phase folder, a patient folder or a NIfTI volume")
    files = [p for p in folder.iterdir() if p.is_file()]
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in files) or any(p.suffix == ".json" for p in files):
        rois, _ = slice_folder_rois(folder, pid, phase, folder, warnings)
    else:
        if not files:
            raise CcrccError(f"{folder}: empty folder (no images, labelme JSON or DICOM files)")
        if boxes is None:
            raise CcrccError(
                f"{folder}: a DICOM series needs --boxes CSV (patient_id, phase, file, x_min, y_min, x_max, y_max)"
            )
        # only this patient's rows: a file name may recur in other patients' series
        rows = [r for r in read_boxes_csv(boxes, Path(boxes).parent) if r["phase"] == phase and r["patient_id"] == pid]
        if not rows:
            raise CcrccError(
                f"{boxes}: no {phase} boxes for patient {pid!r} (give --patient-id when the folder "
                "name is not the patient id)"
            )
        rois, _ = dicom_folder_rois(folder, pid, phase, rows, folder, match_sop=True, allow_derived=allow_derived)
        if allow_derived:
            warnings.append(ALLOW_DERIVED_NOTE)
    if not rois:
        raise CcrccError(f"{folder}: no tumour boxes (labelme rectangles or boxes CSV rows) for the {phase} phase")
    return rois, pid, warnings


def _nifti_input(inp: Path, folder: Path, phase: str) -> tuple[Path, Path] | None:
    cands = (
        [inp]
        if inp.is_file()
        else sorted(
            p
            for p in folder.iterdir()
            if p.name.endswith((".nii", ".nii.gz"))
            and "_mask" not in p.name
            and canonical_phase(p.name.split(".")[0]) == phase
        )
    )
    for vol in cands:
        if vol.name.endswith((".nii", ".nii.gz")):
            stem = vol.name[:-7] if vol.name.endswith(".nii.gz") else vol.name[:-4]
            mask = next(
                (
                    vol.parent / f"{stem}_mask{ext}"
                    for ext in (".nii.gz", ".nii")
                    if (vol.parent / f"{stem}_mask{ext}").is_file()
                ),
                None,
            )
            if mask is None:
                raise CcrccError(f"{vol}: no tumour mask {stem}_mask.nii.gz beside it")
            return vol, mask
    return None


def predict_patient(
    model_path: Path,
    inp: Path,
    boxes: Path | None = None,
    patient_id: str | None = None,
    cam_dir: Path | None = None,
    device: str = "auto",
    predictor: Predictor | None = None,
    box_k: int = BOX_K,
    allow_derived: bool = False,
) -> dict:
    """Predict one patient from a folder or file; returns the JSON-ready result."""
    t0 = time.perf_counter()
    predictor = predictor or load_predictor(model_path, device)
    phase = predictor.phase
    if phase == "combined":  # trained on all phases: take the phase of the folder given, else parenchymal
        phase = canonical_phase(Path(inp).name) or "parenchymal"
    rois, pid, warnings = find_rois(
        Path(inp), phase, boxes, patient_id, predictor.preprocess.mask_margin_mm, allow_derived=allow_derived
    )
    return grade_rois(predictor, rois, pid, phase, warnings, cam_dir, t0, box_k=box_k)


def grade_rois(
    predictor: Predictor,
    rois: list[Roi],
    pid: str,
    phase: str,
    warnings: list[str] | None = None,
    cam_dir: Path | None = None,
    t0: float | None = None,
    box_k: int = BOX_K,
) -> dict:
    """Crop (the ingest code), predict, aggregate and decide for one patient's ROIs: the one path
    that `predict` and the web workstation share. ``cam_dir``: also write Grad-CAM overlays;
    ``box_k``: plausible box sets for ``box_robustness`` (0: none)."""
    t0 = time.perf_counter() if t0 is None else t0
    meta = predictor.meta
    warnings = list(warnings or [])
    pre = predictor.preprocess
    t_net = time.perf_counter()
    crops = crop_rois(rois, pre, warnings, show_progress=False)
    probs = predictor(crops)
    rate = len(crops) / max(time.perf_counter() - t_net, 1e-6)  # crops (cropped and graded) per second
    agg = (meta.get("config") or {}).get("patient_aggregate", "mean")
    _, _, pp = aggregate_patients([pid] * len(probs), probs, np.zeros(len(probs), int), agg)
    policy, legacy = policy_of(meta)
    if legacy:
        warnings.append(legacy)
    decision = decide(float(pp[0]), policy)
    result = {
        "patient_id": pid,
        "phase": phase,
        "prob_high": float(pp[0]),
        "grade": decision.grade,
        "decision": decision.text,
        "threshold": policy.threshold,
        "digits": decision_digits(float(pp[0]), policy.threshold),  # decimals that show the comparison made
        "threshold_policy": policy.to_dict(),
        "slices": [
            {"source": r.source, "box": [round(v, 2) for v in r.box.as_tuple()], "prob_high": float(p)}
            for r, p in zip(rois, probs)
        ],
        "model": {
            "path": meta["path"],
            "architecture": meta["model"],
            "phase": meta["phase"],
            "trained": meta.get("created"),
            "epoch": meta.get("epoch"),
            "val_auc": (meta.get("val") or {}).get("val_auc"),
            "package_version": meta.get("package_version"),
            "backend": meta.get("backend"),
        },
        "warnings": warnings,
    }
    if box_k:
        check_number(box_k, "plausible boxes (--box-k)", 2, 1000, integer=True)
        b = box_robustness(predictor, rois, float(pp[0]), policy.threshold, int(box_k), crops_per_s=rate)
        result["box_robustness"] = b | {"text": robustness_text(float(pp[0]), b)}
    if cam_dir is not None:
        if predictor.checkpoint is None:
            raise CcrccError("--cam needs the PyTorch model (best.pt), not an ONNX file")
        for i, path in enumerate(write_cams(predictor.checkpoint, rois, crops, probs, pre, Path(cam_dir))):
            result["slices"][i]["cam"] = str(path)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def write_cams(
    model_path: Path, rois: list[Roi], crops: np.ndarray, probs: np.ndarray, pre: PreprocessConfig, cam_dir: Path
) -> list[Path]:
    """Grad-CAM overlays (crop and slice) for every ROI; returns the slice overlay paths."""
    from ccrcc_grade.ingest.cache import decode_roi
    from ccrcc_grade.ingest.preprocess import window_to_uint8
    from ccrcc_grade.model.explain import box_heatmap, gradcam, save_heat_layer, save_overlays
    from ccrcc_grade.model.inference import load_model

    plain, ckpt = load_model(model_path, "cpu")  # unfused: Grad-CAM needs the layer4 module
    cams = gradcam(plain, crops, ckpt["preprocess"]["image_size"], ckpt["preprocess"]["normalize"])
    paths = []
    for i, (r, cam, p) in enumerate(zip(rois, cams, probs)):
        image, is_hu = decode_roi(r, [])
        if is_hu:
            image = window_to_uint8(image, pre.window_level, pre.window_width)
        cam_stored = cam[::-1] if r.flip[0] else cam  # back to stored-pixel orientation,
        cam_stored = cam_stored[:, ::-1] if r.flip[1] else cam_stored  # where the box lives
        name = f"{i:03d}_{Path(r.source).stem}"
        paths.append(save_overlays(cam_dir, name, crops[i], cam, image, r.box.as_tuple(), float(p), cam_stored))
        save_heat_layer(cam_dir / f"{name}_heat.png", box_heatmap(image.shape, r.box.as_tuple(), cam_stored))
    return paths


def format_result(r: dict) -> str:
    lines = [
        f"patient {r['patient_id']}  phase {r['phase']}  model {r['model']['architecture']} "
        f"(trained {r['model']['trained']}, validation AUC {_f(r['model']['val_auc'])})",
        f"{'slice':<50}{'P(high)':>9}",
    ]
    for s in r["slices"]:
        lines.append(f"{s['source'][-50:]:<50}{s['prob_high']:>9.3f}")
    lines.append(
        f"patient {r['patient_id']}: {r['decision']}  ({len(r['slices'])} slices, {r['seconds']:.2f} s, "
        f"{r['model'].get('backend') or 'backend n/a'})"
    )
    if "box_robustness" in r:
        lines.append(f"box: {r['box_robustness']['text']}")
    lines += [f"warning: {w}" for w in r["warnings"]]
    return "\n".join(lines)


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def predict_command(
    model: str,
    inp: str,
    json_out: str | None = None,
    cam_dir: str | None = None,
    boxes: str | None = None,
    patient_id: str | None = None,
    device: str = "auto",
    box_k: int = BOX_K,
    allow_derived: bool = False,
) -> str:
    inputs = [model, inp, boxes]
    refuse_overwriting_inputs([("--json", json_out)], inputs)
    if cam_dir:  # overlays are new files, but never inside the model's or the patient's folder
        cam = Path(cam_dir).resolve()
        for i in (model, inp):
            src = Path(i).resolve()
            if src.is_dir() and (cam == src or cam.is_relative_to(src)):
                raise CcrccError(f"--cam {cam_dir}: lies inside the input {i}; write the overlays elsewhere")
    r = predict_patient(
        Path(model),
        Path(inp),
        Path(boxes) if boxes else None,
        patient_id,
        Path(cam_dir) if cam_dir else None,
        device,
        box_k=box_k,
        allow_derived=allow_derived,
    )
    if json_out:
        atomic_write_json(Path(json_out), r)
    return format_result(r)
