import pytest
import torch
import torchvision

from gridface.model import GridBoxNet
from gridface.model.backbone import ResNet18Stride16


def test_output_stride_16_and_head_shapes():
    net = GridBoxNet(num_classes=2).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 416, 736))
    assert out["cov_logits"].shape == (1, 2, 26, 46) and out["bbox"].shape == (1, 8, 26, 46)
    probs = net.predict(torch.rand(1, 3, 416, 736))
    assert probs["cov"].shape == (1, 2, 26, 46) and probs["cov"].min() >= 0 and probs["cov"].max() <= 1


def test_low_coverage_prior_at_init():
    net = GridBoxNet().eval()
    with torch.no_grad():
        cov = net.predict(torch.rand(2, 3, 64, 96))["cov"]
    assert cov.mean() < 0.05


def test_grayscale_input_is_replicated():
    net = GridBoxNet().eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        a = net(x)["cov_logits"]
        b = net(x.expand(-1, 3, -1, -1))["cov_logits"]
    torch.testing.assert_close(a, b)


def test_missing_imagenet_file_says_what_to_get(tmp_path):
    with pytest.raises(FileNotFoundError, match="resnet18-f37072fd.pth"):
        ResNet18Stride16(pretrained=str(tmp_path / "nope.pth"))


def test_loads_torchvision_resnet18_state_dict(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    bb = ResNet18Stride16()
    missing = bb.load_imagenet(path)
    assert all("layer1.0.downsample" in k for k in missing) and missing
    torch.testing.assert_close(bb.stem[0].weight, ref.conv1.weight)
    torch.testing.assert_close(bb.layer3[1].conv2.weight, ref.layer3[1].conv2.weight)


def test_wrong_state_dict_is_an_error(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"foo.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a torchvision ResNet18"):
        ResNet18Stride16(pretrained=str(path))
