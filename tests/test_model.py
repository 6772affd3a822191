import pytest
import torch
import torchvision

from gridface.model import Backbone, GridBoxNet


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


@pytest.mark.parametrize("name, hint", [("resnet18", "resnet18-f37072fd.pth"),
                                        ("mobilenet_v3_large", "mobilenet_v3_large-5c1a4163.pth"),
                                        ("efficientnet_b0", "efficientnet_b0_rwightman-7f5810bc.pth"),
                                        ("resnet10", "publishes no ResNet10")])
def test_missing_imagenet_file_says_what_to_get(tmp_path, name, hint):
    with pytest.raises(FileNotFoundError, match=hint):
        Backbone(name, pretrained=str(tmp_path / "nope.pth"))


def test_loads_torchvision_resnet18_state_dict(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    bb = Backbone("resnet18", pretrained=str(path))
    assert all("layer1.0.downsample" in k for k in bb.imagenet_missing) and bb.imagenet_missing
    torch.testing.assert_close(bb.stem[0].weight, ref.conv1.weight)
    torch.testing.assert_close(bb.layer3[1].conv2.weight, ref.layer3[1].conv2.weight)


def test_loads_torchvision_mobilenet_v3_state_dict_up_to_stride_16(tmp_path):
    ref = torchvision.models.mobilenet_v3_large(weights=None)
    path = tmp_path / "mnv3.pth"
    torch.save(ref.state_dict(), path)
    bb = Backbone("mobilenet_v3_large", pretrained=str(path))
    assert bb.imagenet_missing == [] and len(bb.features) == 13  # features 13.. run at stride 32
    torch.testing.assert_close(bb.features[12].block[2].fc1.weight, ref.features[12].block[2].fc1.weight)
    torch.testing.assert_close(bb.features[12].block[3][1].running_var, ref.features[12].block[3][1].running_var)


def test_wrong_state_dict_is_an_error(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"foo.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not torchvision's resnet18 state dict.*unexpected .'foo.weight'"):
        Backbone("resnet18", pretrained=str(path))
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), path)  # another backbone's file
    with pytest.raises(ValueError, match="not torchvision's mobilenet_v3_large state dict.*other shapes"):
        Backbone("mobilenet_v3_large", pretrained=str(path))


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match="network.backbone='resnet9'.*mobilenet_v3_large"):
        GridBoxNet(backbone="resnet9")
