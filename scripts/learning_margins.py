"""The margins behind every test that asserts learning: each overfits a fixed batch (no augmentation, constant
learning rate, deterministic algorithms) through ``tests.helpers.overfit_fixed_batch``; this runs the same batches
over many seeds and prints, per test, the worst and best ratio of the last to the first loss against the threshold
the test asserts. Run from the repository root:

    python scripts/learning_margins.py --seeds 10 --out experiments/learning_margins.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import test_loss, test_real_data  # noqa: E402
from tests.conftest import SHARED_DATA  # noqa: E402
from tests.helpers import overfit_fixed_batch  # noqa: E402

from gridface.utils.io import write_text  # noqa: E402
from gridface.utils.machine import machine_line  # noqa: E402


def main() -> None:
    from gridface.utils.validate import whole_number

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=whole_number(1), default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cases = [("test_loss::test_loss_falls_when_overfitting_one_batch (total loss)", "loss",
              test_loss.tiny_batch(), test_loss.OVERFIT_STEPS, test_loss.LOSS_FALLS_TO),
             ("test_loss::test_loss_falls_when_overfitting_one_batch (bbox loss)", "loss_bbox",
              test_loss.tiny_batch(), test_loss.OVERFIT_STEPS, test_loss.BBOX_FALLS_TO)]
    with tempfile.TemporaryDirectory() as tmp:
        for case in ("synthetic_wider", "real_mini_val"):
            if case == "real_mini_val" and not SHARED_DATA.is_dir():
                print(f"skipping {case}: {SHARED_DATA} not found")
                continue
            batch = test_real_data.overfit_case(case, Path(tmp) / case, SHARED_DATA)
            cases.append((f"test_real_data::test_a_fixed_widerface_batch_is_overfit[{case}] (coverage loss)",
                          "loss_cov", batch, test_real_data.OVERFIT_STEPS, test_real_data.COV_FALLS_TO))
        rows = [f"# Learning-test margins\n\nMachine: {machine_line()}. `python scripts/learning_margins.py --seeds "
                f"{args.seeds}`: last/first loss after the test's steps, seeds 0..{args.seeds - 1} (the tests run "
                "seed 0).\n", "| test (term) | steps | seed 0 | worst seed | best seed | test asserts below | "
                "worst margin | s/seed |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        histories: dict[int, dict] = {}
        for name, key, batch, steps, threshold in cases:
            ratios = []
            start = time.perf_counter()
            for seed in range(args.seeds):
                cache = (id(batch), seed)
                if cache not in histories:
                    histories[cache] = overfit_fixed_batch(batch, seed=seed, steps=steps)
                history = histories[cache]
                ratios.append(history[-1][key] / history[0][key])
            per_seed = (time.perf_counter() - start) / args.seeds
            rows.append(f"| {name} | {steps} | {ratios[0]:.3f} | {max(ratios):.3f} | {min(ratios):.3f} | "
                        f"{threshold} | {threshold / max(ratios):.2f}x | {per_seed:.1f} |")
            print(rows[-1], flush=True)
    text = "\n".join(rows) + "\n"
    print(text)
    if args.out:
        write_text(Path(args.out), text)


if __name__ == "__main__":
    from gridface.utils.errors import script_errors

    script_errors(main)
