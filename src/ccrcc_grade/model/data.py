"""Crops in memory and batched augmentation as tensor ops.

The whole training set lives in memory as one uint8 tensor (a 158-patient cohort is ~100 MB
at 224 px), so a batch is an index lookup. Augmentation (the study's random rotation within
+-30 degrees and flips) runs on the whole batch at once with ``affine_grid``/``grid_sample``, on
the training device, so the data path is never the bottleneck.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ccrcc_grade.model.registry import IMAGENET_MEAN, IMAGENET_STD


class CropSet:
    """uint8 crops (N, S, S) + labels + patient ids for one split of one phase."""

    def __init__(self, crops: np.ndarray, rows: list[dict]):
        idx = np.array([r["index"] for r in rows], dtype=np.int64)
        self.images = (
            torch.from_numpy(np.ascontiguousarray(crops[idx]))
            if len(idx)
            else torch.zeros((0, crops.shape[1], crops.shape[2]), dtype=torch.uint8)
        )
        self.labels = torch.tensor([int(r["label"]) for r in rows], dtype=torch.long)
        self.patients = [r["patient_id"] for r in rows]
        self.sources = [r["source"] for r in rows]
        self.phases = [r["phase"] for r in rows]

    def __len__(self) -> int:
        return len(self.labels)


def to_model_input(
    batch_u8: torch.Tensor,
    image_size: int,
    normalize: bool,
    channels_last: bool = False,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """uint8 (B, S, S) -> float (B, 3, image_size, image_size): resize, optional augmentation
    ``transform`` (on the 1-channel batch, 3x cheaper), gray -> 3 channels, ImageNet
    normalisation (or [0, 1] for networks trained from scratch). The one input path of
    training, evaluation, prediction and export."""
    x = batch_u8.unsqueeze(1).float().div_(255.0)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    if transform is not None:
        x = transform(x)
    if normalize:
        mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = (x - mean) / std  # broadcasting (B,1,H,W) against (1,3,1,1) makes 3 channels
    else:
        x = x.expand(-1, 3, -1, -1).contiguous()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def augment(
    x: torch.Tensor, generator: torch.Generator, rotation: float = 30.0, hflip: bool = True, vflip: bool = True
) -> torch.Tensor:
    """Random rotation in [-rotation, rotation] degrees and random horizontal/vertical flips, one
    draw per image, as one batched affine resampling of a (B, C, H, W) float batch. Corners
    uncovered by the rotation are filled by extending the border."""
    b = x.shape[0]
    theta = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(rotation)
    sx = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if hflip else torch.ones(b)
    sy = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if vflip else torch.ones(b)
    cos, sin = torch.cos(theta), torch.sin(theta)
    mat = torch.stack(
        [torch.stack([cos * sx, -sin * sy, torch.zeros(b)], 1), torch.stack([sin * sx, cos * sy, torch.zeros(b)], 1)], 1
    ).to(x.device, x.dtype)
    grid = F.affine_grid(mat, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def epoch_order(n: int, repeats: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of one epoch: every crop ``repeats`` times (the study's x3), shuffled."""
    return torch.randperm(n * repeats, generator=generator) % n


def class_weights(labels: torch.Tensor, n_classes: int = 2) -> torch.Tensor:
    """Cross-entropy weights inversely proportional to class frequency (sum of weights x counts = N)."""
    counts = torch.bincount(labels, minlength=n_classes).float()
    return counts.sum() / (n_classes * counts.clamp(min=1))
