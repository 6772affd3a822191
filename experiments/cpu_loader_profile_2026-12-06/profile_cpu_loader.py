"""Where one CPU loader worker's time goes (dataset.decode=cpu, TAO's augmentation), per 1024x700 WIDER-layout image.

    OMP_NUM_THREADS=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONPATH=src:scripts \
        .venv/bin/python experiments/cpu_loader_profile_2026-12-06/profile_cpu_loader.py /tmp/prof > profile.txt
"""

import cProfile
import pstats
import sys
import time
from pathlib import Path

from bench_gpu import compose
from hydra.utils import instantiate

from gridface.data.synthetic import SyntheticSpec, generate_widerface
from gridface.utils.machine import machine_line

N = 128
data = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/prof") / "wider"
spec = {"width": 1024, "height": 700, "min_faces": 1, "max_faces": 12, "min_face": 3.0, "small_face": 24.0,
        "small_fraction": 0.3, "max_face_frac": 0.45}  # bench_gpu.py's WIDER-layout images
generate_widerface(data, {"train": SyntheticSpec(num_images=N, seed=0, **spec),
                          "val": SyntheticSpec(num_images=8, seed=1, **spec)})
cfg = compose(["dataset=widerface", f"dataset.root={data}", "trainer=cpu", "print_config=false", "seed=0",
               "dataset.num_workers=0"])
dm = instantiate(cfg.datamodule, _convert_="all")
dm.prepare_data()
dm.setup("fit")
ds = dm.train_dataloader().dataset
print(machine_line())
print("augmentation:", ds.augment)
for i in range(8):  # warm-up
    ds[(0, i)]
start = time.perf_counter()
for i in range(N):
    ds[(1, i)]
print(f"{N} images, one thread: {(time.perf_counter() - start) / N * 1e3:.1f} ms per image")
profile = cProfile.Profile()
profile.enable()
for i in range(N):
    ds[(2, i)]
profile.disable()
pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(15)
