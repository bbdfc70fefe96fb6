"""Model registry: the study's networks, built from timm, with ImageNet or local weights.

``create_model("se_resnet34", weights="imagenet")`` is one dictionary lookup (timm's registry
idea). Both networks are timm ResNets, whose parameter names equal torchvision's, so ResNet34
weights in either naming load into both.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ccrcc_grade.core.errors import CcrccError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _resnet34(num_classes: int) -> nn.Module:
    import timm

    return timm.create_model("resnet34", pretrained=False, num_classes=num_classes)


def _se_resnet34(num_classes: int) -> nn.Module:
    """ResNet34 with a squeeze-and-excitation block in every basic block (Hu et al. 2018):
    reduction 16, applied to the residual branch after its last BN and before the addition.
    timm's own ``seresnet34`` rounds the bottleneck up to a multiple of 8 (64/16 -> 8); the
    ``rd_divisor=1`` keeps the paper's exact C/16."""
    from timm.layers import SEModule
    from timm.models.resnet import BasicBlock, ResNet

    return ResNet(
        block=BasicBlock,
        layers=(3, 4, 6, 3),
        num_classes=num_classes,
        block_args=dict(attn_layer=partial(SEModule, rd_ratio=1 / 16, rd_divisor=1)),
    )


MODELS: dict[str, Callable[[int], nn.Module]] = {"resnet34": _resnet34, "se_resnet34": _se_resnet34}


def imagenet_resnet34_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ResNet34 (IMAGENET1K_V1, the weights PyTorch users of 2020-2024
    fine-tuned from), downloaded and cached by torchvision's normal mechanism (TORCH_HOME)."""
    from torchvision.models import ResNet34_Weights

    try:
        return ResNet34_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
    except Exception as exc:  # network errors come in many types (URLError, OSError, ...)
        raise CcrccError(
            f"could not download ImageNet ResNet34 weights ({exc.__class__.__name__}: {exc}); "
            "offline machines: pass --weights PATH to a local resnet34 state dict"
        ) from None


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A local ResNet34 state dict (.pth/.pt, torchvision or timm naming, or a safetensors file)."""
    path = Path(path)
    if not path.is_file():
        raise CcrccError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unpickling error types
        raise CcrccError(f"{path}: not a readable PyTorch state dict ({exc.__class__.__name__})") from None
    for key in ("state_dict", "model", "model_state"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CcrccError(f"{path}: does not contain a state dict of tensors")
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in sd.items()}


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Load backbone weights, skipping the classifier (its class count differs) and any tensor of
    the wrong shape. Returns the missing / unexpected / skipped keys for the user."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if not k.startswith("fc.") and k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in state if k not in usable and k in own)
    result = model.load_state_dict(usable, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    return {"missing": missing, "unexpected": sorted(k for k in state if k not in own), "skipped": skipped}


def create_model(name: str, weights: str = "none", num_classes: int = 2) -> tuple[nn.Module, dict]:
    """Build a registered model and load its initial weights.

    ``weights``: ``imagenet`` (download), ``none`` (random init) or a path to a ResNet34 state
    dict. For ``se_resnet34`` the ResNet34 weights fill the shared layers and the SE layers start
    fresh. Returns ``(model, load_report)``.
    """
    if name not in MODELS:
        raise CcrccError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    model = MODELS[name](num_classes)
    report: dict = {"weights": weights}
    if weights == "none":
        return model, report
    state = imagenet_resnet34_state_dict() if weights == "imagenet" else load_state_file(Path(weights))
    report.update(load_backbone(model, state))
    n_backbone = sum(1 for k in model.state_dict() if not k.startswith("fc.") and ".se." not in k)
    if len(report["missing"]) - sum(".se." in k for k in report["missing"]) > n_backbone // 2:
        raise CcrccError(
            f"{weights}: does not look like ResNet34 weights ({len(report['missing'])} of the model's tensors missing)"
        )
    return model, report


def uses_imagenet_norm(weights: str) -> bool:
    """ImageNet mean/std normalisation whenever the network starts from pretrained weights."""
    return weights != "none"
