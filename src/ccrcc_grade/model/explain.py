"""Grad-CAM explanations (captum's LayerGradCam on the last convolutional stage).

The heat map is computed on the model input (the crop), upsampled to the crop, and drawn both
on the crop and, inside the tumour box, on the whole slice, so a clinician sees where in the
tumour the network looked.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ccrcc_grade.core.fileio import atomic_save_figure, atomic_write
from ccrcc_grade.model.data import to_model_input


def last_conv_stage(model: nn.Module) -> nn.Module:
    """The last convolutional stage of our ResNets (``layer4``)."""
    if hasattr(model, "layer4"):
        return model.layer4
    raise ValueError("model has no layer4 stage")


def gradcam(model: nn.Module, crops_u8: np.ndarray, image_size: int, normalize: bool, target: int = 1) -> np.ndarray:
    """Grad-CAM for class ``target`` (1 = high grade) of every crop: (N, S, S) in [0, 1]."""
    from captum.attr import LayerGradCam

    model.eval()
    x = to_model_input(torch.from_numpy(np.ascontiguousarray(crops_u8)), image_size, normalize)
    cam = LayerGradCam(model, last_conv_stage(model))
    with torch.enable_grad():
        attr = cam.attribute(x, target=target, relu_attributions=True)
    size = crops_u8.shape[-1]
    up = F.interpolate(attr.detach().float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    up = up.numpy()
    mx = up.reshape(len(up), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(mx > 0, up / np.maximum(mx, 1e-12), 0.0)


def save_overlays(
    out: Path,
    name: str,
    crop: np.ndarray,
    cam: np.ndarray,
    slice_u8: np.ndarray | None = None,
    box: tuple[float, float, float, float] | None = None,
    prob: float | None = None,
    cam_on_slice: np.ndarray | None = None,
) -> Path:
    """PNG with the crop + heat map, and (when given) the whole slice with the heat map placed in
    the box. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    ncols = 2 if slice_u8 is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 4.2))
    axes = np.atleast_1d(axes)
    axes[0].imshow(crop, cmap="gray", vmin=0, vmax=255)
    axes[0].imshow(np.ma.masked_where(cam <= 0.05, cam), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[0].set_title("tumour crop + Grad-CAM" + (f"\nP(high) = {prob:.2f}" if prob is not None else ""), fontsize=9)
    if slice_u8 is not None and box is not None:
        x0, y0, x1, y1 = box
        heat = box_heatmap(slice_u8.shape, box, cam if cam_on_slice is None else cam_on_slice)
        axes[1].imshow(slice_u8, cmap="gray", vmin=0, vmax=255)
        axes[1].imshow(np.ma.masked_where(heat <= 0.05, heat), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axes[1].add_patch(matplotlib.patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1))
        axes[1].set_title("slice, heat inside the tumour box", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    path = out / f"{name}.png"
    atomic_save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def box_heatmap(shape: tuple[int, int], box: tuple[float, float, float, float], cam: np.ndarray) -> np.ndarray:
    """Place a crop-sized heat map back into a slice-sized array inside the (clipped) box."""
    from PIL import Image

    h, w = shape[:2]
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    heat = np.zeros((h, w), dtype=np.float32)
    if x1 > x0 and y1 > y0:
        im = Image.fromarray((cam * 255).astype(np.uint8)).resize((x1 - x0, y1 - y0), Image.BILINEAR)
        heat[y0:y1, x0:x1] = np.asarray(im, dtype=np.float32) / 255.0
    return heat


def save_heat_layer(path: Path, heat: np.ndarray) -> None:
    """The heat map alone as a slice-sized RGBA PNG (jet colours, transparent where cold), for a
    viewer to draw over the slice it belongs to."""
    from matplotlib import colormaps
    from PIL import Image

    rgba = (colormaps["jet"](heat) * 255).astype(np.uint8)
    rgba[..., 3] = np.where(heat > 0.05, 115, 0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))
