"""ccrcc_grade.model.registry: architectures and weights."""

from __future__ import annotations

import pytest
import torch

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.model.registry import MODELS, create_model


def _torchvision_state(path):
    import torchvision

    torch.manual_seed(1)
    sd = torchvision.models.resnet34(weights=None).state_dict()
    torch.save(sd, path)
    return sd


def test_registry_builds_two_class_networks():
    assert set(MODELS) >= {"resnet34", "se_resnet34"}
    for name in ("resnet34", "se_resnet34"):
        m, _ = create_model(name)
        assert m(torch.zeros(2, 3, 64, 64)).shape == (2, 2)
    with pytest.raises(CcrccError, match="unknown model 'vgg'"):
        create_model("vgg")


def test_se_in_every_basic_block_with_reduction_16():
    m, _ = create_model("se_resnet34")
    blocks = [b for layer in (m.layer1, m.layer2, m.layer3, m.layer4) for b in layer]
    assert len(blocks) == 3 + 4 + 6 + 3
    for b in blocks:
        c = b.conv2.out_channels
        assert b.se.fc1.out_channels == c // 16 and b.se.fc2.out_channels == c
    plain, _ = create_model("resnet34")
    assert not any("se" in n.split(".") for n, _ in plain.named_modules())


def test_se_gates_the_residual_branch_before_the_addition():
    """With the SE gate forced shut, a block's output is relu(shortcut): SE scales the residual
    branch only (Hu et al. 2018, Fig. 3), not the sum."""
    m, _ = create_model("se_resnet34")
    m.eval()
    block = m.layer2[0]  # has a downsampling shortcut
    with torch.no_grad():
        block.se.fc2.weight.zero_()
        block.se.fc2.bias.fill_(-1e4)  # sigmoid -> 0
        x = torch.randn(1, 64, 16, 16)
        assert torch.allclose(block(x), torch.relu(block.downsample(x)), atol=1e-6)
        block.se.fc2.bias.fill_(1e4)  # sigmoid -> 1: a plain basic block
        y = torch.relu(block.bn2(block.conv2(block.act1(block.bn1(block.conv1(x))))) + block.downsample(x))
        assert torch.allclose(block(x), y, atol=1e-5)


def test_local_weights_in_torchvision_naming(tmp_path):
    sd = _torchvision_state(tmp_path / "r34.pth")
    for name in ("resnet34", "se_resnet34"):
        m, rep = create_model(name, weights=str(tmp_path / "r34.pth"))
        assert torch.equal(m.state_dict()["layer3.2.conv1.weight"], sd["layer3.2.conv1.weight"])
        assert rep["unexpected"] == [] and rep["skipped"] == ["fc.bias", "fc.weight"]
        se_missing = [k for k in rep["missing"] if ".se." in k]
        assert len(rep["missing"]) == len(se_missing) == (64 if name == "se_resnet34" else 0)


def test_local_weights_timm_naming_and_wrapped_state(tmp_path):
    import timm

    torch.manual_seed(2)
    sd = timm.create_model("resnet34").state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "timm.pt")
    m, rep = create_model("resnet34", weights=str(tmp_path / "timm.pt"))
    assert torch.equal(m.state_dict()["conv1.weight"], sd["conv1.weight"]) and rep["missing"] == []


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "weights file not found"),
        (b"garbage", "not a readable PyTorch state dict"),
        ({"a.weight": torch.zeros(3)}, "does not look like ResNet34 weights"),
    ],
    ids=["missing", "not-torch", "other-network"],
)
def test_bad_weight_files(tmp_path, content, needle):
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CcrccError, match=needle) as e:
        create_model("resnet34", weights=str(path))
    assert str(path) in str(e.value)


def test_imagenet_weights_through_torchvisions_cache(tmp_path, monkeypatch):
    """`--weights imagenet` uses torchvision's download-and-cache; a file already in the cache
    (TORCH_HOME/hub/checkpoints) is used without any network access."""
    from torchvision.models import ResNet34_Weights

    fname = ResNet34_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    ckpt_dir = tmp_path / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    sd = _torchvision_state(ckpt_dir / fname)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    m, rep = create_model("se_resnet34", weights="imagenet")
    assert torch.equal(m.state_dict()["layer4.2.conv2.weight"], sd["layer4.2.conv2.weight"])
    assert rep["weights"] == "imagenet"
