"""Where a GPU training run's time goes, in one run (issue: train at the GPU's speed).

  (a) one training step alone (random input, no data) per precision / memory layout / torch.compile;
  (b) the data loader alone: the CPU path at 1 and N workers, and the device paths (dataset.decode=gpu: nvJPEG;
      hybrid: workers decode and letterbox, the device augments and encodes), each delivering built batches on
      the GPU as the Trainer gets them (pinned, built on a side stream; ``gpu+thread``: from the build thread,
      dataset.prefetch=thread);
  (c) ``gridface.train dataset=widerface`` end to end on synthetic WIDER-layout images of 1024x~700, per epoch,
      with the share of the training time the loop spent waiting for its next batch, for each data path side by
      side (same seed); optionally (--compile-train) the fastest path again with torch.compile.

Each part appends to ``<out>/gpu_bench.json`` and rewrites ``<out>/gpu_bench.md`` as soon as it ends, so a run cut
short still leaves what it measured. The record names the GPU, driver, CUDA, torch and CPU.

    python scripts/bench_gpu.py --out bench_results/gpu               # on a GPU machine
    python scripts/bench_gpu.py --tiny --out /tmp/gpu_bench            # a dry run of every part on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from gridface.data.synthetic import SyntheticSpec, generate_widerface
from gridface.loss import GridBoxLoss
from gridface.model import GridBoxNet
from gridface.utils.io import write_json, write_text
from gridface.utils.machine import machine_line, machine_record


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------- (a) step alone
def step_alone(device: str, hw: tuple[int, int], batch: int, steps: int, precision: str, channels_last: bool,
               compile_net: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    net = GridBoxNet().to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    if compile_net:
        net.compile()
    loss_fn = GridBoxLoss()
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    gh, gw = hw[0] // 16, hw[1] // 16
    x = torch.rand(batch, 3, *hw, device=device).contiguous(memory_format=fmt)
    target = {"cov": (torch.rand(batch, 1, gh, gw, device=device) > 0.9).float(),
              "cov_norm": torch.rand(batch, 1, gh, gw, device=device),
              "bbox": torch.rand(batch, 4, gh, gw, device=device),
              "ignore": torch.zeros(batch, 1, gh, gw, device=device)}
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device, enabled=precision == "16-mixed")

    def one() -> None:
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(net(x), target)["loss"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    start = time.perf_counter()
    for _ in range(3 if not compile_net else 5):  # warm-up (cudnn.benchmark, compilation)
        one()
    sync()
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        one()
    sync()
    seconds = time.perf_counter() - start
    return {"precision": precision, "channels_last": channels_last, "compile": compile_net,
            "images_per_s": batch * steps / seconds, "ms_per_step": 1000 * seconds / steps, "warmup_s": warm}


# ------------------------------------------------------------------------------------------- (b) loader alone
def data_path_overrides(path: str) -> list[str]:
    """A data path of --decodes as overrides: ``cpu``, ``gpu``, ``hybrid``; ``+thread`` builds a device path's
    batches in the build thread (dataset.prefetch=thread)."""
    decode, _, prefetch = path.partition("+")
    return [*([f"dataset.decode={decode}"] if decode != "cpu" else []),
            *([f"dataset.prefetch={prefetch}"] if prefetch else [])]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from gridface.utils.hydra import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def loader_alone(cfg, device: str, batches: int) -> dict[str, Any]:
    """Images/s of the train loader as the Trainer gets its batches: on the device (pinned, and on the device paths
    built on the side stream), after the datamodule's ``on_after_batch_transfer``; timed from the end of the second
    batch (worker start-up left out) to the device's end of the last."""
    from hydra.utils import instantiate
    from lightning_fabric.utilities.apply_func import move_data_to_device

    dm = instantiate(cfg.datamodule, _convert_="all")
    dm.device = torch.device(device)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()  # on the GPU wrapped as the Trainer gets it (dm.device: no trainer attached)
    images, it = 0, iter(loader)
    start = time.perf_counter()
    for i in range(batches + 2):
        try:
            batch = next(it)
        except StopIteration:
            break
        batch = dm.on_after_batch_transfer(move_data_to_device(batch, torch.device(device)), 0)
        if i == 0:
            sync()
            first = time.perf_counter() - start
        if i == 1:
            sync()
            t0 = time.perf_counter()
        if i >= 2:
            images += int(batch["image"].shape[0])
    sync()
    seconds = time.perf_counter() - t0
    return {"workers": int(cfg.datamodule.num_workers), "decode": str(cfg.dataset.get("decode", "cpu")),
            "images_per_s": images / seconds, "first_batch_s": first, "batches": i - 1}


# ----------------------------------------------------------------------------------------- (c) end to end
class EpochClock(pl.Callback):
    """Per epoch: training seconds and images, seconds the loop waited for its next batch (the host's gap between
    one step's end hook and the next step's start hook: fetching from the loader and moving the batch; the device is
    not synchronised per step, so the host queues ahead of the GPU as in a real run), validation seconds and the
    whole epoch (the device synchronised at its boundaries). Lightning validates inside the training epoch, before
    ``on_train_epoch_end``."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sync()
        self.t_epoch = self.t_end = time.perf_counter()
        self.wait = self.step = 0.0
        self.images = 0
        self.train_s = self.val_s = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.t_start = time.perf_counter()
        self.wait += self.t_start - self.t_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.t_end = time.perf_counter()
        self.step += self.t_end - self.t_start
        self.images += int(batch["image"].shape[0]) if "image" in batch else 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            sync()
            self.t_val = time.perf_counter()
            self.train_s = self.t_val - self.t_epoch

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            sync()
            self.val_s = time.perf_counter() - self.t_val

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        sync()
        epoch_s = time.perf_counter() - self.t_epoch
        train_s = self.train_s or epoch_s
        self.epochs.append({"train_s": train_s, "images": self.images, "images_per_s": self.images / train_s,
                            "wait_share": self.wait / max(train_s, 1e-9),
                            "ms_per_step": 1000 * train_s / max(1, trainer.num_training_batches),
                            "val_s": self.val_s or 0.0, "epoch_s": epoch_s,
                            "epoch_images_per_s": self.images / epoch_s})


def end_to_end(overrides: list[str], out_dir: Path) -> dict[str, Any]:
    from gridface.stages.train import run

    cfg = compose(overrides)
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
    clock = EpochClock()
    start = time.perf_counter()
    result = run(cfg, callbacks=[clock])
    return {"overrides": overrides, "epochs": clock.epochs, "wall_s": time.perf_counter() - start,
            "val/AP50": result["metrics"].get("val/AP50"), "precision": str(cfg.trainer.precision)}


# ------------------------------------------------------------------------------------------------- report
def markdown(record: dict[str, Any]) -> str:
    lines = [f"# GPU training benchmark\n\nMachine: {record['machine']}  \ntorch {record['versions'].get('torch')}, "
             f"pytorch-lightning {record['versions'].get('pytorch-lightning')}; input {record['input']}, batch "
             f"{record['batch']}\n"]
    if not record.get("complete", True):  # (records before 2026-12-07 have no such key)
        lines += [f"**Incomplete:** the run stopped before it measured everything it was asked ({record['asked']}); "
                  "what it measured is below.\n"]
    lines += [f"Note: {note}\n" for note in record.get("notes", [])]
    if record.get("step"):
        lines += ["## (a) One training step alone (random input, no data)\n",
                  "| precision | channels_last | compile | images/s | ms/step | warm-up s |",
                  "|---|---|---|---:|---:|---:|"]
        lines += [f"| {r['precision']} | {r['channels_last']} | {r['compile']} | {r['images_per_s']:.0f} | "
                  f"{r['ms_per_step']:.1f} | {r['warmup_s']:.1f} |" for r in record["step"]]
    if record.get("loader"):
        lines += ["\n## (b) The train loader alone, batches delivered on the device\n",
                  "| data path | workers | images/s | first batch s |", "|---|---:|---:|---:|"]
        lines += [f"| {r['decode']} | {r['workers']} | {r['images_per_s']:.0f} | {r['first_batch_s']:.1f} |"
                  for r in record["loader"]]
    if record.get("train"):
        lines += ["\n## (c) gridface.train dataset=widerface end to end\n",
                  "| data path | epoch | train images/s | whole epoch images/s (incl. val) | epoch s "
                  "| loop waiting for its next batch | ms/step | AP50 at the end |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in record["train"]:
            for i, e in enumerate(r["epochs"]):
                ap = f"{r['val/AP50']:.4f}" if i == len(r["epochs"]) - 1 and r["val/AP50"] is not None else ""
                path = r["decode"] + (" + compile" if r.get("compile") else "")
                lines.append(f"| {path} | {i} | {e['images_per_s']:.0f} | {e['epoch_images_per_s']:.0f} | "
                             f"{e['epoch_s']:.1f} | {100 * e['wait_share']:.1f} % | {e['ms_per_step']:.1f} | {ap} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from gridface.utils.validate import whole_number

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_results/gpu")
    ap.add_argument("--parts", default="step,loader,train")
    ap.add_argument("--width", type=int, default=736)
    ap.add_argument("--height", type=int, default=416)
    ap.add_argument("--batch", type=whole_number(1), default=32)
    ap.add_argument("--steps", type=whole_number(1), default=30)
    ap.add_argument("--images", type=whole_number(1), default=4096, help="synthetic WIDER-layout training images")
    ap.add_argument("--val-images", type=whole_number(1), default=256)
    ap.add_argument("--epochs", type=whole_number(1), default=3)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--loader-batches", type=whole_number(1), default=20)
    ap.add_argument("--decodes", default="cpu,gpu,gpu+thread,hybrid", help="data paths to compare in (b) and (c) "
                    "(dataset.decode, +thread: dataset.prefetch=thread)")
    ap.add_argument("--compile-train", action="store_true", help="(c) once more with compile=true, on the data path "
                    "that was fastest")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile in (a)")
    ap.add_argument("--compile-only", action="store_true", help="(a) with torch.compile alone, added to an existing "
                    "record in --out")
    ap.add_argument("--tiny", action="store_true", help="a dry run on the CPU: tiny sizes, every part")
    ap.add_argument("--data", default=None, help="where the synthetic WIDER-layout set is (generated once)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tiny:  # tiny sizes where the command gave none
        tiny = {"width": 192, "height": 128, "batch": 4, "steps": 2, "images": 16, "val_images": 8, "epochs": 1,
                "workers": 1, "loader_batches": 2}
        for key, value in tiny.items():
            if getattr(args, key) == ap.get_default(key):
                setattr(args, key, value)
    torch.backends.cudnn.benchmark = True
    hw = (args.height, args.width)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"machine": machine_line(), **machine_record(), "input": f"{args.width}x{args.height}",
                              "batch": args.batch, "step": [], "loader": [], "train": [], "complete": False,
                              "asked": f"--parts {args.parts} --decodes {args.decodes}", "notes": []}
    if args.compile_only:
        if (out / "gpu_bench.json").is_file():
            record = json.loads((out / "gpu_bench.json").read_text())
        else:
            record["complete"] = True  # a record of this one row
        record["step"].append(step_alone(device, hw, args.batch, args.steps, "bf16-mixed" if device == "cuda"
                                         else "32-true", True, True))
        write_json(out / "gpu_bench.json", record)
        write_text(out / "gpu_bench.md", markdown(record))
        print(markdown(record), flush=True)
        return
    parts = set(args.parts.split(","))

    def save() -> None:
        write_json(out / "gpu_bench.json", record)
        write_text(out / "gpu_bench.md", markdown(record))
        print(markdown(record), flush=True)

    if "step" in parts:
        variants = [("32-true", False, False), ("bf16-mixed", False, False), ("16-mixed", True, False),
                    ("bf16-mixed", True, False)]
        if args.compile:
            variants.append(("bf16-mixed", True, True))
        if device == "cpu":
            variants = [("32-true", False, False), ("32-true", True, False)]
            record["notes"].append("no CUDA device: (a) times 32-true only, with and without channels_last "
                                   "(bf16-mixed, 16-mixed and torch.compile are GPU rows)")
        for precision, cl, comp in variants:
            record["step"].append(step_alone(device, hw, args.batch, args.steps, precision, cl, comp))
            save()

    if not parts & {"loader", "train"}:
        record["complete"] = True
        save()
        return
    data = Path(args.data or out / "widerface_synthetic")
    big = {"width": 1024, "height": 700} if not args.tiny else {"width": 320, "height": 224}
    spec = {**big, "min_faces": 1, "max_faces": 12, "min_face": 3.0, "small_face": 24.0, "small_fraction": 0.3,
            "max_face_frac": 0.45}
    t = time.perf_counter()
    generate_widerface(data, {"train": SyntheticSpec(num_images=args.images, seed=0, **spec),  # or reuses it
                              "val": SyntheticSpec(num_images=args.val_images, seed=1, **spec)})
    record["generate_s"] = time.perf_counter() - t
    record["data"] = f"{args.images} train + {args.val_images} val synthetic WIDER-layout images, {big['width']}x" \
                     f"{big['height']}"
    trainer = "trainer=gpu" if device == "cuda" else "trainer=cpu"
    base = ["dataset=widerface", f"dataset.root={data}", trainer, f"dataset.batch_size={args.batch}",
            f"dataset.input_width={args.width}", f"dataset.input_height={args.height}", "print_config=false",
            "seed=0"]
    decodes = [d for d in args.decodes.split(",") if d]

    if "loader" in parts:
        for decode, workers in dict.fromkeys([("cpu", 1), *((d, args.workers) for d in decodes)]):
            if decode not in decodes:
                continue
            over = [*base, f"dataset.num_workers={workers}", *data_path_overrides(decode)]
            try:
                batches = args.loader_batches if workers > 1 else max(2, args.loader_batches // 5)
                record["loader"].append({**loader_alone(compose(over), device, batches), "decode": decode})
            except Exception as e:  # noqa: BLE001 - a missing data path must not lose the other figures
                record["loader"].append({"decode": decode, "workers": workers, "images_per_s": float("nan"),
                                         "first_batch_s": float("nan"), "error": repr(e)})
            save()

    if "train" in parts:
        runs = [(d, False) for d in decodes]
        if args.compile_train:
            runs.append((None, True))
        for decode, comp in runs:
            if decode is None:  # the fastest path of the runs above, compiled
                done = [r for r in record["train"] if r.get("epochs")]
                if not done:
                    continue
                decode = max(done, key=lambda r: r["epochs"][-1]["images_per_s"])["decode"]
            over = [*base, f"dataset.num_workers={args.workers}", f"trainer.max_epochs={args.epochs}",
                    "trainer.num_sanity_val_steps=0", "checkpoint_every_n_steps=0", "logger=none",
                    "callbacks.progress_bar.refresh_rate=50", f"compile={str(comp).lower()}",
                    *data_path_overrides(decode)]
            try:
                r = end_to_end(over, out / f"train_{decode.replace('+', '_')}{'_compile' if comp else ''}")
            except Exception as e:  # noqa: BLE001
                r = {"epochs": [], "val/AP50": None, "error": repr(e)}
            record["train"].append({"decode": decode, "compile": comp, **r})
            save()
    record["complete"] = True
    save()
    print(json.dumps({"out": str(out)}))


if __name__ == "__main__":
    from gridface.utils.errors import script_errors

    script_errors(main)
