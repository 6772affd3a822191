"""Tensor ops dispatched per training step: gridface's Lightning step under the GPU recipe's settings against the
bare step (forward, loss, backward, Adam), and per batch built by the device data paths, counted on the CPU.

Why: on a GPU every op that computes is at least one kernel launch, queued by the one Python thread that also runs
Lightning's loop. Ops beyond the bare step (guards, regulariser, logging) cost launch time on the host and tiny
kernels on the device, whatever the batch size. This counts them without a GPU: each op is seen once as it enters
torch's dispatcher (a ``TorchDispatchMode``), between the step's start and end hooks. View and metadata ops (no
kernel), host reads of CPU scalars and allocations are counted apart. Adam runs with ``foreach=True``, as on CUDA
(on the CPU torch defaults to one op per parameter). The device paths' batch build (``dataset.decode=gpu|hybrid``,
TAO's augmentation, 32 synthetic 1024x700 WIDER-layout images at 736x416) runs on the same thread as the step, so
its ops add to the step's; decoding is counted apart (one batched op on CUDA, one per image on CPU tensors).

    PYTHONPATH=src python scripts/count_step_ops.py --out /tmp/step_ops     # <out>/step_ops.{json,md}
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gridface.data.synthetic import SyntheticSpec, generate_widerface
from gridface.loss import GridBoxLoss
from gridface.model import GridBoxNet
from gridface.utils.io import write_json, write_text
from gridface.utils.machine import machine_line, machine_record

NO_KERNEL = {"_local_scalar_dense", "empty", "empty_like", "empty_strided", "lift_fresh", "_record_function_enter_new",
             "_record_function_exit", "set_", "_to_copy_cpu_scalar"}


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.compute: collections.Counter[str] = collections.Counter()
        self.other = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if func.is_view or name in NO_KERNEL or name == "detach":
            self.other += 1
        else:
            self.compute[name] += 1
        return func(*args, **(kwargs or {}))


class CountSteps(pl.Callback):
    def __init__(self) -> None:
        self.steps: list[OpCounter] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.append(OpCounter().__enter__())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps[-1].__exit__(None, None, None)


def mean_counts(counters: list[OpCounter]) -> tuple[collections.Counter[str], float]:
    total: collections.Counter[str] = collections.Counter()
    for c in counters:
        total.update(c.compute)
    n = len(counters)
    return collections.Counter({k: v / n for k, v in total.items()}), sum(c.other for c in counters) / n


def lightning_step(data: Path, work: Path, steps: int, overrides: list[str]) -> list[OpCounter]:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from gridface.stages.train import run
    from gridface.utils.hydra import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[
            "dataset=widerface", f"dataset.root={data}", "trainer=cpu", "dataset.batch_size=4",
            "dataset.input_width=128", "dataset.input_height=64", "dataset.num_workers=0", "print_config=false",
            "seed=0", f"trainer.max_steps={steps}", "trainer.num_sanity_val_steps=0", "trainer.limit_val_batches=1",
            "checkpoint_every_n_steps=0", "logger=none", "+optimizer.algorithm.foreach=true",
            # what trainer=gpu and recipe=tao set for a GPU, here on the CPU
            "callbacks.non_finite_guard.check_every_n_steps=50", "trainer.log_every_n_steps=50", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(work)
    counter = CountSteps()
    run(cfg, callbacks=[counter])
    return counter.steps


def bare_step(steps: int) -> list[OpCounter]:
    torch.manual_seed(0)
    net, loss_fn = GridBoxNet(), GridBoxLoss()
    opt = torch.optim.Adam(net.parameters(), 1e-4, foreach=True)
    x = torch.rand(4, 3, 64, 128)
    target = {"cov": torch.zeros(4, 1, 4, 8), "cov_norm": torch.rand(4, 1, 4, 8), "bbox": torch.rand(4, 4, 4, 8),
              "ignore": torch.zeros(4, 1, 4, 8)}
    counters = []
    for _ in range(steps):
        with OpCounter() as c:
            loss = loss_fn(net(x), target)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        counters.append(c)
    return counters


def batch_build(data: Path, decode: str, batch: int) -> dict[str, Any]:
    """Ops of ``on_after_batch_transfer`` for one training batch of the ``decode`` path, on CPU tensors."""
    from bench_gpu import compose
    from hydra.utils import instantiate

    cfg = compose(["dataset=widerface", f"dataset.root={data}", "trainer=cpu", f"dataset.batch_size={batch}",
                   "dataset.num_workers=0", "print_config=false", "seed=0", f"++dataset.decode={decode}"])
    dm = instantiate(cfg.datamodule, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    host = next(iter(dm.train_dataloader()))
    with OpCounter() as c:
        built = dm.on_after_batch_transfer(host, 0)
    decode_ops = sum(v for k, v in c.compute.items() if "decode" in k)
    return {"decode": decode, "images": int(built["image"].shape[0]), "boxes": int(built["boxes"].shape[0]),
            "compute_ops": sum(c.compute.values()) - decode_ops, "decode_ops": decode_ops, "other_ops": c.other,
            "by_op": dict(c.compute.most_common())}


def main() -> None:
    from gridface.utils.validate import whole_number

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_results/step_ops")
    ap.add_argument("--steps", type=whole_number(4), default=12,
                    help="training steps; the first 3 (warm-up) are left out")
    ap.add_argument("--build-batch", type=int, default=32, help="images of the device paths' batch (0: skip)")
    ap.add_argument("overrides", nargs="*", help="more Hydra overrides of the Lightning run")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "wider"
        spec = {"width": 320, "height": 224, "min_faces": 1, "max_faces": 8}
        generate_widerface(data, {"train": SyntheticSpec(num_images=4 * args.steps, seed=0, **spec),
                                  "val": SyntheticSpec(num_images=8, seed=1, **spec)})
        lit = lightning_step(data, Path(tmp) / "run", args.steps, args.overrides)[3:]
        shutil.rmtree(Path(tmp) / "run", ignore_errors=True)
        builds = []
        if args.build_batch:
            wide = Path(tmp) / "wider_1024"
            big = {"width": 1024, "height": 700, "min_faces": 1, "max_faces": 12, "min_face": 3.0,
                   "small_face": 24.0, "small_fraction": 0.3, "max_face_frac": 0.45}  # bench_gpu.py's set
            generate_widerface(wide, {"train": SyntheticSpec(num_images=args.build_batch, seed=0, **big),
                                      "val": SyntheticSpec(num_images=4, seed=1, **big)})
            builds = [batch_build(wide, decode, args.build_batch) for decode in ("gpu", "hybrid")]
    bare = bare_step(4)[1:]
    (lit_ops, lit_other), (bare_ops, bare_other) = mean_counts(lit), mean_counts(bare)
    extra = {k: lit_ops[k] - bare_ops.get(k, 0) for k in lit_ops if lit_ops[k] - bare_ops.get(k, 0) > 0.5}
    record: dict[str, Any] = {
        "machine": machine_line(), **machine_record(), "overrides": args.overrides,
        "lightning_step": {"compute_ops": sum(lit_ops.values()), "other_ops": lit_other, "by_op": dict(lit_ops)},
        "bare_step": {"compute_ops": sum(bare_ops.values()), "other_ops": bare_other, "by_op": dict(bare_ops)},
        "extra_by_op": dict(sorted(extra.items(), key=lambda kv: -kv[1])), "batch_build": builds}
    lines = [f"# Tensor ops per training step\n\nMachine: {record['machine']}  \n"
             f"Lightning step: GPU recipe settings on the CPU (ResNet18, TAO loss + L1 regulariser, Adam foreach), "
             f"mean of {len(lit)} steps; bare step: forward, loss, backward, Adam.\n",
             "| step | ops that compute (a kernel each on a GPU) | views, host scalars, allocations |",
             "|---|---:|---:|",
             f"| Lightning (gridface) | {record['lightning_step']['compute_ops']:.0f} | {lit_other:.0f} |",
             f"| bare | {record['bare_step']['compute_ops']:.0f} | {bare_other:.0f} |",
             "\nOps the Lightning step adds, per step:\n", "| op | count |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in record["extra_by_op"].items()]
    if builds:
        lines += [f"\nA training batch built by a device path ({args.build_batch} synthetic 1024x700 images, 736x416, "
                  "TAO augmentation), on CPU tensors:\n", "| dataset.decode | images | boxes | ops that compute "
                  "(decoding apart) | decoding ops | views, host scalars, allocations |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {b['decode']} | {b['images']} | {b['boxes']} | {b['compute_ops']} | {b['decode_ops']} | "
                  f"{b['other_ops']} |" for b in builds]
    write_json(out / "step_ops.json", record)
    write_text(out / "step_ops.md", "\n".join(lines) + "\n")
    print("\n".join(lines), file=sys.stdout)


if __name__ == "__main__":
    from gridface.utils.errors import script_errors

    script_errors(main)
