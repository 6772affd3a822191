"""Which layers cost accuracy when quantized: quantize the model with each Conv/Add node in turn left in
float, and report the relative error of the INT8 outputs against FP32 on validation images. A node whose
exclusion shrinks the error most is a candidate for ``export.calibration.float_nodes`` (the stem was).

    python scripts/int8_sensitivity.py --checkpoint <.ckpt> [--stem-float] [dataset overrides ...]

Calibration and validation images come from the export config's dataset (the same as gridface.export).
Results: bench_results/int8_sensitivity.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from gridface.contract import ONNX_INPUT
from gridface.data.dataset import iter_network_inputs
from gridface.export.onnx_export import export_onnx
from gridface.export.quantize import float_nodes, quantize_int8
from gridface.module import GridBoxModule
from gridface.utils.hydra import config_dir
from gridface.utils.io import write_json, write_text


def relative_errors(fp32: list[np.ndarray], int8_path: Path, images: np.ndarray) -> dict[str, float]:
    got = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"]).run(None, {ONNX_INPUT: images})
    return {name: float(np.abs(a - b).mean() / np.abs(a).mean())
            for name, a, b in zip(("cov", "bbox"), fp32, got, strict=True)}


def main() -> None:
    from gridface.utils.validate import whole_number

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--calibration-images", type=whole_number(1), default=64)
    ap.add_argument("--val-images", type=whole_number(1), default=48)
    ap.add_argument("--stem-float", action="store_true", help="keep the stem float in every run (the default export)")
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("overrides", nargs="*", help="export-config overrides, e.g. dataset=kitti dataset.root=...")
    args = ap.parse_args()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("export", overrides=args.overrides)
    module = GridBoxModule.from_checkpoint(args.checkpoint).eval()
    hw = module.input_hw
    calib = [s.image for s in instantiate(cfg.dataset.train)()][: args.calibration_images]
    val = np.stack(list(itertools.islice(iter_network_inputs([s.image for s in instantiate(cfg.dataset.val)()], hw),
                                         args.val_images)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(module.net, Path(tmp) / "fp32.onnx", hw)
        ref = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {ONNX_INPUT: val})
        always = set(float_nodes(fp32, keep_stem_float=args.stem_float))
        candidates = [n.name for n in onnx.load(str(fp32)).graph.node
                      if n.op_type in ("Conv", "Add") and n.name not in always]
        for node in [None, *candidates]:
            q = quantize_int8(fp32, Path(tmp) / "int8.onnx", calib, hw, keep_stem_float=args.stem_float,
                              extra_float_nodes=[node] if node else ())
            rows.append({"float_node": node or "(none)", **relative_errors(ref, q, val)})
            print(rows[-1], flush=True)
    out = Path(args.out)
    write_json(out / "int8_sensitivity.json", {"checkpoint": args.checkpoint, "stem_float": args.stem_float,
                                               "rows": rows})
    lines = ["| node left in float | cov relative error | bbox relative error |", "|---|---:|---:|"]
    lines += [f"| {r['float_node']} | {r['cov']:.4f} | {r['bbox']:.4f} |" for r in rows]
    write_text(out / "int8_sensitivity.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from gridface.utils.errors import script_errors

    script_errors(main)
