"""Export: ONNX checker, ORT parity with PyTorch, names/shapes, INT8 QDQ, metadata, DeepStream, TensorRT."""

import json
import subprocess
import sys

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from gridface.contract import ONNX_INPUT, ONNX_OUTPUTS
from gridface.data.sources import synthetic
from gridface.export.onnx_export import export_onnx, verify_onnx
from gridface.export.quantize import quantize_int8
from gridface.inference.backends import load_backend
from gridface.model import GridBoxNet
from gridface.stages.export import run as export_run
from gridface.train import run as train_run

from .helpers import TINY, compose_config, compose_train

HW = (96, 160)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    n = GridBoxNet().eval()
    with torch.no_grad():  # non-trivial BN statistics, so the export is checked on a realistic graph
        for m in n.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return n


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("img")
    samples = synthetic(str(root), num_images=12, seed=3, width=HW[1], height=HW[0])
    from gridface.stages.export import load_images

    return load_images([s.image for s in samples], HW, 12), [s.image for s in samples]


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_onnx_names_shapes_and_parity(tmp_path, net, images, exporter):
    path = export_onnx(net, tmp_path / "m.onnx", HW, exporter=exporter)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert not list(tmp_path.glob("*.data")), "the ONNX must be one self-contained file"
    assert [i.name for i in model.graph.input] == [ONNX_INPUT]
    assert [o.name for o in model.graph.output] == list(ONNX_OUTPUTS)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = images[0][:batch]
        cov, bbox = sess.run(list(ONNX_OUTPUTS), {ONNX_INPUT: x})
        assert cov.shape == (batch, 1, HW[0] // 16, HW[1] // 16) and bbox.shape == (batch, 4, HW[0] // 16, HW[1] // 16)
        diffs = verify_onnx(path, net, x, atol=1e-4)
        assert max(diffs.values()) < 1e-4


def test_verify_fails_loudly_on_mismatch(tmp_path, net, images):
    path = export_onnx(net, tmp_path / "m.onnx", HW)
    other = GridBoxNet().eval()
    with pytest.raises(RuntimeError, match="differs from PyTorch"):
        verify_onnx(path, other, images[0][:2], atol=1e-4)


def test_int8_qdq_keeps_sigmoid_float_and_correlates(tmp_path, net, images):
    fp32 = export_onnx(net, tmp_path / "m.onnx", HW)
    int8 = quantize_int8(fp32, tmp_path / "m_int8.onnx", images[1], HW)
    graph = onnx.load(str(int8)).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    (sig,) = [n for n in graph.node if n.op_type == "Sigmoid"]
    # The coverage sigmoid runs in float and its output is the graph output, never re-quantized.
    assert sig.output[0] == ONNX_OUTPUTS[0]
    assert all(n.op_type != "QuantizeLinear" for n in graph.node if sig.output[0] in n.input)
    a = ort.InferenceSession(str(fp32)).run(None, {ONNX_INPUT: images[0]})
    b = ort.InferenceSession(str(int8)).run(None, {ONNX_INPUT: images[0]})
    for x, y in zip(a, b, strict=True):
        assert np.corrcoef(x.ravel(), y.ravel())[0, 1] > 0.9
    assert not list(tmp_path.glob("*.pre.onnx"))


@pytest.mark.parametrize("keep_stem_float", [False, True])
def test_int8_stem_and_head_float_options(tmp_path, net, images, keep_stem_float):
    fp32 = export_onnx(net, tmp_path / "m.onnx", HW)
    int8 = quantize_int8(fp32, tmp_path / "m_int8.onnx", images[1], HW, keep_stem_float=keep_stem_float)
    graph = onnx.load(str(int8)).graph
    producers = {o: n for n in graph.node for o in n.output}

    def weight_is_quantized(conv) -> bool:  # a QDQ conv reads its weight through a DequantizeLinear
        return producers.get(conv.input[1]) is not None and producers[conv.input[1]].op_type == "DequantizeLinear"

    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert weight_is_quantized(convs[0]) is not keep_stem_float
    assert all(weight_is_quantized(c) for c in convs[1:-2])
    assert not any(weight_is_quantized(c) for c in convs[-2:])  # the head stays float by default


def test_int8_extra_float_nodes(tmp_path, net, images):
    fp32 = export_onnx(net, tmp_path / "m.onnx", HW)
    graph = onnx.load(str(fp32)).graph
    target = [n.name for n in graph.node if n.op_type == "Conv"][3]
    int8 = quantize_int8(fp32, tmp_path / "m_int8.onnx", images[1], HW, extra_float_nodes=[target])
    q = onnx.load(str(int8)).graph
    producers = {o: n.op_type for n in q.node for o in n.output}
    (conv,) = [n for n in q.node if n.name == target]
    assert producers.get(conv.input[1]) != "DequantizeLinear"  # its weight stayed float
    with pytest.raises(ValueError, match="float_nodes.*not nodes"):
        quantize_int8(fp32, tmp_path / "bad.onnx", images[1], HW, extra_float_nodes=["/no/such/Conv"])


def test_int8_without_images_is_an_error(tmp_path, net):
    fp32 = export_onnx(net, tmp_path / "m.onnx", HW)
    with pytest.raises(ValueError, match="calibration needs images"):
        quantize_int8(fp32, tmp_path / "q.onnx", [], HW)


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ck")
    cfg = compose_train(tmp, [*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                              "trainer.limit_val_batches=1", "logger=none"])
    return train_run(cfg)["last_checkpoint"], tmp


def compose_export(tmp_path, cache, overrides):
    return compose_config("export", tmp_path / "export", cache, overrides)


@pytest.mark.slow
def test_export_cli_int8_metadata_deepstream_and_backends(tmp_path, trained_ckpt):
    ckpt, tmp = trained_ckpt
    # no dataset=: verification and calibration images come from the data the checkpoint was trained on
    cfg = compose_export(tmp_path, tmp / "cache", [f"model={ckpt}", "export=onnx_int8",
                                                   "export.calibration.images=8"])
    result = export_run(cfg)
    int8_meta = json.loads((tmp_path / "export" / "last_int8.json").read_text())
    calib = int8_meta["calibration"]
    assert calib["source"] == "train split of synthetic" and calib["from"] == 24 and calib["drawn"] == 8
    assert calib["seed"] == 0 and int8_meta["data"]["train"]["num_images"] == 24
    assert result["onnx_max_abs_diff"]["bbox"] < 1e-3 and result["int8_correlation"]["cov"] > 0.8
    meta = json.loads((tmp_path / "export" / "last.json").read_text())
    assert meta["input_hw"] == [128, 192] and meta["class_names"] == ["face"] and meta["stride"] == 16
    assert meta["output_names"] == list(ONNX_OUTPUTS) and meta["source_checkpoint"] == str(ckpt)
    assert {"torch", "onnx", "onnxruntime"} <= set(meta["versions"])
    ds = (tmp_path / "export" / "last_int8_nvinfer.txt").read_text()
    assert "output-blob-names=output_bbox/BiasAdd;output_cov/Sigmoid" in ds and "network-mode=1" in ds
    assert "infer-dims=3;128;192" in ds and "net-scale-factor=0.0039215686" in ds
    # The evaluator's backends load both exports with the checkpoint's settings.
    ref = load_backend(ckpt)
    for name in ("last.onnx", "last_int8.onnx"):
        b = load_backend(tmp_path / "export" / name)
        assert b.input_hw == ref.input_hw and b.postprocess == ref.postprocess
    x = np.random.default_rng(0).random((2, 3, 128, 192), dtype=np.float32)
    np.testing.assert_allclose(load_backend(tmp_path / "export" / "last.onnx").run(x)[1], ref.run(x)[1], atol=1e-4)


@pytest.mark.slow
def test_tensorrt_export_stops_with_clear_message_without_tensorrt(tmp_path, trained_ckpt):
    pytest.importorskip("onnx")
    if not _tensorrt_missing():
        pytest.skip("TensorRT, cuda-python and a GPU are present: the engine test runs instead")
    ckpt, tmp = trained_ckpt
    cfg = compose_export(tmp_path, tmp / "cache", [f"model={ckpt}", "export=tensorrt_fp16"])
    with pytest.raises(RuntimeError, match="TensorRT"):
        export_run(cfg)
    assert not (tmp_path / "export" / "last.onnx").exists()  # stopped before the minutes of ONNX export


def _tensorrt_missing() -> str:
    """Why a real engine cannot run here ('' when it can): TensorRT (only from NVIDIA's index), cuda-python, a GPU."""
    from gridface.inference.tensorrt_backend import require_tensorrt

    try:
        require_tensorrt()
    except RuntimeError as e:
        return str(e).split(". ")[0]
    return ""


@pytest.mark.tensorrt
@pytest.mark.skipif(bool(_tensorrt_missing()), reason=_tensorrt_missing() or "n/a")
def test_tensorrt_engine_matches_onnx(tmp_path, trained_ckpt):
    ckpt, tmp = trained_ckpt
    cfg = compose_export(tmp_path, tmp / "cache", [f"model={ckpt}", "export=tensorrt_fp32"])
    result = export_run(cfg)
    meta = json.loads((tmp_path / "export" / "last_fp32.json").read_text())
    assert meta["precision"] == "fp32" and meta["tensorrt_version"] and meta["gpu"]
    x = np.random.default_rng(0).random((2, 3, 128, 192), dtype=np.float32)
    trt_out = load_backend(result["engine"]).run(x)
    ort_out = load_backend(result["onnx"]).run(x)
    np.testing.assert_allclose(trt_out[1], ort_out[1], atol=1e-2)


DEPLOY_DRIVER = """
import sys
import numpy as np
from gridface import Detector
det = Detector.load(sys.argv[1])
faces = det(np.zeros((200, 300, 3), np.uint8))
sys.argv = ["gridface.infer", "model=" + sys.argv[1], "source=" + sys.argv[2], "hydra.run.dir=" + sys.argv[3]]
from gridface.infer import main
main()
heavy = ("torch", "torchvision", "pytorch_lightning", "albumentations")
print("modules:", sorted(m for m in heavy if m in sys.modules))
"""


@pytest.mark.slow
def test_onnx_deployment_imports_neither_torch_nor_lightning(tmp_path, trained_ckpt):
    """Detector and gridface.infer on an ONNX model: a deployment box needs numpy, OpenCV, scipy, onnxruntime."""
    ckpt, tmp = trained_ckpt
    export_run(compose_export(tmp_path, tmp / "cache", [f"model={ckpt}", "export=onnx"]))
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"{i}.jpg"), np.random.default_rng(i).integers(0, 255, (120, 160, 3), np.uint8))
    out = subprocess.run([sys.executable, "-c", DEPLOY_DRIVER, str(tmp_path / "export" / "last.onnx"), str(src),
                          str(tmp_path / "run")], capture_output=True, text=True, check=True)
    assert "3 images (0 skipped)" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "modules: []"
