"""TensorRTBackend's own logic (buffers grown and reused, copies in and out, the stream) on a stand-in runtime
(``tests/fake_tensorrt.py``), since a real engine needs a GPU; ``test_export.py`` runs a real one when present."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gridface.contract import deployment_metadata

ROOT = Path(__file__).resolve().parents[1]


def fake_engine(tmp_path: Path, data: bytes = b"fake engine") -> Path:
    engine = tmp_path / "model.engine"
    engine.write_bytes(data)
    meta = deployment_metadata("tensorrt", (64, 96), ["face"], 16, {}, "model.ckpt", None, {})
    (tmp_path / "model.json").write_text(json.dumps(meta))
    return engine


DRIVER = """
import sys
sys.path.insert(0, sys.argv[2])
from tests import fake_tensorrt
cudart = fake_tensorrt.install()
import numpy as np
from gridface.inference.backends import load_backend
backend = load_backend(sys.argv[1])
rng = np.random.default_rng(0)
for batch in (2, 5, 1):  # the input buffer grows once, then is reused
    x = rng.random((batch, 3, 64, 96), dtype=np.float32)
    cov, bbox = backend.run(x)
    assert cov.shape == (batch, 1, 4, 6) and bbox.shape == (batch, 4, 4, 6), (cov.shape, bbox.shape)
    np.testing.assert_array_equal(cov, x[:, :1, ::16, ::16])
    np.testing.assert_array_equal(bbox, x[:, [0, 1, 2, 0], ::16, ::16])
assert len(cudart.memory) == 3, cudart.memory.keys()  # input, cov, bbox: the outgrown input buffer was freed
from gridface import Detector
faces = Detector.load(sys.argv[1])(np.zeros((120, 160, 3), np.uint8))
print("modules:", sorted(m for m in ("torch", "torchvision", "pytorch_lightning") if m in sys.modules))
"""


def test_engine_runs_through_cuda_runtime_buffers_without_torch(tmp_path):
    out = subprocess.run([sys.executable, "-c", DRIVER, str(fake_engine(tmp_path)), str(ROOT)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "modules: []"


def test_engine_that_does_not_deserialize_names_the_file(tmp_path, monkeypatch):
    from tests import fake_tensorrt

    for name in ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    fake_tensorrt.install()
    from gridface.inference.backends import load_backend

    engine = fake_engine(tmp_path, b"garbage")
    with pytest.raises(RuntimeError, match=r"model\.engine: TensorRT could not deserialize"):
        load_backend(engine)
    for name in ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime"):
        sys.modules.pop(name, None)


def test_a_batch_larger_than_the_engines_profile_runs_in_batches_it_takes(tmp_path, monkeypatch):
    """gridface's engines take batches of 1 to 32 (their optimization profile); evaluate batch_size=64 set a shape
    TensorRT refuses (set_input_shape answers False) and went on with the previous call's output shapes."""
    import numpy as np

    from tests import fake_tensorrt

    for name in ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    fake_tensorrt.install()
    from gridface.inference.backends import load_backend

    try:
        backend = load_backend(fake_engine(tmp_path))
        x = np.random.default_rng(0).random((70, 3, 64, 96), dtype=np.float32)
        cov, bbox = backend.run(x)
        assert backend.context.batches == [32, 32, 6]
        np.testing.assert_array_equal(cov, x[:, :1, ::16, ::16])
        np.testing.assert_array_equal(bbox, x[:, [0, 1, 2, 0], ::16, ::16])
        with pytest.raises(RuntimeError, match=r"model\.engine: TensorRT refused the input shape \(0, 3, 64, 96\) "
                                               r"\(the engine takes batches of at most 32 at 64x96\)"):
            backend.run(x[:0])
    finally:
        for name in ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime"):
            sys.modules.pop(name, None)


def test_missing_tensorrt_or_cuda_python_is_a_clear_message(monkeypatch):
    from gridface.inference import tensorrt_backend

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    with pytest.raises(RuntimeError, match="tensorrt is not installed.*pip install tensorrt cuda-python"):
        tensorrt_backend.require_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", type(sys)("tensorrt"))
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(RuntimeError, match="cuda-python is not installed"):
        tensorrt_backend.require_tensorrt()
