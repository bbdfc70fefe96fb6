"""Checkpoints and batched inference, shared by training, evaluation, prediction and export."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ccrcc_grade import __version__
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.model.data import to_model_input

CHECKPOINT_FORMAT = "ccrcc-grade-checkpoint"
CHECKPOINT_VERSION = 1


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CcrccError("--device cuda requested but no CUDA device is available")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AVX-512 (BF16) or AMX, where oneDNN runs bf16 convolutions natively."""
    cap = torch.backends.cpu.get_cpu_capability().upper()
    return "AVX512" in cap or "AMX" in cap


CPU_BACKENDS = ("torch", "onnxruntime")


def cpu_backend() -> str:
    """The inference backend for this CPU: PyTorch (pre-packed bf16 oneDNN) where AVX-512 BF16 or
    AMX exist, else ONNX Runtime fp32, measured faster than PyTorch fp32 on AVX2-only CPUs (AMD
    EPYC, 2 cores: 46.5 vs 74.9 ms per 224 px slice). ``CCRCC_CPU_BACKEND=torch|onnxruntime``
    overrides the choice."""
    forced = os.environ.get("CCRCC_CPU_BACKEND", "").strip().lower()
    if forced:
        if forced not in CPU_BACKENDS:
            raise CcrccError(f"CCRCC_CPU_BACKEND must be {' or '.join(CPU_BACKENDS)}, got {forced!r}")
        return forced
    return "torch" if cpu_has_fast_bf16() else "onnxruntime"


def amp_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    """The autocast dtype for a device and --amp mode (None = full fp32)."""
    if mode == "off":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and (mode == "on" or cpu_has_fast_bf16()):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes (in name order): the checksum a
    checkpoint, its ONNX export's card and the workstation carry, verified on every load."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def make_checkpoint(model: nn.Module, meta: dict) -> dict:
    """A checkpoint is plain data (tensors, numbers, strings) so it loads with weights_only=True."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **meta,
        "state_dict": state,
        "weights_sha256": weights_sha256(state),
    }


def read_checkpoint(path: Path) -> dict:
    """Load and check one of our checkpoints (``weights_only=True``: no code from the file runs)."""
    path = Path(path)
    if not path.is_file():
        raise CcrccError(f"{path}: model file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have many types
        raise CcrccError(f"{path}: not a ccrcc-grade model file ({exc.__class__.__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CcrccError(f"{path}: not a ccrcc-grade model file")
    if ckpt.get("format_version") != CHECKPOINT_VERSION:
        raise CcrccError(
            f"{path}: saved by an incompatible ccrcc-grade version "
            f"(checkpoint format {ckpt.get('format_version')}, this version reads {CHECKPOINT_VERSION})"
        )
    want = ckpt.get("weights_sha256")
    if want is not None and weights_sha256(ckpt["state_dict"]) != want:
        raise CcrccError(
            f"{path}: the weights do not match the checksum stored with them (damaged or altered after "
            "training); this model is not used"
        )
    return ckpt


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """Fold batch norms into the convolutions (torch.fx) and use channels-last memory: the same
    function in eval mode, ~15-25% faster on CPU. Falls back to the plain model if tracing fails."""
    from torch.fx.experimental.optimization import fuse

    try:
        fused = fuse(model.eval())
    except Exception:  # a model fx cannot trace still works unfused
        fused = model.eval()
    return fused.to(memory_format=torch.channels_last)


class CpuBf16Model(nn.Module):
    """Inference-only bf16 runner for CPUs with AVX-512/AMX: BN folded, weights cast to bf16
    once and, where every layer supports it, pre-packed into oneDNN's blocked layout
    (``torch.utils.mkldnn``), so no weight is converted or reordered per call (autocast does
    both on every call, which dominates single-slice latency). Networks with layers oneDNN
    tensors lack (the SE blocks' mean) run as plain bf16 channels-last modules instead.
    Takes and returns float32 tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        import warnings

        from torch.utils import mkldnn

        try:  # to_mkldnn converts the (fused copy's) modules in place
            with warnings.catch_warnings():  # its modules use the deprecated (still working)
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script_method
                net = mkldnn.to_mkldnn(
                    optimize_for_inference(model).to(memory_format=torch.contiguous_format), torch.bfloat16
                )
            # torch.fx prints a traceback before re-raising; the probe's failure is expected for SE
            with torch.inference_mode(), contextlib.redirect_stderr(io.StringIO()):
                net(torch.zeros(1, 3, 32, 32, dtype=torch.bfloat16).to_mkldnn()).to_dense()
            self.net, self.mode = net, "onednn-prepacked"
        except (RuntimeError, NotImplementedError, TypeError):
            fused = optimize_for_inference(model)
            self.net, self.mode = fused.to(torch.bfloat16).to(memory_format=torch.channels_last), "bf16-channels-last"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.bfloat16)
        if self.mode == "onednn-prepacked":
            return self.net(x.contiguous().to_mkldnn()).to_dense().float()
        return self.net(x.contiguous(memory_format=torch.channels_last)).float()


def fast_inference_model(model: nn.Module, device: torch.device) -> tuple[nn.Module, torch.dtype | None]:
    """The fastest exact-enough eval form of a network on ``device`` and the autocast dtype to
    call it with: pre-packed bf16 on AVX-512/AMX CPUs, BN-folded fp32 on other CPUs, BN-folded +
    channels-last with autocast on CUDA. Evaluation and prediction both use this one function."""
    if device.type == "cpu" and cpu_has_fast_bf16():
        return CpuBf16Model(model.cpu()), None
    return optimize_for_inference(model.to(device)), amp_dtype(device, "auto")


def load_model(path: Path, device: torch.device | str = "cpu", optimize: bool = False) -> tuple[nn.Module, dict]:
    """Rebuild the network of a checkpoint with its trained weights, in eval mode
    (``optimize``: BN folded and channels-last, for evaluation and prediction)."""
    from ccrcc_grade.model.registry import create_model

    ckpt = read_checkpoint(path)
    model, _ = create_model(ckpt["model"], weights="none", num_classes=len(ckpt["classes"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CcrccError(f"{path}: weights do not fit a {ckpt['model']} ({str(exc).splitlines()[0]})") from None
    model.to(device).eval()
    if optimize:
        model = optimize_for_inference(model)
    return model, ckpt


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    images_u8: torch.Tensor | np.ndarray,
    image_size: int,
    normalize: bool,
    device: torch.device,
    amp: torch.dtype | None = None,
    batch_size: int = 64,
    channels_last: bool = False,
) -> np.ndarray:
    """Probability of the high-grade class for every uint8 crop (N, S, S)."""
    if isinstance(images_u8, np.ndarray):
        images_u8 = torch.from_numpy(np.ascontiguousarray(images_u8))
    model.eval()
    out = []
    for i in range(0, len(images_u8), batch_size):
        x = to_model_input(images_u8[i : i + batch_size].to(device), image_size, normalize, channels_last)
        with autocast(device, amp):
            logits = model(x)
        out.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)
