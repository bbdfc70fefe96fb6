"""ONNX export: the classifier with its input transform, preprocessing recorded as metadata.

The exported graph takes crops exactly as the cache stores them - float (B, S, S) holding
0..255 grey values - and returns P(high grade) (B,), so ONNX Runtime needs nothing but the
shared crop code in front of it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import to_model_input
from .errors import CcrccError
from .fileio import atomic_write, atomic_write_json
from .modelcard import model_card
from .onnx_infer import ONNX_META_KEY, onnx_probs



class ProbabilityModel(nn.Module):
    """crops (B, S, S) in 0..255 -> P(high) (B,): the model input path + softmax in one graph."""

    def __init__(self, model: nn.Module, image_size: int, normalize: bool):
        super().__init__()
        self.model, self.image_size, self.normalize = model, image_size, normalize

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = to_model_input(crops, self.image_size, self.normalize)
        return torch.softmax(self.model(x), dim=1)[:, 1]


def onnx_metadata(ckpt: dict) -> dict:
    """What predict needs from the checkpoint, without the weights."""
    return {k: ckpt.get(k) for k in ("format", "format_version", "package_version", "created", "model", "classes",
                                      "phase", "preprocess", "threshold", "threshold_policy", "epoch", "best_epoch", "val")}


def export_onnx(model_path: Path, out: Path, check: bool = True) -> dict:
    """Export ``best.pt`` to ONNX, write atomically and report the max |ONNX - PyTorch| difference."""
    import onnx

    from .inference import load_model

    model, ckpt = load_model(model_path, "cpu")
    pre = ckpt["preprocess"]
    wrapper = ProbabilityModel(model, pre["image_size"], pre["normalize"]).eval()
    size = pre["size"]
    example = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, size, size)).astype(np.uint8))
    tmp = Path(str(out) + ".export.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # tracer notes on the constant-size branch of the input transform
            torch.onnx.export(wrapper, (example.float(),), str(tmp), input_names=["crops"],
                              output_names=["prob_high"], dynamic_axes={"crops": {0: "batch"}, "prob_high": {0: "batch"}},
                              opset_version=18, dynamo=False)
        proto = onnx.load(str(tmp))
    finally:
        if tmp.exists():
            tmp.unlink()
    meta = proto.metadata_props.add()
    meta.key, meta.value = ONNX_META_KEY, json.dumps(onnx_metadata(ckpt))
    onnx.checker.check_model(proto)
    atomic_write(Path(out), lambda fh: fh.write(proto.SerializeToString()))
    card = Path(out).with_suffix(".card.json")   # the workstation's model card, beside the file
    atomic_write_json(card, model_card(Path(model_path), ckpt))
    info = {"onnx": str(out), "card": str(card), "model": ckpt["model"], "phase": ckpt["phase"]}
    if check:
        crops = np.random.default_rng(1).integers(0, 256, (8, size, size)).astype(np.uint8)
        with torch.no_grad():
            ref = wrapper(torch.from_numpy(crops).float()).numpy()
        got = onnx_probs(Path(out), crops)
        info["max_abs_diff"] = float(np.max(np.abs(ref - got)))
        if info["max_abs_diff"] > 1e-3:
            raise CcrccError(f"{out}: ONNX Runtime and PyTorch disagree (max |diff| {info['max_abs_diff']:.2e})")
    return info
