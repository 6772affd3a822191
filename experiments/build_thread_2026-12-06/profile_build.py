"""Where the host time of one dataset.decode=gpu batch build goes, on CPU tensors: 32 synthetic WIDER-layout images
of 64x44 (tiny, so the time is per-op overhead more than pixels), TAO augmentation, one torch thread. Prints the
unprofiled ms per build, then cProfile's split: gridface's functions, torchvision's Python functions, the rest
(inside torch ops). cProfile's "own time" of a Python function also holds tensor arithmetic written as operators.

    PYTHONPATH=src:scripts python experiments/build_thread_2026-12-06/profile_build.py
"""

import copy
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import torch
from bench_gpu import compose
from hydra.utils import instantiate

from gridface.data.synthetic import SyntheticSpec, generate_widerface
from gridface.utils.machine import machine_line

BUILDS = 40
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
for i in range(5):
    dm.device_batches(copy.copy(hosts[i % len(hosts)]))
t = time.perf_counter()
for i in range(BUILDS):
    dm.device_batches(copy.copy(hosts[i % len(hosts)]))
print(f"# {machine_line()}; torch {torch.__version__}")
print(f"unprofiled: {1000 * (time.perf_counter() - t) / BUILDS:.2f} ms per build")
profile = cProfile.Profile()
profile.enable()
for i in range(BUILDS):
    dm.device_batches(copy.copy(hosts[i % len(hosts)]))
profile.disable()
stats = pstats.Stats(profile)
own = {name: sum(v[2] for k, v in stats.stats.items() if name in k[0]) for name in ("/src/gridface/", "torchvision")}
print(f"profiled: {stats.total_tt:.3f} s for {BUILDS} builds, {stats.total_calls} calls; own time in gridface's "
      f"functions {own['/src/gridface/']:.3f} s ({1000 * own['/src/gridface/'] / BUILDS:.2f} ms per build), in "
      f"torchvision's Python functions {own['torchvision']:.3f} s")
rows = sorted(((v[2], k) for k, v in stats.stats.items() if "/src/gridface/" in k[0]), reverse=True)[:5]
for own_s, (file, line, fn) in rows:
    print(f"  {1000 * own_s / BUILDS:.3f} ms per build  {file.split('src/')[1]}:{line} {fn}")
