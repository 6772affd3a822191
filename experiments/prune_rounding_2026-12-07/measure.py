"""MACs and parameters kept by prune=ratio at rising ratios (untrained ResNet18 GridBoxNet, 736x416).

    PYTHONPATH=src python experiments/prune_rounding_2026-12-07/measure.py
Run once at 2dae5a4 (torch-pruning's rounding) and once at 754c999 (kept counts never rounded to zero)."""

import copy

import torch

from gridface.model.detector import GridBoxNet
from gridface.pruning.pruner import PruneSpec, count_macs_params, prune_network

HW = (416, 736)
torch.manual_seed(0)
net = GridBoxNet().eval()
base_macs, base_params = count_macs_params(net, HW)
print("| global | ratio | MACs kept | params kept | stem channels |")
print("|---|---:|---:|---:|---:|")
for global_pruning in (False, True):
    for ratio in (0.5, 0.8, 0.85, 0.9, 0.95):
        pruned = prune_network(copy.deepcopy(net), PruneSpec(mode="ratio", ratio=ratio, max_ratio=0.99,
                                                             global_pruning=global_pruning), HW)
        macs, params = count_macs_params(pruned, HW)
        print(f"| {global_pruning} | {ratio} | {macs / base_macs:.2%} | {params / base_params:.2%} "
              f"| {pruned.backbone.stem[0].out_channels} |")
