"""Training-side benchmarks: train images/s at 736x416 batch 8 in fp32 and in bf16-mixed (autocast, the two
alternated step by step), data-loader images/s alone, target encoding ms/image, decode + clustering ms/image.
Results go to bench_results/train.{json,md}, with the CPU, its ISA and the library versions.

Measured side by side in one process so the ratios are meaningful on a noisy machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from gridface.data.dataset import DetectionDataset, collate
from gridface.data.sources import synthetic
from gridface.data.transforms import build_augment
from gridface.loss import GridBoxLoss
from gridface.model import GridBoxNet
from gridface.postprocess import GridBoxDecoder
from gridface.targets import GridBoxTargetEncoder
from gridface.utils.io import write_json, write_text
from gridface.utils.machine import machine_line, machine_record


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    from gridface.utils.validate import whole_number

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=736)
    ap.add_argument("--height", type=int, default=416)
    ap.add_argument("--batch", type=whole_number(1), default=8)
    ap.add_argument("--steps", type=whole_number(1), default=5)
    ap.add_argument("--bf16-steps", type=int, default=1,
                    help="bf16-mixed steps to time (0: skip); without AVX-512 BF16 or AMX a step takes minutes")
    ap.add_argument("--images", type=whole_number(1), default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args()
    hw = (args.height, args.width)
    results: dict = {"machine": machine_line(), **machine_record(), "threads": torch.get_num_threads(),
                     "input": f"{args.width}x{args.height}", "batch": args.batch}

    with tempfile.TemporaryDirectory() as tmp:
        samples = synthetic(tmp, num_images=args.images, seed=0, width=args.width, height=args.height)
        encoder = GridBoxTargetEncoder()
        from hydra import compose, initialize_config_dir
        from hydra.utils import instantiate

        from gridface.utils.hydra import config_dir

        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            aug_cfg = compose("train").augment
        augment = build_augment(instantiate(aug_cfg))
        ds = DetectionDataset(samples, hw, encoder, augment, "bench")

        # 1. target encoding alone, on the boxes of the set
        boxes = [s.boxes for s in samples]
        enc_t = timed(lambda: [encoder(b, np.zeros(len(b)), hw) for b in boxes], 3)
        results["target_encoding_ms_per_image"] = min(enc_t) / len(boxes) * 1e3
        results["faces_per_image"] = float(np.mean([len(b) for b in boxes]))

        # 2. data loader alone (read, letterbox, augment, encode, collate)
        loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers, collate_fn=collate)
        next(iter(loader))
        t = time.perf_counter()
        n = sum(b["image"].shape[0] for b in loader)
        results["dataloader_images_per_s"] = n / (time.perf_counter() - t)

        # 3. training step alone (forward, loss, backward, Adam) on a fixed batch
        net = GridBoxNet().train()
        loss_fn = GridBoxLoss()
        opt = torch.optim.Adam(net.parameters(), 1e-4)
        batch = next(iter(DataLoader(ds, batch_size=args.batch, collate_fn=collate)))
        size = results["batch"] = batch["image"].shape[0]  # --images below --batch: a smaller batch, counted as it is

        def step(bf16: bool = False) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = loss_fn(net(batch["image"]), batch)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()

        step()
        fp32, bf16 = [], []
        for i in range(max(args.steps, args.bf16_steps)):  # alternated, so both see the same machine state
            if i < args.steps:
                fp32 += timed(step, 1)
            if i < args.bf16_steps:  # no warm-up step: one-time set-up is small beside a CPU bf16 step
                bf16 += timed(lambda: step(bf16=True), 1)
        results["train_images_per_s"] = size / statistics.median(fp32)
        if bf16:
            results["train_images_per_s_bf16_mixed"] = size / statistics.median(bf16)
            results["bf16_mixed_over_fp32"] = results["train_images_per_s_bf16_mixed"] / results["train_images_per_s"]
            results["bf16_steps_timed"] = len(bf16)
        results["dataloader_over_train_ratio"] = results["dataloader_images_per_s"] / results["train_images_per_s"]

        # 4. decode + clustering on real network outputs of a partly trained-like map
        net.eval()
        with torch.no_grad():
            out = net.predict(batch["image"])
        # Realistic maps: the ground-truth targets (what a trained model approximates) plus noise.
        cov = (batch["cov"] + 0.02 * torch.rand_like(batch["cov"])).clamp(0, 1)
        bbox = batch["bbox"] + 0.01 * torch.randn_like(batch["bbox"])
        for name in ("dbscan", "nms", "hybrid"):
            dec = GridBoxDecoder(clustering=name)
            tt = timed(lambda dec=dec: dec(cov, bbox, hw), 5)
            results[f"decode_{name}_ms_per_image"] = statistics.median(tt) / size * 1e3
        tt = timed(lambda: GridBoxDecoder()(out["cov"], out["bbox"], hw), 3)
        results["decode_dbscan_untrained_ms_per_image"] = statistics.median(tt) / size * 1e3

    out_dir = Path(args.out)
    write_json(out_dir / "train.json", results)
    lines = ["| measure | value |", "| --- | --- |"] + [
        f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in results.items()]
    write_text(out_dir / "train.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from gridface.utils.errors import script_errors

    script_errors(main)
