"""A host-only proxy for dataset.prefetch=thread, on the CPU: does building batches in the build thread overlap
with a launch-bound training loop on the host, or does the GIL eat the overlap?

The "step" is STEP_OPS tiny-tensor ops on the loop's thread (host overhead only, like queueing a step's kernels
on a GPU). The build is the real dataset.decode=gpu batch build (DeviceBatchBuilder, TAO augmentation, 32 synthetic
WIDER-layout images of 64x44, CPU decode), fed through DevicePrefetchLoader as Lightning does (batch n+1 fetched
before step n, joined right before its step). Serial = prefetch=stream's host timeline; thread = prefetch=thread.
One torch thread per op. The modes alternate, REPEATS times; medians are reported. Not a GPU figure: on a GPU the
build's ops are launches (and an nvJPEG wait), not CPU work.

    PYTHONPATH=src:scripts python experiments/build_thread_2026-12-06/host_proxy.py > host_proxy.txt
"""

import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_gpu import compose
from hydra.utils import instantiate

from gridface.data.prefetch import DevicePrefetchLoader, join_training_stream
from gridface.data.synthetic import SyntheticSpec, generate_widerface
from gridface.utils.machine import machine_line

STEPS, REPEATS = 40, 5
torch.set_num_threads(1)
data = Path(tempfile.mkdtemp())
spec = {"width": 64, "height": 44, "min_faces": 1, "max_faces": 12, "min_face": 3.0}
generate_widerface(data, {"train": SyntheticSpec(num_images=128, seed=0, **spec),
                          "val": SyntheticSpec(num_images=4, seed=1, **spec)})
cfg = compose(["dataset=widerface", f"dataset.root={data}", "trainer=cpu", "dataset.batch_size=32",
               "dataset.input_width=64", "dataset.input_height=48", "dataset.num_workers=0", "print_config=false",
               "seed=0", "dataset.decode=gpu"])
dm = instantiate(cfg.datamodule, _convert_="all")
dm.prepare_data()
dm.setup("fit")
hosts = list(dm.train_dataloader())
x = torch.rand(16)


def step(ops: int) -> None:
    y = x
    for _ in range(ops // 2):
        y = y.mul(1.0001).add_(0.1)


def alone(f, n: int = STEPS) -> float:
    f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return 1000 * (time.perf_counter() - t) / n


def loop(ops: int, threaded: bool) -> float:
    loader = [copy.copy(hosts[i % len(hosts)]) for i in range(STEPS + 1)]
    it = iter(DevicePrefetchLoader(loader, torch.device("cpu"), dm.device_batches, threaded=threaded))
    nxt = next(it)
    t = time.perf_counter()
    for _ in range(STEPS):
        cur, nxt = nxt, next(it, None)  # Lightning fetches n+1 before step n
        join_training_stream(cur)  # on_after_batch_transfer, right before step n
        step(ops)
    return 1000 * (time.perf_counter() - t) / STEPS


print(f"# {machine_line()}; torch {torch.__version__}, Python {sys.version.split()[0]}; one torch thread")
print("| step ops | build alone ms | step alone ms | serial (stream) ms/step | build thread ms/step | "
      "serial / thread |")
print("|---:|---:|---:|---:|---:|---:|")
for ops in (600, 2600):
    build_ms = alone(lambda: dm.device_batches(copy.copy(hosts[0])))
    step_ms = alone(lambda ops=ops: step(ops))
    serial, thread = [], []
    for _ in range(REPEATS):
        serial.append(loop(ops, False))
        thread.append(loop(ops, True))
    s, t = statistics.median(serial), statistics.median(thread)
    print(f"| {ops} | {build_ms:.2f} | {step_ms:.2f} | {s:.2f} ({min(serial):.2f}-{max(serial):.2f}) | "
          f"{t:.2f} ({min(thread):.2f}-{max(thread):.2f}) | {s / t:.2f} |", flush=True)
