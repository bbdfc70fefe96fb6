"""ONNX Runtime inference for exported models. Imports no PyTorch, so `predict` on an .onnx
file starts fast and small."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

import numpy as np

from ccrcc_grade.core.errors import CcrccError

ONNX_META_KEY = "ccrcc_grade"


def onnx_session(path: Path | bytes) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of a file or of a serialized model (bytes)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(
        path if isinstance(path, bytes) else str(path), opts, providers=["CPUExecutionProvider"]
    )


def onnx_weights_sha256(proto: onnx.ModelProto) -> str:
    """SHA-256 over an ONNX graph's initializers (names, types, shapes, values) in name order:
    the weights an exported model carries, as the metadata records them."""
    import hashlib

    from onnx import numpy_helper

    h = hashlib.sha256()
    for init in sorted(proto.graph.initializer, key=lambda i: i.name):
        a = numpy_helper.to_array(init)
        h.update(f"{init.name}|{a.dtype}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def verify_onnx_weights(path: Path, meta: dict) -> None:
    """An exported model's weights against the checksum in its metadata (exports before the
    checksum existed carry none and are read as before)."""
    import onnx

    want = meta.get("onnx_weights_sha256")
    if want is None:
        return
    if onnx_weights_sha256(onnx.load(str(path))) != want:
        raise CcrccError(
            f"{path}: the weights do not match the checksum in its metadata (damaged or altered after "
            "export); this model is not used"
        )


def read_onnx_metadata(path: Path) -> dict:
    """The checkpoint metadata stored in an exported model; CcrccError when it is not ours."""
    try:
        sess = onnx_session(path)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise CcrccError(f"{path}: not a readable ONNX model ({exc.__class__.__name__})") from None
    raw = sess.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)
    if not raw:
        raise CcrccError(f"{path}: not an ONNX model exported by ccrcc-grade (no {ONNX_META_KEY} metadata)")
    meta = json.loads(raw)
    verify_onnx_weights(path, meta)
    return meta


def onnx_probs(path: Path, crops_u8: np.ndarray, session: ort.InferenceSession | None = None) -> np.ndarray:
    sess = session or onnx_session(path)
    return sess.run(["prob_high"], {"crops": crops_u8.astype(np.float32)})[0].astype(np.float64)
