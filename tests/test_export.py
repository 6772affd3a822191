"""Export: ONNX checker, ORT parity with PyTorch, names/shapes, INT8 QDQ, metadata, DeepStream, TensorRT."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from gridface.contract import ONNX_INPUT, ONNX_OUTPUTS
from gridface.data.sources import synthetic
from gridface.export.onnx_export import ExportCheckError, export_onnx, verify_onnx, write_model_metadata
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
def images(module_tmp):
    root = module_tmp("img")
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
    with pytest.raises(ExportCheckError, match="differs from PyTorch by up to .* more than the tolerance 0.0001"):
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
def trained_ckpt(module_tmp):
    tmp = module_tmp("ck")
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
    int8_meta = json.loads((tmp_path / "export" / "last_int8.onnx.json").read_text())
    calib = int8_meta["calibration"]
    assert calib["source"] == "train split of synthetic" and calib["from"] == 24 and calib["drawn"] == 8
    assert calib["seed"] == 0 and int8_meta["data"]["train"]["num_images"] == 24
    assert result["onnx_max_abs_diff"]["bbox"] < 1e-3 and result["int8_correlation"]["cov"] > 0.8
    assert int8_meta["quantization"]["target"] == "onnxruntime" and int8_meta["precision"] == "int8"
    meta = json.loads((tmp_path / "export" / "last.onnx.json").read_text())
    assert meta["input_hw"] == [128, 192] and meta["class_names"] == ["face"] and meta["stride"] == 16
    assert meta["output_names"] == list(ONNX_OUTPUTS) and meta["source_checkpoint"] == str(ckpt)
    assert {"torch", "onnx", "onnxruntime"} <= set(meta["versions"])
    # TensorRT refuses the uint8 model: DeepStream's config is the FP32 ONNX's
    assert not (tmp_path / "export" / "last_int8_nvinfer.txt").exists()
    ds = (tmp_path / "export" / "last_nvinfer.txt").read_text()
    assert "output-blob-names=output_bbox/BiasAdd;output_cov/Sigmoid" in ds and "network-mode=0" in ds
    assert "infer-dims=3;128;192" in ds and "net-scale-factor=0.0039215686" in ds
    # The evaluator's backends load both exports with the checkpoint's settings.
    ref = load_backend(ckpt)
    for name in ("last.onnx", "last_int8.onnx"):
        b = load_backend(tmp_path / "export" / name)
        assert b.input_hw == ref.input_hw and b.postprocess == ref.postprocess
    x = np.random.default_rng(0).random((2, 3, 128, 192), dtype=np.float32)
    np.testing.assert_allclose(load_backend(tmp_path / "export" / "last.onnx").run(x)[1], ref.run(x)[1], atol=1e-4)


def test_a_missing_calibration_folder_stops_the_export_before_it_exports(tmp_path, trained_ckpt, monkeypatch):
    """The folder was looked for after the FP32 export and its check (minutes on a real model)."""
    import gridface.stages.export as export_stage

    ckpt, tmp = trained_ckpt
    monkeypatch.setattr(export_stage, "fp32_from_checkpoint", lambda *a: pytest.fail("exported before the check"))
    cfg = compose_export(tmp_path, tmp / "cache", [f"model={ckpt}", "export=onnx_int8",
                                                   f"export.calibration.folder={tmp_path / 'nowhere'}"])
    with pytest.raises(FileNotFoundError, match=r"export.calibration.folder = '.*nowhere' is not a folder"):
        export_run(cfg)


def test_an_export_that_fails_its_check_leaves_the_previous_model_and_its_metadata(tmp_path, trained_ckpt,
                                                                                    monkeypatch):
    """Exported once, then again with a check that fails: the error names the model (not its staging name) and says
    it was not written, and the folder holds the first model with its own metadata, byte for byte, and no staging
    file (the unchecked model used to replace it, beside the first one's metadata, and gridface.infer ran it)."""
    import gridface.stages.export as stage

    ckpt, tmp = trained_ckpt
    export_run(compose_export(tmp_path, tmp / "cache", [f"model={ckpt}"]))
    folder = tmp_path / "export"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert {"last.onnx", "last.onnx.json"} <= set(before)

    def failing_check(path, net, images, atol):
        raise ExportCheckError(f"{path}: ONNX Runtime differs from PyTorch by up to 0.5, more than the tolerance")

    monkeypatch.setattr(stage, "verify_onnx", failing_check)
    with pytest.raises(ExportCheckError, match=r"export/last.onnx: ONNX Runtime differs .* \(last.onnx was not "
                                               r"written\)"):
        export_run(compose_export(tmp_path, tmp / "cache", [f"model={ckpt}"]))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_an_export_from_an_onnx_model_writes_only_into_its_own_folder_and_counts_its_calibration(tmp_path,
                                                                                                 trained_ckpt):
    """export=onnx_int8 from an FP32 ONNX into another folder: the INT8 model and the DeepStream files are written
    there (the config naming the FP32 model relative to itself, as nvinfer resolves it); the source folder is left
    as it was (its hand-edited nvinfer config used to be overwritten). Its calibration folder holds unreadable files:
    skipped, and the record says how many images calibrated (it used to count the files drawn)."""
    ckpt, tmp = trained_ckpt
    first = export_run(compose_export(tmp_path / "a", tmp / "cache", [f"model={ckpt}"]))
    source = Path(first["onnx"]).parent
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    calibration = tmp_path / "calib"
    calibration.mkdir()
    for i in range(3):
        cv2.imwrite(str(calibration / f"ok{i}.jpg"), np.random.default_rng(i).integers(0, 255, (96, 128, 3),
                                                                                        np.uint8))
    (calibration / "empty.jpg").write_bytes(b"")
    (calibration / "text.png").write_text("not an image")
    result = export_run(compose_export(tmp_path / "b", tmp / "cache", [
        f"model={first['onnx']}", "export=onnx_int8", f"export.calibration.folder={calibration}",
        "export.calibration.images=5"]))
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before
    out = tmp_path / "b" / "export"
    assert Path(result["onnx_int8"]).parent == out and Path(result["deepstream_config"]).parent == out
    ds = Path(result["deepstream_config"]).read_text()
    assert "onnx-file=../../a/export/last.onnx" in ds and (out / "last_labels.txt").is_file()
    calib = json.loads(Path(result["onnx_int8"] + ".json").read_text())["calibration"]
    assert (calib["drawn"], calib["images"], calib["skipped"]) == (5, 3, 2)


def test_an_onnx_model_this_onnx_cannot_load_keeps_its_reason_and_a_damaged_one_says_so(tmp_path, net):
    """A whole model with an IR version newer than the installed onnx/ONNX Runtime read (an older runtime on the
    deployment box): their reason, not 'damaged'; a cut file: damaged."""
    from gridface.contract import embedded_metadata
    from gridface.inference.backends import OnnxBackend

    path = export_onnx(net, tmp_path / "m.onnx", HW)
    proto = onnx.load(str(path))
    proto.ir_version = 99
    onnx.save(proto, str(tmp_path / "future.onnx"))
    write_model_metadata(tmp_path / "future.onnx", {"format": "onnx_fp32", "input_name": ONNX_INPUT,
                                                    "output_names": list(ONNX_OUTPUTS), "input_hw": list(HW),
                                                    "class_names": ["face"], "stride": 16})
    with pytest.raises(ValueError, match=r"future.onnx: cannot be loaded here: .*IR version") as e:
        OnnxBackend(tmp_path / "future.onnx")
    assert "damaged" not in str(e.value)
    data = path.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.onnx: not a readable ONNX model .*a damaged or partly copied file"):
        embedded_metadata(tmp_path / "cut.onnx")


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
    meta = json.loads((tmp_path / "export" / "last_fp32.engine.json").read_text())
    assert meta["precision"] == "fp32" and meta["tensorrt_version"] and meta["gpu"]
    x = np.random.default_rng(0).random((2, 3, 128, 192), dtype=np.float32)
    trt_out = load_backend(result["engine"]).run(x)
    ort_out = load_backend(result["onnx"]).run(x)
    np.testing.assert_allclose(trt_out[0], ort_out[0], atol=1e-2)  # the coverage map
    np.testing.assert_allclose(trt_out[1], ort_out[1], atol=1e-2)  # and the box map


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


# DeepStream nvinfer's config keys ([property] and [class-attrs-*] groups), as gstnvinfer_property_parser.h names
# them (DeepStream 6.4-9.x SDK API reference), with the type each value must parse as.
NVINFER_PROPERTY_KEYS = {
    "gpu-id": int, "net-scale-factor": float, "offsets": "floats", "model-color-format": int, "onnx-file": str,
    "model-engine-file": str, "int8-calib-file": str, "labelfile-path": str, "infer-dims": "ints",
    "batch-size": int, "process-mode": int, "network-type": int, "network-mode": int, "num-detected-classes": int,
    "interval": int, "gie-unique-id": int, "output-blob-names": str, "cluster-mode": int,
    "maintain-aspect-ratio": int, "symmetric-padding": int, "parse-bbox-func-name": str, "custom-lib-path": str,
    "output-tensor-meta": int, "workspace-size": int, "scaling-filter": int, "scaling-compute-hw": int,
}
NVINFER_CLASS_KEYS = {
    "pre-cluster-threshold": float, "post-cluster-threshold": float, "eps": float, "minBoxes": int,
    "dbscan-min-score": float, "nms-iou-threshold": float, "detected-min-w": int, "detected-min-h": int,
    "detected-max-w": int, "detected-max-h": int, "topk": int, "group-threshold": int,
}


def check_nvinfer_config(path, meta, network_mode, engine=None):
    """Every key one nvinfer parses, every value of its type, and the values the model's metadata fixes."""
    import configparser

    from gridface.postprocess import decoder_defaults

    ini = configparser.ConfigParser(delimiters=("=",))
    ini.optionxform = str  # nvinfer's keys are case-sensitive (minBoxes)
    ini.read_string(path.read_text())
    assert set(ini.sections()) == {"property", "class-attrs-all"}
    for section, table in (("property", NVINFER_PROPERTY_KEYS), ("class-attrs-all", NVINFER_CLASS_KEYS)):
        for key, value in ini[section].items():
            assert key in table, f"{path.name}: [{section}] {key} is not an nvinfer key"
            kind = table[key]
            if kind in (int, float):
                kind(value)
            elif kind in ("floats", "ints"):
                [(float if kind == "floats" else int)(v) for v in value.split(";")]
    prop, cls = ini["property"], ini["class-attrs-all"]
    post = {**decoder_defaults(), **meta["postprocess"]}
    assert int(prop["network-mode"]) == network_mode and "int8-calib-file" not in prop
    assert prop["output-blob-names"].split(";") == [meta["output_names"][1], meta["output_names"][0]]
    assert int(prop["num-detected-classes"]) == len(meta["class_names"])
    assert float(prop["net-scale-factor"]) == pytest.approx(meta["input_scale"])
    assert prop["offsets"] == "0.0;0.0;0.0" and prop["infer-dims"] == f"3;{meta['input_hw'][0]};{meta['input_hw'][1]}"
    assert int(prop["cluster-mode"]) == {"dbscan": 1, "nms": 2, "hybrid": 3}[post["clustering"]]
    assert float(cls["eps"]) == post["dbscan_eps"] and float(cls["dbscan-min-score"]) == post["dbscan_min_samples"]
    assert float(cls["pre-cluster-threshold"]) == post["coverage_threshold"]
    assert (path.parent / prop["onnx-file"]).is_file() and (path.parent / prop["labelfile-path"]).is_file()
    assert prop.get("model-engine-file") == (engine.name if engine else None)


def _meta(**extra):
    from gridface.contract import deployment_metadata

    meta = deployment_metadata("onnx_fp32", (128, 192), ["face", "mask"], 16, {"clustering": "dbscan"}, "m.ckpt",
                               None, {}, precision="fp32")
    return {k: v for k, v in {**meta, **extra}.items() if v is not None}


@pytest.mark.parametrize(("meta", "engine", "mode"), [
    (_meta(), None, 0),
    (_meta(format="onnx_int8", precision="int8", quantization={"target": "tensorrt"}), None, 1),
    (_meta(format="onnx_int8", precision="int8", quantization={"target": "tensorrt"}), "int8", 1),
    (_meta(), "fp16", 2),
    (_meta(format="onnx_int8", precision=None, calibration={"activation_type": "int8"}), None, 1),  # an older file
])
def test_deepstream_config_matches_model_and_nvinfer_keys(tmp_path, meta, engine, mode):
    from gridface.export.deepstream import write_deepstream_config

    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    engine_path = tmp_path / f"m_{engine}.engine" if engine else None
    cfg, _ = write_deepstream_config(model, meta, engine_path, {"precision": engine} if engine else None)
    check_nvinfer_config(cfg, meta, mode, engine_path)
    assert "score_threshold" not in str(meta) and "threshold);" not in cfg.read_text()
    # a model with its own threshold: named in a comment (not carried: nvinfer scores clusters its own way)
    meta = {**meta, "postprocess": {**meta["postprocess"], "score_threshold": 0.82}}
    cfg, _ = write_deepstream_config(model, meta, engine_path, {"precision": engine} if engine else None)
    check_nvinfer_config(cfg, meta, mode, engine_path)
    assert "# gridface.infer keeps boxes whose score=confidence is >= 0.8200 (the model's threshold);" in \
        cfg.read_text() and "post-cluster-threshold" not in cfg.read_text().replace("no post-cluster-threshold", "")


def test_deepstream_refuses_onnx_runtime_uint8_model(tmp_path):
    from gridface.export.deepstream import write_deepstream_config

    meta = _meta(format="onnx_int8", precision="int8", quantization={"target": "onnxruntime"})
    with pytest.raises(ValueError, match="uint8 INT8 model; TensorRT and DeepStream take only symmetric"):
        write_deepstream_config(tmp_path / "m_int8.onnx", meta)


def test_metadata_inside_the_model_and_sidecars_old_and_new(tmp_path, net):
    """A model alone runs (its metadata_props), the sidecar is named after the whole file, and the sidecars of
    earlier versions still load unless they describe another kind of file (an engine's record for the ONNX)."""
    from gridface.contract import embedded_metadata, metadata_path, read_metadata
    from gridface.export.onnx_export import write_model_metadata

    path = export_onnx(net, tmp_path / "m_int8.onnx", HW)
    meta = {**_meta(), "input_hw": list(HW), "class_names": ["face"]}
    write_model_metadata(path, meta)
    assert metadata_path(path).name == "m_int8.onnx.json" and embedded_metadata(path) == meta
    metadata_path(path).unlink()
    assert read_metadata(path) == meta and load_backend(path).input_hw == HW  # the file alone
    (tmp_path / "m_int8.json").write_text(json.dumps({**meta, "format": "tensorrt", "input_hw": [32, 32]}))
    assert read_metadata(path)["input_hw"] == list(HW)  # an engine's old record is not this model's
    (tmp_path / "m_int8.json").write_text(json.dumps({**meta, "stride": 8}))
    assert read_metadata(path)["stride"] == 8  # an old sidecar of this model still loads (and wins, as before)


@pytest.fixture
def fake_trt(monkeypatch):
    """The stand-in TensorRT (tests/fake_tensorrt.py) in sys.modules for one test; yields its install()."""
    from tests import fake_tensorrt

    names = ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime")
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)

    def install(version="10.99"):
        fake_tensorrt.install(version)
        return sys.modules["tensorrt"]
    yield install
    for name in names:
        sys.modules.pop(name, None)


def _files_and_metadata(folder):
    from gridface.contract import read_metadata

    return {p.name: read_metadata(p) for p in sorted(folder.iterdir()) if p.suffix in (".onnx", ".engine")}


@pytest.mark.slow
def test_tensorrt_int8_twice_keeps_every_files_metadata(tmp_path, trained_ckpt, fake_trt):
    """export=tensorrt_int8 on the stand-in TensorRT: the engine comes from the symmetric *_int8_trt.onnx (checked,
    strongly typed, no INT8 flag or calibrator), every file keeps its own metadata when run twice, DeepStream's config
    says INT8 with the engine and no calibration file."""
    ckpt, tmp = trained_ckpt
    trt = fake_trt("10.99")
    out = tmp_path / "export"
    args = [f"model={ckpt}", "export=tensorrt_int8", "export.calibration.images=8", "export.batch_profile=[1,2,4]"]
    first = export_run(compose_export(tmp_path, tmp / "cache", args))
    before = _files_and_metadata(out)
    assert sorted(before) == ["last.onnx", "last_int8.engine", "last_int8_trt.onnx"]
    assert before["last.onnx"]["precision"] == "fp32" and before["last_int8_trt.onnx"]["quantization"] == {
        "target": "tensorrt", "activations": "int8", "symmetric_activations": True, "weights": "int8 symmetric",
        "bias": "float", "format": "QDQ"}
    engine_meta = before["last_int8.engine"]
    assert engine_meta["format"] == "tensorrt" and engine_meta["onnx"] == "last_int8_trt.onnx"
    assert engine_meta["calibration"]["drawn"] == 8 and engine_meta["tensorrt_check"]["quantize"] > 0
    assert trt.builds == [{"strongly_typed": True, "flags": [], "calibrator": False, "qdq": True,
                           "profile": {"input_1": ((1, 3, 128, 192), (2, 3, 128, 192), (4, 3, 128, 192))}}]
    check_nvinfer_config(out / "last_int8_trt_nvinfer.txt", before["last_int8_trt.onnx"], 1, out / "last_int8.engine")
    export_run(compose_export(tmp_path, tmp / "cache", args))
    assert _files_and_metadata(out) == before and len(trt.builds) == 2
    # the TensorRT-bound ONNX given as it is, to TensorRT 11 (no INT8 flag exists): built without quantizing again
    trt11 = fake_trt("11.0")
    again = export_run(compose_export(tmp_path, tmp / "cache", [f"model={first['onnx_int8']}", "export=tensorrt_int8",
                                                                "export.batch_profile=[1,2,4]"]))
    assert "onnx_int8" not in again and trt11.builds == [{**trt.builds[0]}]
    # ORT's uint8 model is refused
    export_run(compose_export(tmp_path, tmp / "cache", [f"model={first['onnx']}", "export=onnx_int8",
                                                        "export.calibration.images=8"]))
    with pytest.raises(ValueError, match="ONNX Runtime's uint8 INT8 model, which TensorRT refuses"):
        export_run(compose_export(tmp_path, tmp / "cache", [f"model={out / 'last_int8.onnx'}", "export=tensorrt_int8"]))
    assert _files_and_metadata(out)["last_int8_trt.onnx"] == before["last_int8_trt.onnx"]


@pytest.mark.slow
def test_tensorrt10_fp16_builder_path(tmp_path, trained_ckpt, fake_trt):
    ckpt, tmp = trained_ckpt
    trt = fake_trt("10.99")
    result = export_run(compose_export(tmp_path, tmp / "cache", [f"model={ckpt}", "export=tensorrt_fp16"]))
    assert trt.builds[0]["flags"] == ["FP16"] and not trt.builds[0]["strongly_typed"] and not trt.builds[0]["qdq"]
    from gridface.contract import read_metadata

    meta = read_metadata(result["engine"])
    assert meta["precision"] == "fp16" and meta["format"] == "tensorrt" and meta["gpu"] == "Fake GPU"
    check_nvinfer_config(tmp_path / "export" / "last_nvinfer.txt", read_metadata(result["onnx"]), 2,
                         tmp_path / "export" / "last_fp16.engine")
