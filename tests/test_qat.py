"""Quantization-aware training (experiment=qat, NVIDIA Model Optimizer): a short fine-tune whose checkpoint rebuilds
its quantizers, and the export of its own Q/DQ graph for TensorRT (checked, equal to PyTorch, int8 symmetric)."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from gridface.contract import ONNX_INPUT
from gridface.module import GridBoxModule
from gridface.stages.export import run as export_run
from gridface.stages.prune import run as prune_run
from gridface.train import run as train_run
from gridface.training.qat import STATE_KEY, check_tensorrt_int8, is_quantized

from .helpers import TINY, compose_config, compose_train

FEW_STEPS = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "logger=none"]


@pytest.fixture(scope="module")
def qat_ckpt(module_tmp):
    """A float checkpoint of a few steps, then experiment=qat from it (calibrated on one batch, two steps)."""
    pytest.importorskip("modelopt.torch.quantization", reason="nvidia-modelopt is not installed (pip install -e "
                                                              "'.[qat]')")
    tmp = module_tmp("qat")
    float_ckpt = train_run(compose_train(tmp / "float", [*TINY, *FEW_STEPS]))["last_checkpoint"]
    cfg = compose_train(tmp / "qat", [*TINY, *FEW_STEPS, "experiment=qat", f"model={float_ckpt}",
                                      "callbacks.quantize.calibration_batches=1"])
    assert cfg.optimizer.scheduler is None and cfg.optimizer.max_lr == 1.0e-4
    return train_run(cfg)["last_checkpoint"], float_ckpt, tmp


def test_qat_checkpoint_rebuilds_its_quantizers(qat_ckpt):
    ckpt, float_ckpt, _ = qat_ckpt
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved[STATE_KEY] and saved["qat"]["calibration_batches"] == 1
    assert saved["qat"]["float_modules"] == ["*backbone.stem.0.*", "*head.cov.*", "*head.bbox.*"]
    module = GridBoxModule.from_checkpoint(ckpt).eval()
    assert is_quantized(module.net) and module.qat_record["method"] == "qat"
    quantizers = dict(module.net.named_modules())
    assert quantizers["backbone.layer1.0.conv1.weight_quantizer"].is_enabled
    assert quantizers["backbone.layer1.0.conv1.input_quantizer"].is_enabled
    for name in ("backbone.stem.0", "head.cov", "head.bbox"):  # kept float, as post-training calibration keeps them
        assert not quantizers[f"{name}.weight_quantizer"].is_enabled
        assert not quantizers[f"{name}.input_quantizer"].is_enabled
    # the trained ranges come back: the rebuilt network is the one that was saved, not a fresh calibration
    amax = saved["state_dict"]["net.backbone.layer2.0.conv1.input_quantizer._amax"]
    assert torch.equal(quantizers["backbone.layer2.0.conv1.input_quantizer"].amax, amax)
    # fake quantization changes the outputs against the same weights in float
    x = torch.rand(1, 3, *module.input_hw)
    from gridface.training.qat import disabled_quantizers

    with torch.no_grad():
        q = module.net.predict(x)["bbox"]
        with disabled_quantizers(module.net):
            f = module.net.predict(x)["bbox"]
    assert 0 < (q - f).abs().max() < 1.0
    with pytest.raises(ValueError, match="quantization-aware training checkpoint"):
        GridBoxModule(model={"init_from": ckpt})


def test_qat_checkpoint_is_not_pruned(qat_ckpt, tmp_path):
    ckpt, _, tmp = qat_ckpt
    cfg = compose_config("prune", tmp_path / "prune", tmp / "cache", [f"model={ckpt}", "evaluate=false"])
    with pytest.raises(ValueError, match="is a quantization-aware training checkpoint: prune the float model"):
        prune_run(cfg)


def test_qat_export_is_tensorrts_int8_qdq_and_matches_pytorch(qat_ckpt, tmp_path):
    ckpt, _, tmp = qat_ckpt
    out = tmp_path / "export"
    result = export_run(compose_config("export", out, tmp / "cache", [f"model={ckpt}", "export=onnx_int8_trt"]))
    int8 = out / "last_int8_trt.onnx"
    assert result["onnx_int8"] == str(int8)  # the stage ran gridface.export.trt_check on it
    meta = json.loads((out / "last_int8_trt.onnx.json").read_text())
    assert meta["qat"]["method"] == "qat" and "calibration" not in meta and meta["quantization"]["target"] == "tensorrt"
    assert meta["exporter"] == "torchscript" and "float_of_qat" not in meta  # what wrote it; not a float model
    assert json.loads((out / "last.onnx.json").read_text())["precision"] == "fp32"
    ds = (out / "last_int8_trt_nvinfer.txt").read_text()
    assert "network-mode=1" in ds and "int8-calib-file" not in ds and "onnx-file=last_int8_trt.onnx" in ds
    model = onnx.load(str(int8))
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                   if n.op_type == "Constant"})
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) >= 2 * 17  # 17 quantized convolutions of ResNet18's 20 (+3 downsamples), stem and head float
    weight_axes = []
    for n in qdq:
        zero = consts[n.input[2]]
        assert zero.dtype == np.int8 and not zero.any()
        if consts[n.input[1]].size > 1:  # per-channel: a weight's, along its output channels
            weight_axes.append(next((a.i for a in n.attribute if a.name == "axis"), 1))
    assert weight_axes and set(weight_axes) == {0}
    # ONNX Runtime runs the Q/DQ graph as the fake-quantized PyTorch network computes
    module = GridBoxModule.from_checkpoint(ckpt).eval()
    import onnxruntime as ort

    x = np.random.default_rng(0).random((2, 3, *module.input_hw), dtype=np.float32)
    got = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, {ONNX_INPUT: x})
    with torch.no_grad():
        ref = module.net.predict(torch.from_numpy(x))
    assert np.abs(got[1] - ref["bbox"].numpy()).max() < 0.05 and np.abs(got[0] - ref["cov"].numpy()).max() < 0.05
    with pytest.raises(ValueError, match="quantization-aware training checkpoint: its INT8 model is TensorRT's"):
        export_run(compose_config("export", tmp_path / "u8", tmp / "cache", [f"model={ckpt}", "export=onnx_int8"]))
    # its FP32 ONNX quantized again: calibrated afresh, silently without the trained ranges
    for fmt in ("onnx_int8_trt", "onnx_int8"):
        with pytest.raises(ValueError, match=r"last\.onnx is the FP32 model of a quantization-aware training "
                                             r"checkpoint \(.*last\.ckpt\): its INT8 model is written from that"):
            export_run(compose_config("export", tmp_path / fmt, tmp / "cache", [f"model={out / 'last.onnx'}",
                                                                                f"export={fmt}"]))


def quant_cfg(weight: dict, inputs: dict, algorithm: object = "max") -> dict:
    """Model Optimizer's config layout (0.47): a list of quantizer-name patterns and their settings."""
    return {"quant_cfg": [{"quantizer_name": "*", "enable": False}, {"quantizer_name": "*weight_quantizer", **weight},
                          {"quantizer_name": "*input_quantizer", **inputs}], "algorithm": algorithm}


INT8_WEIGHT, INT8_INPUT = {"cfg": {"num_bits": 8, "axis": 0}}, {"cfg": {"num_bits": 8, "axis": None}}


@pytest.mark.parametrize(("name", "cfg"), [
    ("FP8_DEFAULT_CFG", quant_cfg({"cfg": {"num_bits": (4, 3), "axis": None}}, {"cfg": {"num_bits": (4, 3)}})),
    ("INT8_WEIGHT_ONLY_CFG", quant_cfg(INT8_WEIGHT, {"enable": False})),
    ("INT8_SMOOTHQUANT_CFG", quant_cfg(INT8_WEIGHT, INT8_INPUT, "smoothquant")),
    ("MXINT8_DEFAULT_CFG", quant_cfg({"cfg": {"num_bits": 8, "block_sizes": {-1: 32}}},
                                     {"cfg": {"num_bits": 8, "block_sizes": {-1: 32}}}, None)),
])
def test_a_quantization_base_the_int8_export_cannot_write_is_refused_before_training(name, cfg):
    """callbacks.quantize.base=FP8_DEFAULT_CFG trained to the end, and its export then stopped in ONNX Runtime
    (TRT_FP8QuantizeLinear is not a registered op). The configs above are Model Optimizer 0.47's, as written there."""
    check_tensorrt_int8("INT8_DEFAULT_CFG", quant_cfg(INT8_WEIGHT, INT8_INPUT))
    with pytest.raises(ValueError, match=rf"callbacks\.quantize\.base={name}: gridface's QAT exports TensorRT's int8 "
                                         r"Q/DQ scheme .*use INT8_DEFAULT_CFG"):
        check_tensorrt_int8(name, cfg)


def test_qat_with_an_export_callback_of_onnx_runtimes_uint8_scheme_is_refused_before_training(tmp_path):
    """experiment=qat callbacks/export=onnx_int8 trained to the end and was refused by the export then (no
    result.json): a QAT model exports only TensorRT's symmetric int8 graph."""
    from gridface.stages.checks import check_stage_config
    from gridface.utils.validate import ConfigError

    with pytest.raises(ConfigError, match=r"callbacks/export=onnx_int8 \(export\.activation_type=uint8\) with "
                                          r"quantization-aware training .*use callbacks/export=onnx_int8_trt"):
        check_stage_config(compose_train(tmp_path, ["callbacks/quantize=qat", "callbacks/export=onnx_int8"]))
    for fine in (["callbacks/quantize=qat", "callbacks/export=onnx_int8_trt"], ["callbacks/export=onnx_int8"]):
        check_stage_config(compose_train(tmp_path, fine))


def test_a_qat_checkpoint_where_model_optimizer_is_missing_says_what_it_is_and_what_runs_without_it(tmp_path):
    """evaluate or infer on a QAT checkpoint without nvidia-modelopt said only that quantization-aware training
    needs it, as if the user had asked to train."""
    import importlib.util

    if importlib.util.find_spec("modelopt") is not None:
        pytest.skip("nvidia-modelopt is installed: the checkpoint loads")
    module = GridBoxModule(input_size=(64, 96))
    path = tmp_path / "qat.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
                STATE_KEY: {"modelopt_state_dict": []}}, path)
    with pytest.raises(ImportError, match=r"qat\.ckpt is a quantization-aware training checkpoint \(fake-quantized\): "
                                          r"running it in PyTorch needs NVIDIA Model Optimizer \(pip install -e "
                                          r"'\.\[qat\]'\); its exported ONNX model .* runs without it"):
        GridBoxModule.from_checkpoint(path)
